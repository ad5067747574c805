"""HTTP deadlines and clients that leave: a request whose timeout header runs out while it waits is answered 504
and never runs; one whose client closes the connection leaves the queue and never runs either."""

from __future__ import annotations

import asyncio
import http.client
import json

import pytest

from tests.conftest import ServerThread, server_config
from tests.integration.test_concurrency import slow_model_kept_busy
from tests.support.server_process import free_port
from tests.support.waiting import until

pytestmark = pytest.mark.integration

SLOW_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
SLOW_PATH = "/v2/models/slow/infer"


@pytest.fixture(scope="module")
def server(repository):
    thread = ServerThread(server_config(repository, http_port=free_port())).start()
    yield thread
    thread.stop()


def post(port: int, path: str, body: str, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def cancelled_requests(server: ServerThread, model: str) -> int:
    return server.app.registry.find(model).stats.failures["CANCELED"]  # Triton's reason


@pytest.mark.parametrize("header", ["Request-Timeout-Ms", "X-Envoy-Expected-Rq-Timeout-Ms"])
async def test_a_timeout_header_expires_a_request_waiting_behind_busy_batches(server, header):
    async with slow_model_kept_busy(server):  # checks on exit that the model ran nothing else
        status, body = await asyncio.to_thread(post, server.app.http_port, SLOW_PATH, SLOW_BODY, {header: "10"})
    assert status == 504, body
    assert "timeout expired" in body["error"]


def test_a_generous_timeout_header_is_answered(server):
    status, body = post(server.app.http_port, SLOW_PATH, SLOW_BODY, {"Request-Timeout-Ms": "60000"})
    assert status == 200 and body["outputs"][0]["shape"] == [1, 1]


async def test_a_client_that_disconnects_removes_its_queued_request(server):
    before = cancelled_requests(server, "slow")
    async with slow_model_kept_busy(server):  # checks on exit that the model ran nothing else
        in_flight = server.app.gate.in_flight
        reader, writer = await asyncio.open_connection("127.0.0.1", server.app.http_port)
        writer.write(f"POST {SLOW_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(SLOW_BODY)}\r\n\r\n{SLOW_BODY}".encode())
        await writer.drain()
        await until(lambda: server.app.gate.in_flight > in_flight, "the request to be read and queued")
        writer.close()
        await writer.wait_closed()
        # It leaves the queue when its client goes (the exit check: the model never ran it), not when its turn came.
        await until(lambda: cancelled_requests(server, "slow") == before + 1, "the request to be counted cancelled")


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", ""])
def test_a_bad_timeout_header_is_a_client_error_naming_it(server, value):
    status, body = post(server.app.http_port, "/v2/models/mlp/infer",
                        json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}]}),
                        {"Request-Timeout-Ms": value})
    assert status == 400
    assert "request-timeout-ms" in body["error"] and "milliseconds" in body["error"]
