"""The HTTP port with TLS on, in a real server process (on uvloop's loop, whose own SSL protocol carries TLS): a
plaintext HTTP request is answered a plaintext 400 saying the port expects TLS, and TLS requests around it are
served."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

from tests.support.pki import Authority
from tests.support.server_process import ServerProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """The answer to one request, until the server closes the connection."""
    sock.sendall(request)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_plaintext_request_on_the_tls_http_port_is_told_to_use_https(tmp_path):
    ca = Authority.make(tmp_path, "ca")
    cert, key, _ = ca.issue(tmp_path, "server", server=True)
    http_port = free_port()
    server = ServerProcess(["--tls-cert", str(cert), "--tls-key", str(key), "--http-port", str(http_port)],
                           tmp_path / "server.log")
    context = ssl.create_default_context(cafile=str(ca.path))
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

    def over_tls() -> bytes:
        with (socket.create_connection(("127.0.0.1", http_port), timeout=10) as raw,
              context.wrap_socket(raw, server_hostname="127.0.0.1") as sock):
            return exchange(sock, request)

    try:
        wait_until(lambda: " serving " in server.log() or server.proc.poll() is not None, "the start", timeout_s=60)
        assert server.proc.poll() is None, server.log()
        assert over_tls().startswith(b"HTTP/1.1 200 ")
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
                answer = exchange(sock, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer
            assert "this port expects TLS" in json.loads(body)["error"]
        assert over_tls().startswith(b"HTTP/1.1 200 ")  # the next TLS request is served
        log = server.log()
        assert log.count("a plaintext HTTP request from 127.0.0.1 was answered 400") == 1, log  # rate-limited
    finally:
        assert server.terminate() == 0
