"""Malformed HTTP requests get the right status and a JSON error, and the next good request is served: every case of
the gRPC bad-input tests, then what only HTTP has (JSON, the binary header, compression, body limits, routes)."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import ServerThread, server_config
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024  # max_message_bytes of the `limited` server


@pytest.fixture(scope="module")
def server(repository):
    thread = ServerThread(server_config(repository, http_port=free_port())).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def limited(repository):
    thread = ServerThread(server_config(repository, http_port=free_port(), max_message_bytes=LIMIT)).start()
    yield thread
    thread.stop()


def exchange(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if own:
            conn.close()


def assert_next_good_request_is_served(port: int) -> None:
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        x = httpclient.InferInput("x", [1, 8], "FP32")
        x.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("mlp", [x]).as_numpy("y").shape == (1, 4)


def doc(inputs: list[dict] | None = None, **top) -> dict:
    return {"inputs": [tensor()] if inputs is None else inputs, **top}


def tensor(name="x", rows=1, width=8, datatype="FP32", data=None, **fields) -> dict:
    if data is None and "parameters" not in fields:
        data = [0] * (rows * width) if datatype != "BYTES" else ["a"] * (rows * width)
    t = {"name": name, "shape": [rows, width], "datatype": datatype, **fields}
    if data is not None:
        t["data"] = data
    return t


def as_json(document: dict) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


def as_binary(document: dict, blob: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    length = len(header) if header_length is None else header_length
    return header + blob, {"Inference-Header-Content-Length": str(length)}


def binary_input(name="x", size=32, rows=1, width=8, datatype="FP32") -> dict:
    return tensor(name, rows, width, datatype, parameters={"binary_data_size": size})


INFER = "/v2/models/mlp/infer"

CASES = [
    # (case, path, (body, headers), status, message fragment): the gRPC bad-input cases first
    ("unknown model", "/v2/models/nope/infer", as_json(doc()), 404, "unknown model: 'nope'"),
    ("unknown version", "/v2/models/mlp/versions/9/infer", as_json(doc()), 404, "'mlp' version 9 is not found"),
    ("unknown input", INFER, as_json(doc([tensor("z")])), 400, "unexpected input 'z' for model 'mlp'"),
    ("missing input", INFER, as_json(doc([])), 400, "missing input 'x' for model 'mlp'"),
    ("duplicate input", INFER, as_json(doc([tensor(), tensor()])), 400, "input 'x' is given more than once"),
    ("wrong datatype", INFER, as_json(doc([tensor(datatype="FP64")])), 400,
     "datatype FP64 does not match the model's FP32"),
    ("unknown datatype", INFER, as_json(doc([tensor(datatype="FP8")])), 400, "unknown datatype 'FP8'"),
    ("wrong non-batch shape", INFER, as_json(doc([tensor(width=7)])), 400,
     "shape [1, 7] does not match the model's [-1, 8]"),
    ("raw length not matching shape", INFER, as_binary(doc([binary_input(size=31)]), b"\0" * 31), 400,
     "raw content is 31 bytes but shape [1, 8] of FP32 needs 32 bytes"),
    ("binary and JSON data mixed", INFER,
     as_binary(doc([tensor(parameters={"binary_data_size": 32}, data=[0] * 8)]), b"\0" * 32), 400,
     "give exactly one of 'data' and parameters.binary_data_size"),
    ("batch over max_batch_size", INFER, as_json(doc([tensor(rows=65)])), 400,
     "batch size 65 exceeds the maximum batch size 64"),
    ("zero rows", INFER, as_json(doc([tensor(rows=0, data=[])])), 400, "batch size must be at least 1"),
    ("unknown output", INFER, as_json(doc(outputs=[{"name": "logits"}])), 400, "unknown output 'logits'"),
    ("bad BYTES framing", "/v2/models/text/infer",
     as_binary({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 7}}]}, b"\x09\x00\x00\x00abc"), 400,
     "BYTES element 0 is truncated"),
    ("model returns the wrong row count", "/v2/models/drops_row/infer",
     as_json(doc([tensor(rows=2, width=4)])), 500, "returned output 'y' with 1 rows for a batch of 2 rows"),
    # what only HTTP has
    ("malformed JSON", INFER, (b'{"inputs": [', {}), 400, "request body is not valid JSON"),
    ("JSON that is not an object", INFER, (b"[1, 2]", {}), 400, "must be a JSON object"),
    ("inputs not an array", INFER, as_json({"inputs": {"x": [1]}}), 400, "'inputs' must be an array"),
    ("non-UTF-8 in the JSON", INFER, (b'{"inputs": [], "id": "\xff"}', {}), 400, "not valid JSON"),
    ("binary tensors without the header", INFER, (json.dumps(doc([binary_input()])).encode() + b"\0" * 32, {}),
     400, "not valid JSON"),
    ("binary header length past the body", INFER, as_binary(doc([binary_input()]), b"\0" * 32, 10_000), 400,
     "10000 must lie within the"),
    ("binary header length shorter than the JSON", INFER, as_binary(doc([binary_input()]), b"\0" * 32, 5), 400,
     "not valid JSON"),
    ("binary header length not a number", INFER,
     (as_binary(doc([binary_input()]), b"\0" * 32)[0], {"Inference-Header-Content-Length": "ten"}), 400,
     "Inference-Header-Content-Length must be a non-negative integer below 10**18, got 'ten'"),
    ("binary header length a digit int() refuses", INFER,
     (as_binary(doc([binary_input()]), b"\0" * 32)[0], {"Inference-Header-Content-Length": "\u00b2"}), 400,
     "Inference-Header-Content-Length must be a non-negative integer below 10**18, got '\u00b2'"),
    ("binary header length of 5000 digits", INFER,
     (as_binary(doc([binary_input()]), b"\0" * 32)[0], {"Inference-Header-Content-Length": "9" * 5000}), 400,
     "Inference-Header-Content-Length must be a non-negative integer below 10**18, got '999"),
    ("truncated binary tensor", INFER, as_binary(doc([binary_input()]), b"\0" * 16), 400,
     "binary_data_size 32 runs past the end of the body, which has 16 bytes left"),
    ("bytes after the binary tensors", INFER, as_binary(doc([binary_input()]), b"\0" * 40), 400,
     "8 unexpected bytes follow the binary tensors"),
    ("JSON element count not matching shape", INFER, as_json(doc([tensor(data=[0.0] * 7)])), 400,
     "7 elements given but shape [1, 8] needs 8"),
    ("ragged nested JSON data", INFER, as_json(doc([tensor(rows=2, data=[[0.0] * 8, [0.0] * 7])])), 400,
     "not a regular nested array"),
    ("strings for a number input", INFER, as_json(doc([tensor(data=["1"] * 8)])), 400, "FP32 data must be numbers"),
    ("a float for an integer input", "/v2/models/types/infer",
     as_json(doc([tensor("in_INT32", width=3, datatype="INT32", data=[1, 2.5, 3])])), 400,
     "INT32 data must be integers"),
    ("an integer out of range", "/v2/models/types/infer",
     as_json(doc([tensor("in_UINT8", width=3, datatype="UINT8", data=[1, 300, 3])])), 400,
     "UINT8 data must be integers in [0, 255]"),
    ("BF16 as JSON", "/v2/models/bf16/infer",
     as_json(doc([tensor("in_BF16", width=3, datatype="BF16", data=[1.0, 2.0, 3.0])])), 400,
     "BF16 data cannot travel as JSON"),
    ("a bad timeout parameter", INFER, as_json(doc(parameters={"timeout": -5})), 400,
     "parameter 'timeout' must be a non-negative integer"),
    ("shared memory", INFER,
     as_json(doc([tensor(data=None, parameters={"shared_memory_region": "r", "shared_memory_byte_size": 32})])),
     501, "shared memory is not supported"),
    ("an unsupported Content-Encoding", INFER, (b"...", {"Content-Encoding": "br"}), 415,
     "unsupported Content-Encoding 'br'"),
    ("a corrupt gzip body", INFER, (b"this is not gzip", {"Content-Encoding": "gzip"}), 400,
     "not valid compressed data"),
    ("a truncated gzip body", INFER, (gzip.compress(as_json(doc())[0])[:-12], {"Content-Encoding": "gzip"}), 400,
     "the compressed request body is truncated"),
]


@pytest.mark.parametrize("case, path, request_, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_its_status_and_a_json_error_then_the_next_is_served(server, case, path, request_, status,
                                                                             fragment):
    body, headers = request_
    got, response_headers, content = exchange(server.app.http_port, "POST", path, body, headers)
    assert got == status, content
    assert response_headers["content-type"] == "application/json"
    assert fragment in json.loads(content)["error"]
    assert_next_good_request_is_served(server.app.http_port)


def test_unknown_routes_are_404_and_wrong_methods_405_in_json(server):
    port = server.app.http_port
    for method, path in (("GET", "/v2/nothing/here"), ("POST", "/v3/models/mlp/infer"), ("GET", "/")):
        status, headers, content = exchange(port, method, path)
        assert status == 404 and headers["content-type"] == "application/json"
        assert json.loads(content) == {"error": f"no such endpoint: {method} {path}"}
    for method, path, allowed in (("GET", INFER, "POST"), ("POST", "/v2/health/live", "GET"),
                                  ("DELETE", "/v2/models/mlp", "GET"), ("GET", "/v2/repository/index", "POST")):
        status, headers, content = exchange(port, method, path)
        assert status == 405 and headers["content-type"] == "application/json", (method, path)
        assert json.loads(content) == {"error": f"method {method} is not allowed on {path}"}
        assert allowed in headers["allow"]
    assert_next_good_request_is_served(port)


def test_metadata_of_unknown_models_is_404_and_unknown_models_are_not_ready(server):
    port = server.app.http_port
    for path in ("/v2/models/ghost", "/v2/models/ghost/config", "/v2/models/ghost/stats",
                 "/v2/models/mlp/versions/99", "/v2/models/mlp/versions/99/config"):
        status, headers, content = exchange(port, "GET", path)
        assert status == 404 and headers["content-type"] == "application/json", path
        assert "ghost" in json.loads(content)["error"] or "99" in json.loads(content)["error"]
    for path in ("/v2/models/ghost/ready", "/v2/models/mlp/versions/99/ready"):
        assert exchange(port, "GET", path)[0::2] == (400, b"")
    assert exchange(port, "GET", "/v2/models/mlp/ready")[0::2] == (200, b"")


def test_bad_repository_request_bodies_are_400(server):
    port = server.app.http_port
    for path, body, fragment in (
            ("/v2/repository/index", b"{nope", "not valid JSON"),
            ("/v2/repository/index", b'{"ready": "yes"}', 'optional boolean "ready"'),
            ("/v2/repository/models/mlp/load", b'{"parameters": {"config": 5}}', "parameter 'config' must be"),
            ("/v2/repository/models/mlp/unload", b'{"parameters": {"colour": 1}}', "unknown parameter 'colour'")):
        status, _, content = exchange(port, "POST", path, body)
        assert status == 400 and fragment in json.loads(content)["error"], (path, content)
    assert_next_good_request_is_served(port)


def test_a_body_over_the_limit_is_413_before_it_is_read(limited):
    port = limited.app.http_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        status, headers, content = exchange(port, "POST", INFER, b"\0" * (LIMIT + 1), conn=conn)
        assert status == 413 and headers["content-type"] == "application/json"
        assert json.loads(content) == {"error": f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes"}
        # The same connection serves the next request: the refused body was read past, not left in the stream.
        body, json_headers = as_json(doc([tensor(data=[0.5] * 8)]))
        status, _, content = exchange(port, "POST", INFER, body, json_headers, conn=conn)
        assert status == 200 and [o["name"] for o in json.loads(content)["outputs"]] == ["y", "h"]
    finally:
        conn.close()
    assert_next_good_request_is_served(port)


def test_a_chunked_body_over_the_limit_is_413_while_it_is_read(limited):
    port = limited.app.http_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", INFER, body=iter([b"\0" * 16384] * 5), encode_chunked=True)  # no Content-Length
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == {"error": f"request body exceeds the limit of {LIMIT} bytes"}
    finally:
        conn.close()
    assert_next_good_request_is_served(port)


def test_a_compressed_body_that_inflates_past_the_limit_is_413(limited):
    bomb = gzip.compress(b" " * (LIMIT * 16))  # about 1 KiB on the wire
    assert len(bomb) < LIMIT
    status, _, content = exchange(limited.app.http_port, "POST", INFER, bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    assert json.loads(content) == {"error": f"decompressed request body exceeds the limit of {LIMIT} bytes"}
    # Within the limit, compressed or not, it is served.
    body, headers = as_json(doc([tensor(data=[0.25] * 8)]))
    assert exchange(limited.app.http_port, "POST", INFER, gzip.compress(body),
                    {**headers, "Content-Encoding": "gzip"})[0] == 200
    assert_next_good_request_is_served(limited.app.http_port)


def test_a_connection_that_closes_before_sending_its_whole_body_leaves_the_server_serving(server):
    port = server.app.http_port
    for sent in (b"", b'{"inputs": ['):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + sent)
        assert_next_good_request_is_served(port)
    # A request line that is not HTTP at all: uvicorn answers 400 and closes; the server goes on.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01garbage\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 400")
    assert_next_good_request_is_served(port)


def test_bytes_framing_length_past_the_element_data_is_400(server):
    framed = struct.pack("<I", 2) + b"ok" + struct.pack("<I", 100) + b"short"
    body, headers = as_binary({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": len(framed)}}]}, framed)
    status, _, content = exchange(server.app.http_port, "POST", "/v2/models/text/infer", body, headers)
    assert status == 400 and "BYTES element 1 is truncated" in json.loads(content)["error"]


# -- clients that stall, lie or flood: the connection is bounded and the server keeps serving ----------------


def raw_exchange(port: int, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send bytes as they are and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_request_head_that_stops_arriving_is_answered_408_and_closed(server, monkeypatch):
    from inference_server.http import transport

    monkeypatch.setattr(transport, "HEAD_TIMEOUT_S", 0.3)
    answer = raw_exchange(server.app.http_port, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.3 s" in answer
    assert_next_good_request_is_served(server.app.http_port)


def test_headers_past_the_head_limit_are_refused_431(server):
    from inference_server.http import transport

    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (transport.MAX_HEAD_BYTES + 1024)
    answer = raw_exchange(server.app.http_port, head)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"error"' in answer
    assert_next_good_request_is_served(server.app.http_port)


def test_a_body_shorter_than_its_content_length_is_answered_408(server, monkeypatch):
    from inference_server.http import bodies

    monkeypatch.setattr(bodies, "BODY_IDLE_TIMEOUT_S", 0.3)
    body = json.dumps(doc()).encode()
    head = (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + 100}\r\n\r\n").encode()
    answer = raw_exchange(server.app.http_port, head + body)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"no part of the request body arrived" in answer
    assert b"connection: close" in answer.lower()
    assert_next_good_request_is_served(server.app.http_port)


def test_integer_data_holding_null_or_an_object_is_400_not_500(server):
    for data in ([None, 1, 1], [{"a": 1}, 1, 2]):
        body, headers = as_json(doc([tensor("in_INT32", width=3, datatype="INT32", data=data)]))
        status, _, answer = exchange(server.app.http_port, "POST", "/v2/models/types/infer", body, headers)
        assert status == 400 and "INT32 data must be integers" in json.loads(answer)["error"]
    assert_next_good_request_is_served(server.app.http_port)


def test_gzip_bodies_of_many_members_are_refused(server):
    body, headers = as_json(doc())
    members = gzip.compress(body) + gzip.compress(b"") * 200
    status, _, answer = exchange(server.app.http_port, "POST", "/v2/models/mlp/infer", members,
                                 {**headers, "Content-Encoding": "gzip"})
    assert status == 400 and "more than 64 gzip members" in json.loads(answer)["error"]
    assert_next_good_request_is_served(server.app.http_port)


def test_json_tensors_past_the_json_limit_are_refused_413_pointing_at_binary(server, monkeypatch):
    from inference_server.http import server as http_server

    monkeypatch.setattr(http_server, "MAX_JSON_BYTES", 200)
    body, headers = as_json(doc([tensor(rows=8)]))
    assert len(body) > 200
    status, _, answer = exchange(server.app.http_port, "POST", "/v2/models/mlp/infer", body, headers)
    assert status == 413 and "send the tensors binary" in json.loads(answer)["error"]
    assert_next_good_request_is_served(server.app.http_port)


def test_an_explicit_q0_wins_over_a_wildcard_in_accept_encoding(server):
    body, headers = as_json(doc())
    for accept, expected in (("gzip;q=0, *", "deflate"), ("*", "gzip"), ("gzip;q=0, deflate;q=0, *", None),
                             ("identity", None)):
        status, answer_headers, _ = exchange(server.app.http_port, "POST", "/v2/models/mlp/infer", body,
                                             {**headers, "Accept-Encoding": accept})
        assert status == 200 and answer_headers.get("content-encoding") == expected, accept
