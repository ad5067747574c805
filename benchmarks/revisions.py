"""Two revisions of the server side by side: this checkout against another (`--before REV`, checked out into a git
worktree under benchmarks/.work), the same embedded default model, the same closed-loop load over gRPC and HTTP,
taken in turns (ABBA) so that drift of the shared machine falls on both: throughput at concurrency 32 and p50
latency at concurrency 1. The answer is the ratio of medians after / before, per front end and load: what a
change did to the request path, free of the peers' run-to-run spread."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.points import WORK
from clients.python import loadgen
from tests.support.server_process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL, INPUT, SHAPE = "digits", "pixels", (1, 64)  # the embedded default model
LOADS = ((32, "infer_per_s"), (1, "p50_ms"))  # (concurrency, the figure compared there)


def checkout(rev: str) -> Path:
    """A worktree of `rev` (made once per revision; reused while it exists)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = WORK / "revisions" / sha[:12]
    if not (tree / "inference_server").is_dir():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def server(tree: Path, label: str) -> tuple[ServerProcess, str]:
    """The default server of `tree`'s package (its own import path first), gRPC and HTTP on free ports; the
    process and its HTTP address."""
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
                                     "from inference_server.app import main; sys.exit(main())"]
    http_port = free_port()
    process = ServerProcess(["--http-port", str(http_port), "--log-level", "INFO"], WORK / f"revision-{label}.log",
                            command)
    return process.wait_serving(), f"127.0.0.1:{http_port}"


def measure(process: ServerProcess, http_url: str, front_end: str, concurrency: int, figure: str,
            duration_s: float) -> float:
    x = {INPUT: np.random.default_rng(0).random(SHAPE, dtype=np.float32)}
    if front_end == "gRPC":
        run = loadgen.closed_loop(process.url, loadgen.workload(MODEL, [x]), concurrency=concurrency,
                                  duration_s=duration_s)
    else:
        run = loadgen.http_closed_loop(http_url, loadgen.http_workload(MODEL, [x]), concurrency=concurrency,
                                       duration_s=duration_s)
    summary = asyncio.run(run).summary()
    if summary["errors"]:
        raise RuntimeError(f"{front_end}: errors {summary['errors']}")
    return float(summary[figure])


def revisions_scenario(args: argparse.Namespace) -> dict:
    if not args.before:
        raise SystemExit("the revisions scenario needs --before REV (a commit to compare this checkout with)")
    trees = {"before": checkout(args.before), "after": ROOT}
    rounds = 2 if args.quick else 4
    servers = {label: server(tree, label) for label, tree in trees.items()}
    figures: dict[tuple[str, int, str], list[float]] = {}
    try:
        for i in range(rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for front_end in ("gRPC", "HTTP"):
                for concurrency, figure in LOADS:
                    for label in order:
                        figures.setdefault((front_end, concurrency, label), []).append(
                            measure(*servers[label], front_end, concurrency, figure, args.duration_s))
    finally:
        for process, _ in servers.values():
            process.kill()
    rows, notes = [], []
    for front_end in ("gRPC", "HTTP"):
        for concurrency, figure in LOADS:
            turns = {label: figures[(front_end, concurrency, label)] for label in ("before", "after")}
            before, after = (statistics.median(turns[label]) for label in ("before", "after"))
            rows.append({"front_end": front_end, "concurrency": concurrency, "figure": figure, "before": before,
                         "after": after, "ratio": round(after / before, 3),
                         "before_turns": " ".join(f"{v:.4g}" for v in turns["before"]),
                         "after_turns": " ".join(f"{v:.4g}" for v in turns["after"])})
            notes.append(f"{front_end}, c={concurrency}, {figure}: after / before = {after / before:.2f} (medians "
                         f"of {rounds} turns each, {after:.4g} / {before:.4g})")
    notes.append(f"before = {args.before} ({trees['before'].name}), after = this checkout; model {MODEL}, "
                 "closed loops (clients/python/loadgen.py); servers with their defaults (gRPC engine auto), both "
                 "running throughout, measured in turns. infer/s: higher is better; p50 ms: lower is better.")
    columns = [["front end", "front_end", "s"], ["concurrency", "concurrency", "d"], ["figure", "figure", "s"],
               ["before", "before", ".4g"], ["after", "after", ".4g"], ["after / before", "ratio", ".3f"],
               ["before, each turn", "before_turns", "s"], ["after, each turn", "after_turns", "s"]]
    return {"title": "this checkout against another revision, side by side", "tables": [
        {"columns": columns, "rows": rows}], "notes": notes}
