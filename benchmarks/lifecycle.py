"""The lifecycle scenario: cold start, MLflow alias move to the first new answer, reloads under load, RSS over
reloads; servers on 127.0.0.1. The helpers the scenarios share come from points.py."""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from unittest.mock import patch

import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2

from benchmarks.models import MODELS, write
from benchmarks.points import AIO, BATCHING, drive, samples
from tests.support import onnx_models
from tests.support.request_stream import rss_bytes
from tests.support.server_process import ServerProcess

WORK = Path(__file__).resolve().parent / ".work" / "lifecycle"
SOURCE = "models:/cheap@production"
EXPLICIT = ["--model-control-mode", "explicit", "--load-model", "cheap"]
TARGET_PCT, TARGET_MB = 5.0, 50.0  # the RSS growth target
CLOCK = os.sysconf("SC_CLK_TCK")
COLUMNS = {  # each table's title and columns
    "starts": ["Cold start to SERVING", [("server", "source", "s"), ("starts", "starts", "d"),
               ("median s", "median_s", ".3f"), ("min s", "min_s", ".3f"), ("max s", "max_s", ".3f")]],
    "moves": ["MLflow alias move to the first answer from the new version", [
        ("alias move", "move", "s"), ("first new answer s", "first_answer_s", ".3f"),
        ("poll noticed s", "poll_noticed_s", ".3f"), ("answers meanwhile", "answers", "d"), ("errors", "errors", "d"),
        ("other versions", "other_versions", "d"), ("longest wait ms", "longest_wait_ms", ".1f")]],
    "phases": ["Reloads under load (cheap, concurrency 8)", [
        ("phase", "phase", "s"), ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".2f"), ("errors", "error_count", "d"), ("reloads", "reloads", "d"),
        ("reload p50 ms", "reload_p50_ms", ".1f"), ("vs steady", "vs_steady", ".2f"),
        ("RSS after MiB", "rss_after_mb", ".1f"), ("server CPU cores", "server_cores", ".2f"),
        ("load generator CPU cores", "bench_cores", ".2f"), ("other processes' CPU cores", "other_cores", ".2f")]],
    "rss": ["RSS over reloads", [
        ("reloads", "reloads", "d"), ("RSS MiB", "rss_mb", ".1f"), ("growth MiB", "growth_mb", "+.1f"),
        ("growth %", "growth_pct", "+.2f"), ("within target", "within_target", "s"),
        ("failed reloads or requests", "failures", "d"), ("elapsed s", "elapsed_s", ".1f")]],
}


def rss(server: ServerProcess) -> float:  # VmRSS, MiB
    return round(rss_bytes(server.proc.pid) / 2**20, 1)


def moved_at(log: str, version: str) -> float | None:
    """Epoch seconds of the server's log line saying the alias now names `version` (its poll noticed)."""
    m = re.search(rf"^(\S+ \S+) \w+ \S+ model '\w+': \S+ now names version {version};", log, re.M)
    return datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def cpu_s(pid: str) -> float:
    """CPU seconds used so far by a process (all its threads), or with pid "" by the whole machine."""
    if pid:
        return sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])) / CLOCK
    ticks = [int(t) for t in Path("/proc/stat").read_text().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK  # all but idle and iowait


@contextmanager
def serving(args: list[str], name: str, env: dict[str, str] | None = None) -> Iterator[tuple]:
    """A server, a client of it, and the seconds from spawning it to gRPC health SERVING (polled every 10 ms)."""
    with patch.dict(os.environ, env or {}):  # ServerProcess passes os.environ on
        start = time.perf_counter()
        server = ServerProcess(["--log-level", "INFO", *args], WORK / f"{name}.log")
    try:
        while server.health() != health_pb2.HealthCheckResponse.SERVING:
            if server.proc.poll() is not None or time.perf_counter() - start > 120:
                raise RuntimeError(f"{name}: server not serving (exit {server.proc.poll()}):\n{server.log()[-3000:]}")
            time.sleep(0.01)
        took = time.perf_counter() - start
        with grpcclient.InferenceServerClient(server.url) as client:
            yield server, client, took
    finally:
        with suppress(Exception):
            server.terminate()
        server.kill()


def cold_starts(config: Path, repo: Path, env: dict[str, str], starts: int = 3) -> list[dict]:
    kinds = {"embedded digits (no flags)": ([], None, "digits"),
             f"MLflow {SOURCE} (sqlite registry)": (["--config", str(config)], env, "cheap"),
             "local repository (cheap)": (["--model-repository", str(repo)], None, "cheap")}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(starts):  # interleaved, so that the machine's drift touches every kind alike
        for label, (args, extra, model) in kinds.items():
            with serving(args, "cold-start", extra) as (server, client, took):
                if not client.is_model_ready(model):
                    raise RuntimeError(f"{label}: SERVING but {model} not ready:\n{server.log()[-2000:]}")
            seconds[label].append(round(took, 3))
    return [{"source": k, "starts": len(v), "median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
             "all_s": v} for k, v in seconds.items()]


def alias_moves(registry, config: Path, env: dict[str, str], targets: list[str]) -> list[dict]:
    """Move the alias to each target in turn; one client sends single requests back to back meanwhile."""

    rows, inputs = [], samples("cheap", count=1).requests[0]  # aio's InferInput is tritonclient.grpc's
    with serving(["--config", str(config)], "alias", env) as (server, client, _):
        for current, target in zip(["1", *targets], targets, strict=False):  # version 1 serves first
            time.sleep(random.uniform(1.0, 1.25))  # the old version has drained; a random phase of the 0.25 s poll
            registry.set_alias("cheap", "production", target)
            t0, wall = time.perf_counter(), time.time()
            errors, answers, last, gap, first, other = [], 0, t0, 0.0, None, 0
            while first is None and time.perf_counter() - t0 < 30:
                try:
                    got = client.infer("cheap", inputs, client_timeout=10).get_response().model_version
                except Exception as e:  # kept: a move should fail no request
                    errors.append(str(e)[:300])
                    continue
                now = time.perf_counter()
                answers, gap, last = answers + 1, max(gap, now - last), now
                other += got not in (current, target)
                first = now - t0 if got == target else None
            noticed = moved_at(server.log(), target)
            rows.append({"move": f"{current} -> {target}", "first_answer_s": first and round(first, 3),
                         "poll_noticed_s": noticed and round(noticed - wall, 3), "answers": answers,
                         "errors": len(errors), "error_texts": errors[:5], "other_versions": other,
                         "longest_wait_ms": round(gap * 1e3, 1)})
    return rows


def reload_loop(url: str, stop: threading.Event, took: list[float], failed: list[str]) -> None:
    with grpcclient.InferenceServerClient(url) as client:
        stop.wait(1.0)  # drive()'s warm-up second
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.load_model("cheap")
                took.append(time.perf_counter() - start)
            except Exception as e:
                failed.append(str(e)[:300])


def reloads_under_load(args: argparse.Namespace, repo: Path) -> tuple[list[dict], dict]:

    phases = []
    with serving(["--model-repository", str(repo), *EXPLICIT], "reload") as (server, _, _):
        for phase in ("steady", "reloading", "steady again"):
            stop, took, failed = threading.Event(), [], []
            thread = threading.Thread(target=reload_loop if phase == "reloading" else lambda *_: None,
                                      args=(server.url, stop, took, failed), daemon=True)
            thread.start()
            pids = ("", "self", str(server.proc.pid))  # machine, this process, the server: CPU used in the phase
            before, start = [cpu_s(p) for p in pids], time.perf_counter()
            point = drive(server.url, samples("cheap"), AIO, 8, args, f"lifecycle {phase}")
            machine, bench, served = ((cpu_s(p) - b) / (time.perf_counter() - start)
                                      for p, b in zip(pids, before, strict=True))
            stop.set()
            thread.join(60)
            phases.append({**point, "phase": phase, "error_count": sum(point["errors"].values()),
                           "reloads": len(took), "reload_failures": failed[:5], "reload_failure_count": len(failed),
                           "reload_p50_ms": round(statistics.median(took) * 1e3, 1) if took else None,
                           "rss_after_mb": rss(server), "server_cores": round(served, 2),
                           "bench_cores": round(bench, 2), "other_cores": round(machine - bench - served, 2),
                           "vs_steady": round(point["infer_per_s"] / (phases or [point])[0]["infer_per_s"], 3)})
        chosen = re.findall(r"executing (inline|in a thread)", server.log())
    return phases, {"inline": chosen.count("inline"), "thread": chosen.count("in a thread"), "last": chosen[-1]}


def memory(args: argparse.Namespace, repo: Path, budget_s: float = 90.0) -> list[dict]:
    """RSS before and after the first reload, then at checkpoints; 10 requests after each reload."""

    checkpoints = [1, 10, 25, 50, 100] + ([] if args.quick else [200, 500, 1000])
    with serving(["--model-repository", str(repo), *EXPLICIT], "memory") as (server, client, _):
        inputs = samples("cheap", count=1).requests[0]
        rows = [{"reloads": 0, "rss_mb": rss(server), "elapsed_s": 0.0, "failures": 0}]
        start, failures = time.perf_counter(), []
        for n in range(1, checkpoints[-1] + 1):
            try:
                client.load_model("cheap")
                for _ in range(10):
                    client.infer("cheap", inputs)
            except Exception as e:  # counted and kept; the server's log has the rest
                failures.append(f"reload {n}: {str(e)[:300]}")
            elapsed = time.perf_counter() - start
            if n in checkpoints:
                rows.append({"reloads": n, "rss_mb": rss(server), "elapsed_s": round(elapsed, 1),
                             "failures": len(failures), "failure_texts": failures[:5]})
                sys.stderr.write(f"  {n} reloads: RSS {rows[-1]['rss_mb']} MiB\n")
                if n >= 100 and elapsed > budget_s:
                    break
    base = rows[1]["rss_mb"]
    for r in rows[1:]:
        r["growth_mb"], r["growth_pct"] = round(r["rss_mb"] - base, 1), round(100 * (r["rss_mb"] - base) / base, 2)
        r["within_target"] = "yes" if r["growth_pct"] < TARGET_PCT and r["growth_mb"] < TARGET_MB else "no"
    return rows


def lifecycle_scenario(args: argparse.Namespace) -> dict:
    from tests.support.mlflow_registry import Registry  # needs the mlflow extra

    shutil.rmtree(WORK, ignore_errors=True)
    write(repo := WORK / "repo", "cheap", BATCHING)
    registry = Registry(WORK / "mlflow")
    extra = {"config.toml": BATCHING.encode()}  # the repository's batching config, for a like-for-like start
    registry.register("cheap", MODELS["cheap"].build().SerializeToString(), extra_files=extra, alias="production")
    config = WORK / "mlflow.toml"
    config.write_text(f'[[models]]\nname = "cheap"\nsource = "{SOURCE}"\npoll_interval_s = 0.25\n')
    env = {**registry.env(), "MLFLOW_REGISTRY_URI": registry.uri}

    starts = cold_starts(config, repo, env)
    targets = [registry.register("cheap", onnx_models.mlp([64, 256, 10], seed=s).SerializeToString(),
                                 extra_files=extra) for s in range(1, 7)]
    moves = alias_moves(registry, config, env, targets)
    phases, execution = reloads_under_load(args, repo)
    rss_rows = memory(args, repo)

    first, noticed = ([m[k] for m in moves if m[k] is not None] or [float("nan")]
                      for k in ("first_answer_s", "poll_noticed_s"))
    (prev, last), rate = rss_rows[-2:], [p["infer_per_s"] for p in phases]
    notes = [
        "Cold start: spawning `python -m inference_server` to gRPC health SERVING (polled every 10 ms), 3 starts "
        "each, interleaved. The MLflow server imports mlflow and downloads the version at every start.",
        f"Alias move (poll_interval_s 0.25, {len(moves)} moves at random poll phases): set_registered_model_alias "
        f"returning to the first answer from the new version: median {statistics.median(first):.3f} s, max "
        f"{max(first):.3f} s; the poll's share (poll noticed s) median {statistics.median(noticed):.3f} s, expected "
        "0.125 s, at most 0.25 s.",
        f"Reloads under load: explicit mode, aio closed loop at c=8, {args.duration_s:g} s per phase back to back on "
        f"one server; reloading / mean of both steady phases: {2 * rate[1] / (rate[0] + rate[2]):.2f}x; failed "
        f"load_model calls: {phases[1]['reload_failure_count']}. Each load times the model to choose where it runs: "
        f"{execution['inline']} chose inline, {execution['thread']} a thread (last: {execution['last']}).",
        f"RSS: a fresh explicit-mode server, 10 requests after each load_model; growth from the first reload, target "
        f"under {TARGET_PCT:g} % and under {TARGET_MB:g} MB. From {prev['reloads']} to {last['reloads']} reloads: "
        f"{(last['rss_mb'] - prev['rss_mb']) / (last['reloads'] - prev['reloads']) * 100:+.2f} MiB per 100 reloads.",
        "2 shared cores for server, load generator and reload thread; anything else that ran shows as other "
        "processes' CPU (/proc/stat less ours, +-0.05 cores). Absolute figures and phase ratios are noisy.",
    ]
    data = {"starts": starts, "moves": moves, "phases": phases, "rss": rss_rows}
    return {"title": "model lifecycle: cold start, MLflow alias move, reloads under load, RSS over reloads", **data,
            "execution_choices": execution, "notes": notes,
            "tables": [{"title": t, "columns": c, "rows": data[k]} for k, (t, c) in COLUMNS.items()]}
