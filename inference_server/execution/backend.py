"""Model execution: the ModelInstance protocol the batcher drives, and its ONNX Runtime implementation.

One ONNX Runtime session per model instance, each with its own executor thread: `session.run` releases
the GIL, so the event loop keeps accepting and batching requests while a batch runs. A model whose
largest batch runs in less time than the hop to a thread costs (measured at load, `execution = "auto"`)
runs inline on the event loop instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from inference_server.errors import ModelLoadError
from inference_server.execution.cpus import default_intra_op_threads
from inference_server.execution.iobinding import IoBoundRun, can_bind, pinned_memory_info
from inference_server.protocol.onnx_files import missing_external_data
from inference_server.protocol.tensors import DATATYPES, ONNX_DATATYPES, aligned, is_bf16, is_bytes

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
INSTALL_HINT = (
    "ONNX Runtime is not installed. Install exactly one of the extras: "
    "pip install -e '.[cpu]' on CPU machines, or pip install -e '.[gpu]' on CUDA nodes."
)

_BF16_ELEMENT_TYPE = 16  # onnx.TensorProto.BFLOAT16
# A batch that runs in at most this long runs inline on the event loop under execution = "auto". Handing a
# batch to a thread and back costs tens of microseconds of loop time plus two thread wake-ups; below this
# the hop costs more than it frees (benchmarks/results/execution.md measures both on the cheap MLP).
INLINE_MAX_US = 200.0
# config's graph_optimization_level -> onnxruntime.GraphOptimizationLevel member
GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # the model's full shape; -1 where a dimension is variable


class ModelInstance(Protocol):
    async def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def import_onnxruntime() -> ModuleType:
    """Import ONNX Runtime, or fail with the extra to install; warn when both wheels are present."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(INSTALL_HINT) from None
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            installed.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(installed) > 1:
        log.warning("both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's "
                    "files. Keep one: the [cpu] or the [gpu] extra, never both.")
    return onnxruntime


_preloaded = threading.Lock()
_preload_done = False


def preload_cuda_libraries(ort: ModuleType) -> None:
    """Once per process: onnxruntime-gpu's preload_dlls() loads CUDA and cuDNN from the nvidia-* wheels (the
    `[cuda,cudnn]` extra of onnxruntime-gpu) when they are installed, else from the default library path (a CUDA
    base image). Without it, wheels-only CUDA is not found and ONNX Runtime silently runs on CPU."""
    global _preload_done
    preload = getattr(ort, "preload_dlls", None)
    with _preloaded:
        if _preload_done or preload is None:
            return
        _preload_done = True
        try:
            preload()
        except Exception as e:  # noqa: BLE001 (a library it could not load: the session's own check reports it)
            log.warning("onnxruntime.preload_dlls() failed (%s); CUDA libraries are left to the system's search "
                        "path", e)


def choose_providers(ort: ModuleType, device: str, model: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        preload_cuda_libraries(ort)
        return [CUDA, CPU]
    if device == "cuda":
        raise ModelLoadError(
            f"model '{model}': device 'cuda' is required but this ONNX Runtime build has no {CUDA} "
            f"(available: {', '.join(available)}). Install the [gpu] extra (onnxruntime-gpu), not [cpu]."
        )
    return [CPU]


def provider_options(providers: Sequence[str], gpu_mem_limit_bytes: int,
                     arena_extend_strategy: str) -> list[dict[str, str]]:
    """ONNX Runtime's options for each of `providers`: the CUDA provider gets the model's memory arena settings
    (ModelConfig's gpu_mem_limit_bytes, 0 for ONNX Runtime's default of no limit, and arena_extend_strategy); the CPU
    provider none. docs/deployment.md, "Sharing a GPU"."""
    cuda = {"arena_extend_strategy": arena_extend_strategy}
    if gpu_mem_limit_bytes:
        cuda["gpu_mem_limit"] = str(gpu_mem_limit_bytes)
    return [dict(cuda) if provider == CUDA else {} for provider in providers]


def check_providers(session_providers: Sequence[str], wanted: Sequence[str], device: str, model: str) -> str:
    """ONNX Runtime falls back to CPU silently when CUDA cannot start; refuse that when CUDA is required."""
    if CUDA in session_providers:
        return "cuda"
    if device == "cuda":
        raise ModelLoadError(
            f"model '{model}': device 'cuda' is required but ONNX Runtime could not start {CUDA} "
            f"(session providers: {', '.join(session_providers)}). Check the GPU driver and the "
            "CUDA/cuDNN libraries this onnxruntime-gpu build needs."
        )
    if CUDA in wanted:
        log.warning("model '%s': %s is listed but did not start; running on CPU", model, CUDA)
    return "cpu"


def tensor_spec(node: Any, model: str) -> TensorSpec:
    datatype = ONNX_DATATYPES.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"model '{model}': tensor '{node.name}' has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
    return TensorSpec(node.name, datatype, shape)


class OnnxInstance:
    """One session and the thread that runs it."""

    def __init__(self, session: Any, executor: ThreadPoolExecutor, outputs: Sequence[TensorSpec],
                 ort: ModuleType, io_bound: IoBoundRun | None = None) -> None:
        self.session = session
        self._io_bound = io_bound  # GPU sessions: run through an IO binding
        self._executor = executor
        self._output_names = [o.name for o in outputs]
        self._ort = ort
        self._bf16_inputs = {i.name for i in session.get_inputs() if is_bf16(ONNX_DATATYPES.get(i.type, ""))}
        self._bf16 = bool(self._bf16_inputs) or any(is_bf16(o.datatype) for o in outputs)
        self.inline = False  # run on the calling (event-loop) thread instead of the executor

    async def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.inline:
            return self.run_sync(inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, inputs)

    def run_sync(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input reaches ONNX Runtime through here, aligned (tensors.aligned: the decoders and the batcher
        hand over aligned arrays already, so this copies only what came another way)."""
        inputs = {name: aligned(array) for name, array in inputs.items()}
        if self._io_bound is not None:
            return self._io_bound(self.session, inputs)
        if self._bf16:
            return self._run_ort_values(inputs)
        return dict(zip(self._output_names, self.session.run(self._output_names, dict(inputs)), strict=True))

    def _run_ort_values(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """BF16 has no numpy dtype: its uint16 bits go in and come out through OrtValues (inputs C-contiguous, from
        run_sync)."""
        feeds = {}
        for name, array in inputs.items():
            if name in self._bf16_inputs:
                feeds[name] = self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, _BF16_ELEMENT_TYPE)
            else:
                feeds[name] = self._ort.OrtValue.ortvalue_from_numpy(array)
        results = self.session.run_with_ort_values(self._output_names, feeds)
        return {name: _to_numpy(value) for name, value in zip(self._output_names, results, strict=True)}


def _to_numpy(value: Any) -> np.ndarray:
    if not is_bf16(ONNX_DATATYPES.get(value.data_type(), "")):
        return value.numpy()
    shape = tuple(value.shape())
    count = int(np.prod(shape))
    if not count:
        return np.empty(shape, dtype=np.uint16)
    return np.array((ctypes.c_uint16 * count).from_address(value.data_ptr()), dtype=np.uint16).reshape(shape)


class OnnxBackend:
    """Loads an .onnx file into `instance_count` sessions and reads tensor metadata from the model."""

    platform = "onnxruntime_onnx"
    backend_name = "onnxruntime"

    def __init__(self, path: Path, *, model: str, device: str = "auto", instance_count: int = 1,
                 intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization_level: str = "all",
                 execution_mode: str = "sequential", session_config: Sequence[tuple[str, str]] = (),
                 gpu_mem_limit_bytes: int = 0, arena_extend_strategy: str = "kNextPowerOfTwo",
                 background: bool = False) -> None:
        ort = import_onnxruntime()
        self.background = background
        if background and not intra_op_threads:
            intra_op_threads = 1  # ONNX Runtime then runs on the (lowered) calling thread, with no pool of its own
        if not path.is_file():
            raise ModelLoadError(f"model '{model}': file {path} does not exist")
        self._ort, self._path, self._model = ort, path, model
        self._providers = choose_providers(ort, device, model)
        self._provider_options = provider_options(self._providers, gpu_mem_limit_bytes, arena_extend_strategy)
        if CUDA in self._providers and gpu_mem_limit_bytes:
            log.info("model '%s': CUDA memory arena limited to %d MiB per instance (%s)", model,
                     gpu_mem_limit_bytes >> 20, arena_extend_strategy)
        self._intra_op_threads = intra_op_threads
        self._inter_op_threads = inter_op_threads
        self._graph_level = GRAPH_LEVELS[graph_optimization_level]
        self._parallel = execution_mode == "parallel"
        self._session_config = tuple(session_config)
        sessions = self._sessions(instance_count, intra_op_threads)
        self.device = check_providers(sessions[0].get_providers(), self._providers, device, model)
        self.inputs = tuple(tensor_spec(n, model) for n in sessions[0].get_inputs())
        self.outputs = tuple(tensor_spec(n, model) for n in sessions[0].get_outputs())
        tensors = self.inputs + self.outputs
        if any(is_bf16(t.datatype) for t in tensors) and any(is_bytes(t.datatype) for t in tensors):
            raise ModelLoadError(f"model '{model}': BF16 and string tensors in one model are not supported "
                                 "(ONNX Runtime's Python API feeds BF16 only as OrtValues, strings never)")
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"ort-{model}-{i}",
                                              initializer=partial(lower_priority, model) if background else None)
                           for i in range(instance_count)]
        io_bound = None
        if self.device == "cuda" and can_bind(self.inputs + self.outputs):
            pinned = pinned_memory_info(ort)
            io_bound = IoBoundRun(ort, self.outputs, pinned=pinned)
            log.info("model '%s': CUDA IO binding on, outputs into %s host memory", model,
                     "pinned" if pinned is not None else "pageable (no pinned allocator in this build)")
        self.instances = [OnnxInstance(session, executor, self.outputs, ort, io_bound)
                          for session, executor in zip(sessions, self._executors, strict=True)]

    def time_run_us(self, rows: int, *, runs: int = 20, budget_s: float = 0.25) -> float:
        """Median wall time of one run of `rows` rows of zeros on the first instance, after warm-up."""
        inputs = sample_inputs(self.inputs, rows)
        instance = self.instances[0]
        start = time.perf_counter()
        instance.run_sync(inputs)
        first_s = time.perf_counter() - start
        if first_s > budget_s / 10:  # far too slow to matter how slow: spare the load time
            return first_s * 1e6
        instance.run_sync(inputs)
        times: list[float] = []
        stop_at = time.perf_counter() + budget_s
        while len(times) < runs and (not times or time.perf_counter() < stop_at):
            start = time.perf_counter()
            instance.run_sync(inputs)
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e6

    def choose_execution(self, wanted: str, rows: int, model: str) -> str:
        """Decide, and apply, where batches of this model run: "inline" or "thread"."""
        if self.background:
            wanted = "thread"  # its own lowered thread: never the event loop's priority
        if wanted == "auto":
            if self.device == "cuda":
                wanted = "thread"  # a GPU run waits on the device with the GIL released: keep the loop free
            else:
                try:
                    run_us = self.time_run_us(rows)
                except Exception as e:  # a model that rejects zeros still serves; only the probe failed
                    log.warning("model '%s': cannot time a sample batch (%s); running batches in a thread",
                                model, e)
                    run_us = float("inf")
                wanted = "inline" if run_us <= INLINE_MAX_US else "thread"
                log.info("model '%s': a batch of %d rows runs in %.0f us; executing %s", model, rows, run_us,
                         "inline on the event loop" if wanted == "inline" else "in a thread per instance")
        inline = wanted == "inline"
        if inline and not self._intra_op_threads:
            # One thread per session: an intra-op pool's threads spin after every run and take the CPU the
            # event loop needs (measured on the cheap MLP: +20-30 % throughput at concurrency 32).
            for instance, session in zip(self.instances, self._sessions(len(self.instances), 1), strict=True):
                instance.session = session
        for instance in self.instances:
            instance.inline = inline
        return wanted

    def _sessions(self, count: int, intra_op_threads: int) -> list[Any]:
        options = self._ort.SessionOptions()
        if intra_op_threads := intra_op_threads or default_intra_op_threads():
            options.intra_op_num_threads = intra_op_threads
        if self._inter_op_threads:
            options.inter_op_num_threads = self._inter_op_threads
        options.graph_optimization_level = getattr(self._ort.GraphOptimizationLevel, self._graph_level)
        options.execution_mode = (self._ort.ExecutionMode.ORT_PARALLEL if self._parallel
                                  else self._ort.ExecutionMode.ORT_SEQUENTIAL)
        try:
            for key, value in self._session_config:
                options.add_session_config_entry(key, value)
            # From the file's path, never its bytes: ONNX Runtime finds external data files beside the model.
            return [self._ort.InferenceSession(str(self._path), options, providers=self._providers,
                                               provider_options=self._provider_options)
                    for _ in range(count)]
        except Exception as e:  # ORT raises its own exception types for bad files
            if missing := missing_external_data(self._path):
                raise ModelLoadError(
                    f"model '{self._model}': {self._path.name} keeps tensors in external data files that are not "
                    f"beside it: {', '.join(missing)} (expected in {self._path.parent}; copy the model's directory "
                    "whole)") from e
            raise ModelLoadError(f"model '{self._model}': ONNX Runtime cannot load {self._path}: {e}") from e

    def close(self) -> None:
        """Release the threads and drop the sessions (their memory is freed now, before an eviction's malloc_trim,
        not whenever the version object goes); never blocks the event loop on a run that outlived the drain (it
        holds its session until it returns)."""
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
        for instance in self.instances:
            instance.session = None
        self.instances = []


BACKGROUND_NICE = 19  # the lowest priority: under contention such a thread gets about 1/70 of a normal one's share


def lower_priority(model: str) -> None:
    """A background model's executor thread (its initializer): Linux niceness applies to this thread alone."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError) as e:  # not Linux, or not allowed
        log.warning("model '%s': cannot lower its thread's CPU priority (%s); it runs at normal priority", model, e)


def sample_inputs(specs: Sequence[TensorSpec], rows: int) -> dict[str, np.ndarray]:
    """Zeros shaped like the model's inputs: `rows` on a variable dim 0, 1 on other variable dims."""
    out = {}
    for spec in specs:
        shape = tuple(rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape))
        if is_bytes(spec.datatype):
            out[spec.name] = np.full(shape, "", dtype=object)
        else:
            out[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype].dtype)
    return out
