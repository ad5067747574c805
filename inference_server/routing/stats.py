"""Per-variant counts and latencies of routed requests (changed on the loop, read by the scrape thread through
copies): what A/B comparisons and the canary's windows are judged from."""

from __future__ import annotations

from collections import Counter

from inference_server.observability.stats import DURATION_BUCKETS_S, Histogram


class RouteStats:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (route, variant, outcome code)
        self.duration_s: dict[tuple[str, str], Histogram] = {}  # (route, variant): answered requests
        self.fallbacks: Counter[tuple[str, str, str]] = Counter()  # (route, variant, why): fallback answers

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
