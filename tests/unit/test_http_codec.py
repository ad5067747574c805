"""The REST codec: v2 JSON and binary tensors for every datatype, tritonclient.http's own request and response
bodies, each malformed body, v1 predict, and the JSON of metadata, config, statistics and the repository."""

from __future__ import annotations

import base64
import contextlib
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inference_server.config.model import VersionPolicy
from inference_server.errors import ErrorCode, InferenceError
from inference_server.http import codec
from inference_server.observability.stats import ModelStats
from inference_server.protocol.tensors import DATATYPES, InferResponse, Tensor, decode_raw, encode_bytes, encode_raw
from inference_server.service.views import (BatchingView, IndexEntry, ModelConfigView, ModelMetadataView,
                                            StatisticsView, TensorView, snapshot)
from tests.support.datatype_samples import NUMERIC

BF16 = np.array([[0x3FC0, 0xC010, 0x0000]], np.uint16)  # 1.5, -2.25, 0.0 as the upper halves of fp32
STRINGS = np.array([[b"", b"hello", "h\u00e9".encode()]], dtype=object)


@contextlib.contextmanager
def rejects(fragment: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT):
    with pytest.raises(InferenceError) as info:
        yield
    assert info.value.code is code, info.value
    assert fragment in info.value.message, info.value.message


def json_body(*inputs: dict, **top) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **top})


def tensor_json(name: str, dtype: str, shape, data) -> dict:
    return {"name": name, "datatype": dtype, "shape": list(shape), "data": data}


def binary_body(arrays: dict[str, tuple[str, np.ndarray]], **top) -> tuple[bytes, int]:
    blobs = {name: encode_raw(a, dtype) for name, (dtype, a) in arrays.items()}
    inputs = [{"name": name, "datatype": dtype, "shape": list(a.shape), "parameters": {"binary_data_size":
              len(blobs[name])}} for name, (dtype, a) in arrays.items()]
    header = orjson.dumps({"inputs": inputs, **top})
    return header + b"".join(blobs.values()), len(header)


def decode(body: bytes, header_length: int | None = None):
    return codec.decode_infer_request(body, header_length, "m", "1")


def single(body: bytes, header_length: int | None = None) -> np.ndarray:
    request, _ = decode(body, header_length)
    assert len(request.inputs) == 1
    return request.inputs[0].data


def response(*tensors: tuple[str, str, np.ndarray]) -> InferResponse:
    return InferResponse("m", "1", "req-7", [Tensor(n, d, a.shape, a) for n, d, a in tensors])


def split(body: bytes, json_length: int | None) -> tuple[dict, bytes]:
    if json_length is None:
        return orjson.loads(body), b""
    return orjson.loads(body[:json_length]), body[json_length:]


# -- inputs: every datatype, JSON and binary ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(NUMERIC))
def test_every_json_datatype_decodes_to_the_arrays_tensors_holds(name):
    array = NUMERIC[name]
    data = single(json_body(tensor_json("x", name, array.shape, array.ravel().tolist())))
    np.testing.assert_array_equal(data, array)
    assert data.dtype == DATATYPES[name].dtype and data.shape == array.shape


@pytest.mark.parametrize("name", [*NUMERIC, "BF16", "BYTES"])
def test_every_binary_datatype_matches_the_raw_layout(name):
    array = {"BF16": BF16, "BYTES": STRINGS}.get(name, NUMERIC.get(name))
    body, length = binary_body({"x": (name, array)})
    data = single(body, length)
    expected = decode_raw("x", name, array.shape, encode_raw(array, name))
    np.testing.assert_array_equal(data, expected)
    assert data.dtype == expected.dtype and data.shape == array.shape


def test_binary_inputs_follow_the_json_in_input_order_beside_json_inputs():
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[7, 8]], np.int64)
    blob_a, blob_b = encode_raw(a, "FP32"), encode_raw(b, "INT64")
    header = json_body({"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                       tensor_json("j", "BOOL", [2], [True, False]),
                       {"name": "b", "datatype": "INT64", "shape": [1, 2], "parameters": {"binary_data_size": 16}})
    request, _ = decode(header + blob_a + blob_b, len(header))
    assert [t.name for t in request.inputs] == ["a", "j", "b"]
    np.testing.assert_array_equal(request.inputs[0].data, a)
    np.testing.assert_array_equal(request.inputs[1].data, [True, False])
    np.testing.assert_array_equal(request.inputs[2].data, b)


def test_bytes_json_strings_become_utf8_bytes_and_binary_keeps_any_bytes():
    data = single(json_body(tensor_json("s", "BYTES", [3], ["", "hé", "a\u0000b"])))
    assert data.tolist() == [b"", "hé".encode(), b"a\x00b"]
    raw = [b"\xff\xfe", b"", b"\x00" * 3]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in raw)
    header = json_body({"name": "s", "datatype": "BYTES", "shape": [3],
                        "parameters": {"binary_data_size": len(blob)}})
    assert single(header + blob, len(header)).tolist() == raw


def test_nested_and_flat_json_data_give_the_same_row_major_array():
    nested = single(json_body(tensor_json("x", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])))
    flat = single(json_body(tensor_json("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])))
    np.testing.assert_array_equal(nested, flat)
    np.testing.assert_array_equal(flat, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    strings = single(json_body(tensor_json("s", "BYTES", [2, 1], [["a"], ["b"]])))
    assert strings.shape == (2, 1) and strings.tolist() == [[b"a"], [b"b"]]


def test_json_integers_keep_their_exact_value_and_integral_floats_are_accepted():
    big = single(json_body(tensor_json("x", "UINT64", [3], [1, 2**64 - 1, 2**63 + 1])))  # float64 would round
    assert big.tolist() == [1, 2**64 - 1, 2**63 + 1] and big.dtype == np.uint64
    assert single(json_body(tensor_json("x", "INT32", [2], [1.0, -3.0]))).tolist() == [1, -3]


def test_empty_tensors_decode_from_json_and_binary():
    assert single(json_body(tensor_json("x", "INT32", [0, 3], []))).shape == (0, 3)
    header = json_body({"name": "x", "datatype": "FP32", "shape": [2, 0], "parameters": {"binary_data_size": 0}})
    assert single(header, len(header)).shape == (2, 0)


def test_id_parameters_timeout_and_requested_outputs_reach_the_request():
    body = json_body(tensor_json("x", "FP32", [1], [1.0]), id="abc",
                     parameters={"timeout": 2500, "priority": 1, "binary_data_output": True},
                     outputs=[{"name": "p", "parameters": {"binary_data": False}}, {"name": "q"}])
    request, fmt = decode(body)
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "abc")
    assert request.timeout_us == 2500 and request.requested_outputs == ("p", "q")
    assert request.parameters == {"timeout": 2500, "priority": 1}  # binary_data_output is only about encoding
    assert fmt == codec.OutputFormat(default_binary=True, binary={"p": False, "q": True})


def test_no_requested_outputs_means_every_output_in_the_default_format():
    request, fmt = decode(json_body(tensor_json("x", "FP32", [1], [1.0]), unknown_key={"ignored": True}))
    assert request.requested_outputs is None and request.timeout_us is None and request.id == ""
    assert fmt == codec.OutputFormat(default_binary=False, binary={})


# -- tritonclient.http's own bodies ---------------------------------------------------------------------------------


def test_tritonclient_binary_and_json_inputs_decode():
    httpclient = pytest.importorskip("tritonclient.http")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf = np.array([[1.5, -2.25]], ml_dtypes.bfloat16)
    s = np.array([b"\xff", b"ok"], dtype=object)
    i = np.array([[1, -2]], np.int32)
    inputs = [httpclient.InferInput("a", [2, 3], "FP16"), httpclient.InferInput("bf", [1, 2], "BF16"),
              httpclient.InferInput("s", [2], "BYTES"), httpclient.InferInput("i", [1, 2], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(bf)
    inputs[2].set_data_from_numpy(s)
    inputs[3].set_data_from_numpy(i, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False), httpclient.InferRequestedOutput("z")]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs, request_id="r1", timeout=1000)
    request, fmt = decode(body, json_size)
    got = {t.name: t.data for t in request.inputs}
    np.testing.assert_array_equal(got["a"], a)
    assert got["bf"].tolist() == [[0x3FC0, 0xC010]]
    assert got["s"].tolist() == [b"\xff", b"ok"]
    np.testing.assert_array_equal(got["i"], i)
    assert request.id == "r1" and request.timeout_us == 1000 and request.requested_outputs == ("y", "z")
    assert fmt.binary == {"y": False, "z": True}


def test_tritonclient_without_requested_outputs_asks_for_binary_outputs():
    httpclient = pytest.importorskip("tritonclient.http")
    x = httpclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.array([1.0], np.float32), binary_data=False)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([x])
    assert json_size is None
    _, fmt = decode(body, json_size)
    assert fmt.default_binary is True and fmt.binary == {}


def test_tritonclient_parses_json_and_binary_outputs_of_every_datatype():
    httpclient = pytest.importorskip("tritonclient.http")
    tensors = [(f"o_{n}", n, a) for n, a in NUMERIC.items()] + [("o_BYTES", "BYTES", STRINGS)]
    for default_binary in (False, True):
        body, length = codec.encode_infer_response(response(*tensors), codec.OutputFormat(default_binary, {}))
        assert (length is None) is (not default_binary)
        result = httpclient.InferenceServerClient.parse_response_body(body, header_length=length)
        for name, _, array in tensors:
            got = result.as_numpy(name)
            if array.dtype == object:  # JSON strings come back as str, binary as bytes
                got = np.array([e.encode() if isinstance(e, str) else e for e in got.ravel()],
                               dtype=object).reshape(got.shape)
            np.testing.assert_array_equal(got, array)
        assert result.get_response()["id"] == "req-7"


def test_tritonclient_reads_bf16_outputs_sent_binary_even_when_json_was_asked():
    httpclient = pytest.importorskip("tritonclient.http")
    body, length = codec.encode_infer_response(response(("y", "BF16", BF16)), codec.OutputFormat(False, {}))
    assert length is not None
    got = httpclient.InferenceServerClient.parse_response_body(body, header_length=length).as_numpy("y")
    np.testing.assert_array_equal(got.astype(np.float32), np.array([[1.5, -2.25, 0.0]], np.float32))


# -- outputs ----------------------------------------------------------------------------------------------------


def test_per_output_binary_flags_pick_binary_or_json_and_binary_follows_in_output_order():
    a, b, c = np.array([1.5, 2.5], np.float32), np.array([[1, 2]], np.int64), np.array([True])
    fmt = codec.OutputFormat(default_binary=True, binary={"a": True, "b": False})
    body, length = codec.encode_infer_response(response(("a", "FP32", a), ("b", "INT64", b), ("c", "BOOL", c)), fmt)
    header, rest = split(body, length)
    assert header["model_name"] == "m" and header["model_version"] == "1" and header["id"] == "req-7"
    assert [o["name"] for o in header["outputs"]] == ["a", "b", "c"]
    out_a, out_b, out_c = header["outputs"]
    assert out_a == {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
    assert out_b == {"name": "b", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}  # flat, as Triton sends
    assert out_c["parameters"] == {"binary_data_size": 1} and "data" not in out_c
    assert rest == encode_raw(a, "FP32") + encode_raw(c, "BOOL")


def test_all_json_outputs_have_no_header_length_and_carry_typed_values():
    fmt = codec.OutputFormat(False, {})
    tensors = [("b", "BOOL", np.array([[True, False]])), ("h", "FP16", np.array([0.5, -2], np.float16)),
               ("f", "FP32", np.array([0.1], np.float32)), ("s", "BYTES", np.array(["x", b"y"], dtype=object))]
    body, length = codec.encode_infer_response(response(*tensors), fmt)
    assert length is None
    data = {o["name"]: o["data"] for o in orjson.loads(body)["outputs"]}
    assert data == {"b": [True, False], "h": [0.5, -2.0], "f": [0.1], "s": ["x", "y"]}


def test_non_utf8_bytes_and_bf16_outputs_are_forced_binary():
    strings = np.array([b"ok", b"\xff"], dtype=object)
    body, length = codec.encode_infer_response(response(("s", "BYTES", strings), ("t", "BF16", BF16)),
                                               codec.OutputFormat(False, {"s": False, "t": False}))
    header, rest = split(body, length)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [len(encode_bytes(strings)), 6]
    assert rest == encode_bytes(strings) + BF16.tobytes()


def test_non_contiguous_and_big_endian_outputs_serialise_row_major():
    array = np.arange(6, dtype=">i4").reshape(2, 3).T  # neither contiguous nor native
    body, length = codec.encode_infer_response(response(("y", "INT32", array)), codec.OutputFormat(False, {}))
    assert orjson.loads(body)["outputs"][0]["data"] == array.ravel().tolist()
    body, length = codec.encode_infer_response(response(("y", "INT32", array)), codec.OutputFormat(True, {}))
    assert split(body, length)[1] == array.astype("<i4").tobytes()


_DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
           "FP32": np.float32, "FP64": np.float64}


@st.composite
def tensors(draw):
    name = draw(st.sampled_from(list(_DTYPES)))
    elements = st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(_DTYPES[name]).itemsize * 8) \
        if name.startswith("FP") else None
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return name, draw(hnp.arrays(_DTYPES[name], shape, elements=elements))


@settings(max_examples=200, deadline=None)
@given(tensors(), st.booleans())
def test_outputs_round_trip_into_inputs_through_json_and_binary(tensor, binary):
    """What encode_infer_response writes, fed back as an input, is the same array (JSON numbers included)."""
    name, array = tensor
    body, length = codec.encode_infer_response(response(("y", name, array)), codec.OutputFormat(binary, {}))
    header, rest = split(body, length)
    (out,) = header["outputs"]
    assert ("data" in out) is not binary
    out_input = {"name": "y", "datatype": name, "shape": out["shape"], **{k: out[k] for k in ("data", "parameters")
                                                                          if k in out}}
    request_header = json_body(out_input)
    back = single(request_header + rest, len(request_header) if binary else None)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == DATATYPES[name].dtype and back.shape == array.shape


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=6), st.booleans())
def test_bytes_outputs_round_trip_whatever_their_encoding(elements, binary):
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    body, length = codec.encode_infer_response(response(("s", "BYTES", array)), codec.OutputFormat(binary, {}))
    header, rest = split(body, length)
    (out,) = header["outputs"]
    if "data" in out:
        assert [e.encode() for e in out["data"]] == elements
    else:
        assert decode_raw("s", "BYTES", out["shape"], rest).tolist() == elements


# -- malformed requests ---------------------------------------------------------------------------------------------


GOOD = tensor_json("x", "FP32", [2], [1.0, 2.0])


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "request body is not valid JSON: "),
    (b"[1, 2]", "the request body must be a JSON object"),
    (b"{}", "'inputs' must be an array"),
    (json_body("x"), "inputs[0] must be an object with a string 'name'"),
    (json_body({"datatype": "FP32", "shape": [1], "data": [1]}), "inputs[0] must be an object with a string 'name'"),
    (json_body({"name": "x", "shape": [1], "data": [1]}), "input 'x': 'datatype' must be a string"),
    (json_body({"name": "x", "datatype": "FP32", "data": [1]}), "input 'x': 'shape' must be an array of integers"),
    (json_body(tensor_json("x", "FP32", [1.5], [1])), "input 'x': 'shape' must be an array of integers"),
    (json_body(tensor_json("x", "FP32", [-1], [])), "input 'x': shape [-1] has a negative dimension"),
    (json_body(tensor_json("x", "FLOAT", [1], [1])), "input 'x': unknown datatype 'FLOAT'"),
    (json_body({"name": "x", "datatype": "FP32", "shape": [1]}), "input 'x': give exactly one of 'data'"),
    (json_body({**GOOD, "parameters": {"binary_data_size": 8}}), "input 'x': give exactly one of 'data'"),
    (json_body(tensor_json("x", "FP32", [3], [1, 2])), "input 'x': 2 elements given but shape [3] needs 3"),
    (json_body(tensor_json("x", "FP32", [2, 2], [[1, 2], [3]])), "input 'x': data is not a regular nested array"),
    (json_body(tensor_json("x", "FP32", [1], 1.0)), "input 'x': data must be a JSON array"),
    (json_body(tensor_json("x", "BF16", [1], [1.0])), "input 'x': BF16 data cannot travel as JSON"),
    (json_body(tensor_json("x", "UINT8", [1], [256])), "input 'x': UINT8 data must be integers in [0, 255]"),
    (json_body(tensor_json("x", "INT8", [2], [0, -129])), "input 'x': INT8 data must be integers in [-128, 127]"),
    (json_body(tensor_json("x", "UINT64", [1], [-1])), "input 'x': UINT64 data must be integers"),
    (json_body(tensor_json("x", "INT32", [2], [1, 2.5])), "input 'x': INT32 data must be integers"),
    (json_body(tensor_json("x", "INT32", [1], [2**31])), "input 'x': INT32 data must be integers"),
    (json_body(tensor_json("x", "UINT64", [2], [-1, 2**64 - 1])), "input 'x': UINT64 data must be integers in [0, "),
    (json_body(tensor_json("x", "INT64", [2], [-1, 2**64 - 1])), "input 'x': INT64 data must be integers in ["),
    (json_body(tensor_json("x", "INT32", [3], [None, 1, 1])), "input 'x': INT32 data must be integers"),
    (json_body(tensor_json("x", "INT64", [2], [1.0, None])), "input 'x': INT64 data must be integers"),
    (json_body(tensor_json("x", "INT32", [2], [{"a": 1}, 1])), "input 'x': INT32 data must be integers"),
    (json_body(tensor_json("x", "FP32", [1], ["1.0"])), "input 'x': FP32 data must be numbers"),
    (json_body(tensor_json("x", "FP32", [1], [True])), "input 'x': FP32 data must be numbers"),
    (json_body(tensor_json("x", "FP32", [1], [None])), "input 'x': FP32 data must be numbers"),
    (json_body(tensor_json("x", "FP16", [1], [1e6])), "input 'x': FP16 data must be numbers within FP16's range"),
    (json_body(tensor_json("x", "BOOL", [2], [1, 0])), "input 'x': BOOL data must be true or false"),
    (json_body(tensor_json("x", "BYTES", [2], ["a", 1])), "input 'x': BYTES data must be strings"),
    (json_body(tensor_json("x", "BYTES", [2, 1], [["a"], "b"])), "input 'x': data is not a regular nested array"),
    (json_body(GOOD, id=7), "'id' must be a string"),
    (json_body(GOOD, parameters=[]), "'parameters' must be a JSON object"),
    (json_body({**GOOD, "parameters": 1}), "input 'x': 'parameters' must be a JSON object"),
    (json_body(GOOD, parameters={"binary_data_output": 1}), "'binary_data_output' must be a boolean"),
    (json_body(GOOD, outputs={"y": {}}), "'outputs' must be an array"),
    (json_body(GOOD, outputs=[{"parameters": {}}]), "outputs[0] must be an object with a string 'name'"),
    (json_body(GOOD, outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]), "output 'y': parameter 'binary"),
    (json_body(GOOD, parameters={"sequence_id": 5}), "must not specify a non-zero or non-empty correlation ID"),
    (json_body(GOOD, parameters={"sequence_id": "s"}), "must not specify a non-zero or non-empty correlation ID"),
    (json_body(GOOD, parameters={"timeout": -1}), "parameter 'timeout' must be a non-negative integer"),
    (json_body(GOOD, parameters={"timeout": 1.5}), "parameter 'timeout' must be a non-negative integer"),
    (json_body(GOOD, parameters={"timeout": True}), "parameter 'timeout' must be a non-negative integer"),
])
def test_malformed_json_requests_are_invalid_argument_naming_what_is_wrong(body, fragment):
    with rejects(fragment):
        decode(body)


def test_zero_sequence_id_and_zero_timeout_are_accepted():
    request, _ = decode(json_body(GOOD, parameters={"sequence_id": 0, "timeout": 0}))
    assert request.timeout_us is None


def x_binary(size: int) -> bytes:
    return json_body({"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": size}})


@pytest.mark.parametrize(("body", "length", "fragment"), [
    (x_binary(8) + b"\0" * 8, 10_000, f"inference-header-content-length 10000 must lie within the "
                                      f"{len(x_binary(8)) + 8}-byte body"),
    (x_binary(8) + b"\0" * 8, 0, "inference-header-content-length 0 must lie within"),
    (x_binary(8) + b"\0" * 8, -1, "inference-header-content-length -1 must lie within"),
    (x_binary(8) + b"\0" * 8, 20, "request body is not valid JSON"),
    (x_binary(12) + b"\0" * 8, len(x_binary(12)), "input 'x': binary_data_size 12 runs past the end of the body, "
                                                  "which has 8 bytes left"),
    (x_binary(8) + b"\0" * 11, len(x_binary(8)), "3 unexpected bytes follow the binary tensors"),
    (json_body(GOOD), len(json_body(GOOD)) - 1, "request body is not valid JSON"),
    (json_body(GOOD) + b"\0", len(json_body(GOOD)), "1 unexpected bytes follow the binary tensors"),
    (x_binary(4) + b"\0" * 4, len(x_binary(4)), "input 'x': raw content is 4 bytes but shape [2] of FP32 needs 8"),
    (x_binary(-1), len(x_binary(-1)), "input 'x': binary_data_size must be a non-negative integer"),
])
def test_malformed_binary_requests_are_invalid_argument(body, length, fragment):
    with rejects(fragment):
        decode(body, length)


def test_binary_input_without_the_header_says_which_header_is_missing():
    with rejects(f"input 'x': binary_data_size 8 runs past the end of the body, which has 0 bytes left "
                 f"(binary tensors need the {codec.HEADER_LENGTH} header)"):
        decode(x_binary(8))


def test_malformed_binary_bytes_and_bool_are_refused_by_the_raw_layout_checks():
    header = json_body({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}})
    with rejects("input 's': BYTES element 0 is truncated"):
        decode(header + struct.pack("<I", 5) + b"ab", len(header))
    header = json_body({"name": "b", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": 1}})
    with rejects("input 'b': BOOL elements must be 0 or 1"):
        decode(header + b"\x02", len(header))


@pytest.mark.parametrize(("body", "fragment"), [
    (json_body({**GOOD, "parameters": {"shared_memory_region": "r"}}), "input 'x': shared memory is not supported"),
    (json_body(GOOD, outputs=[{"name": "y", "parameters": {"classification": 3}}]), "output 'y': the classification"),
    (json_body(GOOD, outputs=[{"name": "y", "parameters": {"shared_memory_region": "r"}}]), "output 'y': shared"),
])
def test_shared_memory_and_classification_are_unimplemented(body, fragment):
    with rejects(fragment, ErrorCode.UNIMPLEMENTED):
        decode(body)


# -- KServe v1 predict ----------------------------------------------------------------------------------------------


ONE = [TensorView("x", "FP32", (-1, 3))]
TWO = [TensorView("ids", "INT64", (-1, 2)), TensorView("text", "BYTES", (-1,))]


def test_v1_single_input_rows_are_stacked_into_a_batch():
    request = codec.decode_v1_predict(b'{"instances": [[1, 2, 3], [4, 5, 6]]}', "m", "2", ONE)
    (x,) = request.inputs
    assert (request.model_name, request.model_version, x.name, x.datatype, x.shape) == ("m", "2", "x", "FP32", (2, 3))
    np.testing.assert_array_equal(x.data, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    keyed = codec.decode_v1_predict(b'{"instances": [{"x": [1, 2, 3]}]}', "m", "", ONE).inputs[0]
    assert keyed.shape == (1, 3)


def test_v1_multi_input_instances_are_objects_keyed_by_input_name():
    body = orjson.dumps({"instances": [{"ids": [1, 2], "text": "a"}, {"text": "b", "ids": [3, 4]}]})
    ids, text = codec.decode_v1_predict(body, "m", "", TWO).inputs
    assert ids.shape == (2, 2) and ids.data.dtype == np.int64 and ids.data.tolist() == [[1, 2], [3, 4]]
    assert text.shape == (2,) and text.data.tolist() == [b"a", b"b"]


def test_v1_columnar_inputs():
    ids, text = codec.decode_v1_predict(b'{"inputs": {"ids": [[1, 2]], "text": ["z"]}}', "m", "", TWO).inputs
    assert ids.shape == (1, 2) and text.data.tolist() == [b"z"]
    (x,) = codec.decode_v1_predict(b'{"inputs": [[1, 2, 3]]}', "m", "", ONE).inputs
    assert x.shape == (1, 3)


@pytest.mark.parametrize(("body", "inputs", "fragment"), [
    (b"nope", ONE, "request body is not valid JSON"),
    (b'{"rows": []}', ONE, "needs 'instances' (rows) or 'inputs' (columns)"),
    (b'{"instances": []}', ONE, "'instances' must be a non-empty array of rows"),
    (b'{"instances": [[1, 2, 3], [4]]}', ONE, "input 'x': data is not a regular nested array"),
    (b'{"instances": [["a", "b", "c"]]}', ONE, "input 'x': FP32 data must be numbers"),
    (b'{"instances": [[1, 2], [3, 4]]}', TWO, "instances[0] must be an object keyed by input name (ids, text)"),
    (b'{"instances": [{"ids": [1, 2]}]}', TWO, "instances[0] lacks input 'text'"),
    (b'{"instances": [{"ids": [1, 2], "text": "a", "z": 1}]}', TWO, "instances[0] has 'z', which is not an input"),
    (b'{"instances": [{"ids": [1, 2], "text": 5}]}', TWO, "input 'text': BYTES data must be strings"),
    (b'{"inputs": [[1, 2]]}', TWO, "'inputs' must be an object keyed by input name"),
])
def test_v1_predict_errors_name_what_is_wrong(body, inputs, fragment):
    with rejects(fragment):
        codec.decode_v1_predict(body, "m", "", inputs)


def test_v1_predictions_of_one_output_are_its_rows():
    body = codec.encode_v1_predict(response(("y", "FP32", np.array([[0.5, 1.5], [2.5, 3.5]], np.float32))))
    assert orjson.loads(body) == {"predictions": [[0.5, 1.5], [2.5, 3.5]]}


def test_v1_predictions_of_several_outputs_are_one_object_per_row():
    labels = np.array([b"cat", b"\xff"], dtype=object)
    body = codec.encode_v1_predict(response(("label", "BYTES", labels), ("p", "FP64", np.array([[0.9], [0.8]])),
                                            ("w", "BF16", np.array([0x3FC0, 0x4000], np.uint16))))
    assert orjson.loads(body) == {"predictions": [
        {"label": "cat", "p": [0.9], "w": 1.5},
        {"label": {"b64": base64.b64encode(b"\xff").decode()}, "p": [0.8], "w": 2.0}]}


def test_v1_outputs_without_a_common_batch_dimension_are_refused():
    with rejects("do not share a batch dimension"):
        codec.encode_v1_predict(response(("a", "FP32", np.zeros((2,), np.float32)),
                                         ("b", "FP32", np.zeros((3,), np.float32))))


# -- metadata, config, statistics, repository, errors --------------------------------------------------------------


def test_server_and_model_metadata_json():
    assert orjson.loads(codec.server_metadata_json("srv", "0.1", ("binary_tensor_data", "model_repository"))) == {
        "name": "srv", "version": "0.1", "extensions": ["binary_tensor_data", "model_repository"]}
    view = ModelMetadataView("m", ("1", "2"), "onnxruntime_onnx", (TensorView("x", "FP32", (-1, 3)),),
                             (TensorView("y", "BYTES", (-1,)),))
    assert orjson.loads(codec.model_metadata_json(view)) == {
        "name": "m", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}]}


def config_view(**overrides) -> ModelConfigView:
    fields = dict(name="m", platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8,
                  version_policy=VersionPolicy(kind="latest", latest=2), inputs=(TensorView("x", "FP16", (3,)),),
                  outputs=(TensorView("y", "BYTES", (-1, 2)),), instance_count=2, gpu=True,
                  default_model_filename="model.onnx",
                  dynamic_batching=BatchingView(max_queue_delay_us=500, preferred_batch_size=(4, 8),
                                                max_queue_size=16), response_cache=True)
    return ModelConfigView(**{**fields, **overrides})


def test_model_config_json_is_tritons_shape_with_numbers_for_64_bit_integers():
    config = orjson.loads(codec.model_config_json(config_view()))
    assert config == {
        "name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 8,
        "version_policy": {"latest": {"num_versions": 2}},
        "input": [{"name": "x", "data_type": "TYPE_FP16", "dims": [3]}],
        "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": [-1, 2]}],
        "instance_group": [{"name": "m_0", "kind": "KIND_GPU", "count": 2}],
        "default_model_filename": "model.onnx",
        "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 500,
                             "default_queue_policy": {"max_queue_size": 16}},
        "response_cache": {"enable": True}}


def test_model_config_json_without_batching_or_cache_and_other_version_policies():
    config = orjson.loads(codec.model_config_json(config_view(
        max_batch_size=0, dynamic_batching=None, response_cache=False, gpu=False,
        version_policy=VersionPolicy(kind="specific", specific=("1", "3")))))
    assert "dynamic_batching" not in config and "response_cache" not in config
    assert config["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["max_batch_size"] == 0
    config = orjson.loads(codec.model_config_json(config_view(version_policy=VersionPolicy(kind="all"))))
    assert config["version_policy"] == {"all": {}}


def test_model_config_json_is_the_same_model_config_the_grpc_endpoint_answers():
    json_format = pytest.importorskip("google.protobuf.json_format")
    from inference_server.grpc import codec as grpc_codec
    from inference_server.protocol._generated import model_config_pb2 as mc
    for view in (config_view(), config_view(dynamic_batching=None, response_cache=False, max_batch_size=0,
                                            version_policy=VersionPolicy(kind="specific", specific=("2",)))):
        parsed = json_format.Parse(codec.model_config_json(view), mc.ModelConfig())
        assert parsed == grpc_codec.model_config(view).config


def test_model_statistics_json_has_tritons_fields_and_matches_the_grpc_answer():
    stats = ModelStats()
    stats.record_batch(rows=3, queue_s=[0.001, 0.002], input_s=0.0001, infer_s=0.002, output_s=0.0003)
    stats.record_request(None, 0.004)
    stats.record_request(ErrorCode.INTERNAL, 0.001)
    stats.record_cache(True, 0.00001)
    views = [StatisticsView("m", "1", snapshot(stats)), StatisticsView("n", "2", snapshot(ModelStats()))]
    doc = orjson.loads(codec.model_statistics_json(views))
    first = doc["model_stats"][0]
    assert (first["name"], first["version"], first["inference_count"], first["execution_count"]) == ("m", "1", 3, 1)
    assert first["last_inference"] == stats.last_inference_ms > 0
    assert first["inference_stats"]["success"] == {"count": 1, "ns": 4_000_000}
    assert first["inference_stats"]["fail"] == {"count": 1, "ns": 1_000_000}
    assert first["inference_stats"]["queue"]["count"] == 3 and first["inference_stats"]["cache_hit"]["count"] == 1
    assert set(first["inference_stats"]) == {"success", "fail", "queue", "compute_input", "compute_infer",
                                             "compute_output", "cache_hit", "cache_miss"}
    assert first["batch_stats"] == [{"batch_size": 3, "compute_input": {"count": 1, "ns": 100_000},
                                     "compute_infer": {"count": 1, "ns": 2_000_000},
                                     "compute_output": {"count": 1, "ns": 300_000}}]
    assert first["response_stats"] == {} and first["memory_usage"] == []
    assert doc["model_stats"][1]["batch_stats"] == []
    json_format = pytest.importorskip("google.protobuf.json_format")
    from inference_server.grpc import codec as grpc_codec
    from inference_server.protocol._generated import grpc_service_pb2 as pb
    parsed = json_format.Parse(codec.model_statistics_json(views), pb.ModelStatisticsResponse())
    assert parsed == grpc_codec.model_statistics(views)


def test_repository_index_leaves_out_empty_version_and_reason_as_triton_does():
    entries = [IndexEntry("a", "1", "READY", ""), IndexEntry("b", "", "UNAVAILABLE", "not loaded"),
               IndexEntry("c", "2", "UNAVAILABLE", "unloaded")]
    assert orjson.loads(codec.repository_index_json(entries)) == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "state": "UNAVAILABLE", "reason": "not loaded"},
        {"name": "c", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert codec.repository_index_json([]) == b"[]"


def test_load_parameters_parse_config_files_and_version():
    config = {"name": "m", "max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]}
    body = orjson.dumps({"parameters": {"config": orjson.dumps(config).decode(), "version": 2,
                                        "file:2/model.onnx": base64.b64encode(b"\x08\x07onnx").decode()}})
    assert codec.load_parameters(body) == (orjson.dumps(config).decode(), {"2/model.onnx": b"\x08\x07onnx"}, "2")
    assert codec.load_parameters(b'{"parameters": {"version": "3", "unload_dependents": false}}') == (None, {}, "3")
    assert codec.load_parameters(b"") == (None, {}, None)
    assert codec.load_parameters(b"  \n") == (None, {}, None)
    assert codec.load_parameters(b"{}") == (None, {}, None)


def test_load_parameters_from_tritonclient():
    httpclient = pytest.importorskip("tritonclient.http")
    captured = {}

    class Sent(Exception):
        pass

    def post(request_uri, request_body, headers, query_params):
        captured["body"] = request_body
        raise Sent  # the body is all this test needs

    client = httpclient.InferenceServerClient.__new__(httpclient.InferenceServerClient)
    client._verbose, client._closed = False, True
    client._post = post
    with pytest.raises(Sent):
        client.load_model("m", config='{"max_batch_size": 2}', files={"file:1/model.onnx": b"\x00\xff"})
    assert codec.load_parameters(captured["body"].encode()) == ('{"max_batch_size": 2}', {"1/model.onnx": b"\0\xff"},
                                                               None)
    with pytest.raises(Sent):
        client.unload_model("m", unload_dependents=True)
    assert codec.unload_parameters(captured["body"].encode()) == (None, True)


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{", "request body is not valid JSON"),
    (b'{"parameters": []}', "'parameters' must be a JSON object"),
    (b'{"parameters": {"file:1/model.onnx": "not base64!"}}', "parameter 'file:1/model.onnx' must be the file's "
                                                             "content in base64"),
    (b'{"parameters": {"file:1/model.onnx": 5}}', "parameter 'file:1/model.onnx' must be the file's content"),
    (b'{"parameters": {"config": {"name": "m"}}}', "parameter 'config' must be a string"),
    (b'{"parameters": {"version": 0}}', "parameter 'version' must be a positive version number"),
    (b'{"parameters": {"version": "v2"}}', "parameter 'version' must be a positive version number"),
    (b'{"parameters": {"version": "\xc2\xb2"}}', "parameter 'version' must be a positive version number"),
    (b'{"parameters": {"version": true}}', "parameter 'version' must be a positive version number"),
    (b'{"parameters": {"warmup": true}}', "unknown parameter 'warmup'"),
])
def test_bad_load_parameters_are_invalid_argument(body, fragment):
    with rejects(fragment):
        codec.load_parameters(body)


def test_unload_parameters():
    assert codec.unload_parameters(b"") == (None, False)
    assert codec.unload_parameters(b'{"parameters": {"unload_dependents": false}}') == (None, False)
    assert codec.unload_parameters(b'{"parameters": {"unload_dependents": true}}') == (None, True)
    assert codec.unload_parameters(b'{"parameters": {"version": 4}}') == ("4", False)
    with rejects("parameter 'unload_dependents' must be a boolean"):
        codec.unload_parameters(b'{"parameters": {"unload_dependents": "yes"}}')
    with rejects("unknown parameter 'config'"):
        codec.unload_parameters(b'{"parameters": {"config": "{}"}}')
    with rejects("parameter 'version' must be a positive"):
        codec.unload_parameters(b'{"parameters": {"version": -1}}')


def test_error_json_and_a_status_for_every_error_code():
    assert orjson.loads(codec.error_json('bad "x"')) == {"error": 'bad "x"'}
    assert set(codec.STATUS) == set(ErrorCode)
    assert codec.STATUS[ErrorCode.INVALID_ARGUMENT] == 400 and codec.STATUS[ErrorCode.NOT_FOUND] == 404
    assert codec.STATUS[ErrorCode.UNAVAILABLE] == 503 and codec.STATUS[ErrorCode.UNIMPLEMENTED] == 501
    assert codec.HEADER_LENGTH == codec.HEADER_LENGTH.lower() == "inference-header-content-length"
