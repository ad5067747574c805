"""Overload drivers for the reliability scenario: an open loop that sends on a fixed schedule whatever the answers
do, over gRPC (grpc.aio, one pre-serialised ModelInferRequest) or HTTP (aiohttp, one pre-encoded JSON body), with a
deadline on every request, and that records each request's outcome (its status), its latency from its scheduled
time, and whether the answer came after the deadline; plus a sampler of the server's resident memory."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import grpc
import numpy as np

from clients.python.loadgen import Sampler, send_on_schedule
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.support.request_stream import rss_bytes

HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
              504: "DEADLINE_EXCEEDED"}
LATE_S = 0.1  # an answer this long after the deadline is late (the client's own timer ends the call at it)


@dataclass
class Outcomes:
    offered_per_s: float
    duration_s: float
    deadline_s: float | None
    codes: Counter = field(default_factory=Counter)
    ok_latencies_s: list[float] = field(default_factory=list)
    late: int = 0  # answered (any status) more than LATE_S after its deadline, counted from its sending
    not_sent: int = 0  # the generator's own bound on outstanding requests was reached
    send_lag_s: list[float] = field(default_factory=list)  # sent this long after its scheduled time

    def summary(self) -> dict:
        ok = np.array(self.ok_latencies_s) * 1e3 if self.ok_latencies_s else np.array([np.nan])
        sent = sum(self.codes.values())
        return {"offered_per_s": round(self.offered_per_s, 1), "sent": sent,
                "ok_per_s": round(self.codes["OK"] / self.duration_s, 1),
                "outcomes": ", ".join(f"{c} {n}" for c, n in self.codes.most_common()),
                "codes": dict(self.codes), "late": self.late, "not_sent": self.not_sent,
                "ok_p50_ms": round(float(np.percentile(ok, 50)), 1),
                "ok_p99_ms": round(float(np.percentile(ok, 99)), 1),
                "unexpected": sum(n for c, n in self.codes.items() if c not in ALLOWED),
                "send_lag_p99_ms": round(float(np.percentile(np.array(self.send_lag_s or [0.0]) * 1e3, 99)), 1)}


ALLOWED = {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


async def _schedule(rate_per_s: float, duration_s: float, max_outstanding: int, result: Outcomes, one) -> None:
    start = asyncio.get_running_loop().time()
    result.not_sent += await send_on_schedule(start, rate_per_s, int(rate_per_s * duration_s), max_outstanding,
                                              lambda i, scheduled: one(scheduled))


def _record(result: Outcomes, code: str, scheduled: float, sent: float, now: float) -> None:
    """Latency counts from the scheduled time (a generator that falls behind charges the server for it); the
    deadline, as the client's own, from the sending."""
    result.codes[code] += 1
    result.send_lag_s.append(sent - scheduled)
    if code == "OK":
        result.ok_latencies_s.append(now - scheduled)
    if result.deadline_s is not None and now - sent > result.deadline_s + LATE_S:
        result.late += 1


async def grpc_open_loop(url: str, request: pb.ModelInferRequest, *, rate_per_s: float, duration_s: float,
                         deadline_s: float | None, connections: int = 4, max_outstanding: int = 20000) -> Outcomes:
    result = Outcomes(rate_per_s, duration_s, deadline_s)
    channels = [grpc.aio.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    loop = asyncio.get_running_loop()
    count = iter(range(1 << 62))

    async def one(scheduled: float) -> None:
        stub = stubs[next(count) % len(stubs)]
        sent = loop.time()
        try:
            await stub.ModelInfer(request, timeout=deadline_s or 60)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        _record(result, code, scheduled, sent, loop.time())

    try:
        await asyncio.gather(*(s.ModelInfer(request, timeout=10) for s in stubs))  # connected and warm
        await _schedule(rate_per_s, duration_s, max_outstanding, result, one)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return result


async def http_open_loop(url: str, model: str, body: bytes, *, rate_per_s: float, duration_s: float,
                         deadline_s: float | None, max_connections: int = 1024,
                         max_outstanding: int = 20000) -> Outcomes:
    """`body`: from http_body(). The deadline goes to the server as Request-Timeout-Ms; the client waits LATE_S
    longer itself, so that the server's own answer to an expired request (504) is what it sees."""
    result = Outcomes(rate_per_s, duration_s, deadline_s)
    loop = asyncio.get_running_loop()
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(body_json_length(body))}
    if deadline_s is not None:
        headers["request-timeout-ms"] = str(int(deadline_s * 1e3))
    timeout = aiohttp.ClientTimeout(total=(deadline_s or 60) + LATE_S)
    target = f"http://{url}/v2/models/{model}/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections)) as session:

        async def one(scheduled: float) -> None:
            sent = loop.time()
            try:
                async with session.post(target, data=body, headers=headers, timeout=timeout) as response:
                    await response.read()
                    code = HTTP_CODES.get(response.status, f"HTTP {response.status}")
                    if response.status == 503:  # a full queue or shutting down; the in-flight cap says so
                        text = await response.text()
                        code = "RESOURCE_EXHAUSTED" if "in flight" in text else "UNAVAILABLE"
            except TimeoutError:
                code = "DEADLINE_EXCEEDED (client)"
            except aiohttp.ClientError as e:
                code = type(e).__name__
            _record(result, code, scheduled, sent, loop.time())

        async with session.post(target, data=body, headers={k: v for k, v in headers.items()
                                                            if k != "request-timeout-ms"}) as warm:
            await warm.read()
        await _schedule(rate_per_s, duration_s, max_outstanding, result, one)
    return result


async def grpc_closed_loop(url: str, request: pb.ModelInferRequest, *, concurrency: int, duration_s: float,
                           credentials: grpc.ChannelCredentials | None = None,
                           metadata: tuple[tuple[str, str], ...] | None = None) -> tuple[float, float, int]:
    """(answers/s, p99 ms, errors): `concurrency` workers on one channel for duration_s after 1 s of warm-up."""
    channel = (grpc.aio.secure_channel(url, credentials) if credentials is not None
               else grpc.aio.insecure_channel(url))
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    async def infer() -> None:
        await stub.ModelInfer(request, timeout=30, metadata=metadata)

    try:
        return await _closed_loop(infer, concurrency, duration_s)
    finally:
        await channel.close()


async def http_closed_loop(url: str, model: str, body: bytes, *, concurrency: int,
                           duration_s: float) -> tuple[float, float, int]:
    """As grpc_closed_loop, over HTTP with `body` from http_body()."""
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(body_json_length(body))}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def infer() -> None:
            async with session.post(f"http://{url}/v2/models/{model}/infer", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return await _closed_loop(infer, concurrency, duration_s)


async def _closed_loop(infer, concurrency: int, duration_s: float) -> tuple[float, float, int]:
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + 1.0
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while (now := loop.time()) < stop_at:
            try:
                await infer()
            except Exception:  # counted, never raised: a benchmark reports errors
                errors += 1
                continue
            if now >= measure_from:
                latencies.append(loop.time() - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / duration_s, float(np.percentile(np.array(latencies or [np.nan]) * 1e3, 99)), errors


HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class Call:
    """One FP32 infer request, built once for both front ends: a ModelInferRequest (raw contents) and the HTTP
    binary body (http_body)."""
    model: str
    request: pb.ModelInferRequest
    body: bytes

    @classmethod
    def of(cls, model: str, name: str, x: np.ndarray) -> Call:
        request = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP32", shape=list(x.shape))], raw_input_contents=[x.tobytes()])
        return cls(model, request, http_body(name, x))


def http_url(front_end: str, http_port: int) -> str | None:
    """Where closed_loop and open_loop send: the HTTP port for the front end named "HTTP", else None (gRPC)."""
    return f"127.0.0.1:{http_port}" if front_end == "HTTP" else None


def closed_loop(call: Call, grpc_url: str, http_url: str | None = None, *, concurrency: int,
                duration_s: float) -> tuple[float, float, int]:
    """grpc_closed_loop, or http_closed_loop when http_url is given, run to the end."""
    if http_url is None:
        return asyncio.run(grpc_closed_loop(grpc_url, call.request, concurrency=concurrency, duration_s=duration_s))
    return asyncio.run(http_closed_loop(http_url, call.model, call.body, concurrency=concurrency,
                                        duration_s=duration_s))


def open_loop(call: Call, grpc_url: str, http_url: str | None = None, *, rate_per_s: float, duration_s: float,
              deadline_s: float | None) -> Outcomes:
    """grpc_open_loop, or http_open_loop when http_url is given, run to the end."""
    if http_url is None:
        return asyncio.run(grpc_open_loop(grpc_url, call.request, rate_per_s=rate_per_s, duration_s=duration_s,
                                          deadline_s=deadline_s))
    return asyncio.run(http_open_loop(http_url, call.model, call.body, rate_per_s=rate_per_s,
                                      duration_s=duration_s, deadline_s=deadline_s))


def http_body(name: str, x: np.ndarray, datatype: str = "FP32") -> bytes:
    """A KServe v2 infer request with its input as binary data (Triton's binary tensor extension): the JSON
    header, then the raw bytes; the JSON's length is recovered by body_json_length()."""
    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes()


def body_json_length(body: bytes) -> int:
    return body.index(b"}]}") + 3


def rss_mib(pid: int) -> float:
    try:
        return rss_bytes(pid) / 2**20
    except RuntimeError:  # no VmRSS line (a process that has exited but not been reaped)
        return float("nan")


class RssSampler(Sampler):
    """The peak resident memory of a process, sampled every 50 ms in a thread while in the `with` block."""

    period_s = 0.05

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.start_mib = self.peak_mib = rss_mib(pid)

    def sample(self) -> None:
        self.peak_mib = max(self.peak_mib, rss_mib(self.pid))
