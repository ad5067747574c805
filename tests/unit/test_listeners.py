"""config/listeners.py: the check of every port before any is bound binds as the real binders do (SO_REUSEADDR
always, SO_REUSEPORT where the listener shares its port), so it neither misses a clash nor invents one; and a real
bind that fails (a race after the check) names the port's flag as the check does."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from inference_server.config.listeners import (
    Listener,
    ListenError,
    check_free,
    metrics_listener,
    server_listeners,
    supervisor_listeners,
)
from inference_server.config.server import ServerConfig
from inference_server.grpc.engine import native_unavailable
from inference_server.grpc.server import build_server
from inference_server.http.transport import bind
from inference_server.observability.metrics import MetricServerThread

HOST = "127.0.0.1"


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def listening(held: list[socket.socket], reuse_port: bool = False) -> int:
    """A port in use: a socket listening on it (with SO_REUSEPORT: a group a listener sharing its port may join)."""
    sock = socket.socket()
    held.append(sock)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, 0))
    sock.listen()
    return sock.getsockname()[1]


def test_a_port_in_use_is_named_with_its_flag_and_every_clash_is_in_one_message(held):
    grpc, metrics = listening(held), listening(held)
    with pytest.raises(ListenError) as e:
        check_free([Listener("--port", HOST, grpc), Listener("--http-port", HOST, 0),  # port 0: never checked
                    Listener("--metrics-port", HOST, metrics)])
    assert str(e.value) == (f"cannot listen: {HOST}:{grpc} (--port) is in use; "
                            f"{HOST}:{metrics} (--metrics-port) is in use")
    check_free([Listener("--port", HOST, 0)])


def test_so_reuseport_as_the_binders_use_it(held):
    """A listener sharing its port (a pod's worker) joins a SO_REUSEPORT group: no clash. One that does not, or a
    group it is not part of (the holder without SO_REUSEPORT), is a clash, as the real bind would be."""
    group, alone = listening(held, reuse_port=True), listening(held)
    check_free([Listener("--port", HOST, group, reuse_port=True)])
    with pytest.raises(ListenError, match=rf"{HOST}:{group} \(--port\) is in use"):
        check_free([Listener("--port", HOST, group)])
    with pytest.raises(ListenError, match=rf"{HOST}:{alone} \(--http-port\) is in use"):
        check_free([Listener("--http-port", HOST, alone, reuse_port=True)])


def test_a_connection_of_an_earlier_server_in_time_wait_is_no_clash():
    """The earlier server closed its side first, so its end of the connection waits in TIME_WAIT on the port: a
    bind without SO_REUSEADDR fails, the binders' (and so the check's) succeeds."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server here binds
        server.bind((HOST, 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server's side closes first: TIME_WAIT is on its side
            client.recv(1)  # the FIN has arrived
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind((HOST, port))  # the TIME_WAIT is there: a plain bind fails
    check_free([Listener("--port", HOST, port)])


def test_two_listeners_of_the_server_on_one_port_are_a_clash():
    cfg = dataclasses.replace(ServerConfig(), host=HOST, port=0, http_port=9100, metrics_port=9100, reuse_port=True)
    with pytest.raises(ListenError) as e:
        check_free(server_listeners(cfg, worker=False))
    assert str(e.value) == f"cannot listen: {HOST}:9100 (--metrics-port) is also given to --http-port"


def test_which_process_binds_which_port():
    cfg = dataclasses.replace(ServerConfig(), reuse_port=True)
    assert [(x.flag, x.reuse_port) for x in server_listeners(cfg, worker=False)] == [
        ("--port", True), ("--http-port", True), ("--metrics-port", False)]
    assert [x.flag for x in server_listeners(cfg, worker=True)] == ["--port", "--http-port"]  # no metrics
    # the supervisor: no other server may listen on the workers' ports, and it serves the metrics itself
    assert [(x.flag, x.reuse_port) for x in supervisor_listeners(cfg)] == [
        ("--port", False), ("--http-port", False), ("--metrics-port", False)]
    no_http = dataclasses.replace(cfg, http_port=0, metrics=False)
    assert [x.flag for x in server_listeners(no_http, worker=False)] == ["--port"]


def test_a_real_bind_that_fails_after_the_check_names_the_flag(held):
    """A race: the port was taken between the check and the bind."""
    port = listening(held)
    with pytest.raises(ListenError, match=rf"cannot listen: {HOST}:{port} \(--http-port\) is in use"):
        bind(Listener("--http-port", HOST, port))
    cfg = dataclasses.replace(ServerConfig(), metrics_host=HOST, metrics_port=port)
    with pytest.raises(ListenError, match=rf"cannot listen: {HOST}:{port} \(--metrics-port\) is in use"):
        MetricServerThread(metrics_listener(cfg), lambda environ, start_response: [])


@pytest.mark.parametrize("engine", ["grpcio", pytest.param("native", marks=pytest.mark.skipif(
    native_unavailable() is not None, reason="pygrpc-native is not installed"))])
async def test_a_grpc_bind_that_fails_after_the_check_names_the_flag(held, engine):
    """grpc's own error says only that the bind failed: the port checked again says why (on the event loop, as
    the App builds its servers)."""
    port = listening(held)
    cfg = dataclasses.replace(ServerConfig(), host=HOST, port=port)
    with pytest.raises(ListenError, match=rf"cannot listen: {HOST}:{port} \(--port\) is in use"):
        build_server(None, cfg, engine=engine)  # type: ignore[arg-type]  # the service is never called
