"""Peer servers to benchmark against, each in its own venv under benchmarks/.work/venvs/ and run as a subprocess
on free 127.0.0.1 ports: Triton Inference Server via NVIDIA PyTriton, and Seldon MLServer.

    with peers.pytriton(model_path, "mlp", max_batch_size=64, max_queue_delay_us=0, work_dir=d) as peer:
        ...drive peer.url (host:port, KServe v2 gRPC) with tritonclient.grpc, or peer.http_url (Triton's HTTP
        endpoint, KServe v2 with the binary tensor extension) with tritonclient.http...
        peer.name, peer.log(), peers.batch_stats(peer)

Both serve an ONNX model through ONNX Runtime from Python (dim 0 of every tensor is the batch); the peer-side
scripts are pytriton_serve.py and mlserver_runtime.py beside this file. On exit the whole process group is
stopped (SIGTERM, then SIGKILL), tritonserver, its Python stubs and MLServer's workers included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from benchmarks import venvs

HERE = Path(__file__).resolve().parent
PYTRITON_PACKAGES = ["nvidia-pytriton==0.7.0", "onnxruntime"]
MLSERVER_PACKAGES = ["mlserver==1.7.1", "uvloop<0.22", "onnxruntime"]  # uvloop 0.22+: MLServer's workers die


@dataclass
class Peer:
    name: str  # e.g. 'Triton 2.51.0 via PyTriton 0.7.0'
    url: str  # host:port of the gRPC endpoint
    model_name: str
    log_path: Path
    proc: subprocess.Popen = field(repr=False)
    metrics_url: str | None = None
    http_url: str | None = None  # host:port of the KServe v2 HTTP endpoint, where the peer reports one

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pytriton(model_path: Path, model_name: str, *, max_batch_size: int, max_queue_delay_us: int,
             work_dir: Path, timeout_s: float = 180) -> Iterator[Peer]:
    """Triton 2.51.0 (bundled in PyTriton 0.7.0) with its dynamic batcher; the model is a @batch Python callable
    calling ONNX Runtime."""
    venv = venvs.ensure("pytriton", PYTRITON_PACKAGES)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [str(venv / "bin" / "python"), str(HERE / "pytriton_serve.py"), str(Path(model_path).resolve()),
           model_name, "--max-batch-size", str(max_batch_size), "--max-queue-delay-us", str(max_queue_delay_us),
           "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    # The Python-backend stub links the system libpython3.11 unless this interpreter's own LIBDIR comes first;
    # with the wrong one, model load fails with "'_thread.RLock' object has no attribute '_recursion_count'".
    libdir = sysconfig.get_config_var("LIBDIR")
    env = {"LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    with _running("Triton 2.51.0 via PyTriton 0.7.0", cmd, env, work_dir / "pytriton.log", model_name, grpc_port,
                  timeout_s, work_dir) as peer:
        peer.http_url = f"127.0.0.1:{http_port}"  # tritonserver's own --http-port (PyTriton's TritonConfig)
        yield peer


@contextmanager
def mlserver(model_path: Path, model_name: str, *, max_batch_size: int, max_batch_time_s: float,
             work_dir: Path, timeout_s: float = 180, settings: dict | None = None) -> Iterator[Peer]:
    """MLServer 1.7.1 with adaptive batching and its defaults otherwise (one parallel inference worker process;
    debug on, so one access-log line per gRPC call); the model runs in the custom runtime
    mlserver_runtime.OnnxRuntime. `settings` overrides settings.json keys, e.g. {"debug": False}."""
    venv = venvs.ensure("mlserver", MLSERVER_PACKAGES)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    root = Path(work_dir) / "mlserver"
    shutil.rmtree(root, ignore_errors=True)  # no models or metrics (multiprocess files) left from an earlier run
    (root / model_name).mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
        "metrics_dir": str(root / ".metrics"), "environments_dir": str(root / ".envs"), **(settings or {})}, indent=2))
    (root / model_name / "model-settings.json").write_text(json.dumps({
        "name": model_name, "implementation": "mlserver_runtime.OnnxRuntime",
        "max_batch_size": max_batch_size, "max_batch_time": max_batch_time_s,
        "parameters": {"uri": str(Path(model_path).resolve())}}, indent=2))
    cmd = [str(venv / "bin" / "mlserver"), "start", str(root)]
    env = {"PYTHONPATH": str(HERE)}  # mlserver_runtime, in the server and in its worker processes
    with _running("MLServer 1.7.1", cmd, env, Path(work_dir) / "mlserver.log", model_name, grpc_port, timeout_s,
                  root) as peer:
        peer.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield peer


@contextmanager
def _running(name: str, cmd: list[str], env: dict[str, str], log_path: Path, model_name: str, grpc_port: int,
             timeout_s: float, cwd: Path) -> Iterator[Peer]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    peer = Peer(name, f"127.0.0.1:{grpc_port}", model_name, log_path, proc)
    try:
        _wait_ready(peer, timeout_s)
        yield peer
    finally:
        _stop(proc)


def _wait_ready(peer: Peer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(peer.url) as client:
        while True:
            if peer.proc.poll() is not None:
                raise RuntimeError(f"{peer.name} exited with {peer.proc.returncode} before the model was ready:\n"
                                   f"{_tail(peer.log())}")
            try:
                if client.is_model_ready(peer.model_name, client_timeout=2):
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{peer.name}: model {peer.model_name!r} not ready after {timeout_s:.0f}s:\n"
                                   f"{_tail(peer.log())}")
            time.sleep(0.25)


def _stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the peer (it stops its own children), then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the leader's pid
        except ProcessLookupError:
            break  # the group is empty
        proc.poll()  # reap the leader, or the group never empties
        time.sleep(0.1)
    proc.wait(10)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def batch_counts(peer: Peer) -> tuple[int, int] | None:
    """(rows, batches) the peer's model has executed since it started, or None where the peer cannot tell.
    Difference two calls to get the batches of one measurement window."""
    if peer.metrics_url:  # MLServer: the runtime's peer_batch_rows histogram
        try:
            with urllib.request.urlopen(peer.metrics_url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return parse_batch_metric(text, peer.model_name)
    with grpcclient.InferenceServerClient(peer.url) as client:  # Triton: ModelStatistics
        stats = client.get_inference_statistics(peer.model_name, client_timeout=5)
    if not stats.model_stats:
        return None
    return int(stats.model_stats[0].inference_count), int(stats.model_stats[0].execution_count)


def parse_batch_metric(prometheus_text: str, model_name: str) -> tuple[int, int] | None:
    """(rows, batches) from the peer_batch_rows histogram that mlserver_runtime.py logs, in Prometheus text."""
    found = {m["what"]: float(m["value"]) for m in re.finditer(
        r'^peer_batch_rows_(?P<what>sum|count)\{[^}]*model_name="' + re.escape(model_name)
        + r'"[^}]*\} (?P<value>\S+)$', prometheus_text, re.MULTILINE)}
    return (int(found["sum"]), int(found["count"])) if len(found) == 2 else None


def batch_stats(peer: Peer) -> float | None:
    """Mean rows per batch the peer formed since it started (Triton: inference_count / execution_count; MLServer:
    the runtime's own histogram), or None when unknown."""
    counts = batch_counts(peer)
    return counts[0] / counts[1] if counts and counts[1] else None
