"""The scenarios of `python -m benchmarks run`. Each returns {"title", "tables", "notes", ...raw points}."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks import ceiling, peers, perf_analyzer
from benchmarks.cache_memory import cache_memory_scenario
from benchmarks.grpc_engines import grpc_engines_scenario
from benchmarks.http import http_scenario
from benchmarks.lifecycle import lifecycle_scenario
from benchmarks.many_models import many_models_scenario
from benchmarks.models import MODELS, write
from benchmarks.points import (
    AIO,
    BATCH_LOG,
    BATCHING,
    OURS,
    PA,
    REPO,
    WORK,
    batch_summary,
    drive,
    make_point,
    our_server,
    samples,
)
from benchmarks.reliability import reliability_scenario
from benchmarks.ensemble import ensemble_scenario
from benchmarks.routing import routing_scenario
from benchmarks.shadow import shadow_scenario
from benchmarks.tracing import tracing_scenario
from benchmarks.revisions import revisions_scenario
from clients.python import loadgen

POINT_COLUMNS = [("target", "target", "s"), ("model", "model", "s"), ("config", "config", "s"),
                 ("load", "gen", "s"), ("concurrency", "concurrency", "d"), ("infer/s", "infer_per_s", ".0f"),
                 ("rows/s", "rows_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"), ("p90 ms", "p90_ms", ".2f"),
                 ("p99 ms", "p99_ms", ".2f"), ("mean batch", "mean_batch_rows", ".1f"),
                 ("errors", "error_count", "d")]
CEILING_COLUMNS = [("ceiling rows/s at that batch (measured right after)", "ceiling_rows_per_s", ".0f"),
                   ("fraction of ceiling", "fraction_of_ceiling", ".2f")]


def ours_point(model: str, config: str, concurrency: int, args: argparse.Namespace, *, gen: str = AIO,
               label: str = "", extra: tuple[str, ...] = (), connections: int = 1,
               command: list[str] | None = None) -> dict:
    """One fresh server process per point, so its batch statistics belong to this point alone."""
    write(REPO, model, config)
    if getattr(args, "device", None):  # `run --device cuda`: the closed-loop points on the GPU
        extra = (*extra, "--device", args.device)
    with our_server(*extra, command=command) as server:
        summary = drive(server.url, samples(model), gen, concurrency, args, label or model, connections)
        code = server.terminate()
    counts = batch_summary(server.log(), model)
    if code != 0 or counts is None:
        raise RuntimeError(f"server exited {code} without batch statistics:\n{server.log()[-2000:]}")
    result = make_point(summary, target=OURS, model=model, gen=gen, concurrency=concurrency, counts=counts)
    result["rows_per_process"] = [int(m["rows"]) for m in BATCH_LOG.finditer(server.log()) if m["model"] == model]
    return result


def with_ceiling(point: dict) -> dict:
    """The in-process ceiling at the batch size the server formed, measured right after the point, so that
    both see the machine in the same state (a shared machine's speed drifts over minutes)."""
    batch = point["mean_batch_rows"]
    sizes = sorted({max(1, math.floor(batch)), max(1, math.ceil(batch))})
    ceil = ceiling.measure(write(REPO, point["model"]), MODELS[point["model"]].sample, sizes, min_time_s=1.0)
    at = ceiling.rows_per_s_at(ceil, batch)
    return {**point, "ceiling_rows_per_s": round(at, 1), "fraction_of_ceiling": round(point["rows_per_s"] / at, 3)}


def sweep(model: str) -> list[dict]:
    sys.stderr.write(f"  in-process ONNX Runtime ceiling of {model} ...\n")
    return ceiling.measure(write(REPO, model), MODELS[model].sample, [1, 2, 4, 8, 16, 32, 64])


def ceiling_table(model: str, ceil: list[dict]) -> dict:
    return {"title": f"In-process ONNX Runtime, {model} ({MODELS[model].description}), one calling thread, "
                     "default intra-op threads",
            "columns": [("batch rows", "batch_size", "d"), ("rows/s", "rows_per_s", ".0f"),
                        ("mean ms per run", "mean_ms", ".3f"), ("p50 ms per run", "p50_ms", ".3f")],
            "rows": ceil}


# -- scenarios -------------------------------------------------------------------------------------


def closed_loop(args: argparse.Namespace) -> dict:
    models = ["cheap", "large"] if args.quick else list(MODELS)
    levels = [1, 32] if args.quick else [1, 8, 32, 128]
    points = [with_ceiling(ours_point(m, BATCHING, c, args)) for m in models for c in levels]
    ceilings = {m: sweep(m) for m in models}
    for p in points:
        p["config"] = "max_batch_size 64, delay 0"
    return {"title": "closed loop, every model, concurrency " + "/".join(map(str, levels)), "points": points,
            "ceilings": ceilings,
            "tables": [{"columns": POINT_COLUMNS + CEILING_COLUMNS, "rows": points}]
            + [ceiling_table(m, c) for m, c in ceilings.items()],
            "notes": ["Models: " + "; ".join(f"{m}: {MODELS[m].description}" for m in models) + ".",
                      "Execution is chosen per model at load (execution = auto): see the server logs."]}


def batching(args: argparse.Namespace) -> dict:
    modes = {"batching on": BATCHING, "batching off": "[batching]\nmax_batch_size = 1\n"}
    levels = [1, 32] if args.quick else [1, 8, 32]
    points = []
    for mode, config in modes.items():
        for c in levels:
            points.append({**with_ceiling(ours_point("large", config, c, args, label=mode)), "config": mode})
    ceil = sweep("large")
    on, off = (next(p for p in points if p["config"] == m and p["concurrency"] == max(levels)) for m in modes)
    ratio = on["infer_per_s"] / off["infer_per_s"]
    return {"title": "batching on vs off, compute-bound MLP", "points": points, "ceiling": ceil,
            "tables": [{"columns": POINT_COLUMNS + CEILING_COLUMNS, "rows": points}, ceiling_table("large", ceil)],
            "notes": [f"At concurrency {max(levels)}: batching on / off = {ratio:.2f}x the throughput "
                      f"(p99 {on['p99_ms']:.1f} vs {off['p99_ms']:.1f} ms)."]}


def execution(args: argparse.Namespace) -> dict:
    gens = [AIO] + ([PA] if perf_analyzer.available() is None else [])
    points = []
    for mode in ("inline", "thread"):
        for gen in gens:
            for c in (1, 32):
                p = ours_point("cheap", BATCHING, c, args, gen=gen, label=mode, extra=("--execution", mode))
                points.append({**p, "config": f"execution {mode}"})
    single = ceiling.measure(write(REPO, "cheap"), MODELS["cheap"].sample, [1], intra_op_threads=1)[0]
    notes = [f"In-process single-row latency (one-thread session, as inline runs it): p50 "
             f"{single['p50_ms'] * 1e3:.1f} us."]
    for gen in gens:
        by = {(p["config"], p["concurrency"]): p for p in points if p["gen"] == gen}
        i1, t1, i32, t32 = (by[("execution " + m, c)] for c in (1, 32) for m in ("inline", "thread"))
        notes.append(f"{gen}: c=1 p50 {i1['p50_ms']:.3f} ms inline vs {t1['p50_ms']:.3f} ms thread "
                     f"(inline = in-process + {i1['p50_ms'] - single['p50_ms']:.3f} ms); c=32 "
                     f"{i32['infer_per_s']:.0f} vs {t32['infer_per_s']:.0f} infer/s "
                     f"({i32['infer_per_s'] / t32['infer_per_s']:.2f}x).")
    server_columns = [("server queue ms", "server_queue_ms", ".3f"),
                      ("server compute infer ms", "server_compute_infer_ms", ".3f")]
    return {"title": "inline vs thread execution, cheap MLP", "points": points, "single_row": single,
            "tables": [{"columns": POINT_COLUMNS + server_columns, "rows": points}],
            "notes": notes + ["Server columns: per-request averages perf_analyzer read from ModelStatistics."]}


def open_loop(args: argparse.Namespace) -> dict:
    plans = {"cheap": ([500, 1000, 2000, 3000], 5.0), "large": ([200, 500, 1000, 1500], 50.0)}
    points = []
    for model, (rates, budget_ms) in plans.items():
        write(REPO, model, BATCHING)
        work = samples(model)
        for rate in rates[::2] if args.quick else rates:
            with our_server() as server:
                result = asyncio.run(loadgen.open_loop(server.url, work, rate_per_s=rate, duration_s=args.duration_s,
                                                       label=model))
                server.terminate()
            p = make_point(result.summary(), target=OURS, model=model, gen=AIO, concurrency=0,
                           counts=batch_summary(server.log(), model))
            p.update(budget_p99_ms=budget_ms, within_budget="yes" if p["p99_ms"] <= budget_ms else "no")
            points.append(p)
    notes = []
    for model, (_, budget_ms) in plans.items():
        ok = [p["offered_per_s"] for p in points if p["model"] == model and p["within_budget"] == "yes"]
        notes.append(f"{model}: highest offered rate with p99 <= {budget_ms:g} ms: "
                     + (f"{max(ok):.0f}/s" if ok else "none of those tried"))
    columns = [("model", "model", "s"), ("offered/s", "offered_per_s", ".0f"), ("answered/s", "infer_per_s", ".0f"),
               ("p50 ms", "p50_ms", ".2f"), ("p90 ms", "p90_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"),
               ("p99 budget ms", "budget_p99_ms", ".0f"), ("within", "within_budget", "s"),
               ("mean batch", "mean_batch_rows", ".1f"), ("not sent", "not_sent", "d"), ("errors", "error_count", "d")]
    return {"title": "open loop: latency at fixed request rates", "points": points,
            "tables": [{"columns": columns, "rows": points}],
            "notes": notes + ["Latency is measured from each request's scheduled send time (no coordinated "
                              "omission); 'not sent' counts sends skipped with 2048 requests in flight."]}


def workers(args: argparse.Namespace) -> dict:
    points = []
    for model in ("cheap", "large"):
        for count in (1, 2):
            p = ours_point(model, BATCHING, 32, args, label=f"workers={count}", connections=8,
                           extra=("--workers", str(count)))
            split = " / ".join(str(r) for r in p["rows_per_process"])
            points.append({**p, "config": f"{count} worker process(es), 8 connections", "split": split})
    columns = POINT_COLUMNS + [("rows per process", "split", "s")]
    return {"title": "one server process vs two on one port (SO_REUSEPORT), concurrency 32", "points": points,
            "tables": [{"columns": columns, "rows": points}],
            "notes": ["The load generator opens 8 TCP connections; the kernel spreads connections, not requests, "
                      "across the processes by a hash, so the split (last column, rows each process executed) "
                      "varies from run to run, and so does the gain."]}


def peer_comparison(args: argparse.Namespace) -> dict:
    gens = [AIO] + ([PA] if perf_analyzer.available() is None else [])
    levels = [1, 32]
    points: list[dict] = []
    failures: list[str] = []
    for model in ("cheap", "large"):
        path = write(REPO, model, BATCHING)
        work = samples(model)
        for gen in gens:
            for c in levels:
                points.append({**ours_point(model, BATCHING, c, args, gen=gen), "config": "max_batch_size 64"})
        mlserver_batching = {"max_batch_size": 64, "max_batch_time_s": 0.001}
        starts = [  # (label, start, its keyword arguments, load generators, config)
            ("Triton via PyTriton", peers.pytriton, {"max_batch_size": 64, "max_queue_delay_us": 0}, gens,
             "max_batch_size 64"),
            ("MLServer (defaults)", peers.mlserver, mlserver_batching, [AIO], "adaptive batching 64/1 ms"),
            ("MLServer (debug off)", peers.mlserver, {**mlserver_batching, "settings": {"debug": False}}, [AIO],
             "adaptive batching 64/1 ms, debug off"),
        ]
        for label, start, kwargs, peer_gens, config in starts:
            try:
                with start(path, model, work_dir=WORK / "peers", **kwargs) as peer:
                    for gen in peer_gens:
                        for c in levels:
                            before = peers.batch_counts(peer)
                            summary = drive(peer.url, work, gen, c, args, f"{label} {model}")
                            after = peers.batch_counts(peer)
                            counts = None
                            if before and after:
                                counts = (after[1] - before[1], after[0] - before[0])
                            points.append(make_point(summary, target=f"{label}: {peer.name}", model=model, gen=gen,
                                                      concurrency=c, counts=counts, config=config))
            except Exception as e:  # a peer that cannot run here is reported, not fatal
                failures.append(f"{label} on {model}: {type(e).__name__}: {str(e)[-600:]}")
                sys.stderr.write(f"  {failures[-1]}\n")
    return {"title": "ours vs Triton (PyTriton) vs MLServer, same models, same load, same run", "points": points,
            "failures": failures, "tables": [{"columns": POINT_COLUMNS, "rows": points}],
            "notes": ratios(points) + [f"could not run: {f}" for f in failures]}


def ratios(points: list[dict]) -> list[str]:
    notes = []
    for p in points:
        if p["target"] != OURS or p["concurrency"] != 32:
            continue
        for q in points:
            if q["target"] != OURS and (q["model"], q["gen"], q["concurrency"]) == (p["model"], p["gen"], 32):
                notes.append(f"{p['model']}, {p['gen']}, c=32: ours / {q['target'].split(':')[0]} = "
                             f"{p['infer_per_s'] / q['infer_per_s']:.2f}x throughput; p99 {p['p99_ms']:.1f} vs "
                             f"{q['p99_ms']:.1f} ms")
    return notes


def metrics_cost(args: argparse.Namespace) -> dict:
    """Statistics and metrics on (the default, scraped every second) vs recording switched off."""
    off = [sys.executable, "-m", "benchmarks.no_stats_server"]
    points = []
    for model in ("cheap", "large"):
        for _ in range(2):  # twice each, interleaved: the machine's drift shows in the spread
            for mode, command in (("on", None), ("off", off)):
                with scraping() if mode == "on" else nullcontext():
                    p = ours_point(model, BATCHING, 32, args, label=f"metrics {mode}", command=command)
                points.append({**p, "config": f"metrics {mode}"})
    notes = []
    for model in ("cheap", "large"):
        on = [p["infer_per_s"] for p in points if p["model"] == model and p["config"] == "metrics on"]
        off_ = [p["infer_per_s"] for p in points if p["model"] == model and p["config"] == "metrics off"]
        notes.append(f"{model}, c=32: on / off = {sum(on) / sum(off_):.3f} (on {on}, off {off_} infer/s)")
    return {"title": "metrics and statistics on vs off, concurrency 32", "points": points,
            "tables": [{"columns": POINT_COLUMNS, "rows": points}],
            "notes": notes + ["Off: benchmarks/no_stats_server.py, the server with ModelStats recording made a "
                              "no-op and no endpoint. On: the default server, its endpoint scraped every second."]}


@contextmanager
def scraping() -> Iterator[None]:
    """Scrape every ServerProcess's metrics once a second, as Prometheus would (finds the port in the log)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(1.0):
            match = re.findall(r"metrics on (http://\S+/metrics)", (WORK / "server.log").read_text(errors="replace"))
            if match:
                with suppress(OSError), urllib.request.urlopen(match[-1], timeout=2) as response:
                    response.read()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def cache_point(model: str, work: loadgen.Workload, concurrency: int, args: argparse.Namespace, *,
                cache: tuple[str, ...], label: str) -> dict:
    write(REPO, model, BATCHING)
    with our_server(*cache) as server:
        summary = asyncio.run(loadgen.closed_loop(server.url, work, concurrency=concurrency,
                                                  duration_s=args.duration_s, label=label))
        with grpcclient.InferenceServerClient(server.url) as client:
            (entry,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
        server.terminate()
    hit, miss = (entry["inference_stats"].get(k, {}) for k in ("cache_hit", "cache_miss"))
    hits, misses = int(hit.get("count", 0)), int(miss.get("count", 0))
    result = make_point(summary.summary(), target=OURS, model=model, gen=AIO, concurrency=concurrency,
                        counts=batch_summary(server.log(), model), config=label)
    result["hit_rate"] = round(hits / (hits + misses), 3) if hits + misses else None
    # Server-side mean time of a hit's lookup (hits that shared another request's lookup count as 0).
    result["hit_lookup_us"] = round(int(hit.get("ns", 0)) / hits / 1e3, 1) if hits else None
    return result


def cache_scenario(args: argparse.Namespace) -> dict:
    """Both tiers: a hit's latency against a miss's (c=1), and throughput at a 90 % hit rate (c=32), with the
    cache off as the baseline. Redis is a real redis-server on 127.0.0.1, emptied before each point."""
    from tests.support import redis_server

    if not redis_server.available():
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    WORK.mkdir(exist_ok=True)
    (WORK / "redis").mkdir(exist_ok=True)
    redis = redis_server.RedisServer(WORK / "redis").start()
    near = WORK / "near_cache.toml"
    near.write_text("[cache]\nnear_cache_mib = 64\n")
    tiers = [("memory", ("--cache", "memory:512")), ("redis", ("--cache", redis.url)),
             ("redis + near cache", ("--cache", redis.url, "--config", str(near)))]
    rng = np.random.default_rng(5)
    points = []
    try:
        for model, unique in (("cheap", 30_000), ("large", 12_000)):
            sample = MODELS[model].sample
            fresh = [sample(rng, 1) for _ in range(unique)]  # never repeated within a run
            hot = [sample(rng, 1) for _ in range(16)]
            all_miss = loadgen.workload(model, fresh)
            all_hit = loadgen.workload(model, hot[:1])
            mixed = loadgen.workload(model, [fresh[i] if i % 10 == 0 else hot[i % 16] for i in range(unique)])
            for tier, flags in tiers:
                for work, concurrency, what in ((all_miss, 1, "every request a miss"),
                                                (all_hit, 1, "every request a hit"), (mixed, 32, "90 % repeated")):
                    if tier.startswith("redis + near") and work is all_miss:
                        continue  # the same as Redis alone
                    with redis.client() as client:
                        client.flushall()
                    points.append(cache_point(model, work, concurrency, args, cache=flags, label=f"{tier}, {what}"))
            points.append(cache_point(model, mixed, 32, args, cache=(), label="off, 90 % repeated"))
    finally:
        redis.stop()
    columns = POINT_COLUMNS + [("hit rate", "hit_rate", ".2f"), ("hit lookup µs", "hit_lookup_us", ".1f")]
    notes = []
    for model in ("cheap", "large"):
        by = {p["config"]: p for p in points if p["model"] == model}
        off = by["off, 90 % repeated"]
        for tier in ("memory", "redis", "redis + near cache"):
            miss = by[f"{tier.removesuffix(' + near cache')}, every request a miss"]
            hit = by[f"{tier}, every request a hit"]
            on = by[f"{tier}, 90 % repeated"]
            notes.append(f"{model}, {tier}: c=1 p50 hit {hit['p50_ms']:.3f} ms vs miss {miss['p50_ms']:.3f} ms; "
                         f"c=32 at a {on['hit_rate']:.0%} hit rate {on['infer_per_s']:.0f} infer/s vs "
                         f"{off['infer_per_s']:.0f} with the cache off ({on['infer_per_s'] / off['infer_per_s']:.2f}x)")
    return {"title": "response cache, in-process LRU, Redis, Redis with a near cache: hit vs miss, and a 90 % hit rate",
            "points": points,
            "tables": [{"columns": columns, "rows": points}],
            "notes": notes + ["Load: aio closed loop. Miss points send requests never repeated in the run; hit points "
                              "repeat one request; the 90 % points cycle a list where every tenth request is new and "
                              "the rest come from 16 repeated ones. Redis: a local redis-server (same 2 cores), "
                              "emptied before each point. hit lookup µs: the server's mean lookup time per hit, "
                              "from ModelStatistics (identical requests sharing one lookup count as 0)."]}


def batch_score(args: argparse.Namespace) -> dict:
    """clients/python/batch_score.py over 1,000,000 rows of the cheap MLP, checked against in-process ORT."""
    rows = 100_000 if args.quick else 1_000_000
    path = write(REPO, "cheap", "[batching]\nmax_batch_size = 1024\n")
    data_path, out_path = WORK / "score_in.npy", WORK / "score_out.npy"
    np.save(data_path, MODELS["cheap"].sample(np.random.default_rng(2), rows)["x"])
    out_path.unlink(missing_ok=True)
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "clients/python/batch_score.py", str(data_path.relative_to(root)),
               str(out_path.relative_to(root)), "--model", "cheap",
               "--rows-per-request", "1024", "--concurrency", "4", "--no-progress"]
    with our_server() as server:
        start = time.monotonic()
        done = subprocess.run([*command, "--url", server.url], capture_output=True, text=True, timeout=1800,
                              cwd=root)
        seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"batch_score failed ({done.returncode}):\n{done.stderr[-2000:]}")
    import onnxruntime  # the reference, in chunks of the same size, on this process's own session

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    data, got = np.load(data_path, mmap_mode="r"), np.load(out_path, mmap_mode="r")
    identical = got.shape == (rows, 10) and all(
        np.array_equal(got[i:i + 1024], session.run(["y"], {"x": np.asarray(data[i:i + 1024])})[0])
        for i in range(0, rows, 1024))
    point = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
             "identical_to_onnxruntime": "yes" if identical else "NO", "rows_per_request": 1024, "concurrency": 4}
    columns = [("rows", "rows", "d"), ("rows per request", "rows_per_request", "d"),
               ("concurrency", "concurrency", "d"), ("seconds", "seconds", ".2f"), ("rows/s", "rows_per_s", "d"),
               ("outputs identical to in-process ONNX Runtime", "identical_to_onnxruntime", "s")]
    return {"title": "batch scoring a .npy file through the server (clients/python/batch_score.py)",
            "points": [point], "tables": [{"columns": columns, "rows": [point]}],
            "notes": [f"Command: {' '.join(command[1:])} --url <server> (cheap MLP, max_batch_size 1024).",
                      "Identical means np.array_equal, chunk by chunk, against session.run on the same rows."]}


PRIORITY_CONFIG = """[batching]
max_batch_size = 64
priority_levels = 2
default_priority_level = 2
default_queue_policy = { default_timeout_microseconds = 10000000, allow_timeout_override = true }
"""


def priority_smoke(args: argparse.Namespace) -> dict:
    """perf_analyzer sending Triton's `priority` (and `timeout`) request parameters to a model with priority levels
    and a queue policy, as uint64 and as int64: a smoke check that both are taken (no errors), with the figures."""
    if (reason := perf_analyzer.available()) is not None:
        raise RuntimeError(f"the priority smoke needs perf_analyzer: {reason}")
    write(REPO, "cheap", PRIORITY_CONFIG)
    runs = {"priority:1:uint": ["priority:1:uint"], "priority:2:int": ["priority:2:int"],
            "priority:1:uint, timeout:5000000:int": ["priority:1:uint", "timeout:5000000:int"]}
    points = []
    with our_server() as server:
        for label, parameters in runs.items():
            result = perf_analyzer.run(server.url, "cheap", 8, measurement_ms=int(args.duration_s * 1000),
                                       work_dir=WORK / "perf_analyzer", request_parameters=parameters)
            points.append({**result, "target": OURS, "model": "cheap", "config": label, "gen": PA})
        metrics = server.scrape()
        code = server.terminate()
    if code != 0:
        raise RuntimeError(f"server exited {code}:\n{server.log()[-2000:]}")
    levels = [line for line in metrics.splitlines() if line.startswith("inference_priority_pending_requests{")]
    columns = [("request parameters", "config", "s"), ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
               ("p99 ms", "p99_ms", ".2f")]
    return {"title": "perf_analyzer with --request-parameter priority (cheap MLP, priority_levels 2, c=8)",
            "points": points, "tables": [{"columns": columns, "rows": points}],
            "notes": ["A smoke check: perf_analyzer fails the run on any error answer, so every row here is a run "
                      "of error-free requests carrying the parameter.",
                      "Per-level queue gauges after the runs: " + ("; ".join(levels) or "none exported")]}


SCENARIOS = {"closed-loop": closed_loop, "batching": batching, "execution": execution, "open-loop": open_loop,
             "workers": workers, "peers": peer_comparison, "batch-score": batch_score, "metrics": metrics_cost,
             "cache": cache_scenario, "cache-memory": cache_memory_scenario, "lifecycle": lifecycle_scenario,
             "http": http_scenario, "routing": routing_scenario, "shadow": shadow_scenario,
             "reliability": reliability_scenario, "grpc-engines": grpc_engines_scenario,
             "tracing": tracing_scenario, "ensemble": ensemble_scenario, "revisions": revisions_scenario,
             "priority": priority_smoke, "many-models": many_models_scenario}
