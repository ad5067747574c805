"""What the scenario modules share: the work folder and model repository, the batching config, the load generators'
names, sample workloads, one server process of ours, one closed-loop run, and a point's record."""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks import perf_analyzer
from benchmarks.models import MODELS
from clients.python import loadgen
from tests.support.server_process import ServerProcess

WORK = Path(__file__).resolve().parent / ".work"
REPO = WORK / "repo"
BATCH_LOG = re.compile(r"model '(?P<model>[^']+)': executed (?P<batches>\d+) batches, (?P<rows>\d+) rows")
# Ours and Triton batch the same way in every comparison: up to 64 rows, no added delay.
BATCHING = "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 0\n"
OURS = "inference_server"
AIO, PA = "aio", "perf_analyzer"


def samples(model: str, count: int = 64, rows: int = 1) -> loadgen.Workload:
    rng = np.random.default_rng(1)
    return loadgen.workload(model, [MODELS[model].sample(rng, rows) for _ in range(count)])


def batch_summary(log: str, model: str) -> tuple[int, int] | None:
    """(batches, rows) from every process's drain line for the model (several with --workers)."""
    found = [(int(m["batches"]), int(m["rows"])) for m in BATCH_LOG.finditer(log) if m["model"] == model]
    if not found:
        return None
    return sum(b for b, _ in found), sum(r for _, r in found)


def drive(url: str, work: loadgen.Workload, gen: str, concurrency: int, args: argparse.Namespace, label: str,
          connections: int = 1) -> dict:
    if gen == PA:
        result = perf_analyzer.run(url, work.model, concurrency, measurement_ms=int(args.duration_s * 1000),
                                   work_dir=WORK / "perf_analyzer")
        return {**result, "rows_per_s": round(result["infer_per_s"] * work.rows, 1)}
    return asyncio.run(loadgen.closed_loop(url, work, concurrency=concurrency, duration_s=args.duration_s,
                                           label=label, connections=connections)).summary()


@contextmanager
def our_server(*extra: str, command: list[str] | None = None, repository: Path = REPO,
               env: Mapping[str, str] | None = None, log: str = "server.log") -> Iterator[ServerProcess]:
    """A server of ours serving `repository`; `env`: variables set for it (OTEL_*, for one); `log`: its log's name
    in the work folder (servers that run at once need one each)."""
    WORK.mkdir(exist_ok=True)
    server = ServerProcess(["--model-repository", str(repository), "--log-level", "INFO", *extra],
                           WORK / log, command, env)
    try:
        server.wait_serving()
        if "--workers" in extra:  # connections made before a worker listens all go to the others
            server.wait_workers(int(extra[extra.index("--workers") + 1]))
        yield server
    finally:
        server.kill()


def make_point(summary: dict, *, target: str, model: str, gen: str, concurrency: int,
           counts: tuple[int, int] | None, config: str = "") -> dict:
    summary = {**summary, "target": target, "model": model, "gen": gen, "concurrency": concurrency,
               "config": config, "error_count": sum(summary.get("errors", {}).values())}
    if counts:
        summary["server_batches"] = counts[0]
        summary["mean_batch_rows"] = round(counts[1] / max(counts[0], 1), 2)
    return summary
