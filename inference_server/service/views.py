"""Protocol-neutral views of a served model: what ModelMetadata, ModelConfig and ModelStatistics answer.

The service builds them from the version it serves; each front end (gRPC today) renders them in its own
wire format and never reaches past the service into versions, backends or batchers.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference_server.config.model import BatchingConfig, VersionPolicy
from inference_server.execution.backend import TensorSpec
from inference_server.lifecycle.registry import IndexEntry
from inference_server.lifecycle.version import ModelVersion
from inference_server.observability.stats import ModelStats
from inference_server.routing.views import CanaryView, RouteView, VariantView

__all__ = ["CanaryView", "IndexEntry", "ModelConfigView", "ModelMetadataView", "RouteView", "StatisticsView",
           "TensorView", "VariantView"]  # IndexEntry: RepositoryIndex's rows, a view the registry builds itself;
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
class ModelConfigView:
    name: str
    platform: str
    backend: str
    max_batch_size: int  # 0: the model does not batch
    version_policy: VersionPolicy
    inputs: tuple[TensorView, ...]  # dims without the batch dimension when max_batch_size > 0
    outputs: tuple[TensorView, ...]
    instance_count: int
    gpu: bool  # instances run on CUDA
    default_model_filename: str
    dynamic_batching: BatchingConfig | None  # None when the model does not batch
    response_cache: bool


@dataclass(frozen=True, slots=True)
class StatisticsView:
    name: str
    version: str
    stats: ModelStats  # read, never written, by a front end


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

    path = model.config.path
    return ModelConfigView(
        name=model.name, platform=model.platform, backend=model.backend.backend_name,
        max_batch_size=model.max_batch_size, version_policy=model.config.version_policy,
        inputs=tuple(tensor(s) for s in model.inputs), outputs=tuple(tensor(s) for s in model.outputs),
        instance_count=model.batching.instance_count, gpu=model.backend.device == "cuda",
        default_model_filename=path.name if path is not None else model.config.filename,
        dynamic_batching=model.batching if batching else None, response_cache=cached)


def statistics_view(model: ModelVersion) -> StatisticsView:
    return StatisticsView(model.name, model.version, model.stats)
