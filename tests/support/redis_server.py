"""A real redis-server on 127.0.0.1 for tests and benchmarks: started on a free port with nothing persisted,
stopped by PID, and restartable on the same port (to take Redis away from a running server and bring it back)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.server_process import free_port

BINARY = "redis-server"


def available() -> bool:
    return shutil.which(BINARY) is not None


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None, tls: bool = False) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.workdir / 'ca.crt'}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [BINARY, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", str(self.workdir), "--logfile", str(self.log_path)]
        if self.tls:  # TLS only: the plain port is closed
            cert, key, ca = make_certificates(self.workdir)
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                    str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {self.log()}")
            time.sleep(0.02)
        return self

    def client(self) -> redis.Redis:
        """A synchronous client, for tests to look at what the server stored."""
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis vanishes mid-traffic, as a crashed or evicted pod does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections but answers nothing (a hung or overloaded Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused Redis cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    ca, cert, key = workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"
    if cert.exists():
        return cert, key, ca
    (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
         "-subj", "/CN=inference-server-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "server.crt", "-days", "1", "-extfile", "san.cnf"],
    ):
        subprocess.run(["openssl", *cmd], cwd=workdir, check=True, capture_output=True)
    return cert, key, ca
