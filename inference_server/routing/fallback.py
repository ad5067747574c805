"""Constant fallback answers (`[routes.NAME.fallback] outputs = { ... }`): one value per output, repeated for
each row of the request. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inference_server.protocol.tensors import DATATYPES, Tensor

# Which failures a fallback answers for: ErrorCode.falls_back.


def _infer_datatype(value: np.ndarray) -> str:
    kind = value.dtype.kind
    return {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP32"}.get(kind, "BYTES")


def constant_outputs(outputs: Mapping[str, Any], rows: int | None, datatypes: Mapping[str, str],
                     requested: Sequence[str] | None) -> list[Tensor] | None:
    """The tensors to answer with: each value as a row, repeated `rows` times (no batch dimension when None),
    in the datatype of the model's output of that name when known. None when a requested output has no
    constant (the caller then reports the original failure)."""
    names = list(requested) if requested else list(outputs)
    if any(name not in outputs for name in names):
        return None
    tensors = []
    for name in names:
        value = np.asarray(outputs[name])
        datatype = datatypes.get(name) or _infer_datatype(value)
        dt = DATATYPES[datatype]
        if dt.itemsize == 0:
            value = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(value)
        else:
            value = value.astype(dt.dtype)
        data = value if rows is None else np.ascontiguousarray(np.broadcast_to(value, (rows, *value.shape)))
        tensors.append(Tensor(name, datatype, tuple(data.shape), data))
    return tensors
