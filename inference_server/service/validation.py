"""A request's tensors against the model version that will run it: names, datatypes, shapes, batch rows, and
the outputs it asks for. Every mistake is INVALID_ARGUMENT with a message naming the tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference_server.errors import invalid
from inference_server.execution.backend import TensorSpec
from inference_server.execution.batching import check_rows
from inference_server.lifecycle.version import ModelVersion
from inference_server.protocol.tensors import Tensor, bytes_to_text, is_bytes


def validate_inputs(model: ModelVersion, tensors: Sequence[Tensor]) -> tuple[dict[str, np.ndarray], int]:
    """Check names, datatypes and shapes against the model; returns the arrays in model order and the rows."""
    given: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name in given:
            raise invalid(f"input '{tensor.name}' is given more than once")
        given[tensor.name] = tensor
    expected = {spec.name for spec in model.inputs}
    for name in given:
        if name not in expected:
            raise invalid(f"unexpected input '{name}' for model '{model.name}' "
                          f"(its inputs: {', '.join(sorted(expected))})")
    batching = model.max_batch_size > 0
    arrays: dict[str, np.ndarray] = {}
    rows = None
    for spec in model.inputs:
        found = given.get(spec.name)
        if found is None:
            raise invalid(f"missing input '{spec.name}' for model '{model.name}'")
        if found.datatype != spec.datatype:
            raise invalid(f"input '{spec.name}': datatype {found.datatype} does not match the model's {spec.datatype}")
        shape = found.shape
        matches = len(shape) == len(spec.shape) and all(
            want == -1 or got == want for got, want in zip(shape[batching:], spec.shape[batching:], strict=True))
        if not matches:
            raise invalid(f"input '{spec.name}': shape {list(shape)} does not match the model's "
                          f"{list(spec.shape)}")
        if batching:
            if rows is not None and shape[0] != rows:
                raise invalid(f"input '{spec.name}': batch size {shape[0]} differs from the other inputs' {rows}")
            rows = shape[0]
        data = found.data
        if is_bytes(spec.datatype):
            data = bytes_to_text(data, spec.name)
        arrays[spec.name] = data
    if not batching:
        return arrays, 1
    if not rows:
        raise invalid(f"batch size must be at least 1 for model '{model.name}'")
    check_rows(rows, model.max_batch_size, model.name)
    return arrays, rows


def select_outputs(model: ModelVersion, requested: Sequence[str] | None) -> list[TensorSpec]:
    if not requested:
        return list(model.outputs)
    by_name = {spec.name: spec for spec in model.outputs}
    selected = []
    for name in requested:
        spec = by_name.get(name)
        if spec is None:
            raise invalid(f"unknown output '{name}' requested from model '{model.name}' "
                          f"(its outputs: {', '.join(by_name)})")
        if spec in selected:
            raise invalid(f"output '{name}' is requested more than once")
        selected.append(spec)
    return selected
