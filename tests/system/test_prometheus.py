"""A real Prometheus scrapes the server; every query of the Grafana dashboard is evaluated through its HTTP
API, and the p99 that histogram_quantile estimates is checked against the p99 the client measured."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from bisect import bisect_left

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.python import loadgen
from inference_server.observability.stats import DURATION_BUCKETS_S
from tests.support import onnx_models
from tests.support import redis_server as redis_process
from tests.support.server_process import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.system

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = ROOT / "k8s" / "grafana" / "inference_server.json"
RATE_WINDOW = "30s"  # stands in for Grafana's $__rate_interval


def dashboard_queries() -> list[str]:
    """The panels' queries as Grafana sends them with every namespace and pod chosen (`All` is `.*`), but the GPU
    panels' (nv_gpu_*: no GPU here, no series)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"].replace("$__rate_interval", RATE_WINDOW).replace("$namespace", ".*").replace("$pod", ".*")
            for p in panels for t in p["targets"] if "nv_gpu_" not in t["expr"]]


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(what)


@pytest.fixture
def prometheus_scraping(tmp_path):
    """Our server (a model of about 10 ms a request, so server time dominates the client's, not cached; and a small
    model with the Redis cache) and a Prometheus scraping its metrics every second."""
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus package is not installed (./scripts/test installs it when run as root)")
    if not redis_process.available():
        pytest.skip("redis-server is not installed (./scripts/test installs it when run as root)")
    onnx_models.write_model(tmp_path / "repo", "slow", onnx_models.slow(768),
                            "cache = false\n[batching]\nmax_batch_size = 1\n")
    onnx_models.write_model(tmp_path / "repo", "small", onnx_models.mlp([4, 2]))
    metrics_port, prometheus_port = free_port(), free_port()
    (tmp_path / "server.toml").write_text("[monitoring]\ndrift = true\ndrift_reference_size = 50\n")
    redis = redis_process.RedisServer(tmp_path).start()
    server = ServerProcess(["--model-repository", str(tmp_path / "repo"), "--metrics-port", str(metrics_port),
                            "--config", str(tmp_path / "server.toml"), "--cache", redis.url],
                           tmp_path / "server.log").wait_serving()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: inference_server\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    with (tmp_path / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                      stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prometheus_port}"
    try:
        wait_for(lambda: query(base, 'up{job="inference_server"} == 1'), 60, "Prometheus never scraped the server")
        yield server, base
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        server.terminate()
        redis.stop()


def test_every_dashboard_query_returns_data_and_p99_agrees_with_the_client(prometheus_scraping):
    server, base = prometheus_scraping
    rng = np.random.default_rng(0)
    work = loadgen.workload("slow", [{"x": rng.random((1, 1), dtype=np.float32)} for _ in range(8)])
    result = asyncio.run(loadgen.closed_loop(server.url, work, concurrency=4, duration_s=6, warmup_s=0.5))
    assert result.requests > 50 and not result.errors
    small = loadgen.workload("small", [{"x": rng.random((1, 4), dtype=np.float32)} for _ in range(4)])
    cached = asyncio.run(loadgen.closed_loop(server.url, small, concurrency=1, duration_s=1, warmup_s=0))
    assert cached.requests > 8 and not cached.errors  # 4 misses, then hits: for the cache panels
    with grpcclient.InferenceServerClient(server.url) as client, pytest.raises(InferenceServerException):
        bad = grpcclient.InferInput("x", [1, 2], "FP32")
        bad.set_data_from_numpy(np.ones((1, 2), np.float32))
        client.infer("slow", [bad])  # something for the failures panel
    # Until Prometheus has scraped all of it (rates need two scrapes after the traffic).
    deadline = time.monotonic() + 30
    while empty := [expr for expr in dashboard_queries() if not query(base, expr)]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not empty, f"dashboard queries without data: {empty}"

    client_p99_s = float(np.percentile(result.latencies_s, 99))
    (series,) = query(base, 'histogram_quantile(0.99, sum by (le) (rate(inference_request_duration_seconds_bucket'
                            f'{{model="slow",code="OK"}}[{RATE_WINDOW}])))')
    server_p99_s = float(series["value"][1])
    # The client's p99 also holds its own and the network's time, so allow the neighbouring bucket.
    client_bucket, server_bucket = (bisect_left(DURATION_BUCKETS_S, v) for v in (client_p99_s, server_p99_s))
    assert abs(client_bucket - server_bucket) <= 1, (client_p99_s, server_p99_s)
