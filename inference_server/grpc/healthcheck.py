"""`python -m inference_server.grpc.healthcheck`: one grpc.health.v1 Health/Check against a running server, for a
container HEALTHCHECK or an exec probe. Exit status 0 when the service is SERVING, 1 otherwise (never 2, which
Docker reserves), with one line on stderr saying why: not SERVING, not reachable, a service the server does not
know, or a port whose TLS is not the check's (a TLS port checked in plaintext, or the other way round: a check that
cannot reach the server tries a TLS handshake with the time it has left to tell). The server sets both "" (the
default) and "inference.GRPCInferenceService"; the health service needs no token.

It imports only grpc, the health stubs and the standard library (no numpy, no ONNX Runtime), so it starts quickly
enough to run every few seconds."""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from typing import Any
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTHY, UNHEALTHY = 0, 1
MAX_PEM_BYTES = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference_server.grpc.healthcheck",
                                description="Exit 0 when the server's gRPC health service answers SERVING, else 1.")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--service", default="", help="service name to check (default '': the whole server)")
    p.add_argument("--timeout-s", type=_seconds, default=3.0, help="deadline of the check in seconds (default 3)")
    p.add_argument("--tls-ca", type=Path, help="PEM CA certificate(s): connect with TLS, trusting these")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate, for a server that requires mutual TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", help="name the server's certificate must carry, when it is not --host")
    return p


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text}")
    return value


def target(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    with path.open("rb") as f:
        return f.read(MAX_PEM_BYTES)


def speaks_tls(host: str, port: int, timeout_s: float) -> bool | None:
    """Whether the port answers a TLS handshake (certificates unchecked: only whether it speaks TLS), None when
    that cannot be told (nothing listening, no answer in time)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, context.wrap_socket(sock):
            return True
    except ssl.SSLError as e:  # an alert is TLS (a server that wants a client certificate); anything else is not
        return "ALERT" in (e.reason or "")
    except (TimeoutError, ConnectionRefusedError, socket.gaierror):
        return None
    except OSError:  # closed or reset in the middle of the handshake: not a TLS server
        return False


def mismatch(host: str, port: int, tls: bool, timeout_s: float) -> str | None:
    """After a check that could not reach the server: the port's TLS told apart from the check's, with what to
    give the check, or None when they agree (or it cannot be told)."""
    if timeout_s <= 0:
        return None
    answers = speaks_tls(host, port, timeout_s)
    if answers and not tls:
        return (f"{target(host, port)} expects TLS and the check connected in plaintext: give --tls-ca (the CA "
                "that signed the server's certificate; --tls-cert and --tls-key too under mutual TLS)")
    if answers is False and tls:
        return (f"{target(host, port)} does not speak TLS and the check connected with TLS: leave out --tls-ca, "
                "--tls-cert and --tls-key")
    return None


def check(host: str, port: int, service: str = "", timeout_s: float = 3.0,
          credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None) -> str | None:
    """None when `service` is SERVING at host:port, else why not (one line)."""
    deadline = time.monotonic() + timeout_s
    address = target(host, port)
    # A probe of a local port never goes through a proxy from the environment, and its deadline is the only wait.
    options: list[tuple[str, int | str]] = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    channel = (grpc.insecure_channel(address, options=options) if credentials is None
               else grpc.secure_channel(address, credentials, options=options))
    name = repr(service) if service else "the server ('')"
    with channel:
        try:
            # types-grpcio-health-checking's HealthStub declares no methods (the generated __init__ sets them)
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as e:
            code, details = e.code(), (e.details() or "").strip()
            if code == grpc.StatusCode.NOT_FOUND:
                return f"unknown service: {address} has no health status for service {service!r}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # the port's TLS and the check's disagree: said, rather than a bare "Socket closed"
                why = mismatch(host, port, credentials is not None, deadline - time.monotonic())
                return why or f"not reachable: {address}: {code.name}: {details or 'no answer'}"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return f"not a gRPC health service: {address} answered UNIMPLEMENTED"
            return f"health check of {name} at {address} failed: {code.name}: {details}"
    if reply.status != SERVING:
        return f"not SERVING: {name} at {address} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help: 0; a bad command line: unhealthy, never argparse's 2
        return HEALTHY if not e.code else UNHEALTHY
    if (args.tls_cert is None) != (args.tls_key is None):
        sys.stderr.write("health check: --tls-cert and --tls-key go together\n")
        return UNHEALTHY
    credentials = None
    if args.tls_ca is not None or args.tls_cert is not None:
        try:
            credentials = grpc.ssl_channel_credentials(_read(args.tls_ca), _read(args.tls_key), _read(args.tls_cert))
        except OSError as e:
            sys.stderr.write(f"health check: cannot read {e.filename}: {e.strerror or e}\n")
            return UNHEALTHY
    why = check(args.host, args.port, args.service, args.timeout_s, credentials, args.tls_server_name)
    if why is not None:
        sys.stderr.write(f"health check: {why}\n")
        return UNHEALTHY
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
