"""Protobuf <-> core: ModelInferRequest -> InferRequest, InferResponse -> ModelInferResponse, metadata."""

from __future__ import annotations

from typing import Any

from inference_server.config.model import version_number
from inference_server.errors import ErrorCode, InferenceError, invalid
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol._generated import model_config_pb2 as mc
from inference_server.protocol.tensors import (
    DATATYPES,
    RAW_ONLY,
    InferRequest,
    InferResponse,
    Tensor,
    TensorLimits,
    add_request_elements,
    decode_raw,
    decode_values,
    element_count,
    encode_raw,
)
from inference_server.service.views import (DurationView, IndexEntry, ModelConfigView, ModelMetadataView, PolicyView,
                                            StatisticsView, TensorView)

TYPED_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
SHARED_MEMORY_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def _unsupported(message: str) -> InferenceError:
    return InferenceError(ErrorCode.UNIMPLEMENTED, message)


def param_value(p: pb.InferParameter) -> Any:
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def decode_request(request: pb.ModelInferRequest, limits: TensorLimits | None = None) -> InferRequest:
    """The core's request; with `limits` ([server.limits]) each input is checked against them before it is decoded."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"{len(raw)} raw_input_contents given for {len(request.inputs)} inputs; "
                      "every input needs one when raw contents are used")
    tensors = []
    elements = 0
    for i, t in enumerate(request.inputs):
        if t.parameters and any(k in t.parameters for k in SHARED_MEMORY_PARAMS):
            raise _unsupported(f"input '{t.name}': shared memory is not supported by this server")
        shape = tuple(t.shape)
        if limits is not None:
            elements = add_request_elements(elements, element_count(shape, t.name, limits), t.name, limits)
        if raw:
            if t.HasField("contents"):
                raise invalid(f"input '{t.name}': contents field must not be specified when using "
                              "raw_input_contents")
            data = decode_raw(t.name, t.datatype, shape, raw[i], limits)
        else:
            field = TYPED_FIELD.get(t.datatype)
            if field is None:
                if t.datatype in RAW_ONLY:
                    raise invalid(f"input '{t.name}': {t.datatype} data must be sent in raw_input_contents")
                raise invalid(f"input '{t.name}': unknown datatype '{t.datatype}'")
            data = decode_values(t.name, t.datatype, shape, getattr(t.contents, field), limits)
        tensors.append(Tensor(t.name, t.datatype, shape, data))
    outputs = []
    for o in request.outputs:
        if "classification" in o.parameters:
            raise _unsupported(f"output '{o.name}': the classification extension is not supported")
        if any(k in o.parameters for k in SHARED_MEMORY_PARAMS):
            raise _unsupported(f"output '{o.name}': shared memory is not supported by this server")
        outputs.append(o.name)
    params = {key: param_value(value) for key, value in request.parameters.items()} if request.parameters else {}
    sequence_id = params.get("sequence_id")
    if sequence_id not in (None, 0, ""):
        raise invalid(f"inference request to model '{request.model_name}' must not specify a non-zero or "
                      "non-empty correlation ID (the model has no sequence batcher)")
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise invalid(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
    return InferRequest(model_name=request.model_name, model_version=request.model_version, id=request.id,
                        inputs=tensors, requested_outputs=tuple(outputs) or None, timeout_us=timeout or None,
                        parameters=params)


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """One InferOutputTensor and one raw_output_contents entry per output, in order (tritonclient reads both)."""
    out = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                id=response.id)
    for key, value in response.parameters.items():
        if isinstance(value, bool):
            out.parameters[key].bool_param = value
        else:
            out.parameters[key].string_param = value
    for tensor in response.outputs:
        out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        out.raw_output_contents.append(encode_raw(tensor.data, tensor.datatype))
    return out


def _tensor_metadata(t: TensorView) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)


def model_metadata(view: ModelMetadataView) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(name=view.name, versions=view.versions, platform=view.platform,
                                    inputs=[_tensor_metadata(t) for t in view.inputs],
                                    outputs=[_tensor_metadata(t) for t in view.outputs])


def model_config(view: ModelConfigView) -> pb.ModelConfigResponse:
    config = mc.ModelConfig(
        name=view.name,
        platform=view.platform,
        backend=view.backend,
        max_batch_size=view.max_batch_size,
        version_policy=_version_policy(view.version_policy),
        input=[mc.ModelInput(name=t.name, data_type=DATATYPES[t.datatype].config_name, dims=t.shape)
               for t in view.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=DATATYPES[t.datatype].config_name, dims=t.shape)
                for t in view.outputs],
        instance_group=[mc.ModelInstanceGroup(
            name=f"{view.name}_0", count=view.instance_count,
            kind=mc.ModelInstanceGroup.KIND_GPU if view.gpu else mc.ModelInstanceGroup.KIND_CPU)],
        default_model_filename=view.default_model_filename,
    )
    b = view.dynamic_batching
    if b is not None:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=list(b.preferred_batch_size),
            max_queue_delay_microseconds=b.max_queue_delay_us,
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=b.max_queue_size)))
    if view.response_cache:
        config.response_cache.enable = True
    return pb.ModelConfigResponse(config=config)


def _version_policy(policy: PolicyView) -> mc.ModelVersionPolicy:
    if policy.kind == "all":
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    if policy.kind == "specific":
        versions = [int(v) for v in policy.specific]
        return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=versions))
    return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest))


def repository_index(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in entries])


def repository_parameters(parameters: Any) -> tuple[str | None, dict[str, bytes], str | None]:
    """RepositoryModelLoad's parameters -> (config as its JSON text, files, version)."""
    config = None
    files: dict[str, bytes] = {}
    version = None
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if key == "config":
            if choice != "string_param":
                raise invalid("parameter 'config' must be a string holding the model configuration as JSON")
            config = value.string_param
        elif key.startswith("file:"):
            if choice != "bytes_param":
                raise invalid(f"parameter '{key}' must carry the file's content as bytes")
            files[key.removeprefix("file:")] = value.bytes_param
        elif key == "version":
            version = _version_param(value, choice)
        elif key != "unload_dependents":
            raise invalid(f"unknown parameter '{key}' (known: config, file:<version>/<name>, version)")
    return config, files, version


def unload_version(parameters: Any) -> str | None:
    """RepositoryModelUnload's parameters: `unload_dependents` is accepted (no model here has dependents);
    `version` unloads one version only."""
    version = None
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if key == "version":
            version = _version_param(value, choice)
        elif key == "unload_dependents":
            if choice != "bool_param":
                raise invalid("parameter 'unload_dependents' must be a bool")
        else:
            raise invalid(f"unknown parameter '{key}' (known: unload_dependents, version)")
    return version


def _version_param(value: Any, choice: str | None) -> str:
    raw = getattr(value, choice) if choice in ("int64_param", "string_param") else None
    version = version_number(raw)
    if version is None:
        raise invalid(f"parameter 'version' must be a positive version number (int64 or string), got {raw!r}")
    return version


def _duration(d: DurationView) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(views: list[StatisticsView]) -> pb.ModelStatisticsResponse:
    """Triton's ModelStatistics, as perf_analyzer reads it: counts per request, compute per batch size."""
    out = pb.ModelStatisticsResponse()
    for model in views:
        s = model.stats
        entry = out.model_stats.add(name=model.name, version=model.version, last_inference=s.last_inference_ms,
                                    inference_count=s.inference_count, execution_count=s.execution_count)
        entry.inference_stats.CopyFrom(pb.InferStatistics(
            success=_duration(s.success), fail=_duration(s.fail), queue=_duration(s.queue),
            compute_input=_duration(s.compute_input), compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output), cache_hit=_duration(s.cache_hit),
            cache_miss=_duration(s.cache_miss)))
        for size, b in s.batches:
            entry.batch_stats.add(batch_size=size, compute_input=_duration(b.compute_input),
                                  compute_infer=_duration(b.compute_infer), compute_output=_duration(b.compute_output))
    return out
