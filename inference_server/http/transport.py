"""The HTTP front end's connections: listening sockets bound here (so a port in use fails the start as gRPC's
does), uvicorn's httptools protocol with bounds on request heads and word of clients that leave, a connection cap,
TLS with certificates that change without a restart, and uvicorn embedded in the loop that already runs gRPC (no
signal handlers of its own)."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from inference_server.config import listeners
from inference_server.config.listeners import Listener
from inference_server.http import codec

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 << 10  # request line and headers
HEAD_TIMEOUT_S = 30.0  # to receive a request's line and headers, once it has begun (or the connection opened)


def bind(listener: Listener, backlog: int = 2048) -> list[socket.socket]:
    """Listening sockets for the listener's host and port (one per address the host resolves to, all on one port).
    SO_REUSEPORT only when the listener shares its port on purpose (workers); otherwise a port in use is an error,
    naming the port's flag (config/listeners.py)."""
    try:
        return listeners.bind(listener, backlog)
    except OSError as e:
        raise listeners.cannot_listen(listener, e) from None


CLIENT_GONE = "inference_server.client_gone"  # the scope key of a request's ClientGone


class ClientGone:
    """One request's tie to its connection. When the client closes the connection before its answer, the task
    waiting on that answer (`waiter`) is cancelled, so a queued request leaves its queue and never runs."""

    __slots__ = ("closed", "waiter")

    def __init__(self) -> None:
        self.closed = False
        self.waiter: asyncio.Task[Any] | None = None

    def close(self) -> None:
        self.closed = True
        if self.waiter is not None:
            self.waiter.cancel()


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two bounds it leaves out: a request's line and headers must arrive
    within HEAD_TIMEOUT_S (from the connection's opening, or the request's first byte) and within
    MAX_HEAD_BYTES. Without them, a client that sends half a request head holds its connection (and a file
    descriptor) forever, and one endless header costs the event loop seconds."""

    _head_open = True  # waiting for a request's line and headers
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    # The override uvicorn's own connection_made makes: asyncio passes a Transport (BaseProtocol says BaseTransport).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self._head_open:
            self._head_bytes += len(data)
            if self._head_timer is None:  # a keep-alive connection's next request begins
                self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)
        super().data_received(data)
        if self._head_open and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_timer()
        # A key of this server's own in the ASGI scope, which uvicorn types as a TypedDict of the spec's keys.
        self.scope[CLIENT_GONE] = ClientGone()  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open, self._head_bytes = True, 0  # the next request's head, when it comes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        cycle: RequestResponseCycle | None = self.cycle  # None before a request's head (uvicorn types it without)
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:  # closed before its answer was complete
            gone = cycle.scope.get(CLIENT_GONE)
            if isinstance(gone, ClientGone):
                gone.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._head_open and self._head_bytes:
            self._refuse(408, f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s")
        elif self._head_open and not self.transport.is_closing():
            self.transport.close()  # opened and silent: nothing to answer

    def _refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        body = codec.error_json(message)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()


def connection_limit() -> int:
    """Connections (and requests) served at once before new ones get 503: half the process's file descriptors,
    so gRPC, the metrics endpoint and model files keep the other half."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(soft // 2, 16384)) if soft != resource.RLIM_INFINITY else 16384


class RotatingContext:
    """TLS whose certificates change without a restart. uvicorn listens with one SSLContext for good (asyncio and
    uvloop keep the one given to create_server), so `listening` is the first context, and its SNI callback (which
    OpenSSL calls on every ClientHello, with or without a server name) moves each new connection onto `current`:
    a whole context built from the files a reload read (security/). Connections already open keep theirs. Replacing
    the context rather than loading new files into the live one never leaves a certificate beside the old key,
    and drops a client CA that is no longer trusted (load_verify_locations only adds)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.listening = self.current = context
        context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            connection.context = current


TLS_HANDSHAKE = 0x16  # the first byte of a TLS record that carries a handshake message (a ClientHello)
PLAINTEXT_ANSWER = ("this port expects TLS: the plain HTTP request was sent to an HTTPS port; use https:// (with "
                    "the server's CA)")
PLAINTEXT_LOG_EVERY_S = 60.0  # the warning for plaintext requests on the TLS port: at most once a minute
LINGER_S = 2.0  # after the 400: the rest of the request is read (and dropped) so that closing does not reset it


def ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The SSL protocol the loop itself puts under a TLS connection (uvloop's own on a uvloop loop): what
    create_server(ssl=...) would use, so the TLS path is the loop's as before."""
    try:
        import uvloop
        from uvloop.loop import SSLProtocol as UvSSLProtocol  # type: ignore[attr-defined]  # not in its stubs
    except ImportError:
        return asyncio.sslproto.SSLProtocol
    return UvSSLProtocol if isinstance(loop, uvloop.Loop) else asyncio.sslproto.SSLProtocol


class TlsPort:
    """The HTTP port with TLS on, as every connection to it shares it: the context, the loop's SSL protocol, and
    the rate of the plaintext warning."""

    def __init__(self, context: ssl.SSLContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.ssl_protocol = ssl_protocol_class(loop)
        self._last_warning: float | None = None
        self._unlogged = 0

    def plaintext_request(self, port: int, peer: Any) -> None:
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < PLAINTEXT_LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        self._last_warning, self._unlogged = now, 0
        log.warning("HTTP port %d serves TLS: a plaintext HTTP request from %s was answered 400 (the client must "
                    "use https://)%s", port, peer[0] if isinstance(peer, tuple) else peer, more)


class TlsOrPlaintext(asyncio.Protocol):
    """A connection to the TLS HTTP port until its first byte, looked at once: a TLS handshake record goes on to the
    loop's SSL protocol (fed the bytes already read) under the HTTP protocol, as create_server(ssl=...) would set it
    up; a plaintext HTTP request (a method's capital letter first) gets a plaintext 400 saying the port expects TLS,
    as nginx answers "The plain HTTP request was sent to HTTPS port"; anything else is closed."""

    def __init__(self, port: TlsPort, app_protocol: Callable[[], asyncio.BaseProtocol]) -> None:
        self._port = port
        self._app_protocol = app_protocol
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False

    # asyncio passes a Transport (BaseProtocol says BaseTransport), as to uvicorn's protocols
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, transport.close)  # silent: closed

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._answered:
            return  # the rest of the plaintext request, read so that closing sends no reset
        if data[0] == TLS_HANDSHAKE:
            self._cancel_timer()
            self._start_tls(transport, data)
        elif 0x41 <= data[0] <= 0x5A:  # A-Z: GET, POST, PUT, HEAD...
            self._answer_plaintext(transport)
        else:
            transport.close()

    def _start_tls(self, transport: asyncio.Transport, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        tls = self._port.ssl_protocol(loop, self._app_protocol(), self._port.context, None, server_side=True)
        # as loop.start_tls switches protocols: reading paused, so the SSL protocol is made before its data comes
        transport.pause_reading()
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view:
            buffer = tls.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]
        transport.resume_reading()

    def _answer_plaintext(self, transport: asyncio.Transport) -> None:
        self._answered = True
        body = codec.error_json(PLAINTEXT_ANSWER)
        transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                        b"connection: close\r\n\r\n%s" % (len(body), body))
        sock = transport.get_extra_info("sockname")
        self._port.plaintext_request(sock[1] if isinstance(sock, tuple) else 0, transport.get_extra_info("peername"))
        if transport.can_write_eof():
            transport.write_eof()
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server for a loop that already runs: the process's SIGTERM/SIGINT stay with the App (uvicorn would
    otherwise take them over: `capture_signals` since 0.29, `install_signal_handlers` before). With `ssl_context`,
    it serves TLS with that context: uvicorn listens in plaintext, and each connection starts TLS itself once its
    first byte is a TLS handshake's (TlsOrPlaintext), so a plaintext request is told the port expects TLS."""

    def __init__(self, config: uvicorn.Config, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self.ssl_context = ssl_context

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        pass

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.ssl_context is not None:  # uvicorn listens in plaintext; each connection's first byte says which
            port = TlsPort(self.ssl_context, asyncio.get_running_loop())
            http = self.config.http_protocol_class
            self.config.http_protocol_class = lambda **kwargs: TlsOrPlaintext(  # type: ignore[assignment]
                port, functools.partial(http, **kwargs))
        await super().startup(sockets=sockets)
        self.listening.set()


