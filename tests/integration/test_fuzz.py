"""Property-based fuzzing (hypothesis) of both front ends of one real server: ModelInferRequest messages built field
by field, raw protobuf bytes (random, token-built and mutated), and HTTP infer requests (JSON, the binary tensor
extension, compression, random headers), plus random paths and methods.

The properties, for every example: the answer is a status a client mistake may get (never UNKNOWN or a crash;
INTERNAL / 500 only from `drops_row`, the model that fails at run time); an OK answer is well formed; nothing hangs;
and the server still answers its liveness check afterwards. Examples are derandomized, so CI runs the same cases.
With FUZZ_OUTCOMES_FILE set, each example's outcome is tallied per test and merged into that JSON file at the end
(benchmarks/fuzz.py reports it).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, server_config
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

METHOD = "/inference.GRPCInferenceService/ModelInfer"
FAILS_AT_RUN_TIME = "drops_row"  # its INTERNAL / 500 is the server's failure, not the client's
CALL_TIMEOUT_S = 20.0  # far above any answer here: reaching it means a hang


# -- outcomes, for benchmarks/fuzz.py -----------------------------------------------------------------------------

OUTCOMES_FILE = os.environ.get("FUZZ_OUTCOMES_FILE")  # unset: nothing is tallied
OUTCOMES: dict[str, Counter[str]] = {}  # test [engine] -> outcome ("OK", "INVALID_ARGUMENT", "HTTP 400") -> examples
current_test = ""  # the running test function and its gRPC engine (hypothesis runs all its examples in one call)
# HTTP's fuzzing does not depend on the gRPC engine: it runs on the default one (native) only.
HTTP_ON_ONE_ENGINE = pytest.mark.parametrize("grpc_engine", ["native"], indirect=True)


@pytest.fixture(autouse=True)
def name_current_test(request, grpc_engine):
    global current_test
    current_test = f"{request.node.originalname} [{grpc_engine}]"


def tally(outcome: str) -> None:
    if OUTCOMES_FILE:
        OUTCOMES.setdefault(current_test, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def write_outcomes():
    """At the end of the module: the tallies, added to what the file already holds."""
    yield
    if not OUTCOMES_FILE:
        return
    path = Path(OUTCOMES_FILE)
    merged = json.loads(path.read_text()) if path.exists() else {}
    for test, counts in OUTCOMES.items():
        entry = merged.setdefault(test, {"cases": 0, "outcomes": {}})
        entry["cases"] += sum(counts.values())
        for outcome, n in counts.items():
            entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + n
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    OUTCOMES.clear()


def examples(count: int, grpc_engine: str) -> int:
    """A gRPC test's examples: all of them on the default engine (native); a quarter on grpcio in the suite, as what
    differs there is the transport, the codec behind it being the same (benchmarks/fuzz.py's report runs them all
    on both)."""
    return count if grpc_engine == "native" or OUTCOMES_FILE else count // 4


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- the server and what it serves -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, datatype, shape with -1 for the batch dim)
    outputs: tuple[str, ...]
    max_batch_size: int


SPECS: dict[str, Spec] = {}  # every ready model, as the server describes it (filled by the `server` fixture)


@pytest.fixture(scope="module")
def server(repository, grpc_engine):
    thread = ServerThread(server_config(repository, http_port=free_port(), grpc_engine=grpc_engine)).start()
    with grpc.insecure_channel(thread.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for entry in stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models:
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=entry.name))
            config = stub.ModelConfig(pb.ModelConfigRequest(name=entry.name)).config
            SPECS[entry.name] = Spec(tuple((t.name, t.datatype, tuple(t.shape)) for t in meta.inputs),
                                     tuple(t.name for t in meta.outputs), config.max_batch_size)
    assert {"mlp", "types", "text", "fixed", FAILS_AT_RUN_TIME} <= set(SPECS)
    yield thread
    thread.stop()
    SPECS.clear()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.url) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http_port(server):
    return server.cfg.http_port


# -- requests as data: one description, sent as protobuf or as HTTP ------------------------------------------------

ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
            "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 0}
CONTENTS_FIELD = {  # the typed contents field of each datatype (the KServe v2 gRPC protocol)
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
FP32_MAX = 3.4028234663852886e38
FLOAT32 = st.floats(-FP32_MAX, FP32_MAX, width=32)  # bounded: unbounded narrow floats are drawn, then mostly rejected
SPECIAL = (float("inf"), float("-inf"), float("nan"))
FIELD_VALUES = {  # anything each contents field can carry
    "bool_contents": st.booleans(), "int_contents": st.integers(-2**31, 2**31 - 1),
    "int64_contents": st.integers(-2**63, 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": FLOAT32 | st.sampled_from(SPECIAL),
    "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=12),
}
FINITE = {"allow_nan": False, "allow_infinity": False}
VALID_VALUES = {  # values within each datatype's range (BYTES as text, so that JSON carries them too)
    "BOOL": st.booleans(), "UINT8": st.integers(0, 255), "UINT16": st.integers(0, 2**16 - 1),
    "UINT32": st.integers(0, 2**32 - 1), "UINT64": st.integers(0, 2**64 - 1), "INT8": st.integers(-128, 127),
    "INT16": st.integers(-2**15, 2**15 - 1), "INT32": st.integers(-2**31, 2**31 - 1),
    "INT64": st.integers(-2**63, 2**63 - 1), "FP16": st.floats(-65504, 65504, width=16),
    "BF16": FLOAT32, "FP32": FLOAT32, "FP64": st.floats(**FINITE),
    "BYTES": st.text(max_size=8),
}
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
UNSUPPORTED_OUTPUT = (*SHARED_MEMORY, "classification")
PARAM_KEYS = ("timeout", "sequence_id", "sequence_start", "sequence_end", "priority", "binary_data_output",
              "binary_data", "binary_data_size", "routing_key", *UNSUPPORTED_OUTPUT)
BAD_DATATYPES = ("", "fp32", "FP8", "FP128", "STRING", "TYPE_FP32", "INT128", "BYTE", "FP32 ", "\x00", "BOOL\n")


def numpy_max_dims() -> int:
    """numpy's limit on an array's dimensions: 64 from numpy 2, 32 before."""
    for n in (64, 32):
        try:
            np.empty((1,) * n)
            return n
        except ValueError:
            continue
    return 16


# Shapes go past numpy's limit on dimensions: past it the server once answered INTERNAL (the defect pinned by
# test_more_dimensions_than_numpy_allows below); now it refuses more than tensors.MAX_DIMS dimensions.
NUMPY_MAX_DIMS = numpy_max_dims()
MAX_DIMS = NUMPY_MAX_DIMS + 6
DIMS = (0, 1, 2, 3, 4, 8, 64, 65, -1, -2, -2**63, 2**31, 2**32, 2**40, 2**62, 2**63 - 1)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True with probability 1/n (st.integers(0, n - 1) draws 0 far more often than that)."""
    return st.sampled_from([True] + [False] * (n - 1))


@dataclass
class Item:
    """One input tensor: its header, and its data as typed values, raw bytes, or both."""
    name: str
    datatype: str
    shape: list[int]
    values: list[Any] | None = None
    raw: bytes | None = None
    contents_field: str | None = None  # typed contents sent in this field (None: the datatype's own)
    params: dict[str, tuple[str, Any]] = field(default_factory=dict)


@dataclass
class Case:
    model: str
    version: str
    id: str
    items: list[Item]
    raw_mode: bool  # raw_input_contents (gRPC) / binary tensors (HTTP) rather than typed contents / JSON
    outputs: list[tuple[str, dict[str, tuple[str, Any]]]]
    params: dict[str, tuple[str, Any]]
    raw_count_delta: int = 0  # raw_input_contents entries added (+) or left out (-)


def frame(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@st.composite
def data_of(draw, datatype: str, count: int, raw_mode: bool) -> tuple[list[Any] | None, bytes | None]:
    """`count` valid elements of `datatype`, as raw bytes or as typed values."""
    if raw_mode:
        if datatype == "BYTES":
            return None, frame([as_bytes(v) for v in draw(st.lists(VALID_VALUES["BYTES"], min_size=count,
                                                                    max_size=count))])
        if datatype == "BOOL":
            return None, bytes(draw(st.lists(st.sampled_from([0, 1]), min_size=count, max_size=count)))
        size = count * ITEMSIZE.get(datatype, 4)
        return None, draw(st.binary(min_size=size, max_size=size))
    values = VALID_VALUES.get(datatype, st.integers(0, 9))
    if count > 16:  # long tensors: one drawn value repeated (drawing each element costs more than it finds)
        return draw(values.map(lambda v: [v] * count)), None
    return draw(st.lists(values, min_size=count, max_size=count)), None


PARAM_VALUES = st.one_of(
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("int64"), st.sampled_from([0, 1, -1, 2**63 - 1, -2**63]) | st.integers(-10**6, 10**6)),
    st.tuples(st.just("uint64"), st.sampled_from([0, 1, 2**64 - 1]) | st.integers(0, 10**6)),
    st.tuples(st.just("double"), st.floats()),
    st.tuples(st.just("string"), st.text(max_size=8)),
)
PARAMS = st.dictionaries(st.sampled_from(PARAM_KEYS) | st.text(max_size=8), PARAM_VALUES, max_size=3)
NAMES = st.sampled_from(("x", "y", "h", "a", "text", "in_FP32", "in_BYTES", "")) | st.text(max_size=10)
DATATYPE_NAMES = st.sampled_from(sorted(ITEMSIZE)) | st.sampled_from(BAD_DATATYPES) | st.text(max_size=6)
DIM = st.sampled_from(DIMS) | st.integers(-3, 70)
SHAPES = st.one_of(
    st.lists(DIM, max_size=6),
    st.lists(st.sampled_from([0, 1, 1, 1]), min_size=MAX_DIMS - 8, max_size=MAX_DIMS),  # up to numpy's limit
)


@st.composite
def random_item(draw, raw_mode: bool) -> Item:
    """Any name, datatype and shape, with data of any length in any contents field."""
    item = Item(draw(NAMES), draw(DATATYPE_NAMES), draw(SHAPES))
    if raw_mode:
        item.raw = draw(st.binary(max_size=64))
    else:
        item.contents_field = draw(st.sampled_from(sorted(FIELD_VALUES)))
        item.values = draw(st.lists(FIELD_VALUES[item.contents_field], max_size=8))
    if draw(one_in(6)):
        item.params = draw(PARAMS)
    return item


MUTATIONS = ("drop", "extra", "duplicate", "rename", "datatype", "dim", "ndim", "many_dims", "data_longer",
             "data_shorter", "mixed", "raw_count", "bool_value", "bytes_framing", "not_utf8", "field", "params")


@st.composite
def near_valid_items(draw, spec: Spec, raw_mode: bool) -> tuple[list[Item], int]:
    """The model's own inputs with valid data for a drawn batch size, then none, one or two mistakes."""
    batching = spec.max_batch_size > 0
    edges = st.sampled_from([0, spec.max_batch_size, spec.max_batch_size + 1])
    rows = draw(st.one_of(st.integers(1, 3), st.integers(1, 3), edges)) if batching else 0
    items = []
    for name, datatype, dims in spec.inputs:
        shape = [rows if (i == 0 and batching) else (d if d >= 0 else draw(st.integers(0, 3)))
                 for i, d in enumerate(dims)]
        count = 1
        for d in shape:
            count *= d
        values, raw = draw(data_of(datatype, count, raw_mode))
        items.append(Item(name, datatype, shape, values, raw))
    raw_count_delta = 0
    for mutation in draw(st.one_of(st.just([]), st.just([]), st.lists(st.sampled_from(MUTATIONS), min_size=1,
                                                                       max_size=2))):
        target = draw(st.integers(0, len(items) - 1)) if items else None
        item = items[target] if target is not None else None
        if mutation == "drop" and item is not None:
            items.pop(target)
        elif mutation == "extra":
            items.append(draw(random_item(raw_mode)))
        elif mutation == "duplicate" and item is not None:
            items.append(Item(item.name, item.datatype, list(item.shape), item.values, item.raw))
        elif item is None:
            continue
        elif mutation == "rename":
            item.name = draw(NAMES)
        elif mutation == "datatype":
            item.datatype = draw(DATATYPE_NAMES)
        elif mutation == "dim" and item.shape:
            item.shape[draw(st.integers(0, len(item.shape) - 1))] = draw(DIM)
        elif mutation == "ndim":
            item.shape = item.shape[:-1] if draw(st.booleans()) else item.shape + [draw(DIM)]
        elif mutation == "many_dims":  # same element count, up to as many dimensions as numpy allows
            item.shape = item.shape + [1] * draw(st.integers(0, MAX_DIMS - len(item.shape)))
        elif mutation in ("data_longer", "data_shorter"):
            n = draw(st.integers(1, 9))
            if item.raw is not None:
                item.raw = item.raw + b"\1" * n if mutation == "data_longer" else item.raw[:-n]
            elif item.values is not None:
                item.values = item.values + item.values[:1] * n if mutation == "data_longer" else item.values[:-n]
        elif mutation == "mixed":  # typed contents beside raw contents, or raw beside typed
            if item.raw is not None:
                item.contents_field = draw(st.sampled_from(sorted(FIELD_VALUES)))
                item.values = draw(st.lists(FIELD_VALUES[item.contents_field], min_size=1, max_size=4))
            else:
                raw_count_delta += 1
        elif mutation == "raw_count":
            raw_count_delta += draw(st.sampled_from([-1, 1, 2]))
        elif mutation == "bool_value" and item.raw:
            item.raw = bytes([2]) + item.raw[1:]
        elif mutation == "bytes_framing" and item.raw is not None:
            item.raw = item.raw[:draw(st.integers(0, max(0, len(item.raw) - 1)))] + draw(st.binary(max_size=6))
        elif mutation == "not_utf8":
            if item.raw is not None:
                item.raw = frame([b"\xff\xfe"] * (len(item.shape) and max(1, item.shape[0])))
            elif item.values:
                item.values = [b"\xc3\x28", *item.values[1:]]
        elif mutation == "field":  # typed contents in another datatype's field, with values out of its range
            item.contents_field = draw(st.sampled_from(sorted(FIELD_VALUES)))
            item.values = draw(st.lists(FIELD_VALUES[item.contents_field], max_size=8))
        elif mutation == "params":
            item.params = draw(PARAMS)
    return items, raw_count_delta


MODEL_NAMES = st.sampled_from(("nope", "", "MLP", "mlp ", "mlp/1", "../mlp", "mlp\x00", "t\u00ebxt")) | st.text(
    max_size=12)
VERSIONS = st.sampled_from(("1", "01", "2", "0", "-1", "1.0", "\u00b2", "9" * 19, "latest", " 1", "1 ")) | st.text(
    max_size=6)


@st.composite
def cases(draw) -> Case:
    """Mostly one of the real models, with near-valid inputs; sometimes any name with any inputs."""
    real = sorted(SPECS)
    model = draw(st.sampled_from(real) | MODEL_NAMES) if draw(one_in(5)) else draw(st.sampled_from(real))
    spec = SPECS.get(model)
    raw_only = spec is not None and any(dt in ("FP16", "BF16") for _, dt, _ in spec.inputs)
    raw_mode = draw(st.booleans()) or raw_only and not draw(one_in(4))  # FP16, BF16: raw only on gRPC
    if spec is not None and model != "slow" and not draw(one_in(6)):  # `slow` costs seconds when valid
        items, raw_count_delta = draw(near_valid_items(spec, raw_mode))
    else:
        items, raw_count_delta = draw(st.lists(random_item(raw_mode), max_size=3)), 0
    version = draw(st.one_of(st.just(""), st.just(""), st.just("1"), VERSIONS))
    outputs = []
    if draw(one_in(3)):
        names = st.sampled_from(spec.outputs) | NAMES if spec is not None else NAMES
        outputs = draw(st.lists(st.tuples(names, st.just({}) | PARAMS), max_size=3))
    params = draw(PARAMS) if draw(one_in(4)) else {}
    request_id = draw(st.just("") | st.text(max_size=8))
    return Case(model, version, request_id, items, raw_mode, outputs, params, raw_count_delta)


def set_param(target: Any, key: str, tagged: tuple[str, Any]) -> None:
    kind, value = tagged
    setattr(target[key], f"{kind}_param", value)


FIELD_RANGE = {"int_contents": (-2**31, 2**31 - 1), "int64_contents": (-2**63, 2**63 - 1),
               "uint_contents": (0, 2**32 - 1), "uint64_contents": (0, 2**64 - 1)}


def coerce(contents_field: str, value: Any) -> Any:
    """A value drawn for one datatype, as the protobuf field it ends up in can hold it (after a mutation changed
    the datatype or the field): clamped into the field's range, so the request can be built at all."""
    if contents_field == "bytes_contents":
        return as_bytes(value)
    if contents_field == "bool_contents":
        return bool(value)
    number = value if isinstance(value, int | float) else 0
    if contents_field in FIELD_RANGE:
        low, high = FIELD_RANGE[contents_field]
        return min(max(int(number), low), high) if number == number and abs(number) != float("inf") else 0
    if contents_field == "fp32_contents" and abs(number) > FP32_MAX and abs(number) != float("inf"):
        return FP32_MAX if number > 0 else -FP32_MAX
    return float(number)


def to_protobuf(case: Case) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=case.model, model_version=case.version, id=case.id)
    raws = []
    for item in case.items:
        t = r.inputs.add(name=item.name, datatype=item.datatype, shape=item.shape)
        for key, value in item.params.items():
            set_param(t.parameters, key, value)
        if item.values is not None:
            name = item.contents_field or CONTENTS_FIELD.get(item.datatype, "fp32_contents")
            getattr(t.contents, name).extend(coerce(name, v) for v in item.values)
        if item.raw is not None:
            raws.append(item.raw)
    if case.raw_mode or raws:
        raws = raws + [b""] * max(0, case.raw_count_delta)
        r.raw_input_contents.extend(raws[:len(raws) + min(0, case.raw_count_delta)])
    for name, params in case.outputs:
        o = r.outputs.add(name=name)
        for key, value in params.items():
            set_param(o.parameters, key, value)
    for key, value in case.params.items():
        set_param(r.parameters, key, value)
    return r


# -- what may come back ----------------------------------------------------------------------------------------

CLIENT_MISTAKE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                  grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def positive_timeout(parameters: Any) -> bool:
    """A `timeout` parameter the server takes (a positive integer of microseconds): it may expire while queued."""
    if "timeout" not in parameters:
        return False
    p = parameters["timeout"]
    choice = p.WhichOneof("parameter_choice")
    return choice in ("int64_param", "uint64_param") and getattr(p, choice) > 0


def allowed_grpc(r: pb.ModelInferRequest) -> set[grpc.StatusCode]:
    allowed = set(CLIENT_MISTAKE)
    if r.model_name not in SPECS:
        allowed.discard(grpc.StatusCode.OK)
    if any(k in t.parameters for t in r.inputs for k in SHARED_MEMORY) or any(
            k in o.parameters for o in r.outputs for k in UNSUPPORTED_OUTPUT):
        allowed.add(grpc.StatusCode.UNIMPLEMENTED)  # an extension this server does not have
    if positive_timeout(r.parameters):
        allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    if r.model_name == FAILS_AT_RUN_TIME:
        allowed.add(grpc.StatusCode.INTERNAL)
    return allowed


IDENTITY_OUTPUTS = {"echo": "text"}  # the identity models' outputs by input (besides out_T <- in_T)


def check_ok_response(request: pb.ModelInferRequest, data: bytes) -> None:
    """An answer names the model and request, has the outputs asked for (all, when none were), each with raw
    contents of its shape's size; the identity models give back exactly the raw bytes they were sent."""
    response = pb.ModelInferResponse.FromString(data)
    assert response.model_name == request.model_name
    assert response.id == request.id
    assert len(response.raw_output_contents) == len(response.outputs)
    expected = [o.name for o in request.outputs] or list(SPECS[request.model_name].outputs)
    assert [o.name for o in response.outputs] == expected
    sent = dict(zip((t.name for t in request.inputs), request.raw_input_contents, strict=False))
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        assert all(d >= 0 for d in output.shape)
        if output.datatype != "BYTES":
            assert len(raw) == int(np.prod(output.shape)) * ITEMSIZE[output.datatype], output
        source = IDENTITY_OUTPUTS.get(output.name, output.name.replace("out_", "in_", 1))
        if request.model_name in ("types", "bf16", "text") and source in sent:
            assert raw == sent[source], output.name


def assert_live(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live


def call_raw(channel: grpc.Channel, body: bytes) -> tuple[grpc.StatusCode, bytes, str]:
    call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        return grpc.StatusCode.OK, call(body, timeout=CALL_TIMEOUT_S), ""
    except grpc.RpcError as e:
        return e.code(), b"", e.details() or ""


def check_grpc(channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub, body: bytes) -> None:
    try:
        request: pb.ModelInferRequest | None = pb.ModelInferRequest.FromString(body)
    except Exception:  # not a message at all: the server must say so
        request = None
    code, data, details = call_raw(channel, body)
    tally(code.name)
    event(f"{code.name}" if request is not None else f"{code.name} (not a message)")
    if request is None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "not a valid ModelInferRequest" in details
    else:
        assert code in allowed_grpc(request), (code, details, request)
        if code == grpc.StatusCode.OK:
            check_ok_response(request, data)
    assert_live(stub)


# -- 1. ModelInferRequest fields ---------------------------------------------------------------------------------

def test_model_infer_request_fields(channel, stub, grpc_engine):
    @fuzz_settings(examples(1500, grpc_engine))
    @given(case=cases())
    def fuzz(case):
        check_grpc(channel, stub, to_protobuf(case).SerializeToString())

    fuzz()


# -- 2. raw protobuf bytes ---------------------------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wire_field(number: int, wire_type: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire_type) + payload


# Wire-format tokens: known and unknown field numbers with every wire type (also the wrong one for the field),
# length prefixes that lie, groups, and nesting.
FIELD_NUMBERS = st.integers(1, 12) | st.sampled_from([0, 19000, 2**29 - 1])
SCALAR_FIELDS = st.one_of(
    st.builds(wire_field, FIELD_NUMBERS, st.just(0), st.integers(0, 2**64 - 1).map(varint)),
    st.builds(wire_field, FIELD_NUMBERS, st.just(1), st.binary(min_size=8, max_size=8)),
    st.builds(wire_field, FIELD_NUMBERS, st.just(5), st.binary(min_size=4, max_size=4)),
    st.builds(wire_field, FIELD_NUMBERS, st.sampled_from([2]),
              st.binary(max_size=16).map(lambda b: varint(len(b)) + b)),
    st.builds(wire_field, FIELD_NUMBERS, st.sampled_from([2]),  # a length past the end
              st.tuples(st.sampled_from([1, 100, 2**31, 2**63]), st.binary(max_size=4)).map(
                  lambda t: varint(t[0]) + t[1])),
    st.builds(wire_field, FIELD_NUMBERS, st.sampled_from([3, 4, 6, 7]), st.binary(max_size=4)),
)
WIRE_MESSAGES = st.recursive(
    st.lists(SCALAR_FIELDS, max_size=4).map(b"".join),
    lambda inner: st.lists(
        st.one_of(SCALAR_FIELDS, st.builds(lambda n, b: wire_field(n, 2, varint(len(b)) + b), FIELD_NUMBERS, inner)),
        max_size=4).map(b"".join),
    max_leaves=12)

EDITS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]), st.integers(0, 2**16),
                           st.integers(0, 255)), min_size=1, max_size=4)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        i = position % (len(out) + 1)
        if kind == "insert":
            out[i:i] = bytes([value])
        elif not out:
            continue
        elif kind == "flip":
            out[i % len(out)] ^= 1 << (value % 8)
        elif kind == "set":
            out[i % len(out)] = value
        elif kind == "delete":
            del out[i % len(out):i % len(out) + 1 + value % 8]
        else:
            del out[i:]
    return bytes(out)


RAW_BODIES = st.one_of(
    st.binary(max_size=256),
    WIRE_MESSAGES,
    st.builds(mutate, cases().map(lambda c: to_protobuf(c).SerializeToString()), EDITS),
    st.builds(mutate, cases().map(lambda c: to_protobuf(c).SerializeToString()), EDITS),  # weighted twice
)


def test_raw_protobuf_bytes(channel, stub, grpc_engine):
    @fuzz_settings(examples(1200, grpc_engine))
    @given(body=RAW_BODIES)
    def fuzz(body):
        check_grpc(channel, stub, body)

    fuzz()


# -- 3. HTTP infer bodies and headers ----------------------------------------------------------------------------

HTTP_OK = {200, 400, 404, 413, 415, 503}
DOC_KEYS = ("inputs", "outputs", "parameters", "name", "datatype", "shape", "data", "id", "binary_data_size",
            "binary_data", "binary_data_output", "timeout", "sequence_id", *UNSUPPORTED_OUTPUT)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(**FINITE),
                         st.text(max_size=8), st.sampled_from(sorted(ITEMSIZE)))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(DOC_KEYS) | st.text(max_size=6),
                                                               inner, max_size=5),
    max_leaves=16)


def json_param(tagged: tuple[str, Any]) -> Any:
    kind, value = tagged
    return value if kind != "double" or value == value and abs(value) != float("inf") else str(value)


@st.composite
def infer_bodies(draw, case: Case) -> tuple[str, bytes, int | None]:
    """A case as an HTTP infer body: (its model, the body, the JSON header's length when binary tensors follow)."""
    inputs, blobs = [], []
    for item in case.items:
        entry: dict[str, Any] = {"name": item.name, "datatype": item.datatype, "shape": item.shape}
        params = {k: json_param(v) for k, v in item.params.items()}
        if item.raw is not None:
            params["binary_data_size"] = len(item.raw)
            blobs.append(item.raw)
        if item.values is not None or item.raw is None:
            entry["data"] = [v.decode("latin-1") if isinstance(v, bytes) else v for v in item.values or []]
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if case.id:
        doc["id"] = case.id
    if case.outputs:
        doc["outputs"] = [{"name": n, **({"parameters": {k: json_param(v) for k, v in p.items()}} if p else {})}
                          for n, p in case.outputs]
    if case.params:
        doc["parameters"] = {k: json_param(v) for k, v in case.params.items()}
    subtrees = draw(st.integers(1, 2)) if draw(one_in(4)) else 0
    for _ in range(subtrees):  # a random subtree somewhere
        node: Any = doc
        while isinstance(node, dict | list) and node and not draw(one_in(3)):
            key = draw(st.sampled_from(sorted(node)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict):
            node[draw(st.sampled_from(DOC_KEYS) | st.text(max_size=6))] = draw(JSON_VALUES)
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON_VALUES)
    header = json.dumps(doc).encode()  # NaN and Infinity (not JSON) where a value drew them
    blob = b"".join(blobs)
    if not blob and not draw(one_in(4)):
        return case.model, header, None
    return case.model, header + blob, len(header)


def deep_body(depth: int, datatype: str) -> tuple[str, bytes, None]:
    """One element nested `depth` lists deep (numpy's limit on dimensions; orjson's on nesting is 1024)."""
    model, name, element = ("text", "text", '"a"') if datatype == "BYTES" else ("mlp", "x", "1.0")
    data = "[" * depth + element + "]" * depth
    shape = json.dumps([1] * depth if depth <= MAX_DIMS else [1, 8])
    tensor = f'{{"name": "{name}", "datatype": "{datatype}", "shape": {shape}, "data": {data}}}'
    return model, f'{{"inputs": [{tensor}]}}'.encode(), None


def any_model() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(SPECS)) | MODEL_NAMES


BODIES = st.one_of(  # (model, body, JSON header length)
    cases().flatmap(infer_bodies),  # weighted: near-valid requests reach the deepest
    cases().flatmap(infer_bodies),
    cases().flatmap(infer_bodies),
    st.deferred(lambda: st.tuples(any_model(), JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.none())),
    st.deferred(lambda: st.tuples(any_model(), st.binary(max_size=128), st.none() | st.integers(0, 130))),
    st.builds(deep_body, st.sampled_from([2, 31, 32, 33, 63, 64, 65, 66, 1023, 1024, 1025, 5000]),
              st.sampled_from(["FP32", "BYTES"])),
)


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    malformed: bool  # at the HTTP level: uvicorn may answer 400 itself, or close the connection
    model: str = ""
    statuses: set[int] = field(default_factory=set)  # what may come back when it is answered

    def wire(self) -> bytes:
        head = [f"{self.method} {self.target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in self.headers),
                "Connection: close"]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + self.body


HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
ODD_HEADER_VALUES = st.text(st.characters(max_codepoint=255), max_size=20)  # control characters, obs-text


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(body):
            break
        out.append(b"%x\r\n%s\r\n" % (len(body[pos:pos + size]), body[pos:pos + size]))
        pos += size
    if pos < len(body):
        out.append(b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:]))
    return b"".join(out) + b"0\r\n\r\n"


HTTP_MISTAKES = (
    "header length wrong", "header length not a number", "header length missing", "header length on JSON",
    "encoding unknown", "encoding truncated", "encoding not applied", "encoding of random bytes",
    "content length huge", "odd header",  # answered by the server
    "content length short", "content length not a number", "content length twice", "bad header name",  # malformed
)
BENIGN_HEADERS = st.sampled_from([
    ("Content-Type", "application/json"), ("Content-Type", "application/octet-stream"), ("Content-Type", "text/x"),
    ("Accept-Encoding", "gzip"), ("Accept-Encoding", "deflate;q=0.5, gzip;q=nan"), ("Accept-Encoding", "*;q=1"),
    ("Accept-Encoding", "gzip;q=inf, identity;q=0"), ("Accept-Encoding", "br"), ("Accept", "*/*"),
]) | st.tuples(st.sampled_from(["Content-Type", "X-Request-Id", "routing-key", "Authorization", "Accept-Encoding"]),
               HEADER_VALUES)


def compressed(body: bytes, encoding: str) -> bytes:
    if encoding == "deflate":
        return zlib.compress(body)
    return gzip.compress(body[:7]) + gzip.compress(body[7:]) if len(body) % 3 == 0 else gzip.compress(body)


@st.composite
def infer_requests(draw) -> HttpRequest:
    """A POST .../infer with one of the bodies above, sent right (Content-Length or chunked, maybe compressed,
    the binary header's length when binary tensors follow), then with none, one or two mistakes."""
    model, body, json_length = draw(BODIES)
    if draw(one_in(8)):  # to another model than the body was made for
        model = draw(any_model())
    version = draw(st.one_of(st.just(""), st.just(""), st.just("1"), VERSIONS))
    target = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
    target += "/infer" + draw(st.sampled_from(["", "", "", "?", "?a=1"]))
    statuses = set(HTTP_OK)
    routed = bool({*model} - {"."}) and "/" not in model  # the path names a model (not another route, or none)
    if not routed:
        statuses.add(405)
    elif model not in SPECS:
        statuses.discard(200)
    if model == FAILS_AT_RUN_TIME:
        statuses.add(500)
    if any(k.encode() in body for k in UNSUPPORTED_OUTPUT):
        statuses.add(501)
    if b'"timeout"' in body:
        statuses.add(504)
    mistakes = set(draw(st.just([]) | st.lists(st.sampled_from(HTTP_MISTAKES), max_size=2)))
    headers: list[tuple[str, str]] = []

    header_length = None if json_length is None or "header length missing" in mistakes else str(json_length)
    if "header length on JSON" in mistakes and json_length is None:
        header_length = str(draw(st.sampled_from([len(body), 0, len(body) + 1])))
    if "header length wrong" in mistakes:
        header_length = str(draw(st.integers(0, len(body) + 4) | st.sampled_from([-1, 10**18, 10**19, 2**64])))
    if "header length not a number" in mistakes:
        header_length = draw(st.sampled_from([" 5", "5 ", "0x10", "1e3", "\u00b2", "9" * 40, "", "+4"]) | HEADER_VALUES)
    if header_length is not None:
        headers.append(("Inference-Header-Content-Length", header_length))

    encoding = draw(st.sampled_from([None, None, None, "gzip", "deflate", "x-gzip", "identity", "GZIP", " gzip"]))
    if "encoding unknown" in mistakes:
        encoding = draw(st.sampled_from(["br", "compress", "gzip, gzip", "zstd", "gzip;q=1"]) | HEADER_VALUES)
    squashed = (encoding or "").strip().lower()
    if squashed in ("gzip", "x-gzip", "deflate") and "encoding not applied" not in mistakes:
        if "encoding of random bytes" in mistakes:
            body = draw(st.binary(max_size=64))
        body = compressed(body, squashed)
        if "encoding truncated" in mistakes:
            body = body[:draw(st.integers(0, max(0, len(body) - 1)))]
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))

    malformed = bool(mistakes & {"content length short", "content length not a number", "content length twice",
                                 "bad header name"})
    if "content length huge" in mistakes:  # refused from the header, before any body (none is sent)
        headers.append(("Content-Length", str(draw(st.sampled_from([2**31, 10**12, 10**17, 10**18 - 1])))))
        body = b""
        statuses = {400, 413} if routed else {404, 405}  # 400: the binary header's length, checked first
    elif "content length short" in mistakes:
        headers.append(("Content-Length", str(max(0, len(body) - 1))))
    elif "content length not a number" in mistakes:
        headers.append(("Content-Length", draw(st.sampled_from(["abc", "-1", "1e3", "0x5", " 4 4"]))))
    elif "content length twice" in mistakes:
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))]
    elif not draw(one_in(4)):
        headers.append(("Content-Length", str(len(body))))
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        body = chunked(body, draw(st.lists(st.integers(1, 64), max_size=4)))

    headers += draw(st.lists(BENIGN_HEADERS, max_size=3))
    if "odd header" in mistakes:  # control characters and obs-text in a value: uvicorn's parser may refuse them
        headers.append((draw(st.sampled_from(["X-Request-Id", "routing-key", "Content-Type"])),
                        draw(ODD_HEADER_VALUES)))
        malformed = malformed or not all(32 <= ord(c) < 127 for c in headers[-1][1])
    if "bad header name" in mistakes:
        headers.append((draw(st.sampled_from(["", "a b", "x:y", "\x7f", "(x)"]) | st.text(max_size=6)), "1"))
    return HttpRequest("POST", target, headers, body, malformed, model, statuses)


class NoAnswer(Exception):
    """The server closed the connection without a response."""


def exchange(port: int, request: HttpRequest) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as sock:
        sock.sendall(request.wire())
        response = http.client.HTTPResponse(sock, method=request.method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead) as e:
            raise NoAnswer(repr(e)) from None
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def http_live(port: int) -> None:
    status, _, _ = exchange(port, HttpRequest("GET", "/v2/health/live", [], b"", False))
    assert status == 200


def check_http(port: int, request: HttpRequest) -> None:
    try:
        status, headers, body = exchange(port, request)
    except NoAnswer:
        tally("closed without an answer")
        event("closed without an answer")
        assert request.malformed, "a well-formed request got no response"
        http_live(port)
        return
    tally(f"HTTP {status}")
    event(f"{status}{' (malformed HTTP)' if request.malformed else ''}")
    if request.malformed:  # uvicorn's own refusal, or our answer if the parser let it through
        assert status in request.statuses | {400}, (status, body[:300])
    else:
        assert status in request.statuses, (status, body[:300])
    if status == 200 and request.method == "POST" and "/infer" in request.target:
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        elif headers.get("content-encoding") == "deflate":
            body = zlib.decompress(body)
        length = int(headers.get("inference-header-content-length", len(body)))
        doc = json.loads(body[:length])
        assert doc["model_name"] == request.model and isinstance(doc["outputs"], list)
        binary = 0
        for output in doc["outputs"]:
            count = int(np.prod(output["shape"]))
            if "data" in output:
                assert len(output["data"]) == count, output
            else:
                size = output["parameters"]["binary_data_size"]
                assert output["datatype"] == "BYTES" or size == count * ITEMSIZE[output["datatype"]], output
                binary += size
        assert binary == len(body) - length  # the binary outputs fill the rest of the body exactly
    elif status >= 400 and not request.malformed and request.method != "HEAD" and not (
            status == 400 and urlsplit(request.target).path.endswith(("/ready", "/live"))):  # Triton: not ready
        assert "error" in json.loads(body), body[:300]  # every error is JSON
    http_live(port)


@HTTP_ON_ONE_ENGINE
@fuzz_settings(1500)
@given(request=infer_requests())
def test_http_infer_bodies_and_headers(http_port, request):
    check_http(http_port, request)


# -- random paths and methods ------------------------------------------------------------------------------------

PATHS = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{m}", "/v2/models/{m}/ready",
         "/v2/models/{m}/config", "/v2/models/{m}/stats", "/v2/models/{m}/infer", "/v2/models/{m}/versions/{v}",
         "/v2/models/{m}/versions/{v}/ready", "/v2/models/{m}/versions/{v}/config", "/v2/models/{m}/versions/{v}/infer",
         "/v2/models/stats", "/v2/repository/index", "/v1/models/{m}:predict", "/v2/routes", "/v2/routes/{m}",
         "/v2/routes/{m}/weights", "/v2/routes/{m}/canary/{v}", "/", "/metrics", "/v2/models", "/v3/models/{m}",
         "//v2//health//live", "/v2/health/live/", "/v2/models/{m}/infer/", "*", "/v2/./health/../health/live")
# Not the repository's load and unload: a random body there could unload a model the other examples use.
KNOWN_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE")


@st.composite
def v1_bodies(draw, model: str) -> bytes:
    spec = SPECS.get(model)
    if spec is None or not spec.inputs or draw(st.booleans()):
        return json.dumps(draw(JSON_VALUES)).encode()
    name, datatype, dims = spec.inputs[0]
    row = [draw(VALID_VALUES.get(datatype, st.integers())) for d in dims[1:] for _ in range(max(d, 1))]
    rows = draw(st.lists(st.just(row) | JSON_VALUES, min_size=0, max_size=3))
    key = draw(st.sampled_from(["instances", "inputs"]))
    return json.dumps({key: rows if key == "instances" or draw(st.booleans()) else {name: rows}}).encode()


@st.composite
def path_requests(draw) -> HttpRequest:
    model = draw(st.sampled_from(sorted(SPECS)) | MODEL_NAMES)
    version = draw(VERSIONS)
    template = draw(st.one_of(st.sampled_from(PATHS), st.sampled_from(PATHS),
                              st.text(max_size=16).map(lambda t: "/" + quote(t, safe="/"))))
    target = template.replace("{m}", quote(model, safe="")).replace("{v}", quote(version, safe=""))
    target += draw(st.sampled_from(["", "?", "?ready=true", "?a=%ff&b", "#frag"]))
    if draw(one_in(5)):  # a method httptools does not know, or one wanting another target form
        method = draw(st.sampled_from(["CONNECT", "get", "PRI", "FOO"])
                      | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8))
    else:
        method = draw(st.sampled_from(("GET", "GET", "GET", "POST", "POST", "POST") + KNOWN_METHODS))
    if target.startswith("/v1/"):
        body = draw(v1_bodies(model))
    else:
        body = draw(st.sampled_from([b"", b"{}", b'{"ready": true}', b"[", b"null"]) | st.binary(max_size=32))
    statuses = {200, 307, 400, 404, 405, 413, 415, 501, 503}  # 307: Starlette's redirect of a trailing slash
    if model == FAILS_AT_RUN_TIME:
        statuses.add(500)
    # httptools knows a fixed set of methods, and CONNECT wants an authority, not a path: uvicorn may refuse those
    malformed = method not in KNOWN_METHODS or not target.startswith("/")
    return HttpRequest(method, target, [("Content-Length", str(len(body)))], body, malformed, model, statuses)


@HTTP_ON_ONE_ENGINE
@fuzz_settings(800)
@given(request=path_requests())
def test_http_random_paths_and_methods(http_port, request):
    check_http(http_port, request)


# -- a defect the fuzzing found (fixed) ------------------------------------------------------------------------

def deep_shape() -> list[int]:
    return [1, 8] + [1] * (NUMPY_MAX_DIMS - 1)  # one dimension more than numpy allows; still 8 elements


def grpc_deep(raw: bool) -> Any:
    def send(channel: grpc.Channel, port: int) -> object:
        r = pb.ModelInferRequest(model_name="mlp")
        t = r.inputs.add(name="x", datatype="FP32", shape=deep_shape())
        if raw:
            r.raw_input_contents.append(b"\0" * 32)
        else:
            t.contents.fp32_contents.extend([0.0] * 8)
        return call_raw(channel, r.SerializeToString())[0]
    return send


def grpc_deep_bytes(channel: grpc.Channel, port: int) -> object:
    r = pb.ModelInferRequest(model_name="text")
    r.inputs.add(name="text", datatype="BYTES", shape=[1] * (NUMPY_MAX_DIMS + 1))
    r.raw_input_contents.append(frame([b"a"]))
    return call_raw(channel, r.SerializeToString())[0]


def http_deep(binary: bool) -> Any:
    def send(channel: grpc.Channel, port: int) -> object:
        tensor: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": deep_shape()}
        if binary:
            tensor["parameters"] = {"binary_data_size": 32}
        else:
            tensor["data"] = [0.0] * 8
        header = json.dumps({"inputs": [tensor]}).encode()
        body = header + (b"\0" * 32 if binary else b"")
        headers = [("Content-Length", str(len(body)))]
        if binary:
            headers.append(("Inference-Header-Content-Length", str(len(header))))
        return exchange(port, HttpRequest("POST", "/v2/models/mlp/infer", headers, body, False))[0]
    return send


@pytest.mark.parametrize("send", [grpc_deep(False), grpc_deep(True), grpc_deep_bytes, http_deep(False),
                                  http_deep(True)],
                         ids=["grpc-typed", "grpc-raw", "grpc-bytes", "http-json", "http-binary"])
def test_more_dimensions_than_numpy_allows(channel, stub, http_port, send):
    """Found by test_model_infer_request_fields when shapes went past numpy's 64 dimensions (numpy's ValueError
    became INTERNAL / 500): a client mistake, so INVALID_ARGUMENT / 400 (each element count here is right: only the
    number of dimensions is wrong)."""
    status = send(channel, http_port)
    tally(status.name if isinstance(status, grpc.StatusCode) else f"HTTP {status}")
    assert_live(stub)
    http_live(http_port)
    assert status in (grpc.StatusCode.INVALID_ARGUMENT, 400)


# -- afterwards -------------------------------------------------------------------------------------------------

def test_still_serving_afterwards(stub, http_port):
    """After every fuzz test: a good request on each front end is answered as before."""
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(b"\0" * 32)
    response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["y", "h"]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]}).encode()
    status, _, answer = exchange(http_port, HttpRequest("POST", "/v2/models/mlp/infer",
                                                        [("Content-Length", str(len(body)))], body, False))
    assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 4]
