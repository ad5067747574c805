"""Counts and durations of lifecycle events, for the metrics endpoint (changed on the loop, read by the
scrape thread through copies)."""

from __future__ import annotations

from collections import Counter

from inference_server.observability.stats import Histogram

LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class LifecycleStats:
    def __init__(self) -> None:
        self.loads: Counter[tuple[str, str]] = Counter()  # (model, "success" | "failure")
        self.load_s: dict[str, Histogram] = {}  # by model: time to load and warm up one version
        self.unloads: Counter[str] = Counter()  # versions closed, by model
        self.unload_s: dict[str, Histogram] = {}  # by model: time from leaving the serving set to closed
        self.polls: Counter[tuple[str, str]] = Counter()  # registry source polls: (model, "success" | "failure")
        self.evictions: Counter[str] = Counter()  # models unloaded to keep within the budget, by model
        self.on_demand_s = Histogram(LOAD_BUCKETS_S)  # a request's model loaded on demand: the load's duration
        self.on_demand_failures = 0  # on-demand loads that failed (each then backs off)

    def record_load(self, model: str, ok: bool, duration_s: float) -> None:
        self.loads[(model, "success" if ok else "failure")] += 1
        self._histogram(self.load_s, model).observe(duration_s)

    def record_unload(self, model: str, duration_s: float) -> None:
        self.unloads[model] += 1
        self._histogram(self.unload_s, model).observe(duration_s)

    def record_eviction(self, model: str) -> None:
        self.evictions[model] += 1

    def record_on_demand(self, ok: bool, duration_s: float) -> None:
        if ok:
            self.on_demand_s.observe(duration_s)
        else:
            self.on_demand_failures += 1

    def record_poll(self, model: str, ok: bool) -> None:
        self.polls[(model, "success" if ok else "failure")] += 1

    @staticmethod
    def _histogram(table: dict[str, Histogram], model: str) -> Histogram:
        histogram = table.get(model)
        if histogram is None:
            histogram = table[model] = Histogram(LOAD_BUCKETS_S)
        return histogram
