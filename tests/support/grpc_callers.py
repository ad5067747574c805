"""gRPC callers that keep calling the default model ("digits") until their first error, while a signal goes out:
the drain tests' and the reliability benchmark's load."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc

X = np.zeros((1, 64), np.float32)
REQUEST = pb.ModelInferRequest(
    model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 64])],
    raw_input_contents=[X.tobytes()])


async def load(url: str, clients: int, signal_after_s: float, send_signal) -> Counter:
    """`clients` callers, each calling until its first error (as a load generator's worker does), on one
    channel; the signal goes out while they call. Returns every call's status."""
    codes: Counter = Counter()
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def caller() -> None:
            while True:
                try:
                    await stub.ModelInfer(REQUEST, timeout=30)
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1
                    return
                codes["OK"] += 1

        tasks = [asyncio.create_task(caller()) for _ in range(clients)]
        await asyncio.sleep(signal_after_s)
        send_signal()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return codes
