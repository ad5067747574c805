"""`python -m inference_server.grpc.healthcheck`, the images' HEALTHCHECK, against real servers: 0 when SERVING,
1 with one line on stderr saying why otherwise (not SERVING while draining, not reachable, an unknown service, a
port whose TLS is not the check's), always within its --timeout-s; TLS with the CA (and the name the certificate
carries) given."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference_server.grpc import healthcheck
from tests.conftest import ServerThread, server_config
from tests.support.pki import Authority
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MODULE = "inference_server.grpc.healthcheck"
STARTUP_SLACK_S = 1.5  # a check's own work beyond its deadline: channel set-up and teardown


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as the HEALTHCHECK runs it."""
    return subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True, text=True, cwd=REPO, timeout=30)


def check(capsys, *args: str) -> tuple[int, str]:
    """main() in this process: its exit status and what it wrote to stderr."""
    code = healthcheck.main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def plain_repository(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("healthcheck-models")  # empty: the servers serve the embedded digits model


def test_serving_server_exits_0_through_the_real_entry_point(server):
    for service in ("", "inference.GRPCInferenceService"):
        result = run_module("--port", str(server.port), "--service", service)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_serving_in_process(server, capsys):
    assert check(capsys, "--host", "127.0.0.1", "--port", str(server.port)) == (0, "")


def test_unknown_service_exits_1_naming_it(server):
    result = run_module("--port", str(server.port), "--service", "no.such.Service")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unknown service" in result.stderr and "no.such.Service" in result.stderr


def test_nothing_listening_exits_1_quickly(capsys):
    port = free_port()
    started = time.monotonic()
    code, err = check(capsys, "--port", str(port), "--timeout-s", "2")
    assert time.monotonic() - started < 2 + STARTUP_SLACK_S
    assert code == 1 and err.startswith("health check: not reachable") and str(port) in err and err.count("\n") == 1


def test_a_port_that_never_answers_exits_1_at_the_deadline(capsys):
    """A listener that accepts and says nothing (not gRPC, or a hung server): the deadline bounds the check."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        code, err = check(capsys, "--port", str(silent.getsockname()[1]), "--timeout-s", "1")
        elapsed = time.monotonic() - started
    assert code == 1 and "not reachable" in err, err
    assert 0.9 <= elapsed < 1 + STARTUP_SLACK_S, elapsed


def test_draining_server_is_not_serving(plain_repository, capsys, grpc_engine):
    thread = ServerThread(server_config(plain_repository, grpc_engine=grpc_engine)).start()
    try:
        assert check(capsys, "--port", str(thread.port)) == (0, "")
        grpc_front_end = next(f for f in thread.app.front_ends if f.name == "gRPC")
        asyncio.run_coroutine_threadsafe(grpc_front_end.begin_drain(), thread.loop).result(10)
        code, err = check(capsys, "--port", str(thread.port))
        assert code == 1 and "not SERVING" in err and "NOT_SERVING" in err, err
        code, err = check(capsys, "--port", str(thread.port), "--service", "inference.GRPCInferenceService")
        assert code == 1 and "'inference.GRPCInferenceService'" in err and "NOT_SERVING" in err, err
    finally:
        thread.stop()


def test_a_bad_command_line_is_unhealthy_not_2(capsys):
    """Docker reserves exit status 2; argparse's usage error becomes 1."""
    assert check(capsys, "--port", "not-a-port")[0] == 1
    assert check(capsys, "--timeout-s", "0")[0] == 1
    code, err = check(capsys, "--tls-cert", "client.pem")
    assert code == 1 and "--tls-key" in err
    code, err = check(capsys, "--tls-ca", "/nonexistent/ca.pem")
    assert code == 1 and "cannot read /nonexistent/ca.pem" in err


def test_tls_server(plain_repository, tmp_path, capsys):
    ca = Authority.make(tmp_path, "healthcheck-ca")
    other = Authority.make(tmp_path, "other-ca")
    cert, key, _ = ca.issue(tmp_path, "server", server=True)  # for 127.0.0.1 and localhost
    cfg = server_config(plain_repository)
    thread = ServerThread(dataclasses.replace(cfg, tls_cert=cert, tls_key=key)).start()
    port = str(thread.port)
    try:
        assert check(capsys, "--port", port, "--tls-ca", str(ca.path)) == (0, "")
        assert check(capsys, "--port", port, "--tls-ca", str(ca.path), "--tls-server-name", "localhost") == (0, "")
        result = run_module("--port", port, "--tls-ca", str(ca.path))
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        code, err = check(capsys, "--port", port, "--timeout-s", "2")  # plaintext to a TLS port: said so
        assert code == 1 and err.count("\n") == 1, err
        assert f"127.0.0.1:{port} expects TLS and the check connected in plaintext: give --tls-ca" in err, err
        code, err = check(capsys, "--port", port, "--tls-ca", str(other.path), "--timeout-s", "2")
        assert code == 1 and "not reachable" in err, err
        code, err = check(capsys, "--port", port, "--tls-ca", str(ca.path), "--tls-server-name", "elsewhere.example")
        assert code == 1 and "not reachable" in err, err
    finally:
        thread.stop()


def test_a_tls_check_of_a_plaintext_port_says_the_port_does_not_speak_tls(server, tmp_path, capsys):
    ca = Authority.make(tmp_path, "healthcheck-ca")
    code, err = check(capsys, "--port", str(server.port), "--tls-ca", str(ca.path), "--timeout-s", "2")
    assert code == 1 and err.count("\n") == 1, err
    assert f"127.0.0.1:{server.port} does not speak TLS and the check connected with TLS: leave out --tls-ca" in err
