"""ModelRegistry: name -> versions -> a loaded model (backend + batcher + metadata).

Models can be added and removed while the server runs; the version a request gets is resolved here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from .backend import OnnxBackend, TensorSpec
from .batching import DynamicBatcher
from .config import BatchingConfig, ModelConfig
from .errors import ErrorCode, InferenceError, ModelLoadError, unavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 32


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: str
    config: ModelConfig
    batching: BatchingConfig  # resolved: max_batch_size is a number here
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: OnnxBackend
    batcher: DynamicBatcher
    ready: bool = True

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size or 0

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


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
    if any(p > size for p in cfg.batching.preferred_batch_size):
        raise ModelLoadError(f"model '{cfg.name}': preferred_batch_size {list(cfg.batching.preferred_batch_size)} "
                             f"exceeds max_batch_size {size}")
    return dataclasses.replace(cfg.batching, max_batch_size=size)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Create sessions and a started batcher (needs a running event loop)."""
    b = cfg.batching
    backend = OnnxBackend(cfg.path, model=cfg.name, device=cfg.device, instance_count=b.instance_count,
                          intra_op_threads=cfg.intra_op_threads)
    try:
        batching = resolve_batching(cfg, backend)
    except ModelLoadError:
        backend.close()
        raise
    execution = backend.choose_execution(cfg.execution, batching.max_batch_size or 1, cfg.name)
    batcher = DynamicBatcher(backend.instances, max_batch_size=batching.max_batch_size or 0,
                             max_queue_delay_us=batching.max_queue_delay_us,
                             preferred_batch_size=batching.preferred_batch_size,
                             max_queue_size=batching.max_queue_size, name=cfg.name,
                             inline=execution == "inline")
    batcher.start()
    log.info("model '%s' version %s loaded from %s on %s: max_batch_size=%d max_queue_delay_us=%d instances=%d "
             "execution=%s", cfg.name, cfg.version, cfg.path, backend.device, batching.max_batch_size,
             batching.max_queue_delay_us, batching.instance_count, execution)
    return LoadedModel(cfg.name, cfg.version, cfg, batching, backend.inputs, backend.outputs, backend, batcher)


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, LoadedModel]] = {}

    def add(self, model: LoadedModel) -> None:
        self._models.setdefault(model.name, {})[model.version] = model

    def models(self) -> list[LoadedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=_version_key)

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The model version a request names, or the latest one; NOT_FOUND / UNAVAILABLE otherwise."""
        model = self.find(name, version)
        if not model.ready:
            raise unavailable(f"model '{name}' version {model.version} is not ready")
        return model

    def find(self, name: str, version: str = "") -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            raise InferenceError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")
        if not version:
            return versions[max(versions, key=_version_key)]
        try:
            return versions[version]
        except KeyError:
            raise InferenceError(ErrorCode.NOT_FOUND,
                                 f"Request for unknown model: '{name}' version {version} is not found") from None

    def all_ready(self) -> bool:
        return bool(self._models) and all(m.ready for m in self.models())

    async def close(self, grace_s: float | None = None) -> None:
        """Drain every batcher (in parallel), then release the sessions."""
        models = self.models()
        for model in models:
            model.ready = False
        await asyncio.gather(*(m.batcher.close(grace_s) for m in models))
        for model in models:
            model.backend.close()


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
