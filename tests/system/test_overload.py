"""Overload through gRPC: far more concurrent calls than the server answers in their deadline. Every call must end
OK, UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; none may be cut off with CANCELLED.

grpc core keeps the calls it has read but the application has not yet taken in a backlog, and by default kills
calls at random once that backlog passes 1,000 (all of them past 3,000) with CANCELLED and no message: 2,000
concurrent 16-row calls with a 1 s deadline got 121-189 CANCELLED in every run here, each within 0.1-0.3 s."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.support import onnx_models

pytestmark = pytest.mark.system

ALLOWED = {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
ROWS = 16
REQUEST = pb.ModelInferRequest(
    model_name="linear", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[ROWS, 16])],
    raw_input_contents=[np.ones((ROWS, 16), np.float32).tobytes()])


async def burst(url: str, calls: int, timeout_s: float) -> Counter:
    codes: Counter = Counter()
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(REQUEST, timeout=10)  # connected and warm

        async def one() -> None:
            try:
                await stub.ModelInfer(REQUEST, timeout=timeout_s)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1

        await asyncio.gather(*(one() for _ in range(calls)))
    return codes


def test_a_burst_of_calls_past_capacity_gets_no_cancelled(launch, tmp_path, grpc_engine):
    onnx_models.write_model(tmp_path / "repo", "linear", onnx_models.mlp([16, 16]),
                            "[batching]\nmax_batch_size = 64\n")
    server = launch("--model-repository", str(tmp_path / "repo"), "--grpc-engine", grpc_engine)
    codes = asyncio.run(burst(server.url, 2000, 1.0))
    assert set(codes) <= ALLOWED, codes
    assert sum(codes.values()) == 2000
    assert codes["OK"] > 0
    # Recovered: once the burst is over, a call is answered at once.
    assert asyncio.run(burst(server.url, 4, 5.0)) == Counter({"OK": 4})
