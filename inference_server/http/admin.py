"""Route administration on the HTTP front end: the JSON of the route views and of the requests that change them.

GET /v2/routes answers {"routes": [ROUTE, ...]}; GET /v2/routes/{route}, POST /v2/routes/{route}/weights and
POST /v2/routes/{route}/canary/{action} answer one ROUTE. The names are those of protos/route_admin.proto (the
gRPC RouteAdmin service): {"name", "routing_key", "variants": [{"name", "model", "version", "alias",
"configured_weight", "weight", "share_percent", "state", "breaker"}], "canary": null | {"candidate", "state",
"step", "steps_percent", "share_percent", "failed_windows", "last_decision", "last_reason", "decisions"},
"shadow", "shadow_queued", "fallback"}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

from inference_server.errors import ErrorCode, InferenceError
from inference_server.http.bodies import JSON, HttpError, error_response
from inference_server.service.views import CanaryView, RouteView, VariantView

WEIGHTS_BODY = '{"weights": {"VARIANT": NUMBER, ...}}'
# A command the canary's state forbids (or weights while a canary runs) is a conflict with the route's state
# here; elsewhere FAILED_PRECONDITION stays 400, as Triton answers a repository request in the wrong mode.
CONFLICT = 409


def variant_dict(v: VariantView) -> dict[str, Any]:
    return {"name": v.name, "model": v.model, "version": v.version, "alias": v.alias,
            "configured_weight": v.configured_weight, "weight": v.weight, "share_percent": v.share_percent,
            "state": v.state, "breaker": v.breaker}


def canary_dict(c: CanaryView) -> dict[str, Any]:
    return {"candidate": c.candidate, "state": c.state, "step": c.step, "steps_percent": list(c.steps_percent),
            "share_percent": c.share_percent, "failed_windows": c.failed_windows, "last_decision": c.last_decision,
            "last_reason": c.last_reason, "decisions": dict(c.decisions)}


def route_dict(r: RouteView) -> dict[str, Any]:
    return {"name": r.name, "routing_key": r.routing_key, "variants": [variant_dict(v) for v in r.variants],
            "canary": canary_dict(r.canary) if r.canary is not None else None, "shadow": r.shadow,
            "shadow_queued": r.shadow_queued, "fallback": r.fallback}


def routes_json(views: list[RouteView]) -> bytes:
    return orjson.dumps({"routes": [route_dict(v) for v in views]})


def route_json(view: RouteView) -> bytes:
    return orjson.dumps(route_dict(view))


def route_change(change: Callable[[], RouteView]) -> Response:
    """Apply an administrator's change and answer the route; FAILED_PRECONDITION answers 409 (see CONFLICT)."""
    try:
        view = change()
    except InferenceError as e:
        if e.code is not ErrorCode.FAILED_PRECONDITION:
            raise
        return error_response(CONFLICT, e.message)
    return Response(route_json(view), media_type=JSON)


def weights_request(body: bytes) -> dict[str, float]:
    """POST /v2/routes/{route}/weights: {"weights": {"stable": 80, "candidate": 20}}. Whether the variants exist
    and the weights are >= 0 is the service's to say."""
    if not body.strip():
        raise HttpError(400, f"the weights request needs a JSON body: {WEIGHTS_BODY}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "weights" not in doc:
        raise HttpError(400, f"the weights request is a JSON object {WEIGHTS_BODY}")
    extra = sorted(set(doc) - {"weights"})
    if extra:
        raise HttpError(400, f"unknown key(s) in the weights request: {', '.join(map(repr, extra))} (it is "
                             f"{WEIGHTS_BODY})")
    weights = doc["weights"]
    if not isinstance(weights, dict):
        raise HttpError(400, f'"weights" is an object of variant names to numbers, got {_shown(weights)}')
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise HttpError(400, f"the weight of variant '{name}' must be a number, got {_shown(weight)}")
    return weights


def _shown(value: Any, limit: int = 80) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else f"{text[:limit]}…"


def no_body(body: bytes) -> None:
    """POST /v2/routes/{route}/canary/{action} takes no body (an empty JSON object is accepted too)."""
    if not body.strip():
        return
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if doc != {}:
        raise HttpError(400, "a canary command takes no request body (the action is in the path: start, pause or "
                             "abort)")
