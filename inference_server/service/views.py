"""Protocol-neutral views of a served model: what ModelMetadata, ModelConfig and ModelStatistics answer.

Plain frozen data, copied out of the core when a request asks (docs/architecture.md, "Views"): the service
builds them from the version it serves; each front end renders them in its own wire format and never holds a
live object of the core (a version, its statistics, its configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference_server.config.model import QueuePolicy
from inference_server.execution.backend import TensorSpec
from inference_server.lifecycle.registry import IndexEntry
from inference_server.lifecycle.version import ModelVersion
from inference_server.observability.stats import BatchStats, Duration, ModelStats
from inference_server.routing.views import CanaryView, RouteView, VariantView

__all__ = ["BatchStatisticsView", "CanaryView", "DurationView", "IndexEntry", "ModelConfigView", "ModelMetadataView",
           "PolicyView", "BatchingView", "RouteView", "StatisticsSnapshot", "StatisticsView", "StepView", "TensorView",
           "VariantView"]  # IndexEntry: RepositoryIndex's rows, a view the registry builds itself;
# the route views: what the router builds of each route


@dataclass(frozen=True, slots=True)
class TensorView:
    name: str
    datatype: str  # v2 name: FP32, BYTES, ...
    shape: tuple[int, ...]  # metadata: the full shape, -1 first when the model batches; config: without it


@dataclass(frozen=True, slots=True)
class ModelMetadataView:
    name: str
    versions: tuple[str, ...]  # every serving version, oldest first
    platform: str
    inputs: tuple[TensorView, ...]
    outputs: tuple[TensorView, ...]


@dataclass(frozen=True, slots=True)
class PolicyView:
    """Which versions serve (Triton's version_policy)."""
    kind: str  # latest | all | specific
    latest: int  # with kind "latest": how many of the newest versions
    specific: tuple[str, ...]  # with kind "specific"


@dataclass(frozen=True, slots=True)
class QueuePolicyView:
    """A priority level's queue policy (Triton's ModelQueuePolicy)."""
    timeout_action: str  # REJECT | DELAY
    default_timeout_us: int
    allow_timeout_override: bool
    max_queue_size: int  # 0: unbounded


@dataclass(frozen=True, slots=True)
class BatchingView:
    """The dynamic batcher's settings (Triton's dynamic_batching)."""
    preferred_batch_size: tuple[int, ...]
    max_queue_delay_us: int
    max_queue_size: int  # 0: unbounded
    default_queue_policy: QueuePolicyView | None = None  # its timeout settings, when it has any
    priority_levels: int = 0
    default_priority_level: int = 0
    priority_queue_policy: tuple[tuple[int, QueuePolicyView], ...] = ()


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of an ensemble (Triton's ModelEnsembling.Step): maps are (composing model tensor, ensemble tensor)."""
    model_name: str
    model_version: int  # -1: the version the model serves
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ModelConfigView:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # 0: the model does not batch
    version_policy: PolicyView
    inputs: tuple[TensorView, ...]  # dims without the batch dimension when max_batch_size > 0
    outputs: tuple[TensorView, ...]
    instance_count: int
    gpu: bool  # instances run on CUDA
    default_model_filename: str
    dynamic_batching: BatchingView | None  # None when the model does not batch
    response_cache: bool
    ensemble_steps: tuple[StepView, ...] | None = None  # an ensemble's steps (it has no instances nor model file)


@dataclass(frozen=True, slots=True)
class DurationView:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""
    count: int = 0
    ns: int = 0

    def __add__(self, other: DurationView) -> DurationView:
        return DurationView(self.count + other.count, self.ns + other.ns)


@dataclass(frozen=True, slots=True)
class BatchStatisticsView:
    """Executions of one batch size (Triton's InferBatchStatistics)."""
    compute_input: DurationView = DurationView()
    compute_infer: DurationView = DurationView()
    compute_output: DurationView = DurationView()


# ModelStatistics' durations (Triton's InferStatistics; InferBatchStatistics per batch size).
INFER_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                   "cache_miss")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True, slots=True)
class StatisticsSnapshot:
    """A model version's ModelStatistics figures at one moment (counts are requests, compute is per batch)."""
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    last_inference_ms: int = 0  # wall clock, as Triton reports it
    success: DurationView = DurationView()
    fail: DurationView = DurationView()
    queue: DurationView = DurationView()
    compute_input: DurationView = DurationView()
    compute_infer: DurationView = DurationView()
    compute_output: DurationView = DurationView()
    cache_hit: DurationView = DurationView()
    cache_miss: DurationView = DurationView()
    batches: tuple[tuple[int, BatchStatisticsView], ...] = ()  # (batch size, its executions), by size

    def __add__(self, other: StatisticsSnapshot) -> StatisticsSnapshot:
        """Two workers' figures of one model version, summed (the latest inference wins)."""
        batches = dict(self.batches)
        for size, b in other.batches:
            mine = batches.get(size, BatchStatisticsView())
            batches[size] = BatchStatisticsView(*(getattr(mine, k) + getattr(b, k) for k in BATCH_DURATIONS))
        return StatisticsSnapshot(
            self.inference_count + other.inference_count, self.execution_count + other.execution_count,
            max(self.last_inference_ms, other.last_inference_ms), batches=tuple(sorted(batches.items())),
            **{k: getattr(self, k) + getattr(other, k) for k in INFER_DURATIONS})

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, for another worker of the pod to add to its own (`from_json`)."""
        return {"inference_count": self.inference_count, "execution_count": self.execution_count,
                "last_inference_ms": self.last_inference_ms,
                **{k: [getattr(self, k).count, getattr(self, k).ns] for k in INFER_DURATIONS},
                "batches": {str(size): {k: [getattr(b, k).count, getattr(b, k).ns] for k in BATCH_DURATIONS}
                            for size, b in self.batches}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StatisticsSnapshot:
        batches = ((int(size), BatchStatisticsView(*(DurationView(*d[k]) for k in BATCH_DURATIONS)))
                   for size, d in doc["batches"].items())
        return cls(doc["inference_count"], doc["execution_count"], doc["last_inference_ms"],
                   batches=tuple(sorted(batches)), **{k: DurationView(*doc[k]) for k in INFER_DURATIONS})


@dataclass(frozen=True, slots=True)
class StatisticsView:
    name: str
    version: str
    stats: StatisticsSnapshot


def metadata_view(model: ModelVersion, versions: list[str]) -> ModelMetadataView:
    batching = model.max_batch_size > 0

    def tensor(spec: TensorSpec) -> TensorView:
        return TensorView(spec.name, spec.datatype, (-1, *spec.shape[1:]) if batching else spec.shape)

    return ModelMetadataView(model.name, tuple(versions), model.platform, tuple(tensor(s) for s in model.inputs),
                             tuple(tensor(s) for s in model.outputs))


def config_view(model: ModelVersion, cached: bool) -> ModelConfigView:
    batching = model.max_batch_size > 0

    def tensor(spec: TensorSpec) -> TensorView:
        return TensorView(spec.name, spec.datatype, spec.shape[1:] if batching else spec.shape)

    path, policy = model.config.path, model.config.version_policy
    if model.backend is None:  # an ensemble
        steps = model.ensemble.steps if model.ensemble is not None else ()
        return ModelConfigView(
            name=model.name, platform=model.platform, backend="", max_batch_size=model.max_batch_size,
            version_policy=PolicyView(policy.kind, policy.latest, policy.specific),
            inputs=tuple(tensor(s) for s in model.inputs), outputs=tuple(tensor(s) for s in model.outputs),
            instance_count=0, gpu=False, default_model_filename="", dynamic_batching=None, response_cache=cached,
            ensemble_steps=tuple(StepView(s.model_name, int(s.model_version or -1), s.input_map, s.output_map)
                                 for s in sorted(steps, key=lambda s: s.index)))
    return ModelConfigView(
        name=model.name, platform=model.platform, backend=model.backend.backend_name,
        max_batch_size=model.max_batch_size, version_policy=PolicyView(policy.kind, policy.latest, policy.specific),
        inputs=tuple(tensor(s) for s in model.inputs), outputs=tuple(tensor(s) for s in model.outputs),
        instance_count=model.batching.instance_count, gpu=model.backend.device == "cuda",
        default_model_filename=path.name if path is not None else model.config.filename,
        dynamic_batching=_batching_view(model) if batching else None, response_cache=cached)


def _batching_view(model: ModelVersion) -> BatchingView:
    b, q = model.batching, model.config.queue

    def policy(p: QueuePolicy) -> QueuePolicyView:
        return QueuePolicyView(p.timeout_action, p.default_timeout_us, p.allow_timeout_override, p.max_queue_size)

    default = q.default_policy(b.max_queue_size)
    return BatchingView(b.preferred_batch_size, b.max_queue_delay_us, b.max_queue_size,
                        policy(default) if default.sets_timeouts else None, q.priority_levels,
                        q.default_priority_level, tuple((level, policy(p)) for level, p in q.priority_queue_policy))


def _duration(d: Duration) -> DurationView:
    return DurationView(d.count, d.ns)


def _batch(b: BatchStats) -> BatchStatisticsView:
    return BatchStatisticsView(_duration(b.compute_input), _duration(b.compute_infer), _duration(b.compute_output))


def snapshot(s: ModelStats) -> StatisticsSnapshot:
    return StatisticsSnapshot(s.inference_count, s.execution_count, s.last_inference_ms,
                              batches=tuple(sorted((size, _batch(b)) for size, b in list(s.batches.items()))),
                              **{k: _duration(getattr(s, k)) for k in INFER_DURATIONS})


def statistics_view(model: ModelVersion) -> StatisticsView:
    return StatisticsView(model.name, model.version, snapshot(model.stats))


def with_peers(views: list[StatisticsView], peers: list[list[dict]]) -> list[StatisticsView]:
    """The views a request named, each with the same model version's figures from the peers added. A version
    only a peer serves (a reload half done across workers) is not added: this worker's registry decides."""
    figures: dict[tuple[str, str], list[dict]] = {}
    for answer in peers:
        for entry in answer:
            figures.setdefault((entry["name"], entry["version"]), []).append(entry["stats"])
    merged_views = []
    for view in views:
        others = figures.get((view.name, view.version))
        if not others:  # no peer answered for it: this worker's own figures, as they are
            merged_views.append(view)
            continue
        merged = view.stats
        for stats in others:
            merged += StatisticsSnapshot.from_json(stats)
        merged_views.append(StatisticsView(view.name, view.version, merged))
    return merged_views


def own_figures(views: list[StatisticsView]) -> list[dict]:
    """This worker's answer to a peer's `statistics`."""
    return [{"name": v.name, "version": v.version, "stats": v.stats.to_json()} for v in views]
