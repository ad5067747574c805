"""Router: which variant of a route serves a request. Decides only (no I/O); the service resolves and leases
the chosen version.

A variant whose version is not ready gets no traffic: its weight goes to the others, by the same sticky
split over the variants that are ready (the keys of the missing variant move; no other key does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..config import RouteConfig, VariantConfig
from .split import Split


class Router:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = {r.name: r for r in routes}
        self._splits: dict[tuple[str, tuple[str, ...]], Split] = {}  # by route and its ready variants

    def route(self, model: str) -> RouteConfig | None:
        return self._routes.get(model)

    def choose(self, route: RouteConfig, parameters: dict[str, Any], routing_key: str | None, request_id: str,
               ready: Callable[[str, str], bool]) -> VariantConfig | None:
        """The variant for a request, or None when no variant with weight is ready. The key: the request
        parameter the route names, else the routing-key header or metadata, else the request id; with none
        of them, a random split."""
        live = tuple(v for v in route.variants if v.weight > 0 and ready(v.model, v.version))
        if not live:
            return None
        key = (route.name, tuple(v.name for v in live))
        split = self._splits.get(key)
        if split is None:
            split = self._splits[key] = Split.of([(v, v.weight) for v in live])
        value = parameters.get(route.routing_key)
        sticky = str(value) if value not in (None, "") else routing_key or request_id or None
        return split.choose(sticky)  # type: ignore[return-value]
