"""python -m benchmarks run --scenario spine [--duration-s 8] [--concurrency 1 8 32]

Each scenario starts real server processes on 127.0.0.1, drives them with a bounded load generator from
this process (server and load generator share the machine's cores), and writes
benchmarks/results/<scenario>.json and .md (the table is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime

from benchmarks import ceiling, loadgen
from tests import onnx_models
from tests.server_process import ServerProcess

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
BATCH_LOG = re.compile(r"model '(?P<model>[^']+)': executed (?P<batches>\d+) batches, (?P<rows>\d+) rows")

# The compute-bound MLP of the issue: FP32 512 -> 4096 -> 4096 -> 10.
MLP_LARGE = ("mlp_large", [512, 4096, 4096, 10])
MODES = {
    # mode: config.toml for the model
    "batching on": "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 0\n",
    "batching off": "[batching]\nmax_batch_size = 1\n",
}


def environment() -> dict[str, object]:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__,
            "load_generator": loadgen.NAME}


def model_repository(name: str, sizes: list[int], config: str) -> Path:
    repo = WORK / "repo"
    path = repo / name / "1" / "model.onnx"
    if not path.exists():
        onnx_models.write_model(repo, name, onnx_models.mlp(sizes, seed=0))
    (repo / name / "config.toml").write_text(config)
    return repo


def run_point(repo: Path, model: str, width: int, concurrency: int, duration_s: float, label: str) -> dict:
    """One server process per point, so its batch statistics belong to this point alone."""
    WORK.mkdir(exist_ok=True)
    server = ServerProcess(["--model-repository", str(repo), "--log-level", "INFO"], WORK / "server.log")
    try:
        server.wait_serving()
        rng = np.random.default_rng(1)
        pool = [rng.standard_normal((1, width)).astype(np.float32) for _ in range(64)]
        result = asyncio.run(loadgen.closed_loop(server.url, model, "x", pool, concurrency=concurrency,
                                                 duration_s=duration_s, label=label))
    finally:
        code = server.terminate()
    summary = result.summary()
    match = next((m for m in BATCH_LOG.finditer(server.log()) if m["model"] == model), None)
    if code != 0 or match is None:
        raise RuntimeError(f"server exited {code} without batch statistics:\n{server.log()[-2000:]}")
    summary["server_batches"] = int(match["batches"])
    summary["mean_batch_rows"] = round(int(match["rows"]) / max(int(match["batches"]), 1), 2)
    return summary


def scenario_spine(args: argparse.Namespace) -> dict:
    name, sizes = MLP_LARGE
    width = sizes[0]
    points = []
    for mode, config in MODES.items():
        repo = model_repository(name, sizes, config)
        for concurrency in args.concurrency:
            summary = run_point(repo, name, width, concurrency, args.duration_s, mode)
            summary["mode"] = mode
            points.append(summary)
    print("  in-process ONNX Runtime ceiling ...", file=sys.stderr)
    model_path = WORK / "repo" / name / "1" / "model.onnx"
    ceil = ceiling.measure(model_path, "x", width, [1, 2, 4, 8, 16, 32, 64])
    for p in points:
        at = ceiling.rows_per_s_at(ceil, p["mean_batch_rows"])
        p["ceiling_rows_per_s_at_mean_batch"] = round(at, 1)
        p["fraction_of_ceiling"] = round(p["rows_per_s"] / at, 3)
    return {"scenario": "spine", "model": f"MLP FP32 {'->'.join(map(str, sizes))}", "points": points,
            "ceiling": ceil, "environment": environment(), "duration_s": args.duration_s}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# {result['scenario']}: {result['model']}",
        "",
        f"{env['date']}, {env['cpus']} CPUs ({env['machine']}), Python {env['python']}, "
        f"ONNX Runtime {env['onnxruntime']}, grpcio {env['grpcio']}. Load: {env['load_generator']}, "
        f"{result['duration_s']} s per point after 1 s of warm-up, one server process per point; "
        "server and load generator share the CPUs.",
        "",
        "| mode | concurrency | infer/s | p50 ms | p90 ms | p99 ms | mean batch rows | ceiling rows/s at that batch "
        "| fraction of ceiling | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:
        lines.append(f"| {p['mode']} | {p['concurrency']} | {p['infer_per_s']:.0f} | {p['p50_ms']:.2f} | "
                     f"{p['p90_ms']:.2f} | {p['p99_ms']:.2f} | {p['mean_batch_rows']:.1f} | "
                     f"{p['ceiling_rows_per_s_at_mean_batch']:.0f} | {p['fraction_of_ceiling']:.2f} | "
                     f"{sum(p['errors'].values())} |")
    lines += ["", "In-process ONNX Runtime (one calling thread, default intra-op threads):", "",
              "| batch rows | rows/s | mean ms per run |", "|---:|---:|---:|"]
    lines += [f"| {c['batch_size']} | {c['rows_per_s']:.0f} | {c['mean_ms']:.2f} |" for c in result["ceiling"]]
    return "\n".join(lines) + "\n"


SCENARIOS = {"spine": scenario_spine}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write its results")
    run.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    run.add_argument("--duration-s", type=float, default=8.0, help="measured seconds per point")
    run.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    result = SCENARIOS[args.scenario](args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.scenario}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / f"{args.scenario}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
