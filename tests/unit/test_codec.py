"""Every v2 datatype through the raw and typed layouts, BYTES framing, size checks and the protobuf codec."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_server.errors import ErrorCode, InferenceError
from inference_server.grpc import codec
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol.tensors import (
    DATATYPES,
    InferResponse,
    Tensor,
    aligned_empty,
    bytes_to_text,
    decode_bytes,
    decode_raw,
    decode_values,
    encode_bytes,
    encode_raw,
)
from tests.support.datatype_samples import NUMERIC


@contextlib.contextmanager
def rejects(code: ErrorCode, fragment: str):
    with pytest.raises(InferenceError) as info:
        yield
    assert info.value.code is code, info.value
    assert fragment in info.value.message, info.value.message


@pytest.mark.parametrize("name", list(NUMERIC))
def test_raw_round_trip_of_every_fixed_size_datatype(name):
    array = NUMERIC[name]
    raw = encode_raw(array, name)
    assert len(raw) == array.size * DATATYPES[name].itemsize
    back = decode_raw("x", name, array.shape, raw)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype


def test_raw_decoding_does_not_copy_an_aligned_buffer():
    buffer = aligned_empty((24,), np.dtype(np.uint8))  # a misaligned one is copied: tests/unit/test_alignment.py
    buffer[:] = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), np.uint8)
    array = decode_raw("x", "FP32", (2, 3), memoryview(buffer).toreadonly())
    assert np.shares_memory(array, buffer) and not array.flags.writeable


@pytest.mark.parametrize("name", [n for n in NUMERIC if n != "FP16"])
def test_typed_contents_of_every_datatype_that_has_a_field(name):
    array = NUMERIC[name]
    back = decode_values("x", name, array.shape, array.ravel().tolist())
    np.testing.assert_array_equal(back, array)


def test_raw_size_is_checked_against_shape_before_use():
    with rejects(ErrorCode.INVALID_ARGUMENT, "raw content is 8 bytes but shape [1, 3] of FP32 needs 12 bytes"):
        decode_raw("x", "FP32", (1, 3), b"\0" * 8)


def test_huge_shape_with_small_buffer_is_refused_without_allocating():
    with rejects(ErrorCode.INVALID_ARGUMENT, "needs 4000000000000 bytes"):
        decode_raw("x", "FP32", (10**6, 10**6), b"\0" * 4)
    with rejects(ErrorCode.INVALID_ARGUMENT, "cannot hold 1000000000000 elements"):
        decode_raw("x", "BYTES", (10**6, 10**6), b"\0" * 4)


def test_empty_shape_whose_other_dimensions_overflow_is_refused():
    """[0, 1541, 2197335, 340487230] holds no element, but numpy cannot even describe it (found by hypothesis)."""
    shape = (0, 1541, 2197335, 340487230)
    with rejects(ErrorCode.INVALID_ARGUMENT, "is too large"):
        decode_values("x", "FP64", shape, [])
    with rejects(ErrorCode.INVALID_ARGUMENT, "is too large"):
        decode_raw("x", "FP32", shape, b"")


def test_negative_dimension_is_refused():
    with rejects(ErrorCode.INVALID_ARGUMENT, "negative dimension"):
        decode_raw("x", "FP32", (-1, 3), b"")


def test_unknown_datatype_is_refused():
    with rejects(ErrorCode.INVALID_ARGUMENT, "unknown datatype 'FP8'"):
        decode_raw("x", "FP8", (1,), b"\0")


def test_bool_bytes_other_than_zero_or_one_are_refused():
    with rejects(ErrorCode.INVALID_ARGUMENT, "BOOL elements must be 0 or 1"):
        decode_raw("x", "BOOL", (2,), b"\x01\x02")


def test_typed_value_out_of_range_is_refused():
    with rejects(ErrorCode.INVALID_ARGUMENT, "out of range for INT8"):
        decode_values("x", "INT8", (1,), [300])


@pytest.mark.parametrize("name", ["FP16", "BF16"])
def test_fp16_and_bf16_have_no_typed_contents(name):
    with rejects(ErrorCode.INVALID_ARGUMENT, "must be sent in raw_input_contents"):
        decode_values("x", name, (1,), [1.0])


def test_typed_element_count_must_match_shape():
    with rejects(ErrorCode.INVALID_ARGUMENT, "2 elements given but shape [3] needs 3"):
        decode_values("x", "INT32", (3,), [1, 2])


def test_bf16_is_two_bytes_of_the_fp32_upper_half():
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    raw = b"".join(struct.pack("<f", v)[2:4] for v in values)  # tritonclient's serialize_bf16_tensor
    bits = decode_raw("x", "BF16", (3,), raw)
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), values)
    assert encode_raw(bits, "BF16") == raw


def test_bytes_framing_is_a_little_endian_length_then_the_bytes():
    array = np.array([b"ab", b"", b"\x00\xff"], dtype=object)
    raw = encode_bytes(array)
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\x00\xff"
    assert decode_bytes(raw, 3, "x").tolist() == [b"ab", b"", b"\x00\xff"]


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_framing_round_trips_any_bytes(elements):
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    assert decode_raw("x", "BYTES", (len(elements),), encode_raw(array, "BYTES")).tolist() == elements


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=8))
def test_bytes_decoding_of_garbage_fails_cleanly_or_consumes_everything(raw, count):
    try:
        out = decode_bytes(raw, count, "x")
    except InferenceError as e:
        assert e.code is ErrorCode.INVALID_ARGUMENT and "'x'" in e.message
    else:
        assert len(encode_bytes(out)) == len(raw)


@pytest.mark.parametrize("raw, count, fragment", [
    (b"\x05\x00\x00\x00ab", 1, "element 0 is truncated"),
    (b"\x03\x00\x00\x00abc\x01\x00", 2, "element 1 is missing its 4-byte length"),
    (b"\x01\x00\x00\x00a\x00", 1, "1 bytes after its 1 elements"),
])
def test_bad_bytes_framing_is_refused(raw, count, fragment):
    with rejects(ErrorCode.INVALID_ARGUMENT, fragment):
        decode_bytes(raw, count, "x")


def test_bytes_become_exact_text_and_non_utf8_names_the_input():
    text = bytes_to_text(np.array([["héllo".encode(), b"a\x00b"]], dtype=object), "words")
    assert text.tolist() == [["héllo", "a\x00b"]] and all(type(t) is str for t in text.ravel())
    with rejects(ErrorCode.INVALID_ARGUMENT, "input 'words': BYTES element 1 is not valid UTF-8"):
        bytes_to_text(np.array([b"ok", b"\xff\xfe"], dtype=object), "words")


# -- the protobuf codec -------------------------------------------------------------------------


def infer_request(**inputs_raw) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    for name, (datatype, array) in inputs_raw.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(encode_raw(array, datatype))
    return request


def test_decode_request_reads_raw_inputs_ids_outputs_and_parameters():
    request = infer_request(a=("FP32", np.ones((2, 3), np.float32)), b=("INT64", np.arange(2, dtype=np.int64)))
    request.outputs.add(name="y")
    request.parameters["timeout"].int64_param = 2500
    request.parameters["priority"].uint64_param = 1
    request.parameters["custom"].string_param = "kept"
    decoded = codec.decode_request(request)
    assert decoded.id == "r1" and decoded.model_name == "m"
    assert [(t.name, t.datatype, t.shape) for t in decoded.inputs] == [("a", "FP32", (2, 3)), ("b", "INT64", (2,))]
    assert decoded.requested_outputs == ("y",)
    assert decoded.timeout_us == 2500
    assert decoded.parameters["custom"] == "kept" and decoded.parameters["priority"] == 1


def test_decode_request_reads_typed_contents():
    request = pb.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="a", datatype="INT16", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    s = request.inputs.add(name="s", datatype="BYTES", shape=[2])
    s.contents.bytes_contents.extend([b"x", b"yz"])
    decoded = codec.decode_request(request)
    assert decoded.inputs[0].data.dtype == np.int16 and decoded.inputs[0].data.tolist() == [1, -2, 3]
    assert decoded.inputs[1].data.tolist() == [b"x", b"yz"]


def test_raw_and_typed_contents_mixed_are_refused():
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.inputs[0].contents.fp32_contents.extend([1.0, 1.0])
    with rejects(ErrorCode.INVALID_ARGUMENT, "contents field must not be specified when using raw_input_contents"):
        codec.decode_request(request)


def test_raw_count_must_match_input_count():
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    with rejects(ErrorCode.INVALID_ARGUMENT, "1 raw_input_contents given for 2 inputs"):
        codec.decode_request(request)


def test_sequence_ids_and_unsupported_extensions_are_refused_not_ignored():
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.parameters["sequence_id"].int64_param = 7
    with rejects(ErrorCode.INVALID_ARGUMENT, "correlation ID"):
        codec.decode_request(request)
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.outputs.add(name="y").parameters["classification"].int64_param = 3
    with rejects(ErrorCode.UNIMPLEMENTED, "classification"):
        codec.decode_request(request)
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    with rejects(ErrorCode.UNIMPLEMENTED, "shared memory"):
        codec.decode_request(request)


def test_negative_timeout_is_refused():
    request = infer_request(a=("FP32", np.ones(2, np.float32)))
    request.parameters["timeout"].int64_param = -1
    with rejects(ErrorCode.INVALID_ARGUMENT, "timeout"):
        codec.decode_request(request)


def test_encode_response_has_one_raw_blob_per_output_in_order():
    outputs = [Tensor("b", "INT32", (2,), np.array([1, 2], np.int32)),
               Tensor("a", "BYTES", (1,), np.array(["hé"], dtype=object))]
    out = codec.encode_response(InferResponse("m", "3", "r9", outputs))
    assert (out.model_name, out.model_version, out.id) == ("m", "3", "r9")
    assert [o.name for o in out.outputs] == ["b", "a"]
    assert list(out.outputs[0].shape) == [2]
    assert out.raw_output_contents[0] == np.array([1, 2], "<i4").tobytes()
    assert out.raw_output_contents[1] == b"\x03\x00\x00\x00" + "hé".encode()
    assert not out.outputs[0].HasField("contents")


DATATYPE_NAMES = [*DATATYPES, "FP8", "", "fp32"]


@st.composite
def arbitrary_requests(draw) -> pb.ModelInferRequest:
    """ModelInferRequests with any datatypes, shapes, raw blobs, typed contents and parameters."""
    request = pb.ModelInferRequest(model_name=draw(st.text(max_size=5)), id=draw(st.text(max_size=5)))
    use_raw = draw(st.booleans())
    for i in range(draw(st.integers(0, 3))):
        t = request.inputs.add(name=f"in{i}", datatype=draw(st.sampled_from(DATATYPE_NAMES)),
                               shape=draw(st.lists(st.integers(-2, 2**40), max_size=4)))
        if use_raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        if draw(st.booleans()):
            t.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    if use_raw and draw(st.booleans()):
        request.raw_input_contents.append(b"extra")
    for key in draw(st.lists(st.sampled_from(["timeout", "sequence_id", "priority", "x"]), max_size=3)):
        request.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return request


@given(arbitrary_requests())
def test_decoding_any_request_either_succeeds_consistently_or_is_a_clean_client_error(request):
    try:
        decoded = codec.decode_request(request)
    except InferenceError as e:
        assert e.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.UNIMPLEMENTED) and e.message
    else:
        for tensor in decoded.inputs:
            assert tensor.data.shape == tensor.shape
            assert tensor.datatype in DATATYPES
