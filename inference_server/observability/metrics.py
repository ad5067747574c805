"""Prometheus: every model's statistics exported at scrape time, on our own registry and HTTP endpoint.

Two families of names:
- ours, Prometheus style (seconds, histograms, `_total` counters, labels model/version[/code]):
  inference_request_duration_seconds, inference_queue_wait_seconds, inference_compute_{input,infer,output}
  _seconds, inference_batch_rows, inference_pending_requests, inference_max_queue_size (its bound),
  inference_priority_pending_requests{priority_level} (a model with priority levels: each level's queue),
  inference_requests_total, inference_request_failures_total{reason}, inference_cache_* (lookups per model;
  the cache tier's own size, errors, writes and circuit state);
- Triton's (its user guide, metrics.md), so its Grafana dashboards and HPA rules keep working: nv_inference_request_
  {success,failure}, nv_inference_count, nv_inference_exec_count, nv_inference_pending_request_count and the
  cumulative nv_inference_*_duration_us. They keep Triton's exact names, exposed untyped (prometheus_client
  would append `_total` to a counter).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inference_server.breaker import STATES
from inference_server.config.listeners import Listener, cannot_listen
from inference_server.errors import FAILURE_REASONS
from inference_server.cache.memory import MemoryCache, ResponseCache
from inference_server.lifecycle.events import LifecycleStats
from inference_server.lifecycle.version import State
from inference_server.observability.drift import DriftMonitor
from inference_server.observability.gpu import GpuCollector, open_nvml
from inference_server.observability.predictions import PredictionLog
from inference_server.observability.stats import Histogram, ModelStats

log = logging.getLogger(__name__)

LABELS = ["model", "version"]
Source = Callable[[], Sequence[Any]]  # every version that serves or drains (name, version, stats attributes)


class Lifecycle(Protocol):
    """What the lifecycle metrics read (the ModelManager)."""
    events: LifecycleStats
    registry: Any  # index_snapshot() -> IndexEntry rows
    budget: Any  # max_models, max_bytes (0: none)

    def loaded(self) -> tuple[int, int]: ...  # models loaded and the bytes they count against the budget
HISTOGRAMS = [  # (name, help, attribute of ModelStats)
    ("inference_queue_wait_seconds", "Time requests waited in the batch queue", "queue_s"),
    ("inference_compute_input_seconds", "Time to assemble a batch's inputs", "compute_input_s"),
    ("inference_compute_infer_seconds", "Time the model took to run a batch", "compute_infer_s"),
    ("inference_compute_output_seconds", "Time to split a batch's outputs and answer its requests",
     "compute_output_s"),
    ("inference_batch_rows", "Rows in each executed batch", "batch_rows"),
]
TRITON_DURATIONS_US = [  # (name, help, attribute holding a Duration)
    ("nv_inference_request_duration_us", "Cumulative end-to-end request duration in microseconds", None),
    ("nv_inference_queue_duration_us", "Cumulative time requests waited in the queue in microseconds", "queue"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     "compute_input"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_infer"),
    ("nv_inference_compute_output_duration_us", "Cumulative compute output duration in microseconds",
     "compute_output"),
]


def buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """A Histogram as Prometheus cumulative buckets (also the routes' families, routing/metrics.py)."""
    return [(floatToGoString(le), float(n)) for le, n in histogram.cumulative()]


class StatsCollector:
    """A prometheus_client collector that reads ModelStats when scraped (nothing is kept twice)."""

    def __init__(self, source: Source, drift: DriftMonitor | None = None,
                 predictions: PredictionLog | None = None, cache: ResponseCache | None = None,
                 lifecycle: Lifecycle | None = None) -> None:
        self._source = source
        self._lifecycle = lifecycle
        self._drift = drift
        self._predictions = predictions
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        models = [(m.name, m.version, m.stats) for m in self._source()]
        request = HistogramMetricFamily("inference_request_duration_seconds",
                                        "End-to-end request duration, by outcome code", labels=[*LABELS, "code"])
        requests = CounterMetricFamily("inference_requests", "Requests answered, by outcome code",
                                       labels=[*LABELS, "code"])
        failures = CounterMetricFamily("inference_request_failures", "Failed requests, by Triton's reason",
                                       labels=[*LABELS, "reason"])
        pending = GaugeMetricFamily("inference_pending_requests", "Requests waiting in the batch queue",
                                    labels=LABELS)
        bound = GaugeMetricFamily("inference_max_queue_size", "Queued requests past which new ones are refused "
                                  "(max_queue_size); 0 = unbounded", labels=LABELS)
        by_level = GaugeMetricFamily("inference_priority_pending_requests", "Requests waiting in the batch queue "
                                     "of each priority level (models with priority levels)",
                                     labels=[*LABELS, "priority_level"])
        histograms = [HistogramMetricFamily(name, text, labels=LABELS) for name, text, _ in HISTOGRAMS]
        cache = CounterMetricFamily("inference_cache_requests", "Response cache lookups, by result",
                                    labels=[*LABELS, "result"])
        lookup = HistogramMetricFamily("inference_cache_lookup_seconds", "Response cache lookup (and insert) time",
                                       labels=LABELS)
        for name, version, s in models:
            # Copies (one C-level step each): the event loop may add a code or reason while this thread reads.
            for code, h in sorted(dict(s.request_s).items()):
                request.add_metric([name, version, code], buckets(h), h.sum)
                requests.add_metric([name, version, code], h.count)
            for reason, n in sorted(dict(s.failures).items()):
                failures.add_metric([name, version, reason], n)
            pending.add_metric([name, version], s.pending())
            bound.add_metric([name, version], s.max_queue_size)
            if s.pending_levels is not None:
                for level, queued in s.pending_levels():
                    by_level.add_metric([name, version, str(level)], queued)
            for family, (_, _, attribute) in zip(histograms, HISTOGRAMS, strict=True):
                h = getattr(s, attribute)
                family.add_metric([name, version], buckets(h), h.sum)
            if s.cache_hit.count or s.cache_miss.count:
                cache.add_metric([name, version, "hit"], s.cache_hit.count)
                cache.add_metric([name, version, "miss"], s.cache_miss.count)
                lookup.add_metric([name, version], buckets(s.cache_lookup_s), s.cache_lookup_s.sum)
        yield from (request, requests, failures, pending, bound, by_level, *histograms, cache, lookup)
        yield from self._triton(models)
        yield from self._lifecycle_metrics()
        yield from self._monitoring()
        yield from self._cache_tier()

    def _cache_tier(self) -> Iterator[Metric]:
        """The cache itself (hits and misses are per model above). Reads single keys: no iteration over
        what the event loop may be changing."""
        cache = self._cache
        if isinstance(cache, MemoryCache):
            yield GaugeMetricFamily("inference_cache_bytes", "Bytes held by the in-process cache", value=cache.bytes)
            yield GaugeMetricFamily("inference_cache_entries", "Entries in the in-process cache", value=len(cache))
            yield CounterMetricFamily("inference_cache_evictions", "Entries evicted to stay within the size bound",
                                      value=cache.evictions)
        elif cache is not None:
            from inference_server.cache.redis_tier import RedisCache  # the only other tier; imported only when in use

            if not isinstance(cache, RedisCache):
                return
            errors = CounterMetricFamily("inference_cache_errors", "Redis cache failures (each answered as a miss "
                                         "or a dropped write), by operation", labels=["operation"])
            for operation in ("get", "put", "decode"):
                errors.add_metric([operation], cache.errors[operation])
            state = GaugeMetricFamily("inference_cache_circuit_state", "The Redis cache's circuit breaker: 1 for "
                                      "its current state", labels=["state"])
            current = cache.breaker.state
            for name in STATES:
                state.add_metric([name], float(name == current))
            writes = CounterMetricFamily("inference_cache_writes", "Redis cache writes, by result",
                                         labels=["result"])
            for result in ("written", "failed", "dropped"):
                writes.add_metric([result], cache.writes[result])
            yield from (errors, state, writes)
            yield CounterMetricFamily("inference_cache_circuit_opened", "Times the circuit opened",
                                      value=cache.breaker.opened)
            yield CounterMetricFamily("inference_cache_lookups_skipped", "Lookups not sent (circuit open)",
                                      value=cache.skipped)
            yield GaugeMetricFamily("inference_cache_pending_writes", "Redis cache writes queued or being sent",
                                    value=cache.pending_writes)
            if cache.near is not None:
                yield CounterMetricFamily("inference_cache_near_hits", "Hits answered by the near cache in front "
                                          "of Redis (no round trip)", value=cache.near_hits)
                yield GaugeMetricFamily("inference_cache_near_bytes", "Bytes held by the near cache",
                                        value=cache.near.bytes)

    def _lifecycle_metrics(self) -> Iterator[Metric]:
        """Model states and load/unload/poll events. Reads the registry's immutable index and copies of
        the event counters (the loop may be adding to them)."""
        if self._lifecycle is None:
            return
        state = GaugeMetricFamily("inference_model_state", "A model version's state (RepositoryIndex): 1 for its "
                                  "current state; version \"\" is a model with no version loaded",
                                  labels=[*LABELS, "state"])
        for entry in self._lifecycle.registry.index_snapshot():
            for member in State:
                state.add_metric([entry.name, entry.version, member.value], float(entry.state == member.value))
        events = self._lifecycle.events
        loads = CounterMetricFamily("inference_model_loads", "Model version loads (sessions and warmup), by result",
                                    labels=["model", "result"])
        for (model, result), n in sorted(dict(events.loads).items()):
            loads.add_metric([model, result], n)
        unloads = CounterMetricFamily("inference_model_unloads", "Model versions drained and closed",
                                      labels=["model"])
        for model, n in sorted(dict(events.unloads).items()):
            unloads.add_metric([model], n)
        polls = CounterMetricFamily("inference_model_source_polls", "Reads of a model's MLflow alias or stage, "
                                    "by result (failure: the registry did not answer)", labels=["model", "result"])
        for (model, result), n in sorted(dict(events.polls).items()):
            polls.add_metric([model, result], n)
        durations = []
        for name, text, table in (
                ("inference_model_load_duration_seconds", "Time to load and warm up a model version", events.load_s),
                ("inference_model_unload_duration_seconds", "Time from a version leaving service to its sessions "
                 "closing (its requests drained)", events.unload_s)):
            family = HistogramMetricFamily(name, text, labels=["model"])
            for model, h in sorted(dict(table).items()):
                family.add_metric([model], buckets(h), h.sum)
            durations.append(family)
        yield from (state, loads, unloads, polls, *durations)
        yield from self._budget_metrics(events)

    def _budget_metrics(self, events: LifecycleStats) -> Iterator[Metric]:
        """Many models: evictions, loads on demand, and what is loaded against the budget."""
        assert self._lifecycle is not None
        evictions = CounterMetricFamily("inference_model_evictions", "Models unloaded to keep within the model "
                                        "budget (least recently used idle ones)", labels=["model"])
        for model, n in sorted(dict(events.evictions).items()):
            evictions.add_metric([model], n)
        h = events.on_demand_s
        on_demand = HistogramMetricFamily("inference_model_on_demand_load_seconds", "Time a request's model took to "
                                          "load on demand (room made under the budget, sessions, warmup)")
        on_demand.add_metric([], buckets(h), h.sum)
        failed = CounterMetricFamily("inference_model_on_demand_load_failures", "On-demand loads that failed (the "
                                     "model is then left alone for a back-off)", value=events.on_demand_failures)
        models, size = self._lifecycle.loaded()
        budget = self._lifecycle.budget
        yield from (evictions, on_demand, failed,
                    GaugeMetricFamily("inference_loaded_models", "Models loaded (ensembles aside)", value=models),
                    GaugeMetricFamily("inference_loaded_model_bytes", "Bytes the loaded models count against the "
                                      "budget (model_size_bytes, else measured at load)", value=size),
                    GaugeMetricFamily("inference_max_loaded_models", "[server] max_loaded_models (0: no limit)",
                                      value=budget.max_models),
                    GaugeMetricFamily("inference_model_memory_budget_bytes", "[server] model_memory_budget_mb in "
                                      "bytes (0: no limit)", value=budget.max_bytes))

    def _monitoring(self) -> Iterator[Metric]:
        if self._drift is not None:
            drift = GaugeMetricFamily("inference_prediction_drift_psi", "Population stability index of an output's "
                                      "recent predictions against its reference", labels=[*LABELS, "output"])
            for model, version, output, score in self._drift.scores():
                drift.add_metric([model, version, output], score)
            yield drift
            yield CounterMetricFamily("inference_drift_observations_dropped", "Predictions not monitored "
                                      "(monitoring queue full)", value=self._drift.dropped)
        if self._predictions is not None:
            records = CounterMetricFamily("inference_prediction_log_records", "Prediction log records, by result",
                                          labels=["result"])
            records.add_metric(["written"], self._predictions.written)
            records.add_metric(["dropped"], self._predictions.dropped)
            yield records

    @staticmethod
    def _triton(models: list[tuple[str, str, ModelStats]]) -> Iterator[Metric]:
        def family(name: str, text: str, labels: list[str] = LABELS) -> UnknownMetricFamily:
            return UnknownMetricFamily(name, text, labels=labels)

        success = family("nv_inference_request_success", "Number of successful inference requests")
        failure = family("nv_inference_request_failure", "Number of failed inference requests, by reason",
                         [*LABELS, "reason"])
        rows = family("nv_inference_count", "Number of inferences performed (rows; a batch of n counts n)")
        executions = family("nv_inference_exec_count", "Number of model executions (batches)")
        pending = GaugeMetricFamily("nv_inference_pending_request_count", "Requests waiting in the queue",
                                    labels=LABELS)
        durations = [family(name, text) for name, text, _ in TRITON_DURATIONS_US]
        cache = [family("nv_cache_num_hits_per_model", "Number of cache hits per model"),
                 family("nv_cache_num_misses_per_model", "Number of cache misses per model"),
                 family("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds"),
                 family("nv_cache_miss_duration_per_model", "Total cache miss duration per model, in microseconds")]
        for name, version, s in models:
            labels = [name, version]
            success.add_metric(labels, s.success.count)
            for reason in FAILURE_REASONS:
                failure.add_metric([*labels, reason], s.failures.get(reason, 0))
            rows.add_metric(labels, s.inference_count)
            executions.add_metric(labels, s.execution_count)
            pending.add_metric(labels, s.pending())
            for metric, (_, _, attribute) in zip(durations, TRITON_DURATIONS_US, strict=True):
                ns = s.success.ns + s.fail.ns if attribute is None else getattr(s, attribute).ns
                metric.add_metric(labels, ns // 1000)
            if s.cache_hit.count or s.cache_miss.count:
                for metric, value in zip(cache, (s.cache_hit.count, s.cache_miss.count, s.cache_hit.ns // 1000,
                                                 s.cache_miss.ns // 1000), strict=True):
                    metric.add_metric(labels, value)
        yield from (success, failure, rows, executions, pending, *durations, *cache)


def only_metrics(app: Callable[..., Any]) -> Callable[..., Any]:
    """The exposition at /metrics and nothing else: a probe or a client pointed at the wrong port gets a 404,
    never a 200 with metrics text."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are served at /metrics\n"]

    return wsgi


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Scrapes are not logged."""


def _metrics_server(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return make_server(host, port, app, Server, handler_class=_QuietHandler)


class RejectionCollector:
    """Requests the service refused at once, by reason (draining, max_in_flight, queue_full): a copy of its
    Counter at each scrape."""

    def __init__(self, rejected: Mapping[str, int]) -> None:
        self._rejected = rejected

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("inference_rejected_requests", "Requests refused at once, by reason",
                                     labels=["reason"])
        for reason, n in sorted(dict(self._rejected).items()):
            family.add_metric([reason], n)
        yield family


def build_registry(source: Source, *, drift: DriftMonitor | None = None, predictions: PredictionLog | None = None,
                   cache: ResponseCache | None = None, lifecycle: Lifecycle | None = None,
                   collectors: Sequence[Collector] = ()) -> CollectorRegistry:
    """Every family this process exports: its models' statistics, its monitors and cache, the given collectors
    (routes, rejections) and, on a GPU node, the GPUs."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(source, drift, predictions, cache, lifecycle))
    for collector in collectors:
        registry.register(collector)
    nvml = open_nvml()
    if nvml is not None:
        registry.register(GpuCollector(nvml))
    return registry


class MetricServerThread:
    """A /metrics endpoint on its own thread (prometheus_client's threading WSGI server); stop() closes it."""

    def __init__(self, listener: Listener, app: Callable[..., Any]) -> None:
        host = listener.host
        try:
            self._server = _metrics_server(host, listener.port, app)
        except OSError as e:  # named as the check before any bind names it (config/listeners.py)
            raise cannot_listen(listener, e) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_registry(registry: CollectorRegistry, listener: Listener) -> MetricServerThread:
    return MetricServerThread(listener, only_metrics(make_wsgi_app(registry)))
