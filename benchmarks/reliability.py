"""The reliability scenario: what the server does with bad input, too much load, a shutdown under load, and what
TLS and bearer tokens cost. Written to results/reliability.{json,md} and to benchmarks/reliability.md.

- Fuzzing: tests/integration/test_fuzz.py (hypothesis, derandomized) with each example's answer tallied (fuzz.py).
- Overload: a model of 16-row requests (16 KiB each, an MLP 256-4096-4096-16, max_batch_size 64: heavy enough that
  one Python load generator on the same cores can offer 4 times what it serves) whose capacity is first measured
  (a closed loop of 64 callers); then open loops at 1, 2 and 4 times that capacity over gRPC and over HTTP, every
  request with a 1 s deadline (gRPC deadline; HTTP Request-Timeout-Ms), each request's status tallied, the
  server's peak RSS sampled, and a light load after the last level to show recovery. Then the default queue
  bound: twice the gRPC capacity with no deadline at all, a fresh server per bound.
- Drain: SIGTERM while 16 gRPC callers and 16 HTTP callers keep calling (each until its first error), repeated.
- TLS and tokens: a closed loop at concurrency 32 (grpc.aio, one pre-serialised request) against servers started
  side by side, points interleaved: plaintext, TLS, tokens, TLS and tokens on the grpcio engine (the native one has
  no TLS), plaintext and tokens on the native engine; each ratio is to plaintext on the same engine.

Every server runs the default gRPC engine (auto: native) except where the TLS table names grpcio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import overload
from benchmarks.fuzz import fuzz_table
from inference_server.grpc.engine import GRPCIO, NATIVE
from tests.support import onnx_models
from tests.support.grpc_callers import REQUEST as DIGITS_REQUEST
from tests.support.grpc_callers import load as grpc_callers
from tests.support.pki import Authority
from tests.support.server_process import ServerProcess, free_port

WORK = Path(__file__).resolve().parent / ".work" / "reliability"
SIZES = [256, 4096, 4096, 16]
ROWS = 16
DEADLINE_S = 1.0
LEVELS = (1, 2, 4)  # times the measured capacity
QUEUE_BOUNDS = (0, 64, 256, 1024)
DRAIN_RUNS = 5
TOKEN = "reliability-benchmark-token"

OVERLOAD_COLUMNS = [("front end", "front_end", "s"), ("load", "level", "s"), ("offered/s", "offered_per_s", ".0f"),
                    ("sent", "sent", "d"), ("OK/s", "ok_per_s", ".0f"), ("outcomes", "outcomes", "s"),
                    ("other than OK/UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED", "unexpected", "d"),
                    ("answered > 0.1 s after the deadline", "late", "d"), ("OK p50 ms", "ok_p50_ms", ".0f"),
                    ("OK p99 ms", "ok_p99_ms", ".0f"), ("server RSS MiB (start → peak)", "rss", "s"),
                    ("generator's send lag p99 ms", "send_lag_p99_ms", ".0f")]
QUEUE_COLUMNS = [("max_queue_size", "bound", "s"), ("offered/s", "offered_per_s", ".0f"), ("sent", "sent", "d"),
                 ("outcomes", "outcomes", "s"), ("OK p50 ms", "ok_p50_ms", ".0f"), ("OK p99 ms", "ok_p99_ms", ".0f"),
                 ("all answered after s", "all_answered_s", ".1f"), ("server RSS growth MiB", "rss_growth", ".0f")]
DRAIN_COLUMNS = [("run", "run", "d"), ("gRPC answers", "grpc", "s"), ("HTTP answers", "http", "s"),
                 ("cut off (CANCELLED, reset, other)", "lost", "d"), ("exit code", "exit_code", "d")]
COST_COLUMNS = [("server", "server", "s"), ("infer/s per round", "rounds", "s"), ("infer/s (mean)", "mean", ".0f"),
                ("ratio to plaintext on its engine", "ratio", ".3f"), ("p99 ms (median of rounds)", "p99_ms", ".2f"),
                ("errors", "errors", "d")]


def write_repo(repo: Path) -> None:
    onnx_models.write_model(repo, "wide", onnx_models.mlp(SIZES), "[batching]\nmax_batch_size = 64\n")


@contextmanager
def serving(repo: Path | None, name: str, *extra: str,
            credentials: grpc.ChannelCredentials | None = None) -> Iterator[tuple[ServerProcess, int]]:
    """A server with its HTTP front end (the embedded digits model without a repository): (the server, its HTTP
    port). With `credentials`, its health is polled over TLS."""
    http_port = free_port()
    WORK.mkdir(parents=True, exist_ok=True)
    server = ServerProcess([*(("--model-repository", str(repo)) if repo else ()), "--http-port", str(http_port),
                            *extra], WORK / f"{name}.log")
    try:
        if credentials is None:
            server.wait_serving()
        else:
            wait_tls_serving(server, credentials)
        yield server, http_port
    finally:
        with suppress(Exception):
            server.terminate()
        server.kill()


def wait_tls_serving(server: ServerProcess, credentials: grpc.ChannelCredentials, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        with grpc.secure_channel(server.url, credentials) as channel:
            with suppress(grpc.RpcError):
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"server not SERVING after {timeout_s}s:\n{server.log()}")


def wide_call() -> overload.Call:
    return overload.Call.of("wide", "x", np.random.default_rng(3).standard_normal((ROWS, SIZES[0])).astype(np.float32))


def point(front_end: str, level: str, outcomes: overload.Outcomes, rss: overload.RssSampler) -> dict:
    return {"front_end": front_end, "level": level, **outcomes.summary(),
            "rss": f"{rss.start_mib:.0f} → {rss.peak_mib:.0f}", "rss_start_mib": rss.start_mib,
            "rss_peak_mib": rss.peak_mib}


def run_point(server: ServerProcess, front_end: str, http_port: int, rate: float, duration_s: float,
              deadline_s: float | None) -> tuple[overload.Outcomes, overload.RssSampler]:
    with overload.RssSampler(server.proc.pid) as rss:
        result = overload.open_loop(wide_call(), server.url, overload.http_url(front_end, http_port), rate_per_s=rate,
                                    duration_s=duration_s, deadline_s=deadline_s)
    return result, rss


def capacity(server: ServerProcess, http_port: int, front_end: str) -> float:
    """Answers per second of a closed loop of 64 callers for 3 s: what the server can do here."""
    rate, _, _ = overload.closed_loop(wide_call(), server.url, overload.http_url(front_end, http_port), concurrency=64,
                                      duration_s=3.0)
    return rate


def overload_table(repo: Path, args: argparse.Namespace) -> tuple[dict, list[str], float]:
    """Returns the table, its notes and the gRPC capacity."""
    rows, notes, capacities = [], [], {}
    for front_end in ("gRPC", "HTTP"):
        with serving(repo, f"overload-{front_end}") as (server, http_port):
            cap = capacities[front_end] = capacity(server, http_port, front_end)
            notes.append(f"{front_end}: capacity {cap:.0f} answers/s (16-row requests, a closed loop of 64 callers).")
            for level in LEVELS:
                result, rss = run_point(server, front_end, http_port, cap * level, args.duration_s, DEADLINE_S)
                rows.append(point(front_end, f"{level}x capacity", result, rss))
            result, rss = run_point(server, front_end, http_port, cap / 4, 2.0, DEADLINE_S)
            rows.append(point(front_end, "recovery: 0.25x, right after", result, rss))
    title = f"Overload: open loop, every request with a {DEADLINE_S:g} s deadline"
    return {"title": title, "columns": OVERLOAD_COLUMNS, "rows": rows}, notes, capacities["gRPC"]


def queue_table(repo: Path, args: argparse.Namespace, grpc_capacity: float) -> dict:
    """A fresh server per bound (its memory from a warm start), all offered the same 2x the gRPC capacity."""
    rows = []
    for bound in QUEUE_BOUNDS:
        with serving(repo, f"queue-{bound}", "--max-queue-size", str(bound)) as (server, http_port):
            start = time.monotonic()
            result, rss = run_point(server, "gRPC", http_port, 2 * grpc_capacity, args.duration_s, None)
            rows.append({"bound": f"{bound}" + (" (unbounded)" if bound == 0 else ""), **result.summary(),
                         "all_answered_s": time.monotonic() - start, "rss_growth": rss.peak_mib - rss.start_mib})
    return {"title": "The default queue bound: 2x the gRPC capacity, no deadline, a fresh server per max_queue_size",
            "columns": QUEUE_COLUMNS, "rows": rows}


async def http_callers(port: int, clients: int, stop_after_first_error: bool = True) -> Counter:
    codes: Counter = Counter()
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                   "data": [0.0] * 64}]}).encode()
    async with aiohttp.ClientSession() as session:

        async def caller() -> None:
            while True:
                try:
                    async with session.post(f"http://127.0.0.1:{port}/v2/models/digits/infer", data=body,
                                            timeout=aiohttp.ClientTimeout(total=30)) as response:
                        await response.read()
                        code = {200: "OK", 503: "UNAVAILABLE"}.get(response.status, f"HTTP {response.status}")
                except (aiohttp.ClientError, TimeoutError) as e:
                    code = type(e).__name__
                codes[code] += 1
                if code != "OK":
                    return

        await asyncio.gather(*(caller() for _ in range(clients)))
    return codes


async def callers_through_sigterm(server: ServerProcess, http_port: int) -> tuple[Counter, Counter]:
    """16 gRPC and 16 HTTP callers; SIGTERM after 1 s. Returns each front end's answers."""
    http_task = asyncio.create_task(http_callers(http_port, 16))
    grpc_codes = await grpc_callers(server.url, 16, 1.0, lambda: server.proc.send_signal(signal.SIGTERM))
    return grpc_codes, await http_task


def drain_table() -> dict:
    rows = []
    for run in range(1, DRAIN_RUNS + 1):
        with serving(None, f"drain-{run}") as (server, http_port):
            grpc_codes, http_codes = asyncio.run(callers_through_sigterm(server, http_port))
            code = server.proc.wait(60)
        lost = sum(n for c, n in (grpc_codes + http_codes).items() if c not in ("OK", "UNAVAILABLE"))
        rows.append({"run": run, "grpc": ", ".join(f"{c} {n}" for c, n in grpc_codes.most_common()),
                     "http": ", ".join(f"{c} {n}" for c, n in http_codes.most_common()), "lost": lost,
                     "exit_code": code})
    return {"title": "Drain: SIGTERM after 1 s of 16 gRPC and 16 HTTP callers (each calls until its first error)",
            "columns": DRAIN_COLUMNS, "rows": rows}


def pki(directory: Path) -> tuple[Path, Path, Path]:
    ca = Authority.make(directory, "reliability-ca")
    cert, key, _ = ca.issue(directory, "server", server=True)
    return ca.path, cert, key


def cost_table(args: argparse.Namespace) -> tuple[dict, list[str]]:
    directory = WORK / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = pki(directory)
    tokens = directory / "tokens"
    tokens.write_text(f"infer {TOKEN}\n")
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    auth = ("--auth-tokens", str(tokens))
    # TLS runs on grpcio only (the native engine has none), so each ratio is to plaintext on the same engine.
    configs = {"plaintext (grpcio)": (GRPCIO, ()), "TLS (grpcio)": (GRPCIO, tls), "tokens (grpcio)": (GRPCIO, auth),
               "TLS and tokens (grpcio)": (GRPCIO, (*tls, *auth)), "plaintext (native)": (NATIVE, ()),
               "tokens (native)": (NATIVE, auth)}
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in configs}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(serving(None, f"cost-{i}", "--grpc-engine", engine, *extra,
                                                     credentials=credentials if "TLS" in name else None))[0]
                   for i, (name, (engine, extra)) in enumerate(configs.items())}
        for round_ in range(3):
            for name in (configs if round_ % 2 == 0 else reversed(configs)):  # each order as often
                results[name].append(asyncio.run(overload.grpc_closed_loop(
                    servers[name].url, DIGITS_REQUEST, concurrency=32, duration_s=args.duration_s,
                    credentials=credentials if "TLS" in name else None,
                    metadata=(("authorization", f"Bearer {TOKEN}"),) if "tokens" in name else None)))
    base = {engine: statistics.mean(r[0] for r in results[f"plaintext ({engine})"]) for engine in (GRPCIO, NATIVE)}
    rows = [{"server": name, "rounds": ", ".join(f"{r[0]:.0f}" for r in runs),
             "mean": statistics.mean(r[0] for r in runs),
             "ratio": statistics.mean(r[0] for r in runs) / base[configs[name][0]],
             "p99_ms": statistics.median(r[1] for r in runs), "errors": sum(r[2] for r in runs)}
            for name, runs in results.items()]
    return {"title": "The cost of TLS and of token checks: gRPC, concurrency 32, the digits model, 3 rounds "
                     "interleaved", "columns": COST_COLUMNS, "rows": rows}, []


def reliability_scenario(args: argparse.Namespace) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    repo = WORK / "repo"
    write_repo(repo)
    fuzz, notes = fuzz_table(WORK)
    overloaded, overload_notes, grpc_capacity = overload_table(repo, args)
    queues = queue_table(repo, args, grpc_capacity)
    drained = drain_table()
    cost, cost_notes = cost_table(args)
    return {"title": "fuzzing, overload, the default queue bound, drain, and the cost of TLS and tokens",
            "tables": [fuzz, overloaded, queues, drained, cost], "notes": notes + overload_notes + cost_notes,
            "also_write": ["reliability.md"]}
