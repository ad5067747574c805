"""Several server processes on one port (--workers N, SO_REUSEPORT) under one supervisor."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.support import onnx_models
from tests.support.server_process import ServerProcess, free_port

pytestmark = pytest.mark.system

MODEL = onnx_models.mlp([8, 16, 4])
BATCH_LINE = re.compile(r"model 'mlp': executed (\d+) batches")


@pytest.fixture
def repo(tmp_path):
    onnx_models.write_model(tmp_path / "repo", "mlp", MODEL)
    return tmp_path / "repo"


def worker_pids(server: ServerProcess) -> list[int]:
    match = re.search(r"started 2 worker processes .* \(pids (\d+), (\d+)\)", server.log())
    assert match, server.log()
    return [int(match[1]), int(match[2])]


def infer_on_new_connections(url: str, count: int) -> None:
    x = grpcclient.InferInput("x", [1, 8], "FP32")
    data = np.arange(8, dtype=np.float32).reshape(1, 8)
    x.set_data_from_numpy(data)
    for _ in range(count):  # a channel per call: the kernel spreads connections, not calls
        with grpcclient.InferenceServerClient(url) as client:
            assert client.infer("mlp", [x]).as_numpy("y").shape == (1, 4)


def test_two_workers_share_the_port_and_drain_on_sigterm(launch, repo, grpc_engine):
    server = launch("--model-repository", str(repo), "--workers", "2", "--grpc-engine", grpc_engine).wait_workers(2)
    pids = worker_pids(server)
    infer_on_new_connections(server.url, 40)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    served = [int(n) for n in BATCH_LINE.findall(server.log())]
    assert len(served) == 2 and sum(served) == 40, served  # every worker drained and reported
    assert all(served), f"one worker got no connection out of 40: {served}"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_worker_stops_the_server(launch, repo):
    server = launch("--model-repository", str(repo), "--workers", "2")
    first, second = worker_pids(server)
    os.kill(first, signal.SIGKILL)
    assert server.proc.wait(30) != 0
    assert "exited with -9; stopping the others" in server.log()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


def test_workers_refuse_a_port_already_in_use(tmp_path, repo):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # The last --port wins over the one ServerProcess picks.
        busy = ServerProcess(["--model-repository", str(repo), "--workers", "2", "--port", str(port)],
                             tmp_path / "busy.log")
        assert busy.proc.wait(30) == 1
        assert f"cannot listen: 127.0.0.1:{port} (--port) is in use" in busy.log()


def test_workers_refuse_to_start_when_the_http_port_is_taken(repo):
    import subprocess
    import sys

    from tests.support.server_process import ROOT, free_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "inference_server", "--workers", "2", "--port", str(free_port()),
                               "--metrics-port", "0", "--http-port", str(taken), "--model-repository", str(repo)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot listen: 127.0.0.1:{taken} (--http-port) is in use" in done.stderr


def pod_metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The supervisor's one endpoint (its own log line names the port it bound)."""
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log())[1]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_pods_one_scrape_and_its_statistics_count_every_workers_requests(launch, repo, grpc_engine):
    http_port = free_port()
    server = launch("--model-repository", str(repo), "--workers", "2", "--http-port", str(http_port),
                    "--grpc-engine", grpc_engine).wait_workers(2)
    infer_on_new_connections(server.url, 40)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}).encode()
    for _ in range(10):  # urllib: a connection per request
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp/infer", body, timeout=10).read()
    mlp = (("model", "mlp"), ("version", "1"))

    samples = pod_metrics(server)
    assert samples[("inference_requests_total", (("code", "OK"), *mlp))] == 50
    assert samples[("nv_inference_request_success", mlp)] == 50
    assert samples[("inference_batch_rows_sum", mlp)] == 50  # a histogram, summed bucket by bucket
    assert samples[("inference_pod_workers", (("scrape", "answered"),))] == 2
    assert samples[("inference_max_queue_size", mlp)] == 2 * 256  # one queue per worker
    # a gauge of state each worker holds on its own: one series per worker
    assert {dict(labels)["worker"] for name, labels in samples
            if name == "inference_model_state" and dict(labels)["state"] == "READY"} == {"0", "1"}

    for _ in range(6):  # new connections, so both workers answer some: each counts the pod's requests
        with grpcclient.InferenceServerClient(server.url) as client:
            stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) == 50
        assert int(stats["inference_count"]) == 50
        http_stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp/stats",
                                                       timeout=10).read())["model_stats"][0]
        assert http_stats["inference_stats"]["success"]["count"] == 50
    assert server.terminate() == 0
    served = [int(n) for n in BATCH_LINE.findall(server.log())]
    assert len(served) == 2 and all(served), f"one worker got no connection: {served}"  # it was a pod of two


def test_workers_stop_when_their_supervisor_is_killed(launch, repo):
    """SIGKILL gives the supervisor no time to stop them: each worker notices it is orphaned and drains."""
    server = launch("--model-repository", str(repo), "--workers", "2").wait_workers(2)
    pids = worker_pids(server)
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if pid_alive(pid)]
    assert not alive, f"workers {alive} serve on without their supervisor:\n{server.log()}"
    assert "the supervisor (pid" in server.log()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited child of a dead parent is reaped by init; a zombie is not alive either
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
