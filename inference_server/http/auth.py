"""Bearer tokens on HTTP: every route's wrapper (server.endpoint, which the POST .../infer fast path goes through
too) asks inference_server.security.auth by the route's operation and the `Authorization` header; a refusal is 401 (with
`WWW-Authenticate: Bearer`) or 403, with a JSON `{"error": ...}` body as every other error."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response

from inference_server.http.bodies import error_response
from inference_server.security.auth import Auth, Refusal

# Each Routes handler (by its name) -> the operation it is, in auth.OPERATIONS's terms: the scopes are decided
# there, once for both front ends. A handler missing here fails the import (server.endpoint).
OPERATIONS = {
    "live": "ServerLive",
    "ready": "ServerReady",
    "model_ready": "ModelReady",
    "server_metadata": "ServerMetadata",
    "model_metadata": "ModelMetadata",
    "model_config": "ModelConfig",
    "statistics": "ModelStatistics",
    "repository_index": "RepositoryIndex",
    "load": "RepositoryModelLoad",
    "unload": "RepositoryModelUnload",
    "infer": "ModelInfer",
    "v1_predict": "ModelInfer",
    "route_status": "RouteStatus",
    "route_weights": "RouteWeights",
    "route_canary": "RouteCanary",
}


def operation(handler_name: str) -> str:
    try:
        return OPERATIONS[handler_name]
    except KeyError:
        raise LookupError(f"the HTTP route handler {handler_name!r} has no operation in http/auth.py OPERATIONS, "
                          "so no scope") from None


def refusal(auth: Auth | None, operation: str, method: str, headers: Headers) -> Response | None:
    """None when the request may run `operation`; otherwise the 401 or 403 to answer. The body is left unread,
    so the connection is closed after a request that may carry one."""
    if auth is None:
        return None
    refused = auth.refusal(operation, headers.get("authorization"))
    if refused is None:
        return None
    kind, message = refused
    if kind is Refusal.UNAUTHENTICATED:
        status, challenge = 401, "Bearer" if "authorization" not in headers else 'Bearer error="invalid_token"'
    else:
        status, challenge = 403, f'Bearer error="insufficient_scope", scope="{auth.required(operation)}"'
    extra = {"www-authenticate": challenge}
    if method not in ("GET", "HEAD"):
        extra["connection"] = "close"
    return error_response(status, message, extra)
