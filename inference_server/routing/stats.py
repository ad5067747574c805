"""Per-variant counts and latencies of routed requests, and the canaries' decisions (changed on the loop, read by
the scrape thread through copies): what A/B comparisons and the canary's windows are judged from.

The App owns one for the life of the process and the router writes to it, so every count is keyed by its labels
and outlives the route states a reload or an administrator replaces: a route, variant or canary that comes back
under the same names continues its counts (an exported counter never goes back; Prometheus would read a reset)."""

from __future__ import annotations

from collections import Counter

from inference_server.observability.stats import DURATION_BUCKETS_S, Histogram


class RouteStats:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (route, variant, outcome code)
        self.duration_s: dict[tuple[str, str], Histogram] = {}  # (route, variant): answered requests
        self.fallbacks: Counter[tuple[str, str, str]] = Counter()  # (route, variant, why): fallback answers
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (route, candidate, decision): canary decisions

    def record(self, route: str, variant: str, code: str, duration_s: float | None) -> None:
        """One routed request's outcome; `duration_s` None: refused without a call (an open breaker)."""
        self.requests[(route, variant, code)] += 1
        if duration_s is None:
            return
        key = (route, variant)
        histogram = self.duration_s.get(key)
        if histogram is None:
            histogram = self.duration_s[key] = Histogram(DURATION_BUCKETS_S)
        histogram.observe(duration_s)

    def fallback(self, route: str, variant: str, why: str) -> None:
        self.fallbacks[(route, variant, why)] += 1

    def decided(self, route: str, candidate: str, decision: str) -> None:
        """A canary's decision (a window's verdict or an administrator's command)."""
        self.decisions[(route, candidate, decision)] += 1

    def canary_decisions(self, route: str, candidate: str) -> dict[str, int]:
        """How many of each decision the route's canary of this candidate has made since the process started."""
        return {d: n for (r, c, d), n in dict(self.decisions).items() if (r, c) == (route, candidate)}
