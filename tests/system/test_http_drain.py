"""SIGTERM/SIGINT drain of a real server process through its HTTP front end: requests in flight are answered, new
ones are refused while it drains, the port closes and the process exits 0 (the embedded uvicorn never takes the
process's signals from the App)."""

from __future__ import annotations

import http.client
import json
import signal
import threading

import pytest

from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system

IN_FLIGHT = 8  # about 0.25 s a row here (slow(3072)): the drain outlasts the checks made during it
SLOW_INPUT = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})


@pytest.fixture
def slow_repository(tmp_path):
    onnx_models.write_model(tmp_path / "repo", "slow", onnx_models.slow(3072), "[batching]\nmax_batch_size = 1\n")
    return tmp_path / "repo"


def call(port: int, method: str, path: str, body: str = "", timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_http_requests_in_flight_refuses_new_ones_and_exits_0(launch, slow_repository, sig):
    port = free_port()
    server = launch("--model-repository", str(slow_repository), "--http-port", str(port))
    assert f"HTTP on port {port}" in server.log()
    assert call(port, "GET", "/v2/health/ready")[0] == 200
    answers: list[tuple[int, bytes]] = []
    failures: list[BaseException] = []
    started = threading.Barrier(IN_FLIGHT + 1)

    def infer() -> None:
        started.wait()
        try:
            status, _, body = call(port, "POST", "/v2/models/slow/infer", SLOW_INPUT)
            answers.append((status, body))
        except BaseException as e:  # handed to the test thread
            failures.append(e)

    threads = [threading.Thread(target=infer) for _ in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    started.wait()
    # The requests are in, queued behind one another (one row per batch): all but the executing one counted.
    wait_until(lambda: server.accepted("slow") >= IN_FLIGHT - 1, "the requests to arrive")
    server.proc.send_signal(sig)
    wait_until(lambda: call(port, "GET", "/v2/health/ready")[0] == 400, "the drain to begin")
    assert server.proc.poll() is None  # still draining what it accepted
    status, _, body = call(port, "GET", "/v2/health/ready")
    assert (status, body) == (400, b"")  # not ready while it drains
    assert call(port, "GET", "/v2/health/live")[0] == 200
    status, headers, body = call(port, "POST", "/v2/models/slow/infer", SLOW_INPUT, timeout=10)
    assert status == 503 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "server is shutting down"}
    assert headers["connection"] == "close"  # so a client's next request opens a connection elsewhere
    for t in threads:
        t.join(60)
    assert failures == [] and len(answers) == IN_FLIGHT  # every accepted request was answered...
    for status, body in answers:
        assert status == 200, body  # ...with its result
        (y,) = json.loads(body)["outputs"]
        assert (y["name"], y["shape"]) == ("y", [1, 1]) and y["data"][0] > 0
    assert server.proc.wait(30) == 0, server.log()
    log = server.log()
    assert "draining" in log and "stopped" in log and "Traceback" not in log
    with pytest.raises(ConnectionRefusedError):  # the port closed with the process
        call(port, "GET", "/v2/health/live", timeout=5)
