"""Prometheus families for routes, read at scrape time (from the metrics thread, through copies and views):
per-variant requests and latency, shares and readiness, breakers and fallbacks, the canary's state, share and
decisions, and the shadows' outcomes, durations and differences from the primary."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from inference_server.breaker import STATES as BREAKER_STATES
from inference_server.observability.metrics import buckets
from inference_server.routing.canary import DECISIONS, STATES
from inference_server.routing.shadow import ShadowStats
from inference_server.routing.stats import RouteStats
from inference_server.routing.views import RouteView


class RouteCollector:
    def __init__(self, views: Callable[[], list[RouteView]], stats: RouteStats, shadows: ShadowStats) -> None:
        self._views = views
        self._stats = stats
        self._shadows = shadows

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._state(self._views())
        yield from self._shadow()

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("inference_route_requests", "Requests a route sent to a variant, by outcome "
                                       "code (a fallback answer counts as the variant's failure)",
                                       labels=["route", "variant", "code"])
        for (route, variant, code), n in sorted(dict(self._stats.requests).items()):
            requests.add_metric([route, variant, code], n)
        duration = HistogramMetricFamily("inference_route_request_duration_seconds", "End-to-end duration of the "
                                         "requests a route sent to a variant", labels=["route", "variant"])
        for (route, variant), h in sorted(dict(self._stats.duration_s).items()):
            duration.add_metric([route, variant], buckets(h), h.sum)
        fallbacks = CounterMetricFamily("inference_route_fallbacks", "Answers from a route's fallback, by the "
                                        "variant that failed and why", labels=["route", "variant", "reason"])
        for (route, variant, reason), n in sorted(dict(self._stats.fallbacks).items()):
            fallbacks.add_metric([route, variant, reason], n)
        yield from (requests, duration, fallbacks)

    @staticmethod
    def _state(views: list[RouteView]) -> Iterator[Metric]:
        share = GaugeMetricFamily("inference_route_variant_share_percent", "A variant's share of its route's "
                                  "traffic (the canary's step applied; a variant not ready passes its share on)",
                                  labels=["route", "variant"])
        ready = GaugeMetricFamily("inference_route_variant_ready", "1 when the variant's model version is loaded "
                                  "and ready, else 0 (UNAVAILABLE: it gets no traffic)", labels=["route", "variant"])
        breaker = GaugeMetricFamily("inference_route_breaker_state", "A variant's circuit breaker: 1 for its "
                                    "current state", labels=["route", "variant", "state"])
        canary_state = GaugeMetricFamily("inference_canary_state", "A route's canary: 1 for its current state",
                                         labels=["route", "candidate", "state"])
        canary_share = GaugeMetricFamily("inference_canary_share_percent", "The canary candidate's share of its "
                                         "route's traffic", labels=["route", "candidate"])
        last = GaugeMetricFamily("inference_canary_last_decision", "A route's canary: 1 for its last decision",
                                 labels=["route", "candidate", "decision"])
        decisions = CounterMetricFamily("inference_canary_decisions", "Canary decisions (window verdicts and "
                                        "administrators' commands)", labels=["route", "candidate", "decision"])
        for route in views:
            for v in route.variants:
                share.add_metric([route.name, v.name], v.share_percent)
                ready.add_metric([route.name, v.name], 1.0 if v.state == "READY" else 0.0)
                if v.breaker:
                    for state in BREAKER_STATES:
                        breaker.add_metric([route.name, v.name, state], 1.0 if v.breaker == state else 0.0)
            c = route.canary
            if c is None:
                continue
            for state in STATES:
                canary_state.add_metric([route.name, c.candidate, state], 1.0 if c.state == state else 0.0)
            canary_share.add_metric([route.name, c.candidate], c.share_percent)
            for decision in DECISIONS:
                last.add_metric([route.name, c.candidate, decision], 1.0 if c.last_decision == decision else 0.0)
                decisions.add_metric([route.name, c.candidate, decision], c.decisions.get(decision, 0))
        queued = GaugeMetricFamily("inference_shadow_queue_depth", "Copies waiting for a route's shadow",
                                   labels=["route"])
        for route in views:
            if route.shadow:
                queued.add_metric([route.name], route.shadow_queued)
        yield from (share, ready, breaker, canary_state, canary_share, last, decisions, queued)

    def _shadow(self) -> Iterator[Metric]:
        s = self._shadows
        requests = CounterMetricFamily("inference_shadow_requests", "Copies of routed requests sent to a shadow, by "
                                       "outcome (dropped: its queue was full)", labels=["route", "outcome"])
        for (route, outcome), n in sorted(dict(s.requests).items()):
            requests.add_metric([route, outcome], n)
        duration = HistogramMetricFamily("inference_shadow_request_duration_seconds", "Time the shadow took to "
                                         "answer a copy", labels=["route"])
        for route, h in sorted(dict(s.duration_s).items()):
            duration.add_metric([route], buckets(h), h.sum)
        difference = HistogramMetricFamily("inference_shadow_output_difference", "Largest absolute difference of "
                                           "a shadow output from the primary's answer (text: the share of elements "
                                           "that differ; +Inf: another shape)", labels=["route", "output"])
        for (route, output), h in sorted(dict(s.difference).items()):
            difference.add_metric([route, output], buckets(h), h.sum)
        yield from (requests, duration, difference)
