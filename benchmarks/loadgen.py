"""A bounded closed-loop load generator on tritonclient.grpc.aio: N workers, each one request in flight."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as aioclient

NAME = "tritonclient.grpc.aio closed loop (benchmarks/loadgen.py)"


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    rows_per_request: int = 1

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        lat_ms = np.array(self.latencies_s) * 1e3 if self.latencies_s else np.array([np.nan])
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "infer_per_s": round(self.requests / self.duration_s, 1),
            "rows_per_s": round(self.requests * self.rows_per_request / self.duration_s, 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
            "p90_ms": round(float(np.percentile(lat_ms, 90)), 3),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
            "mean_ms": round(float(lat_ms.mean()), 3),
        }


async def closed_loop(url: str, model: str, input_name: str, pool: Sequence[np.ndarray], *, concurrency: int,
                      duration_s: float, warmup_s: float = 1.0, max_requests: int = 1_000_000,
                      label: str = "") -> LoadResult:
    """Run `concurrency` workers for warmup_s (not recorded) then duration_s; at most max_requests recorded."""
    datatype = {np.float32: "FP32"}[pool[0].dtype.type]
    async with aioclient.InferenceServerClient(url) as client:
        inputs = []
        for array in pool:  # serialise once, outside the timed loop
            t = aioclient.InferInput(input_name, list(array.shape), datatype)
            t.set_data_from_numpy(array)
            inputs.append(t)
        result = LoadResult(concurrency, duration_s, rows_per_request=int(pool[0].shape[0]))
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker(offset: int) -> None:
            i = offset
            while (now := loop.time()) < stop_at and result.requests < max_requests:
                sent = time.perf_counter()
                try:
                    await client.infer(model, [inputs[i % len(inputs)]], client_timeout=30)
                except Exception as e:  # recorded, never raised: a benchmark reports errors
                    key = type(e).__name__ + ": " + str(e)[:80]
                    result.errors[key] = result.errors.get(key, 0) + 1
                else:
                    if now >= measure_from:
                        result.latencies_s.append(time.perf_counter() - sent)
                i += concurrency

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                elapsed = loop.time() - measure_from
                phase = "warm-up" if elapsed <= 0 else f"{elapsed:4.1f}s"
                rate = result.requests / elapsed if elapsed > 0 else 0.0
                sys.stderr.write(f"\r  {label} c={concurrency} {phase} {result.requests} requests {rate:8.1f}/s ")
                sys.stderr.flush()

        ticker = asyncio.create_task(progress())
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        ticker.cancel()
        result.duration_s = min(loop.time(), stop_at) - measure_from
        sys.stderr.write("\n")
        return result
