"""Malformed requests get a clear status and message, and the next good request is served."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.url) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


def request(model="mlp", rows=1, width=8, datatype="FP32", name="x", raw: bytes | None = None, **kw):
    r = pb.ModelInferRequest(model_name=model, **kw)
    r.inputs.add(name=name, datatype=datatype, shape=[rows, width])
    itemsize = 8 if datatype in ("FP64", "INT64") else 4
    r.raw_input_contents.append(raw if raw is not None else b"\0" * (rows * width * itemsize))
    return r


def mixed_contents():
    r = request()
    r.inputs[0].contents.fp32_contents.extend([0.0] * 8)
    return r


def duplicate_input():
    r = request()
    r.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    r.raw_input_contents.append(b"\0" * 32)
    return r


def missing_input():
    return pb.ModelInferRequest(model_name="mlp")


def unknown_output():
    r = request()
    r.outputs.add(name="logits")
    return r


def bad_bytes_framing():
    r = pb.ModelInferRequest(model_name="text")
    r.inputs.add(name="text", datatype="BYTES", shape=[1])
    r.raw_input_contents.append(b"\x09\x00\x00\x00abc")
    return r


CASES = [
    # (case, request, status, message fragment)
    ("unknown model", lambda: request(model="nope"), "NOT_FOUND", "unknown model: 'nope'"),
    ("unknown version", lambda: request(model_version="9"), "NOT_FOUND", "'mlp' version 9 is not found"),
    ("unknown input", lambda: request(name="z"), "INVALID_ARGUMENT", "unexpected input 'z' for model 'mlp'"),
    ("missing input", missing_input, "INVALID_ARGUMENT", "missing input 'x' for model 'mlp'"),
    ("duplicate input", duplicate_input, "INVALID_ARGUMENT", "input 'x' is given more than once"),
    ("wrong datatype", lambda: request(datatype="FP64"), "INVALID_ARGUMENT",
     "datatype FP64 does not match the model's FP32"),
    ("unknown datatype", lambda: request(datatype="FP8"), "INVALID_ARGUMENT", "unknown datatype 'FP8'"),
    ("wrong non-batch shape", lambda: request(width=7), "INVALID_ARGUMENT",
     "shape [1, 7] does not match the model's [-1, 8]"),
    ("raw length not matching shape", lambda: request(raw=b"\0" * 31), "INVALID_ARGUMENT",
     "raw content is 31 bytes but shape [1, 8] of FP32 needs 32 bytes"),
    ("raw and typed contents mixed", mixed_contents, "INVALID_ARGUMENT",
     "contents field must not be specified when using raw_input_contents"),
    ("batch over max_batch_size", lambda: request(rows=65), "INVALID_ARGUMENT",
     "batch size 65 exceeds the maximum batch size 64"),
    ("zero rows", lambda: request(rows=0), "INVALID_ARGUMENT", "batch size must be at least 1"),
    ("unknown output", unknown_output, "INVALID_ARGUMENT", "unknown output 'logits'"),
    ("bad BYTES framing", bad_bytes_framing, "INVALID_ARGUMENT", "BYTES element 0 is truncated"),
    ("model returns the wrong row count", lambda: request(model="drops_row", rows=2, width=4), "INTERNAL",
     "returned output 'y' with 1 rows for a batch of 2 rows"),
]


def assert_next_good_request_is_served(server):
    with grpcclient.InferenceServerClient(server.url) as client:
        x = grpcclient.InferInput("x", [1, 8], "FP32")
        x.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("mlp", [x]).as_numpy("y").shape == (1, 4)


@pytest.mark.parametrize("case, build, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_status_then_the_next_is_served(server, stub, case, build, status, fragment):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(build(), timeout=10)
    assert e.value.code().name == status, e.value.details()
    assert fragment in e.value.details()
    assert_next_good_request_is_served(server)


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 11, b"\x3a\x05abc"])
def test_garbage_bytes_as_the_protobuf_body(server, channel, body):
    call = channel.unary_unary(METHOD)  # no serializer: the bytes go out as they are
    with pytest.raises(grpc.RpcError) as e:
        call(body, timeout=10)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest protobuf message" in e.value.details()
    assert_next_good_request_is_served(server)


def test_metadata_calls_for_unknown_models_are_not_found_and_unknown_models_are_not_ready(stub):
    # Triton answers ModelReady for an unknown model (or version) with ready = false, not an error.
    assert stub.ModelReady(pb.ModelReadyRequest(name="ghost"), timeout=10).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="99"), timeout=10).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready is True
    for call, message in ((stub.ModelMetadata, pb.ModelMetadataRequest), (stub.ModelConfig, pb.ModelConfigRequest)):
        with pytest.raises(grpc.RpcError) as e:
            call(message(name="ghost"), timeout=10)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND and "'ghost'" in e.value.details()
