"""A stream of distinct requests to a server over gRPC and HTTP at once, and a process's RSS: what measures the
response cache's memory through the server (tests/system/test_cache_memory.py, benchmarks/cache_memory.py)."""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import grpc
import numpy as np

from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from inference_server.protocol._generated import grpc_service_pb2 as pb


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS of a process (this one by default), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Stream:
    """Distinct requests (each a fresh FP32 input `x`, 1-8 rows) to models in turn, over gRPC and HTTP
    concurrently. features: each model's input width."""

    def __init__(self, grpc_url: str, http_port: int, features: dict[str, int]) -> None:
        self.grpc_url, self.http_port, self.features = grpc_url, http_port, features
        self._counter = itertools.count(1)

    def _input(self, model: str) -> np.ndarray:
        n = next(self._counter)
        rows = 1 + n % 8
        x = np.zeros((rows, self.features[model]), np.float32)
        x[:, 0] = n  # never seen before: a miss, then an entry
        return x

    async def run(self, models: list[str], requests: int, clients: int = 8) -> None:
        """`requests` requests, to `models` in turn, from `clients` callers (half gRPC, half HTTP)."""
        turns = itertools.cycle(models)
        left = [requests]

        def take() -> str | None:
            if left[0] <= 0:
                return None
            left[0] -= 1
            return next(turns)

        async with grpc.aio.insecure_channel(self.grpc_url) as channel, aiohttp.ClientSession() as session:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def over_grpc() -> None:
                while (model := take()) is not None:
                    x = self._input(model)
                    await stub.ModelInfer(pb.ModelInferRequest(
                        model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
                            name="x", datatype="FP32", shape=list(x.shape))],
                        raw_input_contents=[x.tobytes()]), timeout=30)

            async def over_http() -> None:
                while (model := take()) is not None:
                    x = self._input(model)
                    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                                     "parameters": {"binary_data_size": x.nbytes}}],
                                         "parameters": {"binary_data_output": True}}).encode()
                    async with session.post(f"http://127.0.0.1:{self.http_port}/v2/models/{model}/infer",
                                            data=header + x.tobytes(),
                                            headers={"Inference-Header-Content-Length": str(len(header))}) as r:
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                        await r.read()

            await asyncio.gather(*(over_grpc() for _ in range(clients // 2)),
                                 *(over_http() for _ in range(clients - clients // 2)))
