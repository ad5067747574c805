"""The pod's one metrics endpoint with `--workers N`: the supervisor merges every worker's exposition at scrape time.

Counters, histograms and Triton's cumulative (untyped) counters are summed per label set, so a rate over the pod
counts every request, whichever worker served it. Gauges that add up across workers (queued requests, their
bounds, cache sizes) are summed too; the GPU gauges, which every worker reads from the same devices, take the
maximum; every other gauge (a model's state, a breaker's, drift, a canary's) is one series per worker with a
`worker` label, as each worker holds that state on its own. inference_pod_workers says how many workers answered
the scrape: a missing worker's series are absent from it, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from .metrics import MetricServerThread, serve_registry
from .pod import ask_blocking

log = logging.getLogger(__name__)

SUMMED_GAUGES = frozenset({
    "inference_pending_requests", "nv_inference_pending_request_count", "inference_max_queue_size",
    "inference_cache_bytes", "inference_cache_entries", "inference_cache_near_bytes", "inference_cache_pending_writes",
    "inference_shadow_queue_depth"})
MAX_GAUGE_PREFIXES = ("nv_gpu_",)
ADDED_TYPES = frozenset({"counter", "histogram", "summary", "unknown", "gaugehistogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def merge(expositions: Sequence[tuple[str, str]]) -> list[Metric]:
    """Families from (worker index, exposition text) pairs, merged as the module says."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for worker, text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            samples = values[family.name]
            mode = _mode(family)
            for sample in family.samples:
                labels = dict(sample.labels)
                if mode == "worker":
                    labels["worker"] = worker
                key = (sample.name, tuple(labels.items()))
                if mode == "max":
                    samples[key] = max(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _mode(family: Metric) -> str:
    if family.type in ADDED_TYPES or family.name in SUMMED_GAUGES:
        return "sum"
    if family.name.startswith(MAX_GAUGE_PREFIXES):
        return "max"
    return "worker"


class PodCollector:
    """Asks each worker's socket for its exposition at every scrape (the metrics thread of the supervisor)."""

    def __init__(self, sockets: Sequence[Path]) -> None:
        self._sockets = list(sockets)

    def collect(self) -> Iterator[Metric]:
        expositions = []
        for index, path in enumerate(self._sockets):
            try:
                expositions.append((str(index), ask_blocking(path, b"metrics").decode()))
            except OSError as e:  # starting, stopping, or stuck: its series are left out of this scrape
                log.warning("metrics: worker %d (%s) did not answer: %s", index, path.name, e)
        yield from merge(expositions)
        workers = GaugeMetricFamily("inference_pod_workers", "Worker processes of this pod, by whether they "
                                    "answered this scrape", labels=["scrape"])
        workers.add_metric(["answered"], len(expositions))
        workers.add_metric(["missing"], len(self._sockets) - len(expositions))
        yield workers


def pod_metrics_server(sockets: Sequence[Path], host: str, port: int) -> MetricServerThread:
    registry = CollectorRegistry()
    registry.register(PodCollector(sockets))
    return serve_registry(registry, host, port)
