"""Triton model configuration text (config.pbtxt, or RepositoryModelLoad's JSON `config`) -> a plain dict.

The dict is protobuf's JSON mapping with the proto field names: default values are left out and 64-bit
integers are strings. lifecycle/triton_model.py turns it into a ModelConfig.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, text_format

from inference_server.protocol._generated import model_config_pb2


def _as_dict(message: model_config_pb2.ModelConfig) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def pbtxt_to_dict(text: str) -> dict[str, Any]:
    """Parse protobuf text format; ValueError with the line and column of the first mistake."""
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        detail = str(exc).split(" : ", 1)[-1] if line is not None else str(exc)
        where = f"line {line}, column {column}: " if line is not None else ""
        raise ValueError(f"invalid model configuration (protobuf text format): {where}{detail}") from exc
    return _as_dict(message)


def json_to_dict(text: str) -> dict[str, Any]:
    """Parse Triton's JSON form of a ModelConfig (unknown fields are errors); ValueError on bad input."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid model configuration JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"invalid model configuration JSON: expected an object, got {type(document).__name__}")
    message = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ValueError(f"invalid model configuration JSON: {str(exc).splitlines()[0]}") from exc
    return _as_dict(message)
