"""ONNX Runtime IO binding for sessions on a GPU: the batch goes to the device once, and outputs come back
into pinned (page-locked) host buffers when ONNX Runtime can allocate them, so the copy back is a DMA.

Without IO binding, `session.run` on CUDA copies inputs from pageable memory and allocates outputs itself.
Numeric tensors only (strings never live on a GPU); the backend keeps `session.run` for anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from inference_server.protocol.tensors import DATATYPES, is_bf16, is_bytes

log = logging.getLogger(__name__)


def pinned_memory_info(ort: ModuleType, ep_name: str = "CUDAExecutionProvider") -> Any | None:
    """ONNX Runtime's host-accessible (pinned) memory for the execution provider, or None where this build or
    device offers none (CPU-only builds; ONNX Runtime before 1.23)."""
    get_devices = getattr(ort, "get_ep_devices", None)
    memory_type = getattr(ort, "OrtDeviceMemoryType", None)
    if get_devices is None or memory_type is None:
        return None
    for device in get_devices():
        if device.ep_name == ep_name:
            info = device.memory_info(memory_type.HOST_ACCESSIBLE)
            if info is not None:
                return info
    return None


def can_bind(specs: Sequence[Any]) -> bool:
    """IO binding here covers fixed-size numeric tensors; BYTES and BF16 keep the plain run path."""
    return not any(is_bytes(spec.datatype) or is_bf16(spec.datatype) for spec in specs)


class IoBoundRun:
    """Runs a session through an IO binding on `device_type` ("cuda"; "cpu" works too, and is what the tests
    without a GPU exercise)."""

    def __init__(self, ort: ModuleType, outputs: Sequence[Any], *, device_type: str = "cuda", device_id: int = 0,
                 pinned: Any | None = None) -> None:
        self._ort = ort
        self._outputs = list(outputs)
        self._device = (device_type, device_id)
        self._pinned = pinned  # an OrtMemoryInfo for pinned host memory, or None

    def _output_shape(self, spec: Any, rows: int | None) -> list[int] | None:
        """The output's shape for this batch when it is known before the run (dim 0 = rows)."""
        shape = [rows if i == 0 and d == -1 and rows is not None else d for i, d in enumerate(spec.shape)]
        return None if any(d < 0 for d in shape) else shape

    def __call__(self, session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """inputs: C-contiguous and aligned, as OnnxInstance.run_sync hands them over."""
        binding = session.io_binding()
        rows = None
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
            rows = array.shape[0] if array.ndim else rows
        keep_alive = []  # the pinned buffers outlive the copy below
        for spec in self._outputs:
            shape = self._output_shape(spec, rows) if self._pinned is not None else None
            if shape is not None:
                value = self._ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, DATATYPES[spec.datatype].dtype, memory_info=self._pinned)
                binding.bind_ortvalue_output(spec.name, value)
                keep_alive.append(value)
            else:
                binding.bind_output(spec.name, *self._device)
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        copied = binding.copy_outputs_to_cpu()
        return {spec.name: array for spec, array in zip(self._outputs, copied, strict=True)}
