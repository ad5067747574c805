"""Bearer tokens on gRPC: a grpc.aio server interceptor asks security/auth.py for each call, by the method's
name and its `authorization` metadata. A refused call gets a handler of the real one's cardinality (the server
dispatches on it: a unary handler for ModelStreamInfer would break the stream) that aborts with UNAUTHENTICATED
or PERMISSION_DENIED before the request is parsed. The health service is always open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from inference_server.security.auth import Auth, Refusal

HEALTH_SERVICE = "grpc.health.v1.Health"
AUTHORIZATION = "authorization"
STATUS = {Refusal.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
          Refusal.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED}

_FACTORIES = {  # (request_streaming, response_streaming) -> the handler factory of that cardinality
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def operation(method: str) -> str | None:
    """The operation a full method name (`/package.Service/Method`) is, in auth.OPERATIONS's terms; None for the
    health service. Every other service's methods go by their names (one not in OPERATIONS needs admin)."""
    service, _, name = method.lstrip("/").partition("/")
    return None if service == HEALTH_SERVICE else name


def authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION:  # gRPC metadata keys arrive lower case
            return value if isinstance(value, str) else None
    return None


def refused(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s cardinality that aborts with code; the request is neither parsed nor read."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    factory = _FACTORIES[bool(handler.request_streaming), bool(handler.response_streaming)]
    return factory(abort)  # no deserializer: the request stays bytes


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's bearer token against `auth`, which reload() replaces whole (SIGHUP)."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        name = operation(details.method)
        if handler is None or name is None:
            return handler  # no such method (UNIMPLEMENTED), or health
        refusal = self.auth.refusal(name, authorization(details.invocation_metadata))
        if refusal is None:
            return handler
        kind, message = refusal
        return refused(handler, STATUS[kind], message)
