"""The many-models scenario: load on demand and a budget of loaded models. First-request latency of a
model that is not loaded (its load on demand) against one that is, for the cheap and the compute-bound MLP;
throughput of 8 clients over a working set that fits the budget against one three times larger (evictions on most
requests); the server's RSS after 1,000 evictions against after the first 10. Servers on 127.0.0.1."""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks.models import MODELS
from benchmarks.points import BATCHING
from tests.support import onnx_models
from tests.support.request_stream import rss_bytes
from tests.support.server_process import ServerProcess

WORK = Path(__file__).resolve().parent / ".work" / "many-models"
TARGET_PCT, TARGET_MB = 5.0, 50.0
COLUMNS = {
    "cold": ["First request: not loaded (load on demand) against loaded", [
        ("model", "model", "s"), ("requests", "requests", "d"), ("cold p50 ms", "cold_p50_ms", ".1f"),
        ("cold max ms", "cold_max_ms", ".1f"), ("loaded p50 ms", "warm_p50_ms", ".2f"),
        ("cold / loaded", "ratio", ".0f")]],
    "thrash": ["8 clients, budget 4 (max_loaded_models): a working set that fits against one that does not", [
        ("working set", "working_set", "d"), ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".1f"), ("errors", "errors", "d"), ("evictions", "evictions", "d"),
        ("vs fits", "vs_fits", ".3f")]],
    "rss": ["Server RSS over evictions (cheap MLP, budget 1)", [
        ("evictions", "evictions", "d"), ("RSS MiB", "rss_mb", ".1f"), ("growth MiB", "growth_mb", "+.1f"),
        ("growth %", "growth_pct", "+.2f"), ("within target", "within_target", "s"), ("failures", "failures", "d")]],
}


def copies(repo: Path, model: str, count: int) -> list[str]:
    """`count` copies of a benchmark model, each its own model directory (its own load)."""
    built = MODELS[model].build()
    names = [f"{model}_{i:02d}" for i in range(count)]
    for name in names:
        onnx_models.write_model(repo, name, built, BATCHING)
    return names


def serve(repo: Path, *args: str) -> ServerProcess:
    server = ServerProcess(["--model-repository", str(repo), "--model-control-mode", "explicit",
                            "--load-on-demand", *args], WORK / f"server-{time.monotonic_ns()}.log")
    return server.wait_serving()


def request(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> float:
    """One request's latency in seconds (it raises on a failed answer)."""
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    start = time.perf_counter()
    client.infer(model, [tensor], client_timeout=120)
    return time.perf_counter() - start


def inputs(model: str) -> np.ndarray:
    return MODELS[model].sample(np.random.default_rng(0), 1)["x"]


def evictions(server: ServerProcess) -> int:
    return int(server.metric("inference_model_evictions_total"))


def cold_and_warm(model: str, count: int) -> dict:
    repo = WORK / f"cold-{model}"
    names = copies(repo, model, count)
    server = serve(repo, "--max-loaded-models", "2")
    x = inputs(model)
    cold, warm = [], []
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for name in names:
                cold.append(request(client, name, x))
                warm += [request(client, name, x) for _ in range(20)]
    finally:
        server.terminate()
    return {"model": model, "requests": count, "cold_p50_ms": statistics.median(cold) * 1e3,
            "cold_max_ms": max(cold) * 1e3, "warm_p50_ms": statistics.median(warm) * 1e3,
            "ratio": statistics.median(cold) / statistics.median(warm)}


def thrash(names: list[str], working_set: int, duration_s: float) -> dict:
    server = serve(WORK / "thrash", "--max-loaded-models", "4")
    x = inputs("cheap")
    latencies: list[list[float]] = [[] for _ in range(8)]
    errors = [0] * 8
    failures: list[str] = []
    stop = [0.0]  # set once the working set is loaded

    def client_thread(i: int) -> None:
        rng = random.Random(i)
        with grpcclient.InferenceServerClient(server.url) as client:
            while time.monotonic() < stop[0]:
                try:
                    latencies[i].append(request(client, rng.choice(names[:working_set]), x))
                except Exception as e:  # counted: the scenario reports failed requests
                    errors[i] += 1
                    failures.append(str(e))

    try:
        with grpcclient.InferenceServerClient(server.url) as client:  # the working set loaded before timing
            for name in names[:min(working_set, 4)]:
                request(client, name, x)
        before = evictions(server)
        start = time.monotonic()
        stop[0] = start + duration_s
        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        evicted = evictions(server) - before
    finally:
        server.terminate()
    every = sorted(v for row in latencies for v in row)
    if not every:
        raise RuntimeError(f"no request answered; {len(failures)} failed, the first: {failures[:1]}")
    return {"working_set": working_set, "infer_per_s": len(every) / elapsed,
            "p50_ms": every[len(every) // 2] * 1e3, "p99_ms": every[int(len(every) * 0.99)] * 1e3,
            "errors": sum(errors), "evictions": evicted}


def memory(count: int) -> list[dict]:
    """Budget 1 over 4 copies of the cheap MLP, requested in turn: every request loads one and evicts another."""
    repo = WORK / "rss"
    names = copies(repo, "cheap", 4)
    server = serve(repo, "--max-loaded-models", "1")
    x = inputs("cheap")
    rows: list[dict] = []
    failures = 0
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            request(client, names[0], x)
            i = 0
            for mark in [m for m in (10, 100, 250, 500, 750) if m < count] + [count]:
                while (done := evictions(server)) < mark:
                    for _ in range(mark - done):  # each request after the first evicts one (checked above)
                        i += 1
                        try:
                            request(client, names[i % len(names)], x)
                        except Exception:  # counted in the table
                            failures += 1
                rss_mb = rss_bytes(server.proc.pid) / 2**20
                first = rows[0]["rss_mb"] if rows else rss_mb
                growth = rss_mb - first
                rows.append({"evictions": evictions(server), "rss_mb": rss_mb, "growth_mb": growth,
                             "growth_pct": growth / first * 100, "failures": failures,
                             "within_target": "yes" if growth < TARGET_MB or growth / first * 100 < TARGET_PCT
                             else "no"})
    finally:
        server.terminate()
    return rows


def many_models_scenario(args: argparse.Namespace) -> dict:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cold = [cold_and_warm("cheap", 8), cold_and_warm("large", 4)]
    names = copies(WORK / "thrash", "cheap", 12)
    fits = thrash(names, 4, args.duration_s)
    spills = thrash(names, 12, args.duration_s)
    fits["vs_fits"], spills["vs_fits"] = 1.0, spills["infer_per_s"] / fits["infer_per_s"]
    rss_rows = memory(100 if args.quick else 1000)
    last = rss_rows[-1]
    notes = [
        "A separate server per table: `--model-control-mode explicit --load-on-demand`, nothing loaded at start. "
        "Latencies are one gRPC client's (tritonclient), one row per request.",
        "Cold: the first request for each copy (its own model directory), which waits for the load on demand "
        "(ONNX Runtime session, the execution choice's timing run, warmup) with max_loaded_models 2, so most also "
        "evict one. Loaded: 20 requests to the same copy right after.",
        f"Thrashing: 8 threaded clients, {args.duration_s:g} s each, models picked at random; with 12 models over a "
        "budget of 4 most requests find their model evicted and wait for a load (loads run 2 at a time); none "
        "failed" if not spills["errors"] else "Thrashing: some requests failed (see errors).",
        f"RSS: VmRSS of the server after N evictions (each request loads a model and evicts another); after "
        f"{last['evictions']} evictions {last['growth_mb']:+.1f} MiB ({last['growth_pct']:+.2f} %) from the first "
        f"10, target under {TARGET_PCT:g} % or {TARGET_MB:g} MB. Each eviction closes the sessions, then glibc "
        "malloc_trim(0) hands the freed arenas back.",
        "2 shared cores for the server and the clients; absolute figures are noisy, the ratios are the point.",
    ]
    tables = [{"title": COLUMNS[k][0], "columns": COLUMNS[k][1], "rows": rows}
              for k, rows in (("cold", cold), ("thrash", [fits, spills]), ("rss", rss_rows))]
    return {"title": "many models: load on demand, eviction under a budget", "cold": cold,
            "thrash": [fits, spills], "rss": rss_rows, "tables": tables, "notes": notes}
