"""The routing scenario: a 2-variant route (50/50 over two versions of the cheap MLP, a distinct request id, and
so a distinct routing key, on every request) against the same model asked for by version (unrouted), one server,
concurrency 1 and 32, points interleaved (routed and unrouted alternate, the first of each pair alternating too).
Every answer is inspected while the load runs: a routed one must carry the `variant` parameter and come from that
variant's version. shadow.py shares this module's helpers. The helpers the scenarios share come from points.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import re
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.http import LOG_PROBLEM, CpuSampler, cpu_split
from benchmarks.models import MODELS
from benchmarks.points import BATCHING, samples
from clients.python import loadgen
from tests.support import onnx_models
from tests.support.server_process import ServerProcess

WORK = Path(__file__).resolve().parent / ".work" / "routing"
TARGET = 0.95  # routed / unrouted infer/s
LEVELS = (1, 32)
REPEATS = 3
VARIANTS = {"stable": "1", "candidate": "2", "only": "1"}  # variant -> the version that must answer
ROUTES = """[routes.cheap]
variants = [ { name = "stable", version = "1", weight = 50 }, { name = "candidate", version = "2", weight = 50 } ]
[routes.cheap_one]
variants = [ { name = "only", model = "cheap", version = "1", weight = 100 } ]
"""
# request kind -> (model name asked for, version asked for)
KINDS = {"routed": ("cheap", ""), "unrouted": ("cheap", "1"), "routed, 1 variant": ("cheap_one", "")}
POINT_COLUMNS = [("rep", "rep", "d"), ("request", "request", "s"), ("concurrency", "concurrency", "d"),
                 ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".3f"), ("p90 ms", "p90_ms", ".3f"),
                 ("p99 ms", "p99_ms", ".3f"), ("errors", "error_count", "d"), ("answers checked", "checked", "d"),
                 ("answers by variant", "by_variant", "s"), ("routed without variant", "missing_variant", "d"),
                 ("server CPU cores", "server_cores", ".2f"), ("server CPU µs/infer", "server_us_per_infer", ".0f"),
                 ("load generator CPU cores", "loadgen_cores", ".2f"), ("other CPU cores", "other_cores", ".2f")]
RATIO_COLUMNS = [("ratio", "what", "s"), ("concurrency", "concurrency", "d"), ("infer/s (means)", "rates", "s"),
                 ("infer/s ratio", "ratio", ".3f"), ("per round", "pair_ratios", "s"),
                 ("unrouted alone over rounds", "unrouted_spread", "s"), ("target", "target", "s"),
                 ("met", "met", "s"), ("p99 ms (medians)", "p99_pair", "s"), ("p99 ratio", "p99_ratio", ".3f"),
                 ("server µs/infer (means)", "cpu_pair", "s"), ("routed without variant", "missing_variant", "d")]


# -- helpers shared with shadow.py --------------------------------------------------------------------------


@contextmanager
def serving(repo: Path, config: str, log: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A server on `repo` with `config` as its --config file: (the server, its metrics URL)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    config_path = log.with_suffix(".toml")
    config_path.write_text(config)
    server = ServerProcess(["--model-repository", str(repo), "--config", str(config_path), "--log-level", "INFO"],
                           log)
    try:
        server.wait_serving()
        yield server, metrics_url(server)
    finally:
        with suppress(Exception):
            server.terminate()
        server.kill()


def metrics_url(server: ServerProcess, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while not (found := re.findall(r"metrics on (http://\S+/metrics)", server.log())):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no metrics endpoint in the server's log:\n{server.log()[-2000:]}")
        time.sleep(0.1)
    return found[-1]


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    """Every sample of the metrics endpoint: (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items()))


Check = Callable[[Any, Any], str]  # (the request's inputs, the response proto) -> a tally key


async def checked_closed_loop(url: str, work: loadgen.Workload, *, version: str, concurrency: int,
                              duration_s: float, label: str, check: Check) -> tuple[loadgen.LoadResult, Counter]:
    """loadgen's closed loop (same workers, warm-up and recording), every request with its own request id (the
    routing key when the request names no version); every answer, warm-up included, goes through `check`, whose
    keys are tallied."""
    clients = loadgen._clients(url, 1)
    result = loadgen.LoadResult("closed", concurrency, duration_s, work.rows)
    ids, tally = itertools.count(), Counter()

    async def infer(client: Any, inputs: Any) -> None:
        answer = await client.infer(work.model, inputs, model_version=version, request_id=f"r{next(ids)}",
                                    client_timeout=60)
        tally[check(inputs, answer.get_response())] += 1

    await loadgen._run_closed(clients, work, result, infer, warmup_s=1.0, max_requests=1_000_000,
                              label=f"{label} c={concurrency}")
    return result, tally


def measured(server: ServerProcess, sampler: CpuSampler, run: Callable[[], tuple[loadgen.LoadResult, Counter]]
             ) -> tuple[dict, Counter]:
    """A point's summary with its CPU split (the steady part: after the 1 s warm-up, before the end)."""
    start = time.monotonic()
    result, tally = run()
    end = time.monotonic()
    point = result.summary()
    point["error_count"] = sum(point["errors"].values())
    if window := sampler.window(start + 1.0, end - 0.3):
        point.update(cpu_split(*window, server.proc.pid, []))
        if point["infer_per_s"]:
            point["server_us_per_infer"] = round(point["server_cores"] / point["infer_per_s"] * 1e6, 1)
    return point, tally


def spread(values: list[float]) -> str:
    """Repeated measurements of one thing: 'min-max (±half the range as % of the median)'."""
    if len(values) < 2:
        return "–"
    half = (max(values) - min(values)) / 2 / statistics.median(values) * 100
    return f"{min(values):.4g}-{max(values):.4g} (±{half:.1f} %)"


def server_version() -> str:
    """Which server code ran: the commit, and whether inference_server/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "inference_server"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"Server code: unknown ({e})."
    return f"Server code: commit {head}" + (" plus uncommitted changes in inference_server/" if dirty else "") + "."


def mean_of(points: list[dict], key: str) -> float | None:
    """The mean of a column over the points that have it (a point too short for the CPU window has none)."""
    values = [p[key] for p in points if p.get(key) is not None]
    return statistics.mean(values) if values else None


def log_problems(server: ServerProcess) -> list[str]:
    return [m.group(0) for m in LOG_PROBLEM.finditer(server.log())]


# -- the scenario -----------------------------------------------------------------------------------------


def write_repo(repo: Path) -> None:

    shutil.rmtree(repo, ignore_errors=True)
    onnx_models.write_model(repo, "cheap", MODELS["cheap"].build(), "version_policy = { all = true }\n" + BATCHING,
                            version=1)
    onnx_models.write_model(repo, "cheap", onnx_models.mlp([64, 256, 10], seed=1), version=2)


def check_variant(inputs: Any, response: Any) -> str:
    if "variant" not in response.parameters:
        return f"no variant (v{response.model_version})"
    variant = response.parameters["variant"].string_param
    if VARIANTS.get(variant) != response.model_version:
        return f"{variant} answered by v{response.model_version}!"
    return variant


def ratio_rows(points: list[dict]) -> list[dict]:
    """routed / unrouted (the target) and, to tell the route's own cost from the second version's, a one-variant
    route / unrouted; per concurrency, from the means (infer/s) and medians (p99) over the rounds."""
    rows = []
    for kind in ("routed", "routed, 1 variant"):
        for c in sorted({p["concurrency"] for p in points}):
            a = [p for p in points if p["concurrency"] == c and p["request"] == kind]
            b = [p for p in points if p["concurrency"] == c and p["request"] == "unrouted"]
            if not a or not b:
                continue
            a_rate, b_rate = (statistics.mean(p["infer_per_s"] for p in ps) for ps in (a, b))
            a_p99, b_p99 = (statistics.median(p["p99_ms"] for p in ps) for ps in (a, b))
            ratio = a_rate / b_rate
            cpu = [mean_of(ps, "server_us_per_infer") for ps in (a, b)]
            by_rep = {p["rep"]: p for p in b}
            target = kind == "routed"
            rows.append({"what": f"{kind} / unrouted", "kind": kind, "concurrency": c,
                         "rates": f"{a_rate:.0f} / {b_rate:.0f}", "ratio": round(ratio, 3),
                         "pair_ratios": ", ".join(f"{p['infer_per_s'] / by_rep[p['rep']]['infer_per_s']:.3f}"
                                                  for p in a if p["rep"] in by_rep),
                         "unrouted_spread": spread([p["infer_per_s"] for p in b]),
                         "target": f">= {TARGET}" if target else "–",
                         "met": ("yes" if ratio >= TARGET else "no") if target else "–",
                         "p99_pair": f"{a_p99:.3f} / {b_p99:.3f}", "p99_ratio": round(a_p99 / b_p99, 3),
                         "cpu_pair": " / ".join("–" if v is None else f"{v:.0f}" for v in cpu),
                         "missing_variant": sum(p["missing_variant"] for p in a)})
    return rows


def routing_scenario(args: argparse.Namespace) -> dict:

    write_repo(repo := WORK / "repo")
    pool = samples("cheap")
    repeats = 1 if args.quick else REPEATS
    points: list[dict] = []
    with serving(repo, ROUTES, WORK / "server.log") as (server, metrics), CpuSampler() as sampler:
        for c in LEVELS:
            for rep in range(repeats):
                kinds = list(KINDS)
                for kind in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:  # the order rotates each round
                    model, version = KINDS[kind]
                    work = dataclasses.replace(pool, model=model)
                    point, tally = measured(server, sampler, lambda w=work, v=version, k=kind, c=c: asyncio.run(
                        checked_closed_loop(server.url, w, version=v, concurrency=c, duration_s=args.duration_s,
                                            label=f"routing: {k}", check=check_variant)))
                    missing = sum(n for k, n in tally.items() if k.startswith("no variant"))
                    points.append({**point, "rep": rep + 1, "request": kind, "concurrency": c,
                                   "checked": sum(tally.values()), "tally": dict(tally),
                                   "by_variant": " / ".join(f"{k} {n}" for k, n in sorted(tally.items())),
                                   "missing_variant": missing if version == "" else 0})
        scraped = scrape(metrics)
        code = server.terminate()
    problems = log_problems(server)
    rows = ratio_rows(points)
    routed = [p for p in points if KINDS[p["request"]][1] == ""]
    tallied = Counter()
    for p in routed:
        tallied.update(p["tally"])
    counted = {(r, v): total(scraped, "inference_route_requests_total", route=r, variant=v, code="OK")
               for r, v in (("cheap", "stable"), ("cheap", "candidate"), ("cheap_one", "only"))}
    wrong = sum(n for k, n in tallied.items() if k not in VARIANTS)
    unrouted_with_variant = sum(n for p in points if p["request"] == "unrouted" for k, n in p["tally"].items()
                                if not k.startswith("no variant"))
    two = tallied["stable"] + tallied["candidate"]
    notes = [f"c={r['concurrency']}: {r['what']} = {r['ratio']:.3f}x infer/s"
             + (f" (target >= {TARGET}: {'met' if r['met'] == 'yes' else 'MISSED'})" if r["met"] != "–" else "")
             + f"; per round {r['pair_ratios']}; the unrouted points alone spread {r['unrouted_spread']}; p99 "
               f"{r['p99_pair']} ms = {r['p99_ratio']:.3f}x; server CPU per request {r['cpu_pair']} µs"
             for r in rows]
    notes += [
        f"Routed answers checked (warm-ups included): {sum(p['checked'] for p in routed)}; without a `variant` "
        f"parameter: {sum(p['missing_variant'] for p in routed)}; with a variant answered by another version than "
        f"its own: {wrong}. Unrouted answers (explicit version 1) carrying a variant: {unrouted_with_variant}.",
        f"Split of the 50/50 route's answers: stable {tallied['stable']} ({tallied['stable'] / max(two, 1):.1%}), "
        f"candidate {tallied['candidate']} ({tallied['candidate'] / max(two, 1):.1%}); the server's "
        "inference_route_requests_total{code=\"OK\"} by route and variant: "
        + ", ".join(f"{r}/{v} {n:.0f}" for (r, v), n in counted.items())
        + (" (the same as the answers counted here)" if all(n == tallied[v] for (_, v), n in counted.items())
           else " (DIFFERENT from the answers counted here)") + ".",
        f"Server exit code on SIGTERM: {code}; ERROR/Traceback lines in its log: {len(problems)}"
        + (" — " + " | ".join(problems[:3]) if problems else "") + ".",
        "One server process: model cheap (MLP FP32 64->256->10) with versions 1 and 2 (another seed, same cost), "
        "version_policy all, max_batch_size 64, no queue delay (both run inline on the event loop). Routed: model "
        "'cheap' with no version, [routes.cheap] 50/50 stable = v1, candidate = v2; unrouted: model 'cheap' version "
        "'1', which bypasses the route; routed, 1 variant: model 'cheap_one', a route whose only variant is cheap v1 "
        "(the route's own cost without a second version). Every request carries its own request id (when routed: the "
        "routing key, so keys are all distinct); every kind reads the response's parameters and version, so the "
        "client does the same work.",
        f"Load: loadgen's closed loop (tritonclient.grpc.aio, one connection), {args.duration_s:g} s per point after "
        f"1 s of warm-up; {repeats} rounds per concurrency, the order of the three kinds rotating each round so drift "
        "touches them alike. CPU: mean cores over each point's steady part from /proc (server process; this process "
        "= load generator; other = the rest of the machine).",
        server_version(),
    ]
    return {"title": "a 50/50 route over two versions vs the same model asked for by version",
            "points": points, "ratios": rows, "server_route_counts": {f"{r}/{v}": n for (r, v), n in counted.items()},
            "exit_code": code, "log_problems": problems[:20],
            "tables": [{"title": "Ratios (measured side by side, one server)", "columns": RATIO_COLUMNS, "rows": rows},
                       {"title": "Points (in the order run)", "columns": POINT_COLUMNS, "rows": points}],
            "notes": notes}
