"""The HTTP/REST front end: KServe v2 routes (+ Triton's extensions and KServe v1 `:predict`) on an embedded uvicorn,
and route administration under /v2/routes (admin.py).

Thin handlers over InferenceService, as grpc/servicer.py is: read the body (bounded), decode with codec.py, call the
service, encode. InferenceError -> codec.STATUS and `{"error": message}`; anything else -> 500 "internal error",
logged with the request id. Bodies are read and compressed by bodies.py; uvicorn runs as a task in the loop that
already runs gRPC, on sockets and a guarded protocol from transport.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inference_server.config.listeners import http_listener
from inference_server.config.server import LimitsConfig, ServerConfig
from inference_server.errors import ErrorCode, InferenceError, invalid
from inference_server.http import admin, auth, codec
from inference_server.http.bodies import (
    JSON,
    OFFLOAD_BYTES,
    HttpError,
    accepted_encoding,
    compress,
    error_response,
    header_length,
    read_body,
)
from inference_server.http.transport import (
    CLIENT_GONE,
    EmbeddedServer,
    GuardedHttpTools,
    RotatingContext,
    bind,
    connection_limit,
)
from inference_server.protocol.tensors import InferRequest, InferResponse
from inference_server.security.auth import Auth
from inference_server.security.state import Security
from inference_server.security.tls import plaintext_warning
from inference_server.service.inference import InferenceService

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"  # seconds, on a 503 for a full queue or the in-flight cap

BINARY = "application/octet-stream"
REQUEST_ID_HEADER = "x-request-id"
ROUTING_KEY_HEADER = "routing-key"  # what a route hashes for stickiness when the request names no key itself
TRACEPARENT_HEADER, TRACESTATE_HEADER = "traceparent", "tracestate"  # W3C Trace Context
PROTOCOL = "http"  # InferRequest.protocol
# How long the client waits, in milliseconds: ours, and the one Envoy (and Istio) add for the route's timeout.
TIMEOUT_HEADERS = ("request-timeout-ms", "x-envoy-expected-rq-timeout-ms")
# JSON tensors cost about 14x their size in memory and seconds per 100 MB to decode: beyond this, send binary
# tensors (Triton's --http-max-input-size defaults to 64 MB as well). Larger JSON bodies decode in a thread.
MAX_JSON_BYTES = 64 << 20


def ready_only(body: bytes) -> bool:
    """RepositoryIndex's request: an empty body or {"ready": bool}."""
    if not body.strip():
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"the request body is not valid JSON: {e}") from None
    ready = doc.get("ready", False) if isinstance(doc, dict) else None
    if not isinstance(ready, bool):
        raise HttpError(400, 'the repository index request is a JSON object with an optional boolean "ready"')
    return ready


# -- routes --------------------------------------------------------------------------------------------------

Handler = Callable[["Routes", Request], Awaitable[Response]]


def endpoint(handler: Handler) -> Handler:
    """Every route goes through here: errors become JSON with their status; x-request-id is echoed; while the
    server drains, responses ask the client to close the connection (so it reconnects to a server that serves)."""
    operation = auth.operation(handler.__name__)  # what a bearer token needs for this route (http/auth.py)

    async def run(self: Routes, request: Request) -> Response:
        header_id = request.headers.get(REQUEST_ID_HEADER)
        self.begin()
        try:
            response = auth.refusal(self.auth, operation, request.method, request.headers)  # bearer tokens
            if response is None:
                response = await handler(self, request)
        except HttpError as e:  # the body may be left unread: the connection cannot carry another request
            response = error_response(e.status, e.message, {"connection": "close"})
        except InferenceError as e:  # over a bound (a full queue, the in-flight cap): Retry-After (e.retryable)
            retry = {"retry-after": RETRY_AFTER_S} if e.retryable else None
            response = error_response(codec.STATUS[e.code], e.message, retry)
        except Exception:
            request_id = request.scope.get("inference_server.request_id") or header_id or "-"
            log.exception("request %s: %s %s failed unexpectedly", request_id, request.method, request.url.path)
            response = error_response(500, "internal error")
        finally:
            self.end()
        if header_id is not None and header_id.isprintable():  # echoed only when it is safe to send back
            response.headers[REQUEST_ID_HEADER] = header_id
        if self.service.health.draining:
            response.headers["connection"] = "close"
        return response

    run.__name__ = handler.__name__
    return run


def trace_context(headers: Headers) -> tuple[str, str]:
    """The W3C trace context the headers carry: (traceparent, tracestate), several tracestate headers joined as one
    list, in order; ("", "") without a traceparent."""
    if (parent := headers.get(TRACEPARENT_HEADER)) is None:
        return "", ""
    return parent, ",".join(headers.getlist(TRACESTATE_HEADER))


def _from_headers(request: Request, infer_request: InferRequest) -> None:
    """What an inference request takes from the HTTP headers: the request id when the body gives none, the routing
    key and the trace context. The id is also kept for the error log."""
    headers = request.headers
    if not infer_request.id:
        infer_request.id = headers.get(REQUEST_ID_HEADER, "")
    infer_request.routing_key = headers.get(ROUTING_KEY_HEADER)
    infer_request.protocol = PROTOCOL
    infer_request.traceparent, infer_request.tracestate = trace_context(headers)
    request.scope["inference_server.request_id"] = infer_request.id


def deadline_of(request: Request) -> float | None:
    """The request's deadline in event-loop time from its timeout headers (the earliest), or None without one."""
    deadline = None
    for name in TIMEOUT_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        try:
            timeout_ms = float(value)
        except ValueError:
            timeout_ms = math.nan
        if not (math.isfinite(timeout_ms) and timeout_ms >= 0):
            raise invalid(f"header '{name}' must be a non-negative number of milliseconds, got {value[:32]!r}")
        at = asyncio.get_running_loop().time() + timeout_ms / 1e3
        deadline = at if deadline is None else min(deadline, at)
    return deadline


async def answer(service: InferenceService, request: Request, infer_request: InferRequest,
                 deadline: float | None) -> InferResponse:
    """service.infer, given up when the client closes its connection first: a queued request then leaves its
    queue and never runs (CANCELLED, 499, counted in the model's statistics)."""
    gone = request.scope.get(CLIENT_GONE)
    if gone is None:
        return await service.infer(infer_request, deadline)
    if gone.closed:
        raise InferenceError(ErrorCode.CANCELLED, "the client closed the connection before its answer")
    task = asyncio.current_task()
    gone.waiter = task
    try:
        return await service.infer(infer_request, deadline)
    except asyncio.CancelledError:
        if not gone.closed or task is None or task.uncancel() > 0:  # also stopped for another reason: go on
            raise
        raise InferenceError(ErrorCode.CANCELLED, "the client closed the connection before its answer") from None
    finally:
        gone.waiter = None


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["model"], params.get("version", "")


def _status(ok: bool) -> Response:
    """Health and readiness, as Triton answers them: 200 or 400, with an empty body."""
    return Response(status_code=200 if ok else 400)


class Routes:
    auth: Auth | None = None  # bearer tokens, when [server.auth] names a file (replaced on SIGHUP)

    def __init__(self, service: InferenceService, max_body_bytes: int, limits: LimitsConfig | None = None) -> None:
        self.service = service
        self.limit = max_body_bytes  # [server.limits] max_request_bytes: bodies, compressed and decompressed (413)
        self.limits = limits  # what a tensor may hold, checked as it is decoded
        self.in_flight = 0  # requests being read or answered (the front end's drain waits for them)
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    @endpoint
    async def live(self, request: Request) -> Response:
        return _status(self.service.health.live)

    @endpoint
    async def ready(self, request: Request) -> Response:
        return _status(self.service.health.ready)

    @endpoint
    async def model_ready(self, request: Request) -> Response:
        return _status(self.service.health.model_ready(*_model(request)))

    @endpoint
    async def server_metadata(self, request: Request) -> Response:
        s = self.service
        return Response(codec.server_metadata_json(s.name, s.version, s.extensions), media_type=JSON)

    @endpoint
    async def model_metadata(self, request: Request) -> Response:
        return Response(codec.model_metadata_json(self.service.model_metadata(*_model(request))), media_type=JSON)

    @endpoint
    async def model_config(self, request: Request) -> Response:
        return Response(codec.model_config_json(self.service.model_config(*_model(request))), media_type=JSON)

    @endpoint
    async def statistics(self, request: Request) -> Response:
        params = request.path_params
        views = await self.service.statistics(params.get("model", ""), params.get("version", ""))
        return Response(codec.model_statistics_json(views), media_type=JSON)

    @endpoint
    async def repository_index(self, request: Request) -> Response:
        entries = self.service.repository.index(ready_only(await read_body(request, self.limit)))
        return Response(codec.repository_index_json(entries), media_type=JSON)

    @endpoint
    async def load(self, request: Request) -> Response:
        config, files, version = codec.load_parameters(await read_body(request, self.limit))
        await self.service.repository.load(request.path_params["model"], config=config, files=files, version=version)
        return Response()

    @endpoint
    async def unload(self, request: Request) -> Response:
        version, dependents = codec.unload_parameters(await read_body(request, self.limit))
        await self.service.repository.unload(request.path_params["model"], version, dependents=dependents)
        return Response()

    def refused(self, request: Request, model: str, error: HttpError | InferenceError) -> None:
        """A request refused before the service ran it (its headers or body, or its model for v1): recorded in the
        caller's trace as the service records the requests it refuses itself (nothing when tracing is off)."""
        traceparent, tracestate = trace_context(request.headers)
        self.service.refused(model, error.error() if isinstance(error, HttpError) else error,
                             traceparent=traceparent, tracestate=tracestate, protocol=PROTOCOL,
                             request_id=request.headers.get(REQUEST_ID_HEADER, ""))

    @endpoint
    async def infer(self, request: Request) -> Response:
        model, version = _model(request)
        try:
            deadline = deadline_of(request)
            length = header_length(request)
            body = await read_body(request, self.limit)
            json_bytes = len(body) if length is None else length
            if json_bytes > MAX_JSON_BYTES:
                raise HttpError(413, f"{json_bytes} bytes of JSON exceed the {MAX_JSON_BYTES >> 20} MiB JSON limit: "
                                     "send the tensors binary (Triton's binary tensor extension, as tritonclient.http "
                                     "does)")
            if json_bytes > OFFLOAD_BYTES:
                infer_request, fmt = await asyncio.to_thread(codec.decode_infer_request, body, length, model, version,
                                                             self.limits)
            else:
                infer_request, fmt = codec.decode_infer_request(body, length, model, version, self.limits)
        except (HttpError, InferenceError) as e:
            self.refused(request, model, e)
            raise
        _from_headers(request, infer_request)
        response = await answer(self.service, request, infer_request, deadline)
        content, json_length = codec.encode_infer_response(response, fmt)
        headers = {}
        if json_length is not None:
            headers[codec.HEADER_LENGTH] = str(json_length)
        encoding = accepted_encoding(request.headers.get("accept-encoding"))
        if encoding is not None:
            if len(content) > OFFLOAD_BYTES:
                content = await asyncio.to_thread(compress, content, encoding)
            else:
                content = compress(content, encoding)
            headers["content-encoding"] = encoding
            headers["vary"] = "Accept-Encoding"
        return Response(content, headers=headers, media_type=JSON if json_length is None else BINARY)

    @endpoint
    async def v1_predict(self, request: Request) -> Response:
        model = request.path_params["model"]
        try:
            deadline = deadline_of(request)
            body = await read_body(request, self.limit)
            if len(body) > MAX_JSON_BYTES:
                raise HttpError(413, f"{len(body)} bytes of JSON exceed the {MAX_JSON_BYTES >> 20} MiB JSON limit")
            inputs = self.service.model_metadata(model).inputs
            infer_request = codec.decode_v1_predict(body, model, "", inputs, self.limits)
        except (HttpError, InferenceError) as e:
            self.refused(request, model, e)
            raise
        _from_headers(request, infer_request)
        response = await answer(self.service, request, infer_request, deadline)
        return Response(codec.encode_v1_predict(response), media_type=JSON)

    # -- route administration (JSON in admin.py) --

    @endpoint
    async def route_status(self, request: Request) -> Response:
        name = request.path_params.get("route", "")
        views = self.service.route_admin.views(name)
        return Response(admin.route_json(views[0]) if name else admin.routes_json(views), media_type=JSON)

    @endpoint
    async def route_weights(self, request: Request) -> Response:
        weights = admin.weights_request(await read_body(request, self.limit))
        return admin.route_change(lambda: self.service.route_admin.set_weights(request.path_params["route"], weights))

    @endpoint
    async def route_canary(self, request: Request) -> Response:
        admin.no_body(await read_body(request, self.limit))
        params = request.path_params
        return admin.route_change(lambda: self.service.route_admin.canary(params["route"], params["action"]))


def routes(r: Routes) -> list[Route]:
    get, post = ["GET"], ["POST"]
    table: list[Route] = [
        Route("/v2/health/live", r.live, methods=get),
        Route("/v2/health/ready", r.ready, methods=get),
        Route("/v2", r.server_metadata, methods=get),
        Route("/v2/models/stats", r.statistics, methods=get),  # before /v2/models/{model}
        Route("/v2/repository/index", r.repository_index, methods=post),
        Route("/v2/repository/models/{model}/load", r.load, methods=post),
        Route("/v2/repository/models/{model}/unload", r.unload, methods=post),
        Route("/v1/models/{model}:predict", r.v1_predict, methods=post),
        Route("/v2/routes", r.route_status, methods=get),
        Route("/v2/routes/{route}", r.route_status, methods=get),
        Route("/v2/routes/{route}/weights", r.route_weights, methods=post),
        Route("/v2/routes/{route}/canary/{action}", r.route_canary, methods=post),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [
            Route(prefix, r.model_metadata, methods=get),
            Route(f"{prefix}/ready", r.model_ready, methods=get),
            Route(f"{prefix}/config", r.model_config, methods=get),
            Route(f"{prefix}/stats", r.statistics, methods=get),
            Route(f"{prefix}/infer", r.infer, methods=post),
        ]
    return table


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a route, another method), as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, dict(exc.headers or {}))


INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class InferFastPath:
    """POST .../infer, the hot path, straight to its handler; everything else through Starlette's router and
    middleware, which cost about 50 µs of server CPU a request here (benchmarks/results/http-stack.md: a raw
    ASGI handler took 0.5-0.8x Starlette's CPU per request). The handler is the same either way."""

    def __init__(self, r: Routes, app: Starlette) -> None:
        self._routes = r
        self._app = app

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["path_params"] = {k: v for k, v in match.groupdict().items() if v is not None}
                response = await self._routes.infer(Request(scope, receive))
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
                return
        await self._app(scope, receive, send)


def build_app(r: Routes) -> InferFastPath:
    return InferFastPath(r, Starlette(routes=routes(r), exception_handlers={HTTPException: _http_exception}))


class HttpFrontEnd:
    """The HTTP front end as the App drives every front end: bind (here), start, drain, stop."""

    name = "HTTP"

    def __init__(self, service: InferenceService, cfg: ServerConfig, security: Security) -> None:
        self._tls = security.tls
        self._contexts = None if self._tls is None else RotatingContext(self._tls.context)
        self._sockets = bind(http_listener(cfg))
        self.port: int = self._sockets[0].getsockname()[1]
        self._routes = Routes(service, cfg.limits.max_request_bytes, cfg.limits)
        self._routes.auth = security.auth
        config = uvicorn.Config(
            build_app(self._routes),
            http=GuardedHttpTools, loop="none", lifespan="off", ws="none", interface="asgi3",
            log_config=None, log_level="warning", access_log=False,  # the service writes its own access log
            proxy_headers=False, server_header=False, limit_concurrency=connection_limit(),
            timeout_keep_alive=75,  # longer than the usual load balancer idle timeout (60 s)
        )
        self._server = EmbeddedServer(config, None if self._contexts is None else self._contexts.listening)
        self._task: asyncio.Task[None] | None = None
        if self._tls is not None:
            log.info("HTTP port %d: %s", self.port, self._tls.describe())
        elif (warning := plaintext_warning(self.name, cfg.host, self.port)) is not None:
            log.warning("%s", warning)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=self._sockets),
                                                            name="http front end")
        listening = asyncio.ensure_future(self._server.listening.wait())
        await asyncio.wait((self._task, listening), return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            listening.cancel()
            self._task.result()  # raises why it stopped
            raise OSError(f"the HTTP server on port {self.port} stopped while starting")

    async def readiness(self, ready: bool) -> None:
        """Nothing to push: /v2/health/ready asks the service on every probe."""

    def secure(self, security: Security) -> None:
        """SIGHUP: the security state the App re-read (for every front end at once) applies from now on: new
        tokens to the next request, new certificates to new connections."""
        self._routes.auth = security.auth
        if security.tls is not None and self._contexts is not None and security.tls is not self._tls:
            self._contexts.current = security.tls.context
            self._tls = security.tls
            log.info("SIGHUP: HTTP certificates re-read: %s", security.tls.describe())

    async def begin_drain(self) -> None:
        """Nothing to do here: the service refuses new inferences (503) and readiness answers 400 once it
        drains, while requests already accepted finish and are answered."""

    async def stop(self, grace_s: float | None) -> None:
        """Close the port and idle connections; responses under way are still sent for up to grace_s."""
        if self._task is None:
            for sock in self._sockets:
                sock.close()
            return
        server = self._server
        if grace_s:  # the service has drained; requests still being read or answered get the rest of the grace
            try:
                await asyncio.wait_for(self._routes.idle.wait(), grace_s)
            except TimeoutError:
                log.warning("%d HTTP requests still under way after %.1fs", self._routes.in_flight, grace_s)
        # uvicorn bounds its wait for responses under way by this, then cancels them; at least 0.1 s, as uvicorn
        # reports a timeout at 0 even with nothing to wait for. grace_s None: stop now (as gRPC's stop(None)).
        # uvicorn types it int | None; it is used as asyncio.timeout's delay, which takes a float.
        server.config.timeout_graceful_shutdown = max(grace_s or 0.0, 0.1)  # type: ignore[assignment]
        server.force_exit = grace_s is None
        server.should_exit = True  # seen within 0.1 s (uvicorn's tick)
        backstop = (grace_s or 0.0) + 5
        try:
            await asyncio.wait_for(asyncio.shield(self._task), backstop)
        except TimeoutError:
            log.warning("the HTTP server did not stop within %.1fs; cancelling it", backstop)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        except Exception:
            log.exception("the HTTP server failed while stopping")
