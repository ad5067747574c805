"""The fuzzing table: runs tests/integration/test_fuzz.py (hypothesis against one real server, both front ends) in
a pytest subprocess with FUZZ_OUTCOMES_FILE set, and turns the outcomes it tallies (each example's gRPC status or
HTTP status, per test function) into a table for benchmarks/__main__.py's markdown()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILE = "tests/integration/test_fuzz.py"
CRASHES = {"UNKNOWN"}  # never a client mistake's answer (the tests fail on it)
RUN_TIME_FAILURES = {"INTERNAL", "HTTP 500"}  # allowed only from drops_row, the model that fails at run time
COLUMNS = [("test", "test", "s"), ("cases", "cases", "d"), ("outcomes", "outcomes", "s"),
           ("UNKNOWN or crash", "crashes", "d"), ("INTERNAL / 500 (drops_row only)", "internal", "d")]


def crashes(outcomes: dict[str, int]) -> int:
    """UNKNOWN, and 5xx answers other than drops_row's 500 (501 and 503 are answers, not crashes)."""
    return sum(n for o, n in outcomes.items()
               if o in CRASHES or o.startswith("HTTP 5") and o not in RUN_TIME_FAILURES | {"HTTP 501", "HTTP 503"})


def row(test: str, cases: int, outcomes: dict[str, int]) -> dict:
    ordered = sorted(outcomes.items(), key=lambda item: (-item[1], item[0]))
    return {"test": test, "cases": cases, "outcomes": ", ".join(f"{o} {n}" for o, n in ordered),
            "crashes": crashes(outcomes), "internal": sum(outcomes.get(o, 0) for o in RUN_TIME_FAILURES)}


def fuzz_table(work: Path) -> tuple[dict, list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    outcomes_file = work / "fuzz-outcomes.json"
    outcomes_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST_FILE]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "FUZZ_OUTCOMES_FILE": str(outcomes_file)},
                          capture_output=True, text=True)
    wall_s = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{TEST_FILE} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    results = json.loads(outcomes_file.read_text())
    rows = [row(test, entry["cases"], entry["outcomes"]) for test, entry in results.items()]
    total: dict[str, int] = {}
    for entry in results.values():
        for outcome, n in entry["outcomes"].items():
            total[outcome] = total.get(outcome, 0) + n
    rows.append(row("total", sum(entry["cases"] for entry in results.values()), total))
    table = {"title": "Fuzzing (hypothesis) through the real server", "columns": COLUMNS, "rows": rows}
    notes = [f"{rows[-1]['cases']} cases in {len(results)} tests; pytest took {wall_s:.1f} s (server start included).",
             "Examples are derandomized: every run sends the same cases. The gRPC tests run on each gRPC engine "
             "(a server of each, [grpcio] and [native]); the HTTP ones on the default engine's server.",
             "Every case checks the answer's status (and an OK answer's shape) and that the server is still live; "
             "the module's last test checks that good requests on both front ends are still answered afterwards.",
             "HTTP 501 (an unsupported extension) and 503 are answers, not crashes; INTERNAL / 500 is allowed "
             "only from drops_row, the model that fails at run time."]
    return table, notes
