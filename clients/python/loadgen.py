"""Bounded load generators on tritonclient.grpc.aio: closed loop (N workers, one request in flight each)
and open loop (requests sent on a fixed schedule, whatever the answers do); and a closed loop over HTTP on
tritonclient.http.aio (binary tensors both ways, Triton's binary tensor extension)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import tritonclient.grpc.aio as aioclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import np_to_triton_dtype

NAME = "tritonclient.grpc.aio (clients/python/loadgen.py)"
HTTP_NAME = "tritonclient.http.aio, binary tensors (clients/python/loadgen.py)"
# A channel of its own per connection; grpc would otherwise share one TCP connection between clients.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Workload:
    model: str
    requests: list[list[aioclient.InferInput]]  # serialised once, outside the timed loop
    rows: int  # rows per request


def workload(model: str, samples: Sequence[dict[str, np.ndarray]]) -> Workload:
    requests = []
    for sample in samples:
        inputs = []
        for name, array in sample.items():
            t = aioclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array)
            inputs.append(t)
        requests.append(inputs)
    return Workload(model, requests, int(next(iter(samples[0].values())).shape[0]))


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    load: float  # concurrency, or offered requests/s
    duration_s: float
    rows_per_request: int
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    not_sent: int = 0  # open loop: scheduled sends skipped because max_outstanding were in flight
    warmup_requests: int = 0  # answered OK during the warm-up: sent, answered, never recorded

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def record_error(self, e: Exception) -> None:
        key = type(e).__name__ + ": " + str(e)[:80]
        self.errors[key] = self.errors.get(key, 0) + 1

    def summary(self) -> dict:
        lat_ms = np.array(self.latencies_s) * 1e3 if self.latencies_s else np.array([np.nan])
        out = {
            ("concurrency" if self.mode == "closed" else "offered_per_s"): self.load,
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "infer_per_s": round(self.requests / self.duration_s, 1),
            "rows_per_s": round(self.requests * self.rows_per_request / self.duration_s, 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
            "p90_ms": round(float(np.percentile(lat_ms, 90)), 3),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
            "mean_ms": round(float(lat_ms.mean()), 3),
            "load_generator": NAME,
        }
        if self.mode == "open":
            out["not_sent"] = self.not_sent
        return out


async def _progress(result: LoadResult, label: str, loop: asyncio.AbstractEventLoop, measure_from: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        elapsed = loop.time() - measure_from
        phase = "warm-up" if elapsed <= 0 else f"{elapsed:4.1f}s"
        rate = result.requests / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r  {label} {phase} {result.requests} requests {rate:8.1f}/s ")
        sys.stderr.flush()


def _clients(url: str, connections: int) -> list[aioclient.InferenceServerClient]:
    return [aioclient.InferenceServerClient(url, channel_args=OWN_CONNECTION) for _ in range(connections)]


async def closed_loop(url: str, work: Workload, *, concurrency: int, duration_s: float, warmup_s: float = 1.0,
                      max_requests: int = 1_000_000, label: str = "", connections: int = 1) -> LoadResult:
    """`concurrency` workers for warmup_s (not recorded) then duration_s; at most max_requests recorded.
    Workers are spread over `connections` TCP connections (several server processes need several)."""
    clients = _clients(url, connections)
    result = LoadResult("closed", concurrency, duration_s, work.rows)

    async def infer(client: Any, inputs: Any) -> None:
        await client.infer(work.model, inputs, client_timeout=60)

    return await _run_closed(clients, work, result, infer, warmup_s=warmup_s, max_requests=max_requests,
                             label=f"{label} c={concurrency}")


async def _run_closed(clients: list[Any], work: Workload, result: LoadResult,
                      infer: Callable[[Any, Any], Awaitable[None]], *, warmup_s: float, max_requests: int,
                      label: str) -> LoadResult:
    """The closed loop both protocols share: result.load workers over `clients`, warmup_s unrecorded,
    then result.duration_s recorded; the clients are closed at the end."""
    concurrency, duration_s = int(result.load), result.duration_s
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    stop_at = measure_from + duration_s

    async def worker(offset: int) -> None:
        client = clients[offset % len(clients)]
        i = offset
        while (now := loop.time()) < stop_at and result.requests < max_requests:
            sent = time.perf_counter()
            try:
                await infer(client, work.requests[i % len(work.requests)])
            except Exception as e:  # recorded, never raised: a benchmark reports errors
                result.record_error(e)
            else:
                if now >= measure_from:
                    result.latencies_s.append(time.perf_counter() - sent)
                else:
                    result.warmup_requests += 1
            i += concurrency

    ticker = asyncio.create_task(_progress(result, label, loop, measure_from))
    try:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        ticker.cancel()
        sys.stderr.write("\n")
        await asyncio.gather(*(c.close() for c in clients))
    result.duration_s = min(loop.time(), stop_at) - measure_from
    return result


class Sampler:
    """Calls sample() at once and then every period_s, in a thread, while in its `with` block."""

    period_s = 0.2

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def send_on_schedule(start: float, rate_per_s: float, total: int, max_outstanding: int,
                           one: Callable[[int, float], Awaitable[None]]) -> int:
    """Starts one(i, scheduled) for request i at start + i / rate_per_s (loop time), whatever the answers do, and
    waits for them all; returns how many were not sent because max_outstanding were still unanswered."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    not_sent = 0
    for i in range(total):
        scheduled = start + i / rate_per_s
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_outstanding:
            not_sent += 1
            continue
        task = asyncio.create_task(one(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    return not_sent


async def open_loop(url: str, work: Workload, *, rate_per_s: float, duration_s: float, warmup_s: float = 1.0,
                    max_outstanding: int = 2048, label: str = "", connections: int = 1) -> LoadResult:
    """Send at a fixed rate for warmup_s + duration_s. Latency runs from each request's scheduled time, so a
    stalled server is charged for the requests it delayed (no coordinated omission)."""
    clients = _clients(url, connections)
    result = LoadResult("open", rate_per_s, duration_s, work.rows)
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    total = int((warmup_s + duration_s) * rate_per_s)

    async def one(i: int, scheduled: float) -> None:
        try:
            await clients[i % len(clients)].infer(work.model, work.requests[i % len(work.requests)],
                                                  client_timeout=60)
        except Exception as e:
            result.record_error(e)
        else:
            if scheduled >= measure_from:
                result.latencies_s.append(loop.time() - scheduled)
            else:
                result.warmup_requests += 1

    ticker = asyncio.create_task(_progress(result, f"{label} {rate_per_s:.0f}/s", loop, measure_from))
    try:
        result.not_sent += await send_on_schedule(start, rate_per_s, total, max_outstanding, one)
    finally:
        ticker.cancel()
        sys.stderr.write("\n")
        await asyncio.gather(*(c.close() for c in clients))
    return result


# -- HTTP --------------------------------------------------------------------------------------------------


def http_workload(model: str, samples: Sequence[dict[str, np.ndarray]]) -> Workload:
    """As workload(), with tritonclient.http InferInputs holding their data as binary (Triton's binary tensor
    extension), built once outside the timed loop; requests ask for every output in binary too."""
    requests = []
    for sample in samples:
        inputs = []
        for name, array in sample.items():
            t = aiohttpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array, binary_data=True)
            inputs.append(t)
        requests.append(inputs)
    return Workload(model, requests, int(next(iter(samples[0].values())).shape[0]))


class HttpLoadResult(LoadResult):
    def summary(self) -> dict:
        return {**super().summary(), "load_generator": HTTP_NAME}


async def http_closed_loop(url: str, work: Workload, *, concurrency: int, duration_s: float, warmup_s: float = 1.0,
                           max_requests: int = 1_000_000, label: str = "", connections: int = 1,
                           request_timeout_s: float = 60) -> LoadResult:
    """closed_loop() over KServe v2 HTTP: `concurrency` workers on `connections` tritonclient.http.aio clients
    (aiohttp sessions; HTTP/1.1 keeps one request in flight per TCP connection, so each session may open as
    many keep-alive connections as it has workers). `work` comes from http_workload(); no `outputs` are named,
    so the client asks for every output in binary (binary_data_output). Same recording and summary as
    closed_loop(): warmup_s not recorded, then duration_s, at most max_requests."""
    per_client = -(-concurrency // connections)
    clients = [aiohttpclient.InferenceServerClient(url, conn_limit=per_client, conn_timeout=request_timeout_s)
               for _ in range(connections)]
    result = HttpLoadResult("closed", concurrency, duration_s, work.rows)

    async def infer(client: Any, inputs: Any) -> None:
        await client.infer(work.model, inputs)

    return await _run_closed(clients, work, result, infer, warmup_s=warmup_s, max_requests=max_requests,
                             label=f"{label} http c={concurrency}")
