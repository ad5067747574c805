"""python -m benchmarks run --scenario NAME [--duration-s 5] [--quick]   (NAME: see --help, or `all`)

Each scenario starts real servers on 127.0.0.1 (ours as `python -m inference_server` subprocesses; the peers
in their own virtual environments under benchmarks/.work/venvs/), drives them with a bounded load generator
from this machine (server and load generator share its cores), and writes benchmarks/results/<scenario>.json
and .md (the table is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import grpc
import onnxruntime

from benchmarks import perf_analyzer, scenarios

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def environment() -> dict[str, object]:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__,
            "perf_analyzer": _perf_analyzer()}


def _perf_analyzer() -> str:
    """perf_analyzer's version, or one line saying why it is not available (a failed set-up's log stays out of the
    results' header)."""
    reason = perf_analyzer.available()
    if reason is None:
        return perf_analyzer.version()
    return f"not available ({reason.splitlines()[0][:120]})"


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# {result['scenario']}: {result['title']}", "",
             f"{env['date']}, {env['cpus']} CPUs ({env['machine']}), Python {env['python']}, ONNX Runtime "
             f"{env['onnxruntime']}, grpcio {env['grpcio']}; perf_analyzer: {env['perf_analyzer']}. "
             f"{result['duration_s']} s per point after 1 s of warm-up (perf_analyzer: 3 windows of "
             f"{result['duration_s']:g} s); server and load generator share the CPUs; our servers' device: "
             f"{env.get('device', 'auto')}.", ""]
    for table in result["tables"]:
        if table.get("title"):
            lines += [f"## {table['title']}", ""]
        columns = table["columns"]
        lines.append("| " + " | ".join(c[0] for c in columns) + " |")
        lines.append("|" + "|".join("---" if c[2] == "s" else "---:" for c in columns) + "|")
        for row in table["rows"]:
            cells = []
            for _, key, fmt in columns:
                value = row.get(key)
                cells.append("–" if value is None else format(value, fmt) if fmt != "s" else str(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def run_scenario(name: str, args: argparse.Namespace) -> dict:
    sys.stderr.write(f"== scenario {name}\n")
    result = scenarios.SCENARIOS[name](args)
    result.update(scenario=name, environment={**environment(), "device": getattr(args, "device", None) or "auto"},
                  duration_s=args.duration_s)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (RESULTS / f"{name}.md").write_text(table)
    for path in result.get("also_write", ()):  # a report the project points to by name
        (HERE / path).write_text(table)
    print(table, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write its results")
    run.add_argument("--scenario", choices=[*scenarios.SCENARIOS, "all"], required=True)
    run.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per point")
    run.add_argument("--quick", action="store_true", help="fewer points (a smoke run of the suite)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"],
                     help="our servers' --device (default: the server's own, auto); the peers are not changed")
    run.add_argument("--before", metavar="REV", help="revisions: the commit to compare this checkout with")
    args = parser.parse_args()
    # `all`: every scenario but the comparison of two revisions, unless --before names one
    names = ([n for n in scenarios.SCENARIOS if n != "revisions" or args.before] if args.scenario == "all"
             else [args.scenario])
    for name in names:
        run_scenario(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
