"""The grpc-engines scenario: the same server on each gRPC engine (grpcio's aio server, pygrpc-native), side by side.

1. Per call: the cheap and the compute-bound MLP (max_batch_size 64, no delay), concurrency 1 and 32, with the aio
   load generator and perf_analyzer. One server per engine runs for the whole model, and the points alternate
   between them (grpcio, native) so that each ratio compares figures measured moments apart. Server CPU comes from
   /proc (http.py's sampler): µs of server CPU per answer.
2. Overload: the compute-bound MLP with batching off (max_batch_size 1: a few hundred calls/s, so the load
   generator is not what limits) on one ONNX Runtime thread (intra_op_threads 1), every call with a 1 s deadline.
   The one thread keeps the model's core its own: with two, ONNX Runtime shares both cores with the load
   generator, whose CPU grows with the offered load (at 3x it sends three times the calls), and the measure would
   be of the generator taking the model's cores rather than of what the server does with the excess. Per front
   end (gRPC on grpcio, gRPC on native, HTTP): capacity is a closed loop of 64 callers for 3 s, then an open loop
   offers 3x that, then 0.25x right after (recovery). Goodput = OK answers/s at 3x over the capacity.
3. The cost of a refusal: a model with a queue of one (max_queue_size 1, batching off) that runs on one thread
   for about a second a call, flooded by 32 callers, so nearly every call is refused UNAVAILABLE at once. The
   server's CPU under the flood less its CPU with one caller (the model alone), over the refusals a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks import overload, perf_analyzer
from benchmarks.http import COLUMNS, CpuSampler, Target, measure, parse_stat, subtree, tree_cores
from benchmarks.models import write
from benchmarks.points import AIO, BATCHING, PA, REPO, WORK, samples
from tests.support import onnx_models

ENGINES = ("grpcio", "native")
LEVELS = (1, 32)
OVERLOAD_X = 3.0
RECOVERY_X = 0.25
DEADLINE_S = 1.0
NO_BATCHING = "intra_op_threads = 1\n[batching]\nmax_batch_size = 1\n"
CPU_TARGET_US = 170  # native, cheap MLP, c=32 (issue: <= 170 µs of server CPU per request)
GOODPUT_TARGET = 0.85  # OK/s at 3x offered over capacity
OVERLOAD_COLUMNS = [("front end", "front_end", "s"), ("load", "level", "s"), ("offered/s", "offered_per_s", ".0f"),
                    ("sent", "sent", "d"), ("OK/s", "ok_per_s", ".0f"), ("goodput / capacity", "goodput", ".2f"),
                    ("outcomes", "outcomes", "s"), ("other statuses", "unexpected", "d"),
                    ("answered > 0.1 s after the deadline", "late", "d"), ("OK p50 ms", "ok_p50_ms", ".0f"),
                    ("OK p99 ms", "ok_p99_ms", ".0f"), ("server CPU cores", "server_cores", ".2f"),
                    ("generator's send lag p99 ms", "send_lag_p99_ms", ".0f")]
REFUSAL_COLUMNS = [("front end", "front_end", "s"), ("refused/s", "refused_per_s", ".0f"),
                   ("OK/s", "ok_per_s", ".1f"), ("server CPU cores, flood", "flood_cores", ".2f"),
                   ("server CPU cores, one caller (the model)", "model_cores", ".2f"),
                   ("server µs per refusal", "us_per_refusal", ".0f")]
FRONT_ENDS = (("gRPC (grpcio)", "grpcio"), ("gRPC (native)", "native"), ("HTTP", "native"))
RATIO_COLUMNS = [("model", "model", "s"), ("load", "gen", "s"), ("concurrency", "concurrency", "d"),
                 ("infer/s grpcio → native", "pair", "s"), ("throughput native / grpcio", "ratio", ".2f"),
                 ("p50 ms grpcio → native", "p50_pair", "s"),
                 ("server µs/infer grpcio → native", "cpu_pair", "s"), ("CPU per infer native / grpcio", "cpu_ratio",
                                                                        ".2f")]


def per_call_points(args: argparse.Namespace, failures: list[str]) -> list[dict]:
    from benchmarks.reliability import serving

    gens = [AIO] + ([PA] if perf_analyzer.available() is None else [])
    points: list[dict] = []
    for model in ("cheap", "large"):
        write(REPO, model, BATCHING)
        work = samples(model)
        with ExitStack() as stack:
            targets = []
            for engine in ENGINES:
                server, _ = stack.enter_context(serving(REPO, f"engines-{engine}", "--grpc-engine", engine))
                targets.append(Target(engine, server.proc.pid, server.url, "", lambda s=server: s.proc.poll() is None))
            sampler = stack.enter_context(CpuSampler())
            for gen in gens:
                levels = LEVELS if not args.quick else (32,)
                for c in levels:
                    for target in targets:
                        try:
                            others = [t for t in targets if t is not target]
                            points.append(measure(target, others, "grpc", gen, c, work, args, sampler,
                                                  WORK / "perf_analyzer"))
                        except Exception as e:  # reported with the results; the other points still run
                            failures.append(f"{target.label}, {model}, {gen}, c={c}: {type(e).__name__}: "
                                            f"{str(e)[-600:]}")
                            sys.stderr.write(f"  {failures[-1]}\n")
    return points


def ratio_rows(points: list[dict]) -> list[dict]:
    rows = []
    for p in points:
        if p["target"] != "grpcio":
            continue
        q = next((q for q in points if q["target"] == "native" and
                  (q["model"], q["gen"], q["concurrency"]) == (p["model"], p["gen"], p["concurrency"])), None)
        if q is None or not p["infer_per_s"]:
            continue
        row = {"model": p["model"], "gen": p["gen"], "concurrency": p["concurrency"],
               "pair": f"{p['infer_per_s']:.0f} → {q['infer_per_s']:.0f}", "ratio": q["infer_per_s"] / p["infer_per_s"],
               "p50_pair": f"{p['p50_ms']:.2f} → {q['p50_ms']:.2f}"}
        if p.get("server_us_per_infer") and q.get("server_us_per_infer"):
            row["cpu_pair"] = f"{p['server_us_per_infer']:.0f} → {q['server_us_per_infer']:.0f}"
            row["cpu_ratio"] = q["server_us_per_infer"] / p["server_us_per_infer"]
        rows.append(row)
    return rows


def overload_rows(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    from benchmarks.reliability import serving

    write(REPO, "large", NO_BATCHING)
    call = overload.Call.of("large", "x", np.random.default_rng(5).standard_normal((1, 512)).astype(np.float32))
    rows, notes = [], []
    for front_end, engine in FRONT_ENDS:
        with serving(REPO, f"engines-overload-{engine}", "--grpc-engine", engine) as (server, http_port):
            http = overload.http_url(front_end, http_port)
            cap, _, _ = overload.closed_loop(call, server.url, http, concurrency=64, duration_s=3.0)
            notes.append(f"{front_end}: capacity {cap:.0f} answers/s (1-row calls, batching off, one ONNX Runtime "
                         f"thread, a closed loop of 64 callers for 3 s).")
            for label, times, duration_s in ((f"{OVERLOAD_X:g}x capacity", OVERLOAD_X, args.duration_s),
                                             (f"recovery: {RECOVERY_X:g}x, right after", RECOVERY_X, 2.0)):
                with CpuSampler() as sampler:
                    start = time.monotonic()
                    result = overload.open_loop(call, server.url, http, rate_per_s=cap * times,
                                                duration_s=duration_s, deadline_s=DEADLINE_S)
                    window = sampler.window(start + 0.5, time.monotonic())
                summary = result.summary()
                row = {"front_end": front_end, "level": label, **summary,
                       "goodput": summary["ok_per_s"] / cap if times > 1 else None, "capacity_per_s": round(cap, 1)}
                if window is not None:
                    first, last = window
                    row["server_cores"] = round(tree_cores(first, last, subtree(last.cpu, server.proc.pid)), 2)
                rows.append(row)
    return rows, notes


def process_cpu_s(pid: int) -> float:
    return parse_stat(Path(f"/proc/{pid}/stat").read_text())[1]


def closed_loop_cpu(server, http: str | None, call: overload.Call, concurrency: int,
                    duration_s: float) -> tuple[float, float, float]:
    """(OK/s, refused/s, server cores) over the whole closed loop, its 1 s of warm-up included."""
    started, cpu = time.monotonic(), process_cpu_s(server.proc.pid)
    ok_per_s, _, errors = overload.closed_loop(call, server.url, http, concurrency=concurrency, duration_s=duration_s)
    wall = time.monotonic() - started
    return ok_per_s * duration_s / wall, errors / wall, (process_cpu_s(server.proc.pid) - cpu) / wall


def refusal_rows(args: argparse.Namespace) -> list[dict]:
    from benchmarks.reliability import serving

    onnx_models.write_model(REPO, "refuser", onnx_models.slow(4096),
                            "intra_op_threads = 1\n[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n")
    call = overload.Call.of("refuser", "x", np.ones((1, 1), np.float32))
    rows = []
    for front_end, engine in FRONT_ENDS:
        with serving(REPO, f"engines-refusal-{engine}", "--grpc-engine", engine) as (server, http_port):
            http = overload.http_url(front_end, http_port)
            _, _, model_cores = closed_loop_cpu(server, http, call, 1, args.duration_s)
            ok_per_s, refused_per_s, flood_cores = closed_loop_cpu(server, http, call, 32, args.duration_s)
        rows.append({"front_end": front_end, "refused_per_s": refused_per_s, "ok_per_s": ok_per_s,
                     "flood_cores": flood_cores, "model_cores": model_cores,
                     "us_per_refusal": (flood_cores - model_cores) / max(refused_per_s, 1e-9) * 1e6})
    return rows


def notes_for(points: list[dict], ratios: list[dict], overloaded: list[dict]) -> list[str]:
    notes = []
    for r in ratios:
        line = (f"{r['model']}, {r['gen']}, c={r['concurrency']}: native / grpcio = {r['ratio']:.2f}x throughput "
                f"({r['pair']} infer/s), p50 {r['p50_pair']} ms")
        if "cpu_pair" in r:
            line += f", server CPU {r['cpu_pair']} µs/infer ({r['cpu_ratio']:.2f}x)"
        notes.append(line)
    for p in points:
        if (p["target"], p["model"], p["concurrency"]) == ("native", "cheap", 32) and p.get("server_us_per_infer"):
            met = "met" if p["server_us_per_infer"] <= CPU_TARGET_US else "MISSED"
            notes.append(f"target: native server CPU per request on the cheap MLP ({p['gen']}, c=32) <= "
                         f"{CPU_TARGET_US} µs: {p['server_us_per_infer']:.0f} µs, {met}")
    for row in overloaded:
        if row.get("goodput") is not None:
            met = "met" if row["goodput"] >= GOODPUT_TARGET and not row["unexpected"] else "MISSED"
            notes.append(f"target: {row['front_end']} goodput at {OVERLOAD_X:g}x >= {GOODPUT_TARGET} of capacity, "
                         f"no other status: {row['goodput']:.2f}, {row['unexpected']} other, {met}")
    return notes


def grpc_engines_scenario(args: argparse.Namespace) -> dict:
    failures: list[str] = []
    points = per_call_points(args, failures)
    ratios = ratio_rows(points)
    overloaded, overload_notes = overload_rows(args)
    refusals = refusal_rows(args)
    notes = notes_for(points, ratios, overloaded) + overload_notes + [
        f"A refusal costs the server {r['us_per_refusal']:.0f} µs of CPU on {r['front_end']}." for r in refusals] + [
        "Per call: one server per engine (the same command but --grpc-engine), both running for the whole model, "
        "points alternating; CPU: mean cores over each point's steady part from /proc/<pid>/stat every 0.2 s; "
        "µs/infer = server cores / infer/s. 'aio' is tritonclient.grpc.aio (clients/python/loadgen.py), "
        "'perf_analyzer' is perf_analyzer -i grpc.",
        f"Overload: open loop (benchmarks/overload.py), every call with a {DEADLINE_S:g} s deadline (gRPC deadline; "
        "HTTP Request-Timeout-Ms), 4 gRPC connections or up to 1024 HTTP connections; a fresh server per front "
        "end; goodput = OK/s over the capacity measured just before on the same server."]
    notes += [f"could not run: {f}" for f in failures]
    return {"title": "gRPC engines: grpcio vs native, per call and under overload", "points": points,
            "ratios": ratios, "overload": overloaded, "refusals": refusals, "failures": failures,
            "tables": [{"title": "Per call", "columns": [c for c in COLUMNS if c[1] not in ("protocol",)],
                        "rows": points},
                       {"title": "native / grpcio, measured side by side", "columns": RATIO_COLUMNS, "rows": ratios},
                       {"title": f"Overload: {OVERLOAD_X:g}x capacity, every call with a {DEADLINE_S:g} s deadline, "
                                 "compute-bound MLP, batching off, one ONNX Runtime thread",
                        "columns": OVERLOAD_COLUMNS, "rows": overloaded},
                       {"title": "The cost of a refusal (queue full: UNAVAILABLE / HTTP 503), 32 callers on a model "
                                 "with a queue of one", "columns": REFUSAL_COLUMNS, "rows": refusals}],
            "notes": notes}
