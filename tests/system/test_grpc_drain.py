"""SIGTERM while gRPC clients keep calling: every request is answered OK or UNAVAILABLE, none is cut off.

Closing the gRPC server at once after the drain cut off the calls its transport had already received but not yet
handed to us: their clients saw CANCELLED (8 clients: 5 of them, the moment the signal came). The server now
answers UNAVAILABLE until no request has been refused for a moment, then closes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import onnx_models
from tests.support.grpc_callers import load

pytestmark = pytest.mark.system


@pytest.mark.parametrize("clients", [8, 16])
def test_sigterm_under_load_answers_every_call_and_cancels_none(launch, clients, grpc_engine):
    """Before the fix every run cut calls off (4 of 8, 13 of 16). A rarer case followed, about one run in eight:
    when no call had been refused yet as the drain ended, the server closed at once, and most callers, whose next
    calls were already in the transport, saw CANCELLED about 2 ms after the signal (the drain's settle now waits its
    quiet period from its start too). Since then: 0 of 70 runs on each engine (40 of them with another core kept
    busy), so one server per engine must be clean. The native engine answers calls that reach it while
    it stops UNAVAILABLE itself."""
    server = launch("--grpc-engine", grpc_engine)
    codes = asyncio.run(load(server.url, clients, 1.0, lambda: server.proc.send_signal(signal.SIGTERM)))
    assert server.proc.wait(30) == 0, server.log()
    assert codes["OK"] > 100  # it was serving when the signal came
    assert codes["UNAVAILABLE"] == clients and set(codes) == {"OK", "UNAVAILABLE"}, codes


def test_sigterm_answers_queued_requests_of_a_slow_model(launch, tmp_path, grpc_engine):
    """Requests waiting in a slow model's queue when the signal comes are answered, not failed."""
    onnx_models.write_model(tmp_path / "repo", "slow", onnx_models.slow(3072), "[batching]\nmax_batch_size = 1\n")
    server = launch("--model-repository", str(tmp_path / "repo"), "--grpc-engine", grpc_engine)
    request = pb.ModelInferRequest(
        model_name="slow", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()])

    async def burst() -> Counter:
        codes: Counter = Counter()
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> None:
                try:
                    await stub.ModelInfer(request, timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

            tasks = [asyncio.create_task(one()) for _ in range(12)]
            # All in: most wait in the queue behind the running one (eleven counted, one executing). The server's
            # metrics are read off the loop, which sends the calls.
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(server.accepted, "slow") < 11:
                assert time.monotonic() < deadline, server.log()
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)
        return codes

    assert asyncio.run(burst()) == Counter({"OK": 12})
    assert server.proc.wait(60) == 0
    assert "draining:" in server.log()
