"""KServe v2 REST JSON (plus Triton's binary tensor extension) <-> core, and the REST shapes of metadata, config,
statistics and the repository extension. Pure functions from bytes to core objects and back; no web framework.

Binary tensors use the gRPC raw layouts (tensors.decode_raw / encode_raw). JSON tensor data is converted with one
numpy call, then checked by kind and range: a fractional number never truncates into an integer input (integral
ones such as 2.0 are taken), an integer never wraps, and a number past FP16/FP32's range is refused, not made inf.
With the server's limits, a tensor's size is checked from its shape, and JSON data's from its nesting, before any
array or list is built.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inference_server.errors import ErrorCode, invalid
from inference_server.protocol import rules
from inference_server.protocol.tensors import (
    DATATYPES,
    DataType,
    InferRequest,
    InferResponse,
    Tensor,
    TensorLimits,
    add_request_elements,
    aligned,
    check_tensor_bytes,
    datatype,
    decode_raw,
    decode_values,
    element_count,
    encode_raw,
    is_bf16,
    is_bytes,
)
from inference_server.service.views import (BATCH_DURATIONS, INFER_DURATIONS, DurationView, IndexEntry, ModelConfigView,
                                            ModelMetadataView, StatisticsView, TensorView)

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400, ErrorCode.NOT_FOUND: 404, ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504, ErrorCode.CANCELLED: 499, ErrorCode.INTERNAL: 500,
    ErrorCode.UNIMPLEMENTED: 501, ErrorCode.ALREADY_EXISTS: 409, ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.RESOURCE_EXHAUSTED: 503,  # the server's in-flight cap: try again shortly (Retry-After)
}
HEADER_LENGTH = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_MAX_NESTING = 64  # numpy's own limit on dimensions


@dataclass(frozen=True, slots=True)
class OutputFormat:
    default_binary: bool  # parameters.binary_data_output: outputs not named in the request
    binary: dict[str, bool]  # per requested output: its parameters.binary_data, else default_binary


def _loads(data: bytes | memoryview | str, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise invalid(f"{what} is not valid JSON: {e}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a JSON object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- infer requests ------------------------------------------------------------------------------------------------

def decode_infer_request(body: bytes, header_length: int | None, model: str, version: str,
                         limits: TensorLimits | None = None) -> tuple[InferRequest, OutputFormat]:
    """A v2 infer body: all JSON (header_length None), or a JSON header of header_length bytes followed by the
    binary tensors of the inputs that carry parameters.binary_data_size, in input order. With `limits`, each input
    is checked against them before it is decoded."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[:0]
    elif header_length <= 0 or header_length > len(body):
        raise invalid(f"{HEADER_LENGTH} {header_length} must lie within the {len(body)}-byte body "
                      "(a request without a JSON header is not supported)")
    else:
        header, binary = view[:header_length], view[header_length:]
    doc = _object(_loads(header, "request body"), "the request body")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise invalid("'inputs' must be an array of input tensors")
    tensors, offset, elements = [], 0, 0
    for i, item in enumerate(inputs):
        name, dt, shape, params = _input_header(item, i)
        if ("data" in item) == ("binary_data_size" in params):
            raise invalid(f"input '{name}': give exactly one of 'data' and parameters.binary_data_size")
        if limits is not None:
            elements = add_request_elements(elements, element_count(shape, name, limits), name, limits)
        if "data" in item:
            data = _json_input(name, dt, shape, item["data"], limits)
        else:
            size = params["binary_data_size"]
            if not _is_int(size) or size < 0:
                raise invalid(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(binary):
                hint = f" (binary tensors need the {HEADER_LENGTH} header)" if header_length is None else ""
                raise invalid(f"input '{name}': binary_data_size {size} runs past the end of the body, which has "
                              f"{len(binary) - offset} bytes left{hint}")
            chunk = binary[offset:offset + size]
            offset += size
            data = decode_raw(name, dt.name, shape, chunk, limits)  # BYTES: copied once their size is checked
        tensors.append(Tensor(name, dt.name, shape, data))
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} unexpected bytes follow the binary tensors "
                      f"(their binary_data_size add up to {offset} of the {len(binary)} bytes after the JSON)")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    params, timeout, default_binary = _request_parameters(doc.get("parameters", {}), model)
    requested, binary_flags = _requested_outputs(doc.get("outputs", []), default_binary)
    request = InferRequest(model_name=model, model_version=version, id=request_id, inputs=tensors,
                           requested_outputs=requested, timeout_us=timeout, priority=rules.priority(params),
                           parameters=params)
    return request, OutputFormat(default_binary, binary_flags)


def _input_header(item: Any, i: int) -> tuple[str, DataType, tuple[int, ...], dict[str, Any]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise invalid(f"inputs[{i}] must be an object with a string 'name'")
    name = item["name"]
    if not isinstance(item.get("datatype"), str):
        raise invalid(f"input '{name}': 'datatype' must be a string")
    dt = datatype(item["datatype"], name)
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise invalid(f"input '{name}': 'shape' must be an array of integers")
    params = _object(item.get("parameters", {}), f"input '{name}': 'parameters'")
    rules.check_input_parameters(name, params)
    return name, dt, tuple(shape), params


def _json_input(name: str, dt: DataType, shape: tuple[int, ...], data: Any,
                limits: TensorLimits | None = None) -> np.ndarray:
    count = element_count(shape, name, limits)
    check_tensor_bytes(name, dt, count, limits)
    given = _nested_elements(data)
    if given > count:  # before converting: more than the shape allows is never built
        raise invalid(f"input '{name}': {given} elements given but shape {list(shape)} needs {count}")
    array = _json_tensor(name, dt, data, limits)
    if array.size != count:
        raise invalid(f"input '{name}': {array.size} elements given but shape {list(shape)} needs {count}")
    return aligned(array.reshape(shape))


def _nested_elements(data: Any) -> int:
    """The elements of nested JSON lists as their first elements' nesting gives them, without converting anything
    (data that is not regular is refused when it is converted; data that is not a list counts 0, refused later)."""
    if not isinstance(data, list):
        return 0
    count, depth = 1, 0
    node: Any = data
    while isinstance(node, list) and depth <= _MAX_NESTING:
        count *= len(node)
        node = node[0] if node else None
        depth += 1
    return count


def _json_tensor(name: str, dt: DataType, data: Any, limits: TensorLimits | None = None) -> np.ndarray:
    """JSON data (nested lists) -> an array of the shape the nesting gives, checked against the datatype. The caller
    has checked its size (_nested_elements) against the limits."""
    if not isinstance(data, list):
        raise invalid(f"input '{name}': data must be a JSON array")
    if is_bf16(dt.name):
        raise invalid(f"input '{name}': BF16 data cannot travel as JSON; send it binary (binary_data_size)")
    if is_bytes(dt.name):
        shape, flat = _strings(name, data)
        return decode_values(name, "BYTES", shape, flat, limits)
    try:
        array = np.asarray(data)
    except ValueError:
        raise invalid(f"input '{name}': data is not a regular nested array (rows of different lengths?)") from None
    if array.size == 0:
        return np.empty(array.shape, dt.dtype)
    kind, want = array.dtype.kind, dt.dtype.kind
    if want == "b":
        ok, expected = kind == "b", "true or false"
    elif want in "iu":
        if kind == "f" and np.array_equal(array, np.trunc(array)):
            array = np.asarray(data, dtype=object)  # integers past int64 beside negatives promote to float64
        info = np.iinfo(dt.dtype)
        try:  # an object array holds whatever JSON gave: null or an object in the data has no order with ints
            ok = array.dtype.kind in "iuO" and info.min <= int(array.min()) and int(array.max()) <= info.max
        except TypeError:
            ok = False
        expected = f"integers in [{info.min}, {info.max}]"
    else:
        ok, expected = kind in "iuf", "numbers"
        if ok and dt.itemsize < 8:  # JSON has no inf, so an inf here is an overflow
            with np.errstate(over="ignore"):
                array = array.astype(dt.dtype)
            ok, expected = bool(np.isfinite(array).all()), f"numbers within {dt.name}'s range"
    if not ok:
        raise invalid(f"input '{name}': {dt.name} data must be {expected}")
    return array.astype(dt.dtype, copy=False)


def _strings(name: str, data: list) -> tuple[tuple[int, ...], list[bytes]]:
    """Nested JSON lists of strings -> (their shape, the UTF-8 elements in row-major order)."""
    shape: list[int] = []
    node: Any = data
    while isinstance(node, list) and len(shape) <= _MAX_NESTING:
        shape.append(len(node))
        node = node[0] if node else None
    if len(shape) > _MAX_NESTING:
        raise invalid(f"input '{name}': data is nested more than {_MAX_NESTING} deep")
    flat: list[bytes] = []

    def walk(node: Any, depth: int) -> None:
        if depth == len(shape):
            if not isinstance(node, str):
                raise invalid(f"input '{name}': BYTES data must be strings")
            flat.append(node.encode("utf-8"))
        elif not isinstance(node, list) or len(node) != shape[depth]:
            raise invalid(f"input '{name}': data is not a regular nested array (rows of different lengths?)")
        else:
            for child in node:
                walk(child, depth + 1)

    walk(data, 0)
    return tuple(shape), flat


def _request_parameters(raw: Any, model: str) -> tuple[dict[str, Any], int | None, bool]:
    """Request parameters as the gRPC codec keeps them, less binary_data_output (a matter of encoding only)."""
    params = dict(_object(raw, "'parameters'"))
    default_binary = params.pop("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise invalid(f"parameter 'binary_data_output' must be a boolean, got {default_binary!r}")
    rules.check_sequence_id(model, params)
    return params, rules.timeout_us(params), default_binary


def _requested_outputs(raw: Any, default_binary: bool) -> tuple[tuple[str, ...] | None, dict[str, bool]]:
    if not isinstance(raw, list):
        raise invalid("'outputs' must be an array of requested outputs")
    binary: dict[str, bool] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"outputs[{i}] must be an object with a string 'name'")
        name = item["name"]
        params = _object(item.get("parameters", {}), f"output '{name}': 'parameters'")
        rules.check_output_parameters(name, params)
        flag = params.get("binary_data", default_binary)
        if not isinstance(flag, bool):
            raise invalid(f"output '{name}': parameter 'binary_data' must be a boolean, got {flag!r}")
        binary[name] = flag
    return tuple(binary) or None, binary


# -- infer responses -----------------------------------------------------------------------------------------------

def encode_infer_response(response: InferResponse, fmt: OutputFormat) -> tuple[bytes, int | None]:
    """(body, JSON header length), the length None when every output went as JSON (the body is all JSON)."""
    outputs, blobs = [], []
    for t in response.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
        data = None
        if not is_bf16(t.datatype) and not fmt.binary.get(t.name, fmt.default_binary):
            data = _json_data(t)
        if data is None:  # asked for, or a type JSON cannot carry
            raw = encode_raw(t.data, t.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = data
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                                "id": response.id, "outputs": outputs}
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def _json_data(t: Tensor) -> np.ndarray | list[str] | None:
    """Flat row-major JSON data; None for BYTES that are not all UTF-8."""
    if is_bytes(t.datatype):
        try:
            return [e if isinstance(e, str) else bytes(e).decode("utf-8") for e in t.data.reshape(-1)]
        except UnicodeDecodeError:
            return None
    return np.ascontiguousarray(t.data.reshape(-1), dtype=DATATYPES[t.datatype].dtype.newbyteorder("="))


# -- KServe v1 predict ---------------------------------------------------------------------------------------------

def decode_v1_predict(body: bytes, model: str, version: str, inputs: Sequence[TensorView],
                      limits: TensorLimits | None = None) -> InferRequest:
    """{"instances": [row, ...]} (rows stacked into a batch) or {"inputs": {name: tensor}} (columns as given)."""
    doc = _object(_loads(body, "request body"), "the request body")
    names = [t.name for t in inputs]
    if "instances" in doc:
        columns = _v1_rows(doc["instances"], names)
    elif "inputs" in doc:
        value = doc["inputs"]
        columns = _v1_keyed(value, names, "'inputs'") if isinstance(value, dict) or len(names) != 1 \
            else {names[0]: value}
    else:
        raise invalid("a v1 predict body needs 'instances' (rows) or 'inputs' (columns)")
    tensors, elements = [], 0
    for spec in inputs:
        dt = datatype(spec.datatype, spec.name)
        if limits is not None:  # no shape is given: the data's nesting is counted before anything is built
            given = _nested_elements(columns[spec.name])
            if given > limits.max_tensor_elements:
                raise invalid(f"input '{spec.name}': data of {given} elements exceeds max_tensor_elements "
                              f"({limits.max_tensor_elements})")
            check_tensor_bytes(spec.name, dt, given, limits)
            elements = add_request_elements(elements, given, spec.name, limits)
        array = _json_tensor(spec.name, dt, columns[spec.name], limits)
        tensors.append(Tensor(spec.name, dt.name, array.shape, array))
    return InferRequest(model_name=model, model_version=version, inputs=tensors)


def _v1_rows(instances: Any, names: list[str]) -> dict[str, list]:
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty array of rows")
    if len(names) == 1 and not isinstance(instances[0], dict):
        return {names[0]: instances}
    columns: dict[str, list] = {n: [] for n in names}
    for i, row in enumerate(instances):
        for n, value in _v1_keyed(row, names, f"instances[{i}]").items():
            columns[n].append(value)
    return columns


def _v1_keyed(value: Any, names: list[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{what} must be an object keyed by input name ({', '.join(names)})")
    missing = [n for n in names if n not in value]
    extra = [k for k in value if k not in names]
    if missing or extra:
        problem = f"lacks input '{missing[0]}'" if missing else f"has '{extra[0]}', which is not an input"
        raise invalid(f"{what} {problem} (the model's inputs: {', '.join(names)})")
    return value


def encode_v1_predict(response: InferResponse) -> bytes:
    values = {t.name: _v1_values(t) for t in response.outputs}
    if len(values) == 1:
        return orjson.dumps({"predictions": next(iter(values.values()))}, option=_NUMPY)
    batch = {t.shape[0] for t in response.outputs if t.shape}
    if len(batch) > 1 or any(not t.shape for t in response.outputs):
        raise invalid("the model's outputs do not share a batch dimension; use the v2 infer endpoint")
    rows = batch.pop() if batch else 0
    predictions = [{name: v[i] for name, v in values.items()} for i in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=_NUMPY)


def _v1_values(t: Tensor) -> Any:
    """Nested JSON values of an output: numbers (BF16 widened to float32), BYTES as text or TF-Serving's b64."""
    if is_bytes(t.datatype):
        out = np.empty(t.data.shape, dtype=object)
        out.reshape(-1)[:] = [_text_or_b64(e) for e in t.data.reshape(-1)]
        return out.tolist()
    if is_bf16(t.datatype):
        array = (t.data.astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.ascontiguousarray(t.data, dtype=DATATYPES[t.datatype].dtype.newbyteorder("="))
    return array.tolist() if array.ndim == 0 else array


def _text_or_b64(element: Any) -> Any:
    if isinstance(element, str):
        return element
    try:
        return bytes(element).decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(bytes(element)).decode("ascii")}


# -- metadata, config, statistics, repository ----------------------------------------------------------------------

def server_metadata_json(name: str, version: str, extensions: Sequence[str]) -> bytes:
    return orjson.dumps({"name": name, "version": version, "extensions": list(extensions)})


def _tensor_metadata(t: TensorView) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def model_metadata_json(view: ModelMetadataView) -> bytes:
    return orjson.dumps({"name": view.name, "versions": list(view.versions), "platform": view.platform,
                         "inputs": [_tensor_metadata(t) for t in view.inputs],
                         "outputs": [_tensor_metadata(t) for t in view.outputs]})


def _config_tensor(t: TensorView) -> dict[str, Any]:
    return {"name": t.name, "data_type": DATATYPES[t.datatype].config_name, "dims": list(t.shape)}


def model_config_json(view: ModelConfigView) -> bytes:
    """Triton's JSON ModelConfig (proto field names; 64-bit integers as numbers, as Triton's ModelConfigToJson
    rewrites them), returned bare as Triton's HTTP config endpoint does."""
    config: dict[str, Any] = {
        "name": view.name, "platform": view.platform, "backend": view.backend,
        "version_policy": rules.version_policy(view.version_policy), "max_batch_size": view.max_batch_size,
        "input": [_config_tensor(t) for t in view.inputs], "output": [_config_tensor(t) for t in view.outputs],
    }
    if view.ensemble_steps is None:
        config["instance_group"] = [rules.instance_group(view.name, view.instance_count, view.gpu)]
        config["default_model_filename"] = view.default_model_filename
    else:
        config["ensemble_scheduling"] = {"step": [
            {"model_name": s.model_name, "model_version": s.model_version, "input_map": dict(s.input_map),
             "output_map": dict(s.output_map)} for s in view.ensemble_steps]}
    b = view.dynamic_batching
    if b is not None:
        config["dynamic_batching"] = rules.dynamic_batching(b)
    if view.response_cache:
        config["response_cache"] = {"enable": True}
    return orjson.dumps(config)


def _duration(d: DurationView) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_statistics_json(views: Sequence[StatisticsView]) -> bytes:
    """Triton's statistics JSON: the gRPC codec's fields, plus the empty response_stats and memory_usage Triton
    always writes."""
    stats = []
    for view in views:
        s = view.stats
        stats.append({
            "name": view.name, "version": view.version, "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            "inference_stats": {k: _duration(getattr(s, k)) for k in INFER_DURATIONS}, "response_stats": {},
            "batch_stats": [{"batch_size": size, **{k: _duration(getattr(b, k)) for k in BATCH_DURATIONS}}
                            for size, b in s.batches],
            "memory_usage": []})
    return orjson.dumps({"model_stats": stats})


def repository_index_json(entries: Sequence[IndexEntry]) -> bytes:
    """Triton leaves out "version" when no version is known and "reason" when there is none."""
    rows = []
    for e in entries:
        row = {"name": e.name}
        if e.version:
            row["version"] = e.version
        row["state"] = e.state
        if e.reason:
            row["reason"] = e.reason
        rows.append(row)
    return orjson.dumps(rows)


def _repository_parameters(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    doc = _object(_loads(body, "request body"), "the request body")
    return _object(doc.get("parameters", {}), "'parameters'")


def _file(key: str, value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise invalid(f"parameter '{key}' must be the file's content in base64: {e}") from None


# Repository parameters are JSON values: a string, a boolean, files in base64, versions as integers or strings.
PARAMETERS = rules.ParameterWire(
    text=lambda value: value if isinstance(value, str) else None,
    flag=lambda value: value if isinstance(value, bool) else None,
    file=_file,
    version=lambda value: value,
    version_types="integer or string", bool_type="boolean")


def load_parameters(body: bytes) -> tuple[str | None, dict[str, bytes], str | None]:
    """A load body -> (config as its JSON text, files by "<version>/<name>", version). The model manager reads
    the config, the same way for both front ends."""
    return rules.load_parameters(_repository_parameters(body).items(), PARAMETERS)


def unload_parameters(body: bytes) -> tuple[str | None, bool]:
    """An unload body -> (version, unload_dependents): `version` unloads one version only; `unload_dependents` also
    unloads an ensemble's composing models that its load brought in."""
    return rules.unload_parameters(_repository_parameters(body).items(), PARAMETERS)


def error_json(message: str) -> bytes:
    return orjson.dumps({"error": message})
