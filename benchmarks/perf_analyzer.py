"""NVIDIA perf_analyzer as a second load generator, from the tritonclient 2.51.0 wheel in its own venv.

2.51.0 is the newest wheel whose bundled binary runs on Debian 12 (glibc 2.36); it needs libb64 (apt
libb64-0d) and libcudart.so.12 (pip nvidia-cuda-runtime-cu12) even without a GPU. It drives servers that
answer ServerMetadata, ModelMetadata and ModelConfig (ours, Triton), not MLServer.
"""

from __future__ import annotations

import csv
import ctypes.util
import io
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from benchmarks import venvs

VERSION = "2.51.0"
PACKAGES = [f"tritonclient=={VERSION}", "nvidia-cuda-runtime-cu12"]
# CSV column -> result key; latencies are in microseconds.
LATENCY_COLUMNS = {"p50_ms": "p50 latency", "p90_ms": "p90 latency", "p99_ms": "p99 latency", "mean_ms": "Avg latency"}
# Per-request averages the server reported through ModelStatistics, in µs.
SERVER_COLUMNS = {"server_queue_ms": "Server Queue", "server_compute_input_ms": "Server Compute Input",
                  "server_compute_infer_ms": "Server Compute Infer",
                  "server_compute_output_ms": "Server Compute Output"}


def _setup() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment to run it in (installs on first use)."""
    if not ctypes.util.find_library("b64"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("perf_analyzer needs libb64.so.0d: apt-get install libb64-0d")
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get install libb64-0d failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    venv = venvs.ensure("perf_analyzer", PACKAGES)
    cudart = next((venv / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"), None)
    if cudart is None:
        raise RuntimeError(f"no nvidia/cuda_runtime/lib in {venv}")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(cudart),
                                                                          os.environ.get("LD_LIBRARY_PATH")]))}
    return venv / "bin" / "perf_analyzer", env


def available() -> str | None:
    """None when perf_analyzer runs here (setting it up if needed), else the reason it does not."""
    try:
        binary, env = _setup()
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, timeout=60)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    if proc.returncode != 0:
        return f"perf_analyzer --version exited with {proc.returncode}: {(proc.stdout + proc.stderr)[-1000:]}"
    return None


def version() -> str:
    """perf_analyzer's own version line, e.g. 'Perf Analyzer Version 2.51.0 (commit unknown)'."""
    binary, env = _setup()
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env, timeout=60)
    return (proc.stdout + proc.stderr).strip() or f"Perf Analyzer {VERSION}"


def parse_csv(text: str) -> dict[str, float]:
    """The first row of perf_analyzer's -f CSV: infer/s and latencies converted from µs to ms."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise RuntimeError(f"perf_analyzer wrote no CSV rows:\n{text[-1000:]}")
    row = rows[0]
    missing = [c for c in ["Concurrency", "Inferences/Second", *LATENCY_COLUMNS.values()] if c not in row]
    if missing:
        raise RuntimeError(f"perf_analyzer CSV lacks columns {missing}; it has {list(row)}")
    result: dict[str, float] = {"concurrency": int(row["Concurrency"]),
                                "infer_per_s": round(float(row["Inferences/Second"]), 1)}
    for key, column in LATENCY_COLUMNS.items():
        result[key] = round(float(row[column]) / 1e3, 3)
    for key, column in SERVER_COLUMNS.items():  # present when the server advertises statistics
        if row.get(column):
            result[key] = round(float(row[column]) / 1e3, 3)
    return result


def run(url: str, model: str, concurrency: int, *, measurement_ms: int = 3000, work_dir: Path,
        max_trials: int = 3, timeout_s: float | None = None, protocol: str = "grpc",
        request_parameters: Sequence[str] = ()) -> dict:
    """One perf_analyzer measurement of `model` at `url` (host:port, of the gRPC endpoint, or of the HTTP one
    with protocol "http": `-i http`, binary input and output tensors) at one concurrency.

    Bounded: `max_trials` windows of `measurement_ms` each, with any spread accepted as stable (a shared
    2-core machine rarely meets the default 10 %), so it ends after about max_trials * measurement_ms.
    `request_parameters`: `--request-parameter NAME:VALUE:TYPE` each (e.g. "priority:1:uint"; perf_analyzer sends
    "int" as int64, "uint" as uint64). Returns concurrency, infer_per_s, p50_ms, p90_ms, p99_ms, mean_ms and
    load_generator."""
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
    binary, env = _setup()
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"perf_analyzer_{model}_c{concurrency}" + ("" if protocol == "grpc" else f"_{protocol}")
    out = work_dir / f"{stem}.csv"
    out.unlink(missing_ok=True)
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", str(concurrency),
           "--measurement-interval", str(measurement_ms), "--max-trials", str(max(max_trials, 3)),
           "--stability-percentage", "1000", "--verbose-csv", "-f", str(out)]  # verbose: adds Avg latency
    if protocol == "http":  # its defaults, spelled out: Triton's binary tensor extension both ways
        cmd += ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]
    for parameter in request_parameters:
        cmd += ["--request-parameter", parameter]
    if timeout_s is None:
        timeout_s = 60 + 3 * max(max_trials, 3) * measurement_ms / 1e3
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=work_dir)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"perf_analyzer did not end within {timeout_s:.0f}s: {' '.join(cmd)}") from e
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"perf_analyzer exited with {proc.returncode}: {' '.join(cmd)}\n{output[-3000:]}")
    (work_dir / f"{stem}.log").write_text(output)
    generator = f"perf_analyzer: {version()}, from the tritonclient {VERSION} wheel"
    return {**parse_csv(out.read_text()), "load_generator": generator}
