"""OnnxBackend on real ONNX Runtime CPU sessions: metadata, providers, dtypes, and the failure messages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from inference_server.config.server import BatchingConfig, ModelConfig
from inference_server.errors import ModelLoadError
from inference_server.execution.backend import (
    CUDA,
    INSTALL_HINT,
    OnnxBackend,
    TensorSpec,
    import_onnxruntime,
    sample_inputs,
)
from inference_server.lifecycle.version import resolve_batching
from inference_server.protocol.tensors import DATATYPES, bytes_to_text
from tests.support import onnx_models


@pytest.fixture
def repo(tmp_path):
    return tmp_path


def backend_for(repo, model, **kw) -> OnnxBackend:
    return OnnxBackend(onnx_models.write_model(repo, "m", model), model="m", **kw)


def test_tensor_metadata_comes_from_the_model(repo):
    b = backend_for(repo, onnx_models.mlp([8, 16, 4], second_output=True), device="cpu")
    assert [(t.name, t.datatype, t.shape) for t in b.inputs] == [("x", "FP32", (-1, 8))]
    assert [(t.name, t.datatype, t.shape) for t in b.outputs] == [("y", "FP32", (-1, 4)), ("h", "FP32", (-1, 16))]
    assert b.device == "cpu" and len(b.instances) == 1
    b.close()


def test_one_session_per_instance(repo):
    b = backend_for(repo, onnx_models.mlp([4, 4]), instance_count=3)
    assert len(b.instances) == 3 and len({id(i.session) for i in b.instances}) == 3
    b.close()


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return bytes_to_text(np.array([[b"h\xc3\xa9", b"a\x00b"]], dtype=object), "in_BYTES")
    if datatype == "BF16":
        return np.array([[0x3F80, 0xC020]], dtype=np.uint16)  # the bits of 1.0 and -2.5
    return np.array([[1, 0]]).astype(DATATYPES[datatype].dtype)


@pytest.mark.parametrize("datatypes", [onnx_models.ALL_BUT_BF16, ["BF16", "FP32"]])
def test_every_datatype_passes_through_onnx_runtime_unchanged(repo, datatypes):
    b = backend_for(repo, onnx_models.identity(datatypes, width=2))
    feeds = {f"in_{t}": sample(t) for t in datatypes}
    out = b.instances[0].run_sync(feeds)
    for t in datatypes:
        got = out[f"out_{t}"]
        if t == "BYTES":
            assert got.tolist() == [["hé", "a\x00b"]]
        else:
            np.testing.assert_array_equal(got, feeds[f"in_{t}"])
            assert got.dtype == feeds[f"in_{t}"].dtype
    b.close()


def test_bf16_with_strings_in_one_model_is_refused_at_load(repo):
    with pytest.raises(ModelLoadError, match="BF16 and string tensors"):
        backend_for(repo, onnx_models.identity(["BF16", "BYTES"]))


def test_cpu_is_chosen_when_cpu_is_asked_for(repo):
    b = backend_for(repo, onnx_models.mlp([4, 4]), device="cpu")
    assert b.instances[0].session.get_providers() == ["CPUExecutionProvider"]
    b.close()


def test_required_cuda_fails_at_load_when_onnx_runtime_has_no_cuda(repo):
    assert CUDA not in onnxruntime.get_available_providers()  # this machine: the [cpu] extra
    with pytest.raises(ModelLoadError, match=r"device 'cuda' is required but this ONNX Runtime build has no"):
        backend_for(repo, onnx_models.mlp([4, 4]), device="cuda")


def test_required_cuda_fails_when_the_session_silently_falls_back_to_cpu(repo, monkeypatch):
    # As onnxruntime-gpu does on a node without a usable GPU: CUDA is listed, the session runs on CPU.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    with pytest.warns(UserWarning):
        with pytest.raises(ModelLoadError, match=r"could not start CUDAExecutionProvider \(session providers: CPU"):
            backend_for(repo, onnx_models.mlp([4, 4]), device="cuda")


def test_auto_device_runs_on_cpu_when_cuda_does_not_start(repo, monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    with pytest.warns(UserWarning):
        b = backend_for(repo, onnx_models.mlp([4, 4]), device="auto")
    assert b.device == "cpu" and "did not start; running on CPU" in caplog.text
    b.close()


def test_missing_onnx_runtime_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError) as e:
        import_onnxruntime()
    assert str(e.value) == INSTALL_HINT and "[cpu]" in INSTALL_HINT and "[gpu]" in INSTALL_HINT


def test_unreadable_model_file_is_a_load_error(repo):
    path = repo / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        OnnxBackend(path, model="broken")
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxBackend(repo / "absent.onnx", model="absent")


def test_batching_is_automatic_only_when_dim_0_is_variable_everywhere(repo):
    mlp = backend_for(repo, onnx_models.mlp([4, 4]))
    fixed = OnnxBackend(onnx_models.write_model(repo, "f", onnx_models.fixed_shape()), model="f")
    auto = BatchingConfig()
    assert resolve_batching(ModelConfig(name="m", path=repo, batching=auto), mlp).max_batch_size == 32
    assert resolve_batching(ModelConfig(name="f", path=repo, batching=auto), fixed).max_batch_size == 0
    with pytest.raises(ModelLoadError, match="set max_batch_size = 0"):
        resolve_batching(ModelConfig(name="f", path=repo, batching=BatchingConfig(max_batch_size=8)), fixed)
    with pytest.raises(ModelLoadError, match="preferred_batch_size"):
        resolve_batching(ModelConfig(name="m", path=repo, batching=BatchingConfig(
            max_batch_size=4, preferred_batch_size=(8,))), mlp)
    mlp.close()
    fixed.close()


def test_a_cheap_model_runs_inline_on_single_threaded_sessions(repo, caplog):
    b = backend_for(repo, onnx_models.mlp([8, 16, 4]), instance_count=2)
    caplog.set_level("INFO")
    assert b.choose_execution("auto", 32, "m") == "inline"
    assert all(i.inline for i in b.instances)
    assert [i.session.get_session_options().intra_op_num_threads for i in b.instances] == [1, 1]
    assert "a batch of 32 rows runs in" in caplog.text and "inline on the event loop" in caplog.text
    np.testing.assert_array_equal(b.instances[0].run_sync({"x": np.ones((2, 8), np.float32)})["y"].shape, (2, 4))
    b.close()


def test_an_expensive_model_runs_in_a_thread(repo):
    b = backend_for(repo, onnx_models.slow(256))
    assert b.time_run_us(8) > 200
    assert b.choose_execution("auto", 8, "m") == "thread" and not b.instances[0].inline
    b.close()


def test_explicit_execution_is_kept_and_configured_threads_are_respected(repo, monkeypatch):
    b = backend_for(repo, onnx_models.mlp([8, 16, 4]), intra_op_threads=2)
    monkeypatch.setattr(b, "time_run_us", lambda *a, **k: pytest.fail("explicit execution must not be timed"))
    assert b.choose_execution("thread", 32, "m") == "thread" and not b.instances[0].inline
    assert b.choose_execution("inline", 32, "m") == "inline" and b.instances[0].inline
    assert b.instances[0].session.get_session_options().intra_op_num_threads == 2
    b.close()


def test_a_model_that_cannot_be_timed_runs_in_a_thread(repo, monkeypatch, caplog):
    b = backend_for(repo, onnx_models.mlp([8, 16, 4]))

    def refuse(*args, **kwargs):
        raise RuntimeError("needs real data")

    monkeypatch.setattr(b, "time_run_us", refuse)
    assert b.choose_execution("auto", 4, "m") == "thread"
    assert "cannot time a sample batch (needs real data)" in caplog.text
    b.close()


def test_sample_inputs_follow_the_model_shapes():
    specs = [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("s", "BYTES", (-1, -1)), TensorSpec("f", "INT64", (2, 2))]
    out = sample_inputs(specs, 5)
    assert {k: (v.shape, v.dtype.kind) for k, v in out.items()} == {"a": ((5, 3), "f"), "s": ((5, 1), "O"),
                                                                    "f": ((2, 2), "i")}


def test_a_background_model_runs_in_one_thread_of_the_lowest_priority(repo):
    import os
    import threading

    backend = backend_for(repo, onnx_models.mlp([4, 8, 2]), background=True)
    try:
        nice = backend._executors[0].submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert nice.result() == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # only that thread
        assert backend.choose_execution("inline", 1, "m") == "thread"  # never on the event loop
        assert backend.instances[0].session.get_session_options().intra_op_num_threads == 1
    finally:
        backend.close()


def test_background_priority_cannot_run_inline():
    from inference_server.config.model import parse_model
    from inference_server.config.server import ServerConfig
    from inference_server.errors import ConfigError

    cfg = parse_model({"cpu_priority": "background"}, "", ServerConfig(), name="m", path=Path("m.onnx"))
    assert cfg.cpu_priority == "background"
    with pytest.raises(ConfigError) as e:
        parse_model({"cpu_priority": "background", "execution": "inline"}, "", ServerConfig(), name="m",
                    path=Path("m.onnx"))
    assert e.value.key == "cpu_priority"


def test_cuda_libraries_are_preloaded_once_and_only_when_cuda_is_used(monkeypatch):
    """onnxruntime-gpu's preload_dlls() finds CUDA from the nvidia-* wheels; without it ORT would run on CPU."""
    import types

    from inference_server.execution import backend

    calls = []
    ort = types.SimpleNamespace(get_available_providers=lambda: [backend.CUDA, backend.CPU],
                                preload_dlls=lambda: calls.append(1))
    monkeypatch.setattr(backend, "_preload_done", False)
    assert backend.choose_providers(ort, "cpu", "m") == [backend.CPU]
    assert calls == []
    assert backend.choose_providers(ort, "auto", "m") == [backend.CUDA, backend.CPU]
    assert backend.choose_providers(ort, "cuda", "m") == [backend.CUDA, backend.CPU]
    assert calls == [1]


def test_a_containers_cpu_limit_sizes_the_sessions_pools_unless_the_model_sets_its_own(repo, monkeypatch):
    from inference_server.execution import backend

    monkeypatch.setattr(backend, "default_intra_op_threads", lambda: 3)  # as in a pod limited to 3 CPUs
    limited = backend_for(repo, onnx_models.mlp([4, 8, 2]))
    assert limited.instances[0].session.get_session_options().intra_op_num_threads == 3
    own = backend_for(repo, onnx_models.mlp([4, 8, 2]), intra_op_threads=2)
    assert own.instances[0].session.get_session_options().intra_op_num_threads == 2


class SessionArgs:
    """onnxruntime.InferenceSession, recording the providers and provider options it is given (then the real one)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[list, list]] = []
        real = onnxruntime.InferenceSession

        def session(path, options=None, providers=None, provider_options=None, **kw):
            self.calls.append((list(providers), list(provider_options)))
            return real(path, options, providers=providers, provider_options=provider_options, **kw)

        monkeypatch.setattr(onnxruntime, "InferenceSession", session)


GPU_MEMORY = {"gpu_mem_limit_mib": 512, "arena_extend_strategy": "kSameAsRequested", "batching": {"instance_count": 2}}


def test_a_models_gpu_memory_settings_reach_the_cuda_providers_options(repo, monkeypatch):
    """From a model's config.toml to every instance's session: the CUDA provider gets gpu_mem_limit in bytes and the
    arena strategy; the CPU provider nothing. (onnxruntime-gpu's own list, on a machine without it: the session then
    runs on CPU, as device auto allows.)"""
    from inference_server.config.model import parse_model
    from inference_server.config.server import ServerConfig
    from inference_server.lifecycle.version import prepare

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    sessions = SessionArgs(monkeypatch)
    path = onnx_models.write_model(repo, "m", onnx_models.mlp([4, 4]))
    cfg = parse_model(GPU_MEMORY, "", ServerConfig(), name="m", path=path)
    with pytest.warns(UserWarning):
        prepared = prepare(cfg)
    cuda = {"gpu_mem_limit": str(512 * 2**20), "arena_extend_strategy": "kSameAsRequested"}
    # Each of the 2 instances' sessions, and those remade for inline execution, if the model runs inline
    assert len(sessions.calls) in (2, 4)
    assert all(call == ([CUDA, "CPUExecutionProvider"], [cuda, {}]) for call in sessions.calls)
    assert prepared.backend.device == "cpu"
    prepared.backend.close()


def test_without_gpu_memory_settings_the_cuda_provider_keeps_onnx_runtimes_default_limit(repo, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    sessions = SessionArgs(monkeypatch)
    with pytest.warns(UserWarning):
        backend_for(repo, onnx_models.mlp([4, 4])).close()
    assert sessions.calls == [([CUDA, "CPUExecutionProvider"], [{"arena_extend_strategy": "kNextPowerOfTwo"}, {}])]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_cpu_sessions_ignore_the_gpu_memory_settings(repo, monkeypatch, device):
    """The same config serves on a CPU node (the [cpu] extra, or device cpu): no option reaches the CPU provider."""
    sessions = SessionArgs(monkeypatch)
    if device == "cpu":
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    b = backend_for(repo, onnx_models.mlp([4, 4]), device=device, gpu_mem_limit_bytes=512 * 2**20,
                    arena_extend_strategy="kSameAsRequested")
    assert sessions.calls == [(["CPUExecutionProvider"], [{}])] and b.device == "cpu"
    b.close()


@pytest.mark.parametrize("table, key, words", [
    ({"gpu_mem_limit_mib": -1}, "gpu_mem_limit_mib", ">= 0"),
    ({"gpu_mem_limit_mib": 4 * 2**30}, "gpu_mem_limit_mib", "is in MiB"),
    ({"gpu_mem_limit_mib": "4G"}, "gpu_mem_limit_mib", "expected int"),
    ({"arena_extend_strategy": "same"}, "arena_extend_strategy", "kSameAsRequested"),
])
def test_bad_gpu_memory_settings_are_refused_naming_the_key(table, key, words):
    from inference_server.config.model import parse_model
    from inference_server.config.server import ServerConfig
    from inference_server.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_model(table, "models[0].", ServerConfig(), name="m", path=Path("m.onnx"))
    assert e.value.key == f"models[0].{key}" and words in str(e.value)
