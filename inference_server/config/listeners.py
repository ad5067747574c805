"""The TCP ports the settings make a process listen on, each named by its flag, and the one check that they are free.

Every port is checked before any is bound, so a start that cannot listen says at once which ports clash and under
which flag, all in one message (`cannot listen: 127.0.0.1:8000 (--http-port) is in use; 127.0.0.1:8002
(--metrics-port) is in use`), instead of failing on one port, then on the next. The check binds with the socket
options of the real binders (SO_REUSEADDR always, as grpc core, pygrpc-native, uvicorn's sockets here and the
metrics endpoint's HTTPServer all set it; SO_REUSEPORT where the listener shares its port), so it neither misses a
clash nor invents one (a connection of an earlier server in TIME_WAIT is none). It binds without listening: a probe
that listened in a SO_REUSEPORT group would be handed connections, and reset them when it closed. A real bind that
still fails (a race with another process) raises the same error through `cannot_listen`. Port 0 needs no check.

Which process binds which: a server alone binds gRPC, HTTP (unless 0) and metrics (unless off); a worker of
`--workers N` binds gRPC and HTTP with SO_REUSEPORT and no metrics; the supervisor serves the pod's metrics and
checks gRPC and HTTP without SO_REUSEPORT: no other server may be listening there, as a group to join is not one
the pod's workers should share connections with."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from inference_server.config.server import ServerConfig

WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Listener:
    flag: str  # the command-line flag that sets the port
    host: str
    port: int
    reuse_port: bool = False  # SO_REUSEPORT: shared on purpose (the workers of a pod)
    first_address_only: bool = False  # the metrics endpoint binds the first address its host resolves to

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host or '*'}:{self.port} ({self.flag})"


def grpc_listener(cfg: ServerConfig, reuse_port: bool | None = None) -> Listener:
    return Listener("--port", cfg.host, cfg.port, cfg.reuse_port if reuse_port is None else reuse_port)


def http_listener(cfg: ServerConfig, reuse_port: bool | None = None) -> Listener:
    return Listener("--http-port", cfg.host, cfg.http_port, cfg.reuse_port if reuse_port is None else reuse_port)


def metrics_listener(cfg: ServerConfig) -> Listener:
    return Listener("--metrics-port", cfg.metrics_host, cfg.metrics_port, first_address_only=True)


def server_listeners(cfg: ServerConfig, worker: bool) -> list[Listener]:
    """What one server process binds: gRPC, HTTP unless its port is 0, and metrics unless off or a worker's (the
    supervisor serves the pod's)."""
    found = [grpc_listener(cfg)]
    if cfg.http_port:
        found.append(http_listener(cfg))
    if cfg.metrics and not worker:
        found.append(metrics_listener(cfg))
    return found


def supervisor_listeners(cfg: ServerConfig) -> list[Listener]:
    """What the pod binds: the workers' gRPC and HTTP ports, checked as nobody else's (no SO_REUSEPORT), and the
    supervisor's metrics."""
    found = [grpc_listener(cfg, reuse_port=False)]
    if cfg.http_port:
        found.append(http_listener(cfg, reuse_port=False))
    if cfg.metrics:
        found.append(metrics_listener(cfg))
    return found


class ListenError(OSError):
    """Ports that cannot be listened on, each named with its flag; str() is the whole message."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("cannot listen: " + "; ".join(problems))


def problem(listener: Listener, error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return f"{listener} is in use"
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
    return f"{listener}: {reason}"


def cannot_listen(listener: Listener, error: BaseException) -> ListenError:
    """A real bind's failure, named as the check names it."""
    return ListenError([problem(listener, error)])


def addresses(listener: Listener) -> list[tuple[int, tuple[object, ...]]]:
    """(family, sockaddr) for each address the listener binds: every address its host resolves to (one socket per
    family and address), or only the first for the metrics endpoint."""
    infos = socket.getaddrinfo(listener.host or None, listener.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    found: list[tuple[int, tuple[object, ...]]] = []
    seen = set()
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) not in seen:
            seen.add((family, sockaddr[0]))
            found.append((family, sockaddr))
    return found[:1] if listener.first_address_only else found


def bind(listener: Listener, backlog: int | None = None) -> list[socket.socket]:
    """Sockets bound to each of the listener's addresses with the binders' options, all on one port (port 0: the
    one the first socket got), listening when given a backlog. An address in use raises at once; another failure
    (::1 on a host without IPv6) skips that address, and raises only when no address is left, as grpc core does."""
    found = addresses(listener)
    has_v4 = any(family == socket.AF_INET for family, _ in found)
    sockets: list[socket.socket] = []
    skipped: list[OSError] = []
    try:
        for family, sockaddr in found:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if listener.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and has_v4:  # the IPv4 address gets its own socket
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                port = sockets[0].getsockname()[1] if sockets else listener.port
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
                if backlog is not None:
                    sock.listen(backlog)
                    sock.setblocking(False)
            except OSError as e:
                sock.close()
                if e.errno == errno.EADDRINUSE:
                    raise
                skipped.append(e)
                continue
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise skipped[0]
    return sockets


def _probe(listener: Listener) -> None:
    """Bind as the listener's binder would, without listening, then let go; raises why it cannot."""
    for sock in bind(listener):
        sock.close()


def _overlap(a: Listener, b: Listener) -> bool:
    return a.port == b.port and (a.host == b.host or a.host in WILDCARDS or b.host in WILDCARDS)


def check_free(listeners: Iterable[Listener]) -> None:
    """Raises ListenError naming every listener (port 0 aside) whose port is in use or cannot be bound, or that
    shares its port with another listener of this process."""
    problems: list[str] = []
    checked: list[Listener] = []
    for listener in listeners:
        if not listener.port:
            continue
        twin = next((other for other in checked if _overlap(listener, other)), None)
        checked.append(listener)
        if twin is not None:
            problems.append(f"{listener} is also given to {twin.flag}")
            continue
        try:
            _probe(listener)
        except OSError as e:
            problems.append(problem(listener, e))
    if problems:
        raise ListenError(problems)
