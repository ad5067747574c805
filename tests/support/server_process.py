"""The server as a subprocess (`python -m inference_server ...`), readiness polled through gRPC health.
Used by the system tests and by the benchmarks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port the kernel picks (bind to port 0), free on every interface (a server may bind 0.0.0.0 as well as
    127.0.0.1), and so never one already taken, such as ./scripts/serve's 8000-8002. Where the port must be known
    before the server starts (a subprocess's argument, --workers, an HTTP port, where 0 means no HTTP), it is
    picked here; in-process servers bind port 0 themselves."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, command: list[str] | None = None,
                 env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        """`env`: variables set for the server over the test's own environment (OTEL_*, for one). `port`: the gRPC
        port when `args` name it themselves (a free_port()), so that health checks reach it."""
        self.port = port or free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A free metrics port too, and no HTTP front end (a later --metrics-port or --http-port in args wins), so
        # servers never collide on 8002 or 8000.
        cmd = (command or [sys.executable, "-m", "inference_server"]) + ["--port", str(self.port),
                                                                       "--metrics-port", "0", "--http-port", "0",
                                                                       *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def health(self) -> int | None:
        with grpc.insecure_channel(self.url) as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return None

    def wait_serving(self, timeout_s: float = 60) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout_s}s:\n{self.log()}")

    def wait_workers(self, count: int, timeout_s: float = 60) -> ServerProcess:
        """With --workers: until every worker process logs that it is serving (each binds once loaded)."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(" serving ") < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{count} workers not serving after {timeout_s}s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def scrape(self) -> str:
        """The metrics endpoint's exposition; its port is the one the server logged (it binds port 0)."""
        port = re.search(r"metrics on http://[^:]+:(\d+)/metrics", self.log())
        if port is None:
            raise RuntimeError(f"no metrics endpoint in the log:\n{self.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry `labels` (0 when none), from the metrics endpoint."""
        return sum(s.value for family in text_string_to_metric_families(self.scrape()) for s in family.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def accepted(self, model: str) -> int:
        """Requests for the model that are queued or answered (one executing is in neither): a condition to wait
        on, instead of a sleep, for requests sent at once to have arrived."""
        return int(self.metric("inference_pending_requests", model=model)
                   + self.metric("inference_requests_total", model=model))

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
