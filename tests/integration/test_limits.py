"""[server.limits] against a real server with small limits, through tritonclient (gRPC and HTTP) and raw sockets:
each violation gets its status and a message naming the limit, at once (nothing is allocated for a payload the
limits refuse), and the server keeps serving. The stream limits are observed in the batches the server runs."""

from __future__ import annotations

import dataclasses
import gzip
import json
import queue
import socket
import struct
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inference_server.config.model import BatchingConfig
from inference_server.config.server import MAX_GRPC_MESSAGE_BYTES, LimitsConfig, ModelConfig
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, server_config
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

LIMITS = LimitsConfig(max_request_bytes=64 * 1024, max_tensor_elements=1024, max_tensor_bytes=2048,
                      max_request_elements=1536, max_bytes_element_bytes=64, max_concurrent_streams=4,
                      max_requests_per_stream=2)
# HTTP's limits, and the gRPC message limit the native engine is refused: on the grpcio server only, the one with
# every limit of LIMITS (max_request_bytes also bounds HTTP bodies; HTTP does not depend on the gRPC engine).
GRPCIO_ONLY = pytest.mark.parametrize("grpc_engine", ["grpcio"], indirect=True)
QUICK_S = 2.0  # a refusal comes well within this; reading or building the payload would not (or never end)
DELAY_US = 300_000  # `gather` runs what it holds after this long, or at once with 64 rows


@pytest.fixture(scope="module")
def server(repository, grpc_engine):
    """The test repository with small limits, plus `gather`: mlp with a long queue delay, so requests in flight
    together run as one batch, and a batch's rows show how many were in flight. The native engine is refused a
    lowered max_request_bytes (it reads a message whole before it can refuse it), so it runs without one."""
    cfg = server_config(repository, http_port=free_port(), grpc_engine=grpc_engine)
    limits = LIMITS if grpc_engine == "grpcio" else dataclasses.replace(LIMITS,
                                                                        max_request_bytes=MAX_GRPC_MESSAGE_BYTES)
    gather = ModelConfig(name="gather", path=repository / "mlp" / "1" / "model.onnx",
                         batching=BatchingConfig(max_batch_size=64, max_queue_delay_us=DELAY_US,
                                                 preferred_batch_size=(64,)))
    thread = ServerThread(dataclasses.replace(cfg, limits=limits, models=cfg.models + (gather,))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
    with grpcclient.InferenceServerClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def http_client(server):
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}") as client:
        yield client


def grpc_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def http_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def ones(width: int, rows: int = 1) -> np.ndarray:
    return np.ones((rows, width), np.float32)


def assert_still_serving(grpc_client, http_client) -> None:
    assert grpc_client.infer("mlp", [grpc_input("x", ones(8), "FP32")]).as_numpy("y").shape == (1, 4)
    assert http_client.infer("mlp", [http_input("x", ones(8), "FP32")]).as_numpy("y").shape == (1, 4)


def grpc_refusal(call) -> tuple[str, str, float]:
    start = time.perf_counter()
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message(), time.perf_counter() - start


def new_batches(server, before: dict[int, int]) -> dict[int, int]:
    after = server.batches("gather")
    return {rows: n - before.get(rows, 0) for rows, n in after.items() if n > before.get(rows, 0)}


# -- gRPC ----------------------------------------------------------------------------------------------------------

def test_grpc_a_shape_of_2_to_the_40_elements_with_no_data_is_refused_at_once(server, grpc_client, http_client):
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[2**20, 2**20])
    request.raw_input_contents.append(b"")
    with grpc.insecure_channel(server.url) as channel:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        elapsed = time.perf_counter() - start
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("input 'x': shape [1048576, 1048576] holds 1099511627776 elements, which exceeds "
                                 "max_tensor_elements (1024)")
    assert elapsed < QUICK_S
    assert_still_serving(grpc_client, http_client)


@pytest.mark.parametrize("model, inputs, fragment", [
    ("mlp", lambda: [grpc_input("x", ones(600), "FP32")],
     "input 'x': 600 elements of FP32 are 2400 bytes, which exceeds max_tensor_bytes (2048)"),
    ("text", lambda: [grpc_input("text", np.array([b"ok", b"z" * 100], dtype=np.object_), "BYTES")],
     "input 'text': BYTES element 1 is 100 bytes, which exceeds max_bytes_element_bytes (64)"),
    ("types", lambda: [grpc_input("in_INT8", np.zeros((1, 800), np.int8), "INT8"),
                       grpc_input("in_UINT8", np.zeros((1, 800), np.uint8), "UINT8")],
     "input 'in_UINT8' brings the request to 1600 elements, which exceeds max_request_elements (1536)"),
], ids=["tensor bytes", "bytes element", "request elements"])
def test_grpc_tensor_limits_are_invalid_argument_naming_the_limit(grpc_client, http_client, model, inputs, fragment):
    status, message, elapsed = grpc_refusal(lambda: grpc_client.infer(model, inputs()))
    assert (status, message) == ("StatusCode.INVALID_ARGUMENT", fragment)
    assert elapsed < QUICK_S
    assert_still_serving(grpc_client, http_client)


@GRPCIO_ONLY  # the native engine is refused this setting (tests/unit/test_grpc_engine.py)
def test_grpc_a_message_over_max_request_bytes_is_resource_exhausted(grpc_client, http_client):
    status, message, _ = grpc_refusal(lambda: grpc_client.infer("mlp", [grpc_input("x", ones(20_000), "FP32")]))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert "larger than max" in message and "65536" in message  # grpc's own words, with the limit's value
    assert_still_serving(grpc_client, http_client)


def test_grpc_a_stream_answers_a_request_over_a_limit_with_its_message_and_goes_on(server):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("mlp", [grpc_input("x", ones(8, rows=200), "FP32")], request_id="big")
        client.async_stream_infer("mlp", [grpc_input("x", ones(8), "FP32")], request_id="fine")
        got = [answers.get(timeout=10) for _ in range(2)]
        client.stop_stream()
    errors = [e.message() for _, e in got if e is not None]
    assert errors == ["input 'x': shape [200, 8] holds 1600 elements, which exceeds max_tensor_elements (1024)"]
    assert [r.get_response().id for r, e in got if e is None] == ["fine"]


def test_grpc_a_stream_has_at_most_max_requests_per_stream_in_flight(server):
    """Six requests sent at once on one stream: with two at most in flight, `gather` never holds more than two
    rows, so every batch has two at most (without the limit the six run together after DELAY_US)."""
    before = server.batches("gather")
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(6):
            client.async_stream_infer("gather", [grpc_input("x", ones(8), "FP32")], request_id=f"s{i}")
        got = [answers.get(timeout=30) for _ in range(6)]
        client.stop_stream()
    assert [e for _, e in got] == [None] * 6
    assert sorted(r.get_response().id for r, _ in got) == [f"s{i}" for i in range(6)]
    batches = new_batches(server, before)
    assert sum(rows * n for rows, n in batches.items()) == 6 and max(batches) <= 2, batches


def test_grpc_one_connection_has_at_most_max_concurrent_streams_calls_at_once(server):
    """Eight calls at once on one connection: four at most are open at a time (the client holds the others back), so
    `gather` never holds more than four rows. A call the client starts as soon as it sees one end may reach the
    server before the server has released that stream: gRPC refuses it (RST_STREAM REFUSED_STREAM) and the client
    sees UNAVAILABLE, the status to retry; the model never sees it."""
    before = server.batches("gather")
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_server_live()  # the connection is up and the server's settings are known
        for i in range(8):
            client.async_infer("gather", [grpc_input("x", ones(8), "FP32")],
                               callback=lambda result, error: answers.put((result, error)), request_id=f"c{i}")
        got = [answers.get(timeout=30) for _ in range(8)]
    refused = [e for _, e in got if e is not None]
    assert all(e.status() == "StatusCode.UNAVAILABLE" and "RST_STREAM" in e.message() for e in refused), refused
    served = 8 - len(refused)
    assert served >= 4
    batches = new_batches(server, before)
    assert sum(rows * n for rows, n in batches.items()) == served and max(batches) <= 4, batches


# -- HTTP ----------------------------------------------------------------------------------------------------------

def raw_http(port: int, head: bytes, body: bytes = b"", wait_s: float = 10.0) -> tuple[int, dict, float]:
    """Sends a request as given (a Content-Length may promise more than is sent); (status, JSON body, seconds)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.perf_counter() - start
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2]), elapsed


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return int(value)
    return 0


def post(path: str, length: int, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
            f"{headers}\r\n").encode()


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_a_huge_content_length_is_413_without_waiting_for_the_body(server):
    status, answer, elapsed = raw_http(server.app.http_port, post("/v2/models/mlp/infer", 2**40), b'{"inp')
    assert status == 413
    assert answer == {"error": f"request body of {2**40} bytes exceeds the limit of {64 * 1024} bytes"}
    assert elapsed < QUICK_S


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_a_body_that_inflates_past_max_request_bytes_is_413(server):
    bomb = gzip.compress(b" " * (LIMITS.max_request_bytes * 64))
    status, answer, _ = raw_http(server.app.http_port,
                                 post("/v2/models/mlp/infer", len(bomb), "Content-Encoding: gzip\r\n"), bomb)
    assert (status, answer) == (413, {"error": f"decompressed request body exceeds the limit of {64 * 1024} bytes"})


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_a_shape_of_2_to_the_40_elements_with_no_data_is_400_at_once(server, grpc_client, http_client):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**20, 2**20], "data": []}]}).encode()
    status, answer, elapsed = raw_http(server.app.http_port, post("/v2/models/mlp/infer", len(body)), body)
    assert status == 400 and elapsed < QUICK_S
    assert answer == {"error": "input 'x': shape [1048576, 1048576] holds 1099511627776 elements, which exceeds "
                               "max_tensor_elements (1024)"}
    assert_still_serving(grpc_client, http_client)


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_json_data_longer_than_its_shape_is_400(server):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 5000}]})
    status, answer, _ = raw_http(server.app.http_port, post("/v2/models/mlp/infer", len(body)), body.encode())
    assert (status, answer) == (400, {"error": "input 'x': 5000 elements given but shape [1, 8] needs 8"})


@pytest.mark.parametrize("model, inputs, fragment", [
    ("mlp", lambda: [http_input("x", ones(600), "FP32")],
     "input 'x': 600 elements of FP32 are 2400 bytes, which exceeds max_tensor_bytes (2048)"),
    ("mlp", lambda: [http_input("x", ones(8, rows=200), "FP32", binary=False)],
     "input 'x': shape [200, 8] holds 1600 elements, which exceeds max_tensor_elements (1024)"),
    ("text", lambda: [http_input("text", np.array([b"z" * 100], dtype=np.object_), "BYTES")],
     "input 'text': BYTES element 0 is 100 bytes, which exceeds max_bytes_element_bytes (64)"),
    ("text", lambda: [http_input("text", np.array(["\u00e9" * 40], dtype=np.object_), "BYTES", binary=False)],
     "input 'text': BYTES element 0 is 80 bytes, which exceeds max_bytes_element_bytes (64)"),
    ("types", lambda: [http_input("in_INT8", np.zeros((1, 800), np.int8), "INT8"),
                       http_input("in_UINT8", np.zeros((1, 800), np.uint8), "UINT8", binary=False)],
     "input 'in_UINT8' brings the request to 1600 elements, which exceeds max_request_elements (1536)"),
], ids=["tensor bytes", "tensor elements as JSON", "bytes element", "bytes element as JSON", "request elements"])
@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_tensor_limits_are_400_naming_the_limit(grpc_client, http_client, model, inputs, fragment):
    with pytest.raises(InferenceServerException) as e:
        http_client.infer(model, inputs())
    assert (e.value.status(), e.value.message()) == ("400", fragment)
    assert_still_serving(grpc_client, http_client)


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_http_v1_predict_rows_past_max_tensor_elements_are_400(server):
    body = json.dumps({"instances": [[0.5] * 8] * 200}).encode()
    status, answer, _ = raw_http(server.app.http_port, post("/v1/models/mlp:predict", len(body)), body)
    assert (status, answer) == (400, {"error": "input 'x': data of 1600 elements exceeds max_tensor_elements (1024)"})


@GRPCIO_ONLY  # HTTP: max_request_bytes is set on the grpcio server only
def test_bytes_framing_is_what_the_limit_reads(server):
    """A BYTES element that declares 2**31 bytes in a 12-byte binary tensor: named by its limit, not 'truncated'."""
    blob = struct.pack("<I", 2**31) + b"8 bytes."
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    status, answer, elapsed = raw_http(
        server.app.http_port,
        post("/v2/models/text/infer", len(header) + len(blob), f"Inference-Header-Content-Length: {len(header)}\r\n"),
        header + blob)
    assert status == 400 and elapsed < QUICK_S
    assert answer == {"error": "input 'text': BYTES element 0 is 2147483648 bytes, which exceeds "
                               "max_bytes_element_bytes (64)"}
