"""ModelVersion: one loaded version of a model, its statistics, its leases, and how it loads and unloads.

Loading is split in two: `prepare` does everything slow (hashing the file, creating ONNX Runtime sessions,
timing a batch to choose where batches run, the warmup on every instance) and runs in a worker thread, off
the event loop; `ModelVersion.start` then builds the batcher on the loop. Every request holds a lease on
the version it was routed to; `drain_and_close` waits for the leases (bounded by a grace), so a version
that is unloaded or replaced finishes what it accepted before its sessions close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_server.config.ensemble import Ensemble
from inference_server.config.model import BatchingConfig, ModelConfig, preferred_sizes_fit, rows_fit
from inference_server.errors import ModelLoadError, unavailable
from inference_server.execution.backend import OnnxBackend, TensorSpec, sample_inputs
from inference_server.execution.batching import DynamicBatcher
from inference_server.observability.stats import ModelStats
from inference_server.observability.trace_marks import Marks

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 32
_USES = itertools.count(1)  # leases in the order they are taken: a version's last one says how recently it was used
ENSEMBLE = "ensemble"  # an ensemble's platform, as Triton names it


class State(enum.Enum):
    """RepositoryIndex states, Triton's words."""
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class Prepared:
    """What a worker thread made: sessions created, batch size resolved, warmed up."""
    config: ModelConfig
    backend: OnnxBackend
    batching: BatchingConfig
    execution: str
    digest: str
    load_s: float
    warmup_s: float


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    config: ModelConfig
    batching: BatchingConfig  # resolved: max_batch_size is a number here
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: OnnxBackend | None  # None for an ensemble: its steps run on the composing models
    digest: str  # BLAKE2b of the model file (of the config, for an ensemble): part of every cache key
    stats: ModelStats = dataclasses.field(default_factory=ModelStats)
    batcher: DynamicBatcher | None = None
    state: State = State.LOADING
    leases: int = 0
    _idle: asyncio.Event | None = None
    used: int = 0  # the sequence number of its last lease (least recently used: the smallest)
    size_bytes: int = 0  # what it counts against the model memory budget (lifecycle/budget.py)
    on_idle: Callable[[], None] | None = None  # told when its last lease is given back (the budget waits for it)

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size or 0

    @property
    def platform(self) -> str:
        return ENSEMBLE if self.backend is None else self.backend.platform

    @property
    def ensemble(self) -> Ensemble | None:
        return self.config.ensemble

    @classmethod
    def start_ensemble(cls, cfg: ModelConfig, stats: ModelStats | None = None) -> ModelVersion:
        """An ensemble's version, READY: its tensors are those its config declares (with the batch dimension when
        it batches); it has no session and no batcher (the runner runs its steps)."""
        assert cfg.ensemble is not None
        batch = (-1,) if cfg.batching.max_batch_size else ()
        specs = {kind: tuple(TensorSpec(d.name, d.datatype, (*batch, *d.dims)) for d in cfg.declared if d.kind == kind)
                 for kind in ("input", "output")}
        digest = hashlib.blake2b(repr(cfg.ensemble).encode(), digest_size=16).hexdigest()
        version = cls(cfg.name, cfg.version, cfg, cfg.batching, specs["input"], specs["output"], None, digest,
                      ModelStats() if stats is None else stats, None, State.READY)
        log.info("ensemble '%s' version %s ready: %d steps (%s), max_batch_size=%d", cfg.name, cfg.version,
                 len(cfg.ensemble.steps), ", ".join(s.model_name for s in cfg.ensemble.steps),
                 cfg.batching.max_batch_size or 0)
        return version

    @classmethod
    def start(cls, prepared: Prepared, stats: ModelStats | None = None) -> ModelVersion:
        """On the event loop: the batcher over the prepared instances; the version is READY. `stats`: the
        figures of this name and version to go on counting in (the manager's, kept across loads)."""
        cfg, backend, b = prepared.config, prepared.backend, prepared.batching
        stats = ModelStats() if stats is None else stats
        batcher = DynamicBatcher(backend.instances, max_batch_size=b.max_batch_size or 0,
                                 max_queue_delay_us=b.max_queue_delay_us, preferred_batch_size=b.preferred_batch_size,
                                 max_queue_size=b.max_queue_size, name=cfg.name, inline=prepared.execution == "inline",
                                 stats=stats, policy=cfg.queue)
        batcher.start()
        version = cls(cfg.name, cfg.version, cfg, b, backend.inputs, backend.outputs, backend, prepared.digest,
                      stats, batcher, State.READY)
        log.info("model '%s' version %s ready from %s on %s in %.2fs (warmup %.2fs): max_batch_size=%d "
                 "max_queue_delay_us=%d instances=%d execution=%s", cfg.name, cfg.version, cfg.path, backend.device,
                 prepared.load_s, prepared.warmup_s, b.max_batch_size, b.max_queue_delay_us, b.instance_count,
                 prepared.execution)
        return version

    async def submit(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None,
                     request_id: str, marks: Marks | None = None, priority: int = 0,
                     timeout_us: int | None = None) -> dict[str, np.ndarray]:
        assert self.batcher is not None, "a version serves only once started"
        return await self.batcher.submit(inputs, rows, deadline, request_id, marks, priority, timeout_us)

    def acquire(self) -> None:
        """A request takes a lease on the version it was routed to (synchronously with the routing)."""
        if self.state is not State.READY:
            raise unavailable(f"model '{self.name}' version {self.version} is not ready")
        self.leases += 1
        self.used = next(_USES)

    def release(self) -> None:
        self.leases -= 1
        if not self.leases:
            if self._idle is not None:
                self._idle.set()
            if self.on_idle is not None:
                self.on_idle()

    def retire(self) -> None:
        """It left the serving set: no new lease from here on (`drain_and_close` finishes the leased ones). Its
        state is written here only, by the version itself."""
        self.state = State.UNLOADING

    async def drain_and_close(self, grace_s: float) -> None:
        """Stop taking requests, finish every leased one (up to grace_s), then close the sessions."""
        self.state = State.UNLOADING
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.leases:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("model '%s' version %s: drain grace of %.1fs expired with %d requests in flight",
                            self.name, self.version, grace_s, self.leases)
        if self.batcher is not None:  # nothing leased is left: what it still holds ends at once (a floor, as
            # a wait of 0 would give up before the batch loop has seen it is closing)
            await self.batcher.close(max(0.1, grace_s - (loop.time() - start)))
        if self.backend is not None:
            self.backend.close()
        self.state = State.UNAVAILABLE


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def can_batch(specs: tuple[TensorSpec, ...]) -> bool:
    """A model batches when dim 0 of every input and output is variable."""
    return all(spec.shape and spec.shape[0] == -1 for spec in specs)


def resolve_batching(cfg: ModelConfig, backend: OnnxBackend) -> BatchingConfig:
    batchable = can_batch(backend.inputs + backend.outputs)
    size = cfg.batching.max_batch_size
    if size is None:
        size = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    elif size > 0 and not batchable:
        raise ModelLoadError(f"model '{cfg.name}': max_batch_size is {size} but the model's first dimension "
                             "is not variable on every input and output; set max_batch_size = 0")
    if not preferred_sizes_fit(cfg.batching.preferred_batch_size, size):
        raise ModelLoadError(f"model '{cfg.name}': preferred_batch_size {list(cfg.batching.preferred_batch_size)} "
                             f"exceeds max_batch_size {size}")
    return dataclasses.replace(cfg.batching, max_batch_size=size)


def check_declared(cfg: ModelConfig, backend: OnnxBackend, max_batch_size: int) -> None:
    """Inputs and outputs a config.pbtxt lists must be the model's own (name, datatype, dims)."""
    for decl in cfg.declared:
        specs = {s.name: s for s in (backend.inputs if decl.kind == "input" else backend.outputs)}
        spec = specs.get(decl.name)
        if spec is None:
            raise ModelLoadError(f"model '{cfg.name}': the config declares {decl.kind} '{decl.name}' but the model "
                                 f"has none by that name (its {decl.kind}s: {', '.join(specs)})")
        shape = spec.shape[1:] if max_batch_size > 0 else spec.shape
        dims_match = len(shape) == len(decl.dims) and all(
            d == -1 or s == -1 or d == s for d, s in zip(decl.dims, shape, strict=True))
        if decl.datatype != spec.datatype or not dims_match:
            raise ModelLoadError(f"model '{cfg.name}': the config declares {decl.kind} '{decl.name}' as "
                                 f"{decl.datatype} {list(decl.dims)}, the model has {spec.datatype} {list(shape)}")


def warmup_inputs(specs: tuple[TensorSpec, ...], rows: int, data: str, rng: np.random.Generator) -> dict:
    inputs = sample_inputs(specs, rows)
    if data != "random":
        return inputs
    for name, array in inputs.items():
        dtype = array.dtype
        if dtype.kind == "O":
            inputs[name] = rng.integers(0, 10, array.shape).astype(str).astype(object)
        elif dtype.kind == "b":
            inputs[name] = rng.integers(0, 2, array.shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            inputs[name] = rng.integers(0, 8, array.shape).astype(dtype)
        else:
            inputs[name] = rng.random(array.shape).astype(dtype)
    return inputs


def warm_up(cfg: ModelConfig, backend: OnnxBackend, max_batch_size: int,
            stop: threading.Event | None = None) -> None:
    """Run the warmup batches on every instance (in the loading thread); a failure fails the load. `stop`
    (the server is shutting down) ends it between two runs."""
    w = cfg.warmup
    sizes = w.batch_sizes if w.batch_sizes is not None else tuple(sorted({1, max(max_batch_size, 1)}))
    if max_batch_size == 0:
        sizes = sizes[:1]  # no batch dimension: one shape only
    rng = np.random.default_rng(0)
    for rows in sizes:
        if not rows_fit(rows, max_batch_size):
            raise ModelLoadError(f"model '{cfg.name}': warmup batch size {rows} exceeds max_batch_size "
                                 f"{max_batch_size}")
        inputs = warmup_inputs(backend.inputs, rows, w.data, rng)
        for index, instance in enumerate(backend.instances):
            for _ in range(w.count):
                if stop is not None and stop.is_set():
                    raise ModelLoadError(f"model '{cfg.name}' version {cfg.version}: warmup stopped (shutting down)")
                try:
                    instance.run_sync(inputs)
                except Exception as e:  # ORT raises its own types for a run that fails
                    raise ModelLoadError(f"model '{cfg.name}' version {cfg.version}: warmup failed on instance "
                                         f"{index} with a batch of {rows} ({w.data}): {e}") from e


def prepare(cfg: ModelConfig, stop: threading.Event | None = None) -> Prepared:
    """Everything slow about loading a version; runs in a worker thread. Raises ModelLoadError."""
    if cfg.path is None:
        raise ModelLoadError(f"model '{cfg.name}': no model file")
    start = time.perf_counter()
    if not cfg.path.is_file():
        raise ModelLoadError(f"model '{cfg.name}' version {cfg.version}: file {cfg.path} does not exist")
    digest = file_digest(cfg.path)
    b = cfg.batching
    backend = OnnxBackend(cfg.path, model=cfg.name, device=cfg.device, instance_count=b.instance_count,
                          intra_op_threads=cfg.intra_op_threads, inter_op_threads=cfg.inter_op_threads,
                          graph_optimization_level=cfg.graph_optimization_level, execution_mode=cfg.execution_mode,
                          session_config=cfg.session_config, gpu_mem_limit_bytes=cfg.gpu_mem_limit_bytes,
                          arena_extend_strategy=cfg.arena_extend_strategy,
                          background=cfg.cpu_priority == "background")
    try:
        batching = resolve_batching(cfg, backend)
        size = batching.max_batch_size or 0
        check_declared(cfg, backend, size)
        execution = backend.choose_execution(cfg.execution, size or 1, cfg.name)
        warm_start = time.perf_counter()
        warm_up(cfg, backend, size, stop)
        warmup_s = time.perf_counter() - warm_start
    except BaseException:
        backend.close()
        raise
    return Prepared(cfg, backend, batching, execution, digest, time.perf_counter() - start, warmup_s)

