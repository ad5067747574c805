"""What an administrator (and the metrics) see of a route: built by the router, rendered by the front ends."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VariantView:
    name: str
    model: str
    version: str  # "" = the model's default version
    alias: str  # the MLflow alias it follows ("@challenger"), or ""
    configured_weight: float  # in the config file
    weight: float  # now (an administrator may have changed it)
    share_percent: float  # of the route's traffic, with the canary's share applied (before readiness)
    state: str  # READY or UNAVAILABLE (not loaded: its share goes to the others)
    breaker: str  # closed, open or half_open; "" without a fallback


@dataclass(frozen=True, slots=True)
class CanaryView:
    candidate: str
    state: str  # running, paused, promoted, rolled_back, aborted, off
    step: int
    steps_percent: tuple[float, ...]
    share_percent: float
    failed_windows: int
    last_decision: str
    last_reason: str
    decisions: dict[str, int] = field(default_factory=dict)  # how many of each for this route and candidate name
    # since the process started (RouteStats: a canary that a reload starts afresh counts on)


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    routing_key: str
    variants: tuple[VariantView, ...]
    canary: CanaryView | None
    shadow: str  # "" = none
    shadow_queued: int  # copies waiting for the shadow
    fallback: str  # "" = none
