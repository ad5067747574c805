"""IO binding (the GPU path), exercised on real ONNX Runtime CPU sessions; only the pinned allocator, which
needs a CUDA build and a GPU, is stood in for. The end-to-end CUDA test runs where a GPU is present."""

from __future__ import annotations

import logging
import types

import numpy as np
import onnxruntime
import pytest

from inference_server.execution import backend as backend_module
from inference_server.execution.backend import OnnxBackend
from inference_server.execution.iobinding import IoBoundRun, can_bind, pinned_memory_info
from tests.support import onnx_models


@pytest.fixture
def mlp(tmp_path):
    path = onnx_models.write_model(tmp_path, "m", onnx_models.mlp([8, 16, 4], second_output=True))
    backend = OnnxBackend(path, model="m", device="cpu")
    yield backend
    backend.close()


def reference(backend: OnnxBackend, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in backend.outputs]
    return dict(zip(names, backend.instances[0].session.run(names, {"x": x}), strict=True))


def test_io_bound_run_matches_session_run(mlp):
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    out = IoBoundRun(onnxruntime, mlp.outputs, device_type="cpu")(mlp.instances[0].session, {"x": x})
    want = reference(mlp, x)
    assert list(out) == ["y", "h"]
    for name in want:
        np.testing.assert_array_equal(out[name], want[name])


def test_outputs_with_known_shapes_go_into_pinned_buffers(mlp):
    allocated = []

    def from_shape_and_type(shape, dtype, memory_info=None):
        allocated.append((list(shape), np.dtype(dtype), memory_info))
        return onnxruntime.OrtValue.ortvalue_from_shape_and_type(shape, dtype)  # host memory stands in

    fake_ort = types.SimpleNamespace(OrtValue=types.SimpleNamespace(ortvalue_from_shape_and_type=from_shape_and_type))
    x = np.ones((3, 8), np.float32)
    out = IoBoundRun(fake_ort, mlp.outputs, device_type="cpu", pinned="PINNED")(mlp.instances[0].session, {"x": x})
    assert allocated == [([3, 4], np.dtype(np.float32), "PINNED"), ([3, 16], np.dtype(np.float32), "PINNED")]
    for name, want in reference(mlp, x).items():
        np.testing.assert_array_equal(out[name], want)


def test_pinned_memory_comes_from_the_cuda_device_only():
    assert pinned_memory_info(onnxruntime) is None  # this CPU-only build has none
    cpu = types.SimpleNamespace(ep_name="CPUExecutionProvider", memory_info=lambda kind: "cpu memory")
    cuda = types.SimpleNamespace(ep_name="CUDAExecutionProvider", memory_info=lambda kind: f"cuda {kind}")
    fake = types.SimpleNamespace(get_ep_devices=lambda: [cpu, cuda],
                                 OrtDeviceMemoryType=types.SimpleNamespace(HOST_ACCESSIBLE="host accessible"))
    assert pinned_memory_info(fake) == "cuda host accessible"
    assert pinned_memory_info(types.SimpleNamespace()) is None  # older ONNX Runtime: no such API


def test_a_cuda_model_is_wired_through_io_binding_unless_it_has_strings(tmp_path, monkeypatch, caplog):
    # Stand in for a GPU: the session is a CPU one, but the backend believes CUDA started.
    monkeypatch.setattr(backend_module, "check_providers", lambda *args: "cuda")
    caplog.set_level(logging.INFO)
    numeric = OnnxBackend(onnx_models.write_model(tmp_path, "n", onnx_models.mlp([4, 4])), model="n")
    text = OnnxBackend(onnx_models.write_model(tmp_path, "t", onnx_models.text_identity()), model="t")
    assert numeric.instances[0]._io_bound is not None and text.instances[0]._io_bound is None
    assert "model 'n': CUDA IO binding on, outputs into pageable" in caplog.text
    assert can_bind(numeric.inputs) and not can_bind(text.inputs)
    assert numeric.choose_execution("auto", 8, "n") == "thread"  # GPU runs never block the event loop
    numeric.close()
    text.close()


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_model_through_io_binding_matches_cpu(tmp_path):  # pragma: no cover - runs on GPU nodes only
    path = onnx_models.write_model(tmp_path, "m", onnx_models.mlp([8, 16, 4], second_output=True))
    gpu = OnnxBackend(path, model="m", device="cuda")
    cpu = OnnxBackend(path, model="m", device="cpu")
    x = np.random.default_rng(0).standard_normal((7, 8)).astype(np.float32)
    got, want = gpu.instances[0].run_sync({"x": x}), cpu.instances[0].run_sync({"x": x})
    assert gpu.device == "cuda" and gpu.instances[0]._io_bound is not None
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    gpu.close()
    cpu.close()
