"""Protobuf <-> core: ModelInferRequest -> InferRequest, InferResponse -> ModelInferResponse, metadata."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from inference_server.errors import invalid
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol import rules
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
from inference_server.service.views import (
    DurationView,
    IndexEntry,
    ModelConfigView,
    ModelMetadataView,
    StatisticsView,
    TensorView,
)

TYPED_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


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
        if t.parameters:
            rules.check_input_parameters(t.name, t.parameters)
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
        rules.check_output_parameters(o.name, o.parameters)
        outputs.append(o.name)
    params = {key: param_value(value) for key, value in request.parameters.items()} if request.parameters else {}
    rules.check_sequence_id(request.model_name, params)
    return InferRequest(model_name=request.model_name, model_version=request.model_version, id=request.id,
                        inputs=tensors, requested_outputs=tuple(outputs) or None, timeout_us=rules.timeout_us(params),
                        priority=rules.priority(params), parameters=params)


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
        version_policy=mc.ModelVersionPolicy(**rules.version_policy(view.version_policy)),
        input=[mc.ModelInput(name=t.name, data_type=DATATYPES[t.datatype].config_name, dims=t.shape)
               for t in view.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=DATATYPES[t.datatype].config_name, dims=t.shape)
                for t in view.outputs],
    )
    if view.ensemble_steps is None:
        config.instance_group.append(mc.ModelInstanceGroup(**rules.instance_group(view.name, view.instance_count,
                                                                                  view.gpu)))
        config.default_model_filename = view.default_model_filename
    else:
        config.ensemble_scheduling.CopyFrom(mc.ModelEnsembling(step=[mc.ModelEnsembling.Step(
            model_name=s.model_name, model_version=s.model_version, input_map=dict(s.input_map),
            output_map=dict(s.output_map)) for s in view.ensemble_steps]))
    b = view.dynamic_batching
    if b is not None:
        json_format.ParseDict(rules.dynamic_batching(b), config.dynamic_batching)
    if view.response_cache:
        config.response_cache.enable = True
    return pb.ModelConfigResponse(config=config)


def repository_index(entries: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in entries])


def _file(key: str, value: pb.ModelRepositoryParameter) -> bytes:
    if value.WhichOneof("parameter_choice") != "bytes_param":
        raise invalid(f"parameter '{key}' must carry the file's content as bytes")
    return value.bytes_param


def _choice(value: pb.ModelRepositoryParameter, *choices: str) -> Any:
    """The value when it is one of `choices`, else None."""
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice in choices else None


# Repository parameters are ModelRepositoryParameters: a string_param, a bool_param, bytes_param files, int64 versions.
PARAMETERS = rules.ParameterWire(
    text=lambda value: _choice(value, "string_param"),
    flag=lambda value: _choice(value, "bool_param"),
    file=_file,
    version=lambda value: _choice(value, "int64_param", "string_param"),
    version_types="int64 or string", bool_type="bool")


def repository_parameters(parameters: Any) -> tuple[str | None, dict[str, bytes], str | None]:
    """RepositoryModelLoad's parameters -> (config as its JSON text, files, version)."""
    return rules.load_parameters(parameters.items(), PARAMETERS)


def unload_parameters(parameters: Any) -> tuple[str | None, bool]:
    """RepositoryModelUnload's parameters -> (version, unload_dependents): `version` unloads one version only;
    `unload_dependents` also unloads an ensemble's composing models that its load brought in."""
    return rules.unload_parameters(parameters.items(), PARAMETERS)


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
