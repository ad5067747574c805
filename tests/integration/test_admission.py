"""Admission control over a real server: past the server's in-flight cap a request is refused at once with
RESOURCE_EXHAUSTED (HTTP 503 with Retry-After), past a model's queue bound with UNAVAILABLE (as Triton;
HTTP 503 with Retry-After), and every refusal is counted by reason."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from inference_server.config.model import DEFAULT_MAX_QUEUE_SIZE
from inference_server.config.server import parse_server
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread
from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_engine):
    repo = tmp_path_factory.mktemp("admission")
    onnx_models.write_model(repo, "slow", onnx_models.slow(3072), "[batching]\nmax_batch_size = 1\n")
    onnx_models.write_model(repo, "bounded", onnx_models.slow(2048),
                            "[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n")
    cfg = parse_server({"server": {"port": 0, "metrics_port": 0, "http_port": free_port(),
                                   "model_repository": str(repo), "drain_grace_s": 5,
                                   "grpc_engine": grpc_engine}})
    thread = ServerThread(dataclasses.replace(cfg)).start()
    yield thread
    thread.stop()


def grpc_call(url: str, model: str) -> str:
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.ones((1, 1), np.float32))
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.infer(model, [x], client_timeout=60)
            return "OK"
        except InferenceServerException as e:
            return e.status()


def samples(server: ServerThread, name: str) -> list:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10).read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def rejected(server: ServerThread) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in samples(server, "inference_rejected_requests_total")}


def test_each_models_queue_bound_is_exported_for_alerts(server):
    """inference_max_queue_size: what an alert compares inference_pending_requests with."""
    bounds = {s.labels["model"]: s.value for s in samples(server, "inference_max_queue_size")}
    assert bounds == {"slow": DEFAULT_MAX_QUEUE_SIZE, "bounded": 1}


def burst(server: ServerThread, model: str, n: int) -> list[str]:
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(grpc_call, server.url, model) for _ in range(n)]
        return sorted(f.result() for f in futures)


def test_past_the_in_flight_cap_requests_are_refused_at_once_and_counted(server):
    server.app.gate.max_in_flight = 2
    try:
        before = rejected(server).get("max_in_flight", 0)
        start = time.monotonic()
        outcomes = burst(server, "slow", 6)
        assert outcomes.count("OK") >= 2 and "StatusCode.RESOURCE_EXHAUSTED" in outcomes, outcomes
        assert set(outcomes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}
        assert rejected(server)["max_in_flight"] - before == outcomes.count("StatusCode.RESOURCE_EXHAUSTED")
        assert time.monotonic() - start < 30
        # HTTP: 503 with Retry-After while the cap is reached
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(grpc_call, server.url, "slow") for _ in range(2)]
            wait_until(lambda: server.app.gate.in_flight == 2, "the two slow calls to reach the cap")
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.app.http_port}/v2/models/slow/infer", method="POST",
                data=b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}')
            try:
                urllib.request.urlopen(request, timeout=30)
                status, retry_after = 200, None
            except urllib.error.HTTPError as e:
                status, retry_after = e.code, e.headers.get("retry-after")
            assert [f.result() for f in busy] == ["OK", "OK"]
        assert (status, retry_after) == (503, "1")
    finally:
        server.app.gate.max_in_flight = 0


def test_past_a_models_queue_bound_requests_are_unavailable_and_counted(server):
    before = rejected(server).get("queue_full", 0)
    stats = server.app.registry.find("bounded").stats
    with ThreadPoolExecutor(5) as pool:
        # One running first (taken off the queue): in a burst from the start, the batcher may not have taken it yet
        # when the others come, and one is all that is answered.
        running = pool.submit(grpc_call, server.url, "bounded")
        wait_until(lambda: server.app.gate.in_flight == 1 and stats.pending() == 0, "the first call to run")
        others = [pool.submit(grpc_call, server.url, "bounded") for _ in range(4)]
        outcomes = sorted([running.result(), *(f.result() for f in others)])
    # one running and one queued are answered; the others find the queue full
    assert outcomes.count("OK") >= 2 and "StatusCode.UNAVAILABLE" in outcomes, outcomes
    assert rejected(server)["queue_full"] - before == outcomes.count("StatusCode.UNAVAILABLE")


def test_a_model_without_a_bound_of_its_own_queues_the_default_256(server):
    """The default max_queue_size: while one request runs, 256 wait and the rest are refused at once."""
    before = rejected(server).get("queue_full", 0)
    request = pb.ModelInferRequest(
        model_name="slow", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()])

    async def flood(calls: int) -> Counter:
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> str:
                try:
                    await stub.ModelInfer(request, timeout=3)
                    return "OK"
                except grpc.aio.AioRpcError as e:
                    return e.code().name

            return Counter(await asyncio.gather(*(one() for _ in range(calls))))

    codes = asyncio.run(flood(300))
    refused = codes["UNAVAILABLE"]
    # One runs and 256 wait; a call that arrives after one has been answered takes the slot it freed.
    admitted = 300 - refused
    assert DEFAULT_MAX_QUEUE_SIZE <= admitted <= DEFAULT_MAX_QUEUE_SIZE + codes["OK"], codes
    assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}  # the queued ones wait out their deadline
    assert rejected(server)["queue_full"] - before == refused
