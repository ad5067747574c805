"""The shadow scenario: a primary model under a light fixed-rate load and under closed-loop load (c=32) through a
route with no shadow, with a slow shadow (tests/support/onnx_models.slow, at normal CPU priority and again with
cpu_priority = "background"), with a shadow that fails at run time, and with a fast shadow that succeeds (a copy
of the primary: the mirroring's own cost); one server, five routes over the same primary model, points
interleaved (the order rotates every round).
Every answer is compared, byte for byte, with the no-shadow route's answer to the same input; the shadows'
outcomes come from the metrics endpoint, read after each point once the shadow's queue has drained. The helpers
the scenarios share come from points.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from benchmarks import ceiling
from benchmarks.http import CpuSampler
from benchmarks.points import BATCHING
from benchmarks.routing import (
    checked_closed_loop,
    log_problems,
    mean_of,
    measured,
    scrape,
    server_version,
    serving,
    spread,
    total,
)
from clients.python import loadgen
from tests.support import onnx_models

WORK = Path(__file__).resolve().parent / ".work" / "shadow"
SLOW_SIDE = 1024  # onnx_models.slow(1024): about 8 ms a row with 2 intra-op threads on 2 cores, 14 ms with one
# A light load at a fixed rate (open loop), where the event loop has room and the shadows run, and a closed
# loop at c=32 (the server as busy as the machine lets it be), where shadows wait and their copies are dropped.
OPEN_RATE_PER_S = 200
LEVELS = (f"{OPEN_RATE_PER_S}/s", "c=32")
REPEATS = 3
OUTCOMES = ("ok", "error", "unavailable", "incompatible", "dropped")
# label -> (route, its shadow model or None)
CONFIGS = {"no shadow": ("plain", None),
           "slow shadow": ("slow_shadow", "slow"),
           "slow shadow, background priority": ("slow_bg_shadow", "slow_background"),
           "failing shadow": ("failing_shadow", "failing"),
           "fast shadow (a copy of the primary)": ("fast_shadow", "primary_copy")}
POINT_COLUMNS = [("load", "load", "s"), ("round", "rep", "d"), ("config", "config", "s"),
                 ("infer/s", "infer_per_s", ".0f"),
                 ("p50 ms", "p50_ms", ".2f"), ("p90 ms", "p90_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"),
                 ("errors", "error_count", "d"), ("answers checked", "checked", "d"),
                 ("answers differing", "differing", "d"), ("without variant", "missing_variant", "d"),
                 ("shadow ok", "shadow_ok", "d"), ("shadow error", "shadow_error", "d"),
                 ("shadow dropped", "shadow_dropped", "d"), ("shadow other", "shadow_other", "d"),
                 ("shadow mean ms", "shadow_mean_ms", ".2f"), ("drain s", "drain_s", ".2f"),
                 ("server CPU cores", "server_cores", ".2f"), ("server CPU µs/infer", "server_us_per_infer", ".0f"),
                 ("load generator CPU cores", "loadgen_cores", ".2f"), ("other CPU cores", "other_cores", ".2f")]
SUMMARY_COLUMNS = [("load", "load", "s"), ("config", "config", "s"), ("infer/s (mean)", "infer_per_s", ".0f"),
                   ("infer/s vs no shadow", "rate_ratio", ".3f"), ("p99 ms (median)", "p99_ms", ".2f"),
                   ("p99 vs no shadow", "p99_ratio", ".3f"),
                   ("p99 per round vs that round's no shadow", "p99_pairs", "s"),
                   ("p99 over rounds", "p99_spread", "s"), ("p99 not above no shadow's noise", "within_noise", "s"),
                   ("copies offered", "offered", "d"), ("shadow ok", "shadow_ok", "d"),
                   ("shadow error", "shadow_error", "d"), ("shadow dropped", "shadow_dropped", "d"),
                   ("shadow unavailable + incompatible", "shadow_other", "d"),
                   ("answers differing", "differing", "d"), ("server µs/infer", "server_us_per_infer", ".0f")]


def fails_at_run_time() -> onnx.ModelProto:
    """The primary's input, FP32 `x` [N, 1], and `y` = x without its first row: dim 0 is N - 1, so every batch
    fails with INTERNAL in the server (onnx_models.drops_a_row with the primary's width)."""
    inits = [numpy_helper.from_array(np.array([v], dtype=np.int64), n)
             for n, v in (("starts", 1), ("ends", 2**62), ("axes", 0))]
    graph = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])], "fails",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_models.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_repo(repo: Path) -> None:

    shutil.rmtree(repo, ignore_errors=True)
    w = onnx_models.write_model
    w(repo, "primary", onnx_models.mlp([1, 256, 1], seed=0), BATCHING)  # FP32 x [N, 1], like slow()'s
    w(repo, "slow", onnx_models.slow(SLOW_SIDE), "[batching]\nmax_batch_size = 4\n")
    w(repo, "slow_background", onnx_models.slow(SLOW_SIDE),
      'cpu_priority = "background"\n[batching]\nmax_batch_size = 4\n')  # one intra-op thread, nice 19
    w(repo, "failing", fails_at_run_time(), BATCHING)
    w(repo, "primary_copy", onnx_models.mlp([1, 256, 1], seed=0), BATCHING)  # the mirroring cost alone


def routes() -> str:
    text = ""
    for route, shadow in CONFIGS.values():
        text += (f'[routes.{route}]\n'
                 'variants = [ { name = "main", model = "primary", version = "1", weight = 100 } ]\n')
        if shadow:
            text += (f'[routes.{route}.shadow]\nmodel = "{shadow}"\npercent = 100\nqueue_size = 64\n'
                     "concurrency = 1\n")
    return text


def shadow_counts(samples: list, route: str) -> dict[str, float]:
    counts = {o: total(samples, "inference_shadow_requests_total", route=route, outcome=o) for o in OUTCOMES}
    counts["offered"] = total(samples, "inference_route_requests_total", route=route, code="OK")
    counts["duration_sum"] = total(samples, "inference_shadow_request_duration_seconds_sum", route=route)
    counts["duration_count"] = total(samples, "inference_shadow_request_duration_seconds_count", route=route)
    return counts


def drained(url: str, route: str, timeout_s: float = 60) -> tuple[dict[str, float], float]:
    """Wait until every successful routed answer's copy has an outcome (percent = 100): the shadow's queue is
    empty and nothing is running. (The counts then, and the seconds waited; -1 if it never drained.)"""
    start = time.monotonic()
    while True:
        counts = shadow_counts(scrape(url), route)
        if sum(counts[o] for o in OUTCOMES) >= counts["offered"]:
            return counts, round(time.monotonic() - start, 2)
        if time.monotonic() - start > timeout_s:
            return counts, -1.0
        time.sleep(0.05)


def reference(url: str, work: loadgen.Workload) -> dict[int, bytes]:
    """The no-shadow route's answer to each request of the pool, as raw output bytes (checked against the
    primary asked for by version, outside any route)."""
    answers = {}
    with grpcclient.InferenceServerClient(url) as client:
        for inputs in work.requests:
            routed = client.infer(CONFIGS["no shadow"][0], inputs).get_response()
            direct = client.infer("primary", inputs, model_version="1").get_response()
            if routed.raw_output_contents != direct.raw_output_contents:
                raise RuntimeError("the no-shadow route's answer differs from the primary's own")
            answers[id(inputs)] = b"".join(routed.raw_output_contents)
    return answers


def summary_rows(points: list[dict]) -> list[dict]:
    base = [p for p in points if p["config"] == "no shadow"]
    base_p99, base_rate = statistics.median(p["p99_ms"] for p in base), statistics.mean(p["infer_per_s"] for p in base)
    noise = (max(p["p99_ms"] for p in base) - min(p["p99_ms"] for p in base)) / 2 / base_p99 if len(base) > 1 else None
    rows = []
    for config in CONFIGS:
        ps = [p for p in points if p["config"] == config]
        p99 = statistics.median(p["p99_ms"] for p in ps)
        ratio = p99 / base_p99
        pairs = [f"{p['p99_ms'] / b['p99_ms']:.2f}" for p in ps for b in base if b["rep"] == p["rep"]]
        within = "–" if noise is None or config == "no shadow" else \
            f"{'yes' if ratio - 1 <= noise else 'no'} (noise ±{noise:.0%})"
        rows.append({"load": ps[0]["load"], "config": config,
                     "infer_per_s": round(statistics.mean(p["infer_per_s"] for p in ps), 1),
                     "rate_ratio": round(statistics.mean(p["infer_per_s"] for p in ps) / base_rate, 3),
                     "p99_ms": p99, "p99_ratio": round(ratio, 3), "p99_pairs": ", ".join(pairs),
                     "p99_spread": spread([p["p99_ms"] for p in ps]), "within_noise": within,
                     **{k: sum(p[k] for p in ps) for k in ("offered", "shadow_ok", "shadow_error", "shadow_dropped",
                                                           "shadow_other", "differing", "missing_variant")},
                     "server_us_per_infer": mean_of(ps, "server_us_per_infer")})
    return rows


async def drive(url: str, work: loadgen.Workload, level: str, duration_s: float, label: str,
                check: Any) -> tuple[loadgen.LoadResult, Counter]:
    if level.startswith("c="):
        return await checked_closed_loop(url, work, version="", concurrency=int(level[2:]), duration_s=duration_s,
                                         label=label, check=check)
    return await checked_open_loop(url, work, rate_per_s=OPEN_RATE_PER_S, duration_s=duration_s, label=label,
                                   check=check)


async def checked_open_loop(url: str, work: loadgen.Workload, *, rate_per_s: float, duration_s: float,
                            label: str, check: Any, warmup_s: float = 1.0) -> tuple[loadgen.LoadResult, Counter]:
    """loadgen.open_loop's fixed rate (latency from each request's scheduled time), every request with its own
    request id and every answer through `check`."""
    client = loadgen._clients(url, 1)[0]
    result = loadgen.LoadResult("open", rate_per_s, duration_s, work.rows)
    tally: Counter = Counter()
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        inputs = work.requests[i % len(work.requests)]
        try:
            answer = await client.infer(work.model, inputs, request_id=f"o{i}", client_timeout=60)
        except Exception as e:
            result.record_error(e)
            return
        tally[check(inputs, answer.get_response())] += 1
        if scheduled >= measure_from:
            result.latencies_s.append(loop.time() - scheduled)

    sys.stderr.write(f"{label} {rate_per_s:.0f}/s\n")
    for i in range(int((warmup_s + duration_s) * rate_per_s)):
        scheduled = start + i / rate_per_s
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await client.close()
    return result, tally


def checked(points: list[dict], row: dict) -> int:
    return sum(p["checked"] for p in points if (p["config"], p["load"]) == (row["config"], row["load"]))


def shadow_scenario(args: argparse.Namespace) -> dict:
    write_repo(repo := WORK / "repo")
    rng = np.random.default_rng(1)
    pool = loadgen.workload("plain", [{"x": rng.standard_normal((1, 1)).astype(np.float32)} for _ in range(64)])
    repeats = 1 if args.quick else REPEATS
    slow_cost = {threads: ceiling.measure(repo / "slow" / "1" / "model.onnx",
                                          lambda r, rows: {"x": r.standard_normal((rows, 1)).astype(np.float32)},
                                          [1], min_time_s=0.5, intra_op_threads=threads)[0]["mean_ms"]
                 for threads in (0, 1)}
    points: list[dict] = []
    with serving(repo, routes(), WORK / "server.log") as (server, metrics), CpuSampler() as sampler:
        expected = reference(server.url, pool)

        def check(inputs: Any, response: Any) -> str:
            if "variant" not in response.parameters:
                return "no variant"
            return "identical" if b"".join(response.raw_output_contents) == expected[id(inputs)] else "differs"

        for level, rep in ((level, rep) for level in LEVELS for rep in range(repeats)):
            labels = list(CONFIGS)
            for config in labels[rep % len(labels):] + labels[:rep % len(labels)]:
                route = CONFIGS[config][0]
                work = dataclasses.replace(pool, model=route)
                before = shadow_counts(scrape(metrics), route)
                point, tally = measured(server, sampler, lambda w=work, c=config, n=level: asyncio.run(
                    drive(server.url, w, n, args.duration_s, f"shadow: {c}", check)))
                if CONFIGS[config][1] is None:
                    after, drain_s = shadow_counts(scrape(metrics), route), 0.0
                else:
                    after, drain_s = drained(metrics, route)
                d = {k: int(after[k] - before[k]) for k in OUTCOMES + ("offered", "duration_count")}
                dur = after["duration_sum"] - before["duration_sum"]
                points.append({**point, "load": level, "rep": rep + 1, "config": config, "route": route,
                               "tally": dict(tally),
                               "checked": sum(tally.values()), "differing": tally.get("differs", 0),
                               "missing_variant": tally.get("no variant", 0), "offered": d["offered"],
                               "shadow_ok": d["ok"], "shadow_error": d["error"], "shadow_dropped": d["dropped"],
                               "shadow_other": d["unavailable"] + d["incompatible"], "shadow_counts": d,
                               "shadow_mean_ms": round(dur / d["duration_count"] * 1e3, 3) if d["duration_count"]
                               else None, "drain_s": drain_s})
        final = scrape(metrics)
        code = server.terminate()
    problems = log_problems(server)
    batch_failures = sum("batch failed" in line for line in problems)
    rows = [row for level in LEVELS for row in summary_rows([p for p in points if p["load"] == level])]
    base = [p for p in points if p["config"] == "no shadow"]
    notes = [f"{r['load']}, {r['config']}: p99 {r['p99_ms']:.2f} ms = {r['p99_ratio']:.2f}x the no-shadow "
             f"run's (per round "
             f"{r['p99_pairs']}), infer/s {r['rate_ratio']:.2f}x; shadow copies: {r['offered']} offered, "
             f"{r['shadow_ok']} ran ok, {r['shadow_error']} failed, {r['shadow_dropped']} dropped, "
             f"{r['shadow_other']} unavailable or incompatible; answers differing from the no-shadow answer: "
             f"{r['differing']} of {checked(points, r)}"
             for r in rows if r["config"] != "no shadow"]
    cpu = {r["config"]: r["server_us_per_infer"] for r in rows if r["load"] == LEVELS[0]}  # copies ran
    if None not in (cpu["no shadow"], cpu["failing shadow"], cpu["fast shadow (a copy of the primary)"]):
        fast, failing = cpu["fast shadow (a copy of the primary)"], cpu["failing shadow"]
        notes.append(f"Server CPU per primary answer at {LEVELS[0]}: {cpu['no shadow']:.0f} µs with no shadow, "
                     f"{fast:.0f} µs with the "
                     f"fast shadow (every copy runs: about {fast - cpu['no shadow']:.0f} µs a copy), {failing:.0f} µs "
                     f"with the failing one (every copy fails: about {failing - cpu['no shadow']:.0f} µs a copy, its "
                     "ERROR log line included).")
    notes += [
        *(f"Noise at {level}: the no-shadow points alone spread p99 "
          f"{spread([p['p99_ms'] for p in base if p['load'] == level])} ms and infer/s "
          f"{spread([p['infer_per_s'] for p in base if p['load'] == level])}" for level in LEVELS),
        "'p99 not above no shadow's noise' means p99 ratio - 1 is at most half the no-shadow points' p99 range over "
        "their median (a crude test with this few rounds; a lower p99 passes).",
        "What a shadow costs the primary is CPU taken from it on these 2 shared cores: the slow shadow at normal "
        "priority runs ONNX Runtime's intra-op threads (which also spin after each run) against the primary and the "
        "load generator; the same model with cpu_priority = \"background\" runs in one thread of nice 19, which "
        "gets only CPU nothing else wants. The fast shadow shows what mirroring itself costs on the event loop "
        "(every copy's dispatch, run and comparison), which no priority can hide. The primary runs inline on the "
        "event loop, so the shadows' in-flight gate (pause_above_in_flight, default 4) seldom sees more than one "
        "real request in flight here (it matters for models that queue: threads, a GPU); what holds the copies "
        "back at c=32 is the event loop's load (pause_above_loop_busy_percent, default 50).",
        f"Answers: every answer of every point (warm-up included) compared byte for byte with the no-shadow route's "
        f"answer to the same input, taken before the load (itself equal to the primary's asked for by version): "
        f"{sum(p['differing'] for p in points)} differed, {sum(p['missing_variant'] for p in points)} lacked the "
        f"`variant` parameter, {sum(p['error_count'] for p in points)} requests failed.",
        "Shadows (server totals at the end, warm-ups and reference requests included): "
        + "; ".join(f"{route}: " + ", ".join(f"{o} {v:.0f}" for o, v in shadow_counts(final, route).items()
                                            if o in OUTCOMES)
                    for route, shadow in CONFIGS.values() if shadow) + ".",
        f"The slow shadow is onnx_models.slow({SLOW_SIDE}): in-process, one row costs {slow_cost[0]:.1f} ms with "
        f"ONNX Runtime's default intra-op threads and {slow_cost[1]:.1f} ms with one, as the background one runs "
        "(max_batch_size 4; the shadow's concurrency 1 sends one row at a time), so it falls behind and most of its "
        "copies are dropped (counted). "
        "The failing shadow (x [N, 1] -> x without its first row) fails every batch with INTERNAL; the server logs "
        f"such failures at most about once a second per model: {batch_failures} 'batch failed' lines in its log.",
        "One server with five routes over the same primary model (version 1 of 'primary', MLP FP32 1->256->1, "
        "max_batch_size 64, no queue delay), so the primary is the same instance in every configuration; between "
        "points the scenario waits until the shadow's queue has drained (drain s), so no point inherits another's "
        "backlog.",
        f"Load: tritonclient.grpc.aio on one connection, {OPEN_RATE_PER_S} requests/s at a fixed rate (open loop: "
        "latency from each request's scheduled time) and loadgen's closed loop at c=32; "
        f"{args.duration_s:g} s "
        f"per point after 1 s of warm-up, {repeats} rounds, the order rotating each round; every request carries "
        "its own request id (the routing key). Shadow columns are the metrics' increments over the point "
        "(inference_shadow_requests_total by outcome; shadow mean ms from inference_shadow_request_duration_seconds).",
        "The fast shadow is a second model with the primary's own file (not the primary itself, whose queue it would "
        "share): every copy runs, so it shows what mirroring every request costs when the shadow model is cheap.",
        server_version(),
        f"Server exit code on SIGTERM: {code}; ERROR/Traceback lines in its log other than the failing shadow's "
        f"batches: {len(problems) - batch_failures}"
        + (" — " + " | ".join(p for p in problems if "batch failed" not in p)[:600] if len(problems) > batch_failures
           else "") + ".",
    ]
    return {"title": f"shadow traffic: the primary at {' and '.join(LEVELS)} with no shadow, a slow, a "
                     "failing and a fast one",
            "points": points, "summary": rows, "slow_row_ms_in_process": slow_cost, "exit_code": code,
            "log_problems": problems[:20], "log_batch_failures": batch_failures,
            "tables": [{"title": "Summary (ratios against the no-shadow route, same server, same run)",
                        "columns": SUMMARY_COLUMNS, "rows": rows},
                       {"title": "Points (in the order run)", "columns": POINT_COLUMNS, "rows": points}],
            "notes": notes}
