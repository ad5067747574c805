"""The pod's one metrics endpoint with `--workers N`: the supervisor merges every worker's exposition at scrape time.

Counters, histograms and Triton's cumulative (untyped) counters are summed per label set, so a rate over the pod
counts every request, whichever worker served it. Gauges that add up across workers (queued requests, their
bounds, cache sizes) are summed too; the GPU gauges, which every worker reads from the same devices, take the
maximum; every other gauge (a model's state, a breaker's, drift, a canary's) is one series per worker with a
`worker` label, as each worker holds that state on its own.

A worker that does not answer a scrape (stuck, or its answer cut off) is counted in
inference_pod_workers{scrape="missing"}, and its last good answer stands in for it: dropping its series would make
the pod's counters go down and up again, which Prometheus reads as resets and turns into bursts in rate() (false
error ratios, a false scale-up). For the same reason a counter or histogram series a worker stops exporting (a
model version it unloaded, maybe before the other workers did; a canary a reload removed) keeps its last value in
that worker's part of the sum (`carry`). Each worker's own counters never go back (it keeps them per label set for
its life), and a worker that dies stops the pod (workers.py), so a pod counter never resets while the supervisor
serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from inference_server.config.listeners import Listener
from inference_server.observability.metrics import MetricServerThread, serve_registry
from inference_server.pod.peers import ask_blocking

log = logging.getLogger(__name__)

SUMMED_GAUGES = frozenset({
    "inference_pending_requests", "nv_inference_pending_request_count", "inference_max_queue_size",
    "inference_priority_pending_requests",
    "inference_cache_bytes", "inference_cache_entries", "inference_cache_near_bytes", "inference_cache_pending_writes",
    "inference_shadow_queue_depth"})
MAX_GAUGE_PREFIXES = ("nv_gpu_",)
ADDED_TYPES = frozenset({"counter", "histogram", "summary", "unknown", "gaugehistogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> list[Metric]:
    """A worker's exposition; ValueError when it is empty or not the exposition format (an answer cut off)."""
    families = list(text_string_to_metric_families(text))
    if not families:
        raise ValueError("an empty answer")
    return families


def carry(previous: Sequence[Metric], families: list[Metric]) -> list[Metric]:
    """A worker's new answer with the cumulative samples (counters, histograms, Triton's untyped counters) of its
    previous answer that this one lacks, at their last values: without them the pod's sum of a series another
    worker still exports would drop."""
    by_name = {f.name: f for f in families}
    for old in previous:
        if old.type not in ADDED_TYPES:
            continue
        family = by_name.get(old.name)
        if family is None:
            family = by_name[old.name] = Metric(old.name, old.documentation, old.type, old.unit)
            families.append(family)
        present = {(s.name, tuple(sorted(s.labels.items()))) for s in family.samples}
        family.samples.extend(s for s in old.samples if (s.name, tuple(sorted(s.labels.items()))) not in present)
    return families


def merge(workers: Sequence[tuple[str, Sequence[Metric]]]) -> list[Metric]:
    """Families from (worker index, its parsed families) pairs, merged as the module says."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for worker, parsed in workers:
        for family in parsed:
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
        for (sample_name, label_pairs), value in values[name].items():
            merged.add_sample(sample_name, dict(label_pairs), value)
    return list(families.values())


def _mode(family: Metric) -> str:
    if family.type in ADDED_TYPES or family.name in SUMMED_GAUGES:
        return "sum"
    if family.name.startswith(MAX_GAUGE_PREFIXES):
        return "max"
    return "worker"


class PodCollector:
    """Asks every worker's socket for its exposition at each scrape, all at once (the supervisor's metrics thread)."""

    def __init__(self, sockets: Sequence[Path]) -> None:
        self._sockets = list(sockets)
        self._last: dict[int, list[Metric]] = {}  # each worker's last good answer, with what it carried
        self._lock = threading.Lock()  # two scrapes at once: each carries from the answer the other kept
        self._pool = ThreadPoolExecutor(max(1, len(self._sockets)), thread_name_prefix="pod-scrape")

    def _ask(self, index: int) -> list[Metric] | None:
        path = self._sockets[index]
        try:
            families = parse(ask_blocking(path, b"metrics").decode())
        except (OSError, ValueError) as e:  # starting, stuck, or cut off (UnicodeDecodeError is a ValueError)
            log.warning("metrics: worker %d (%s) did not answer (%s); its last answer stands in", index, path.name,
                        e)
            return None
        with self._lock:
            self._last[index] = carry(self._last.get(index, ()), families)
        return families

    def collect(self) -> Iterator[Metric]:
        answers = list(self._pool.map(self._ask, range(len(self._sockets))))
        yield from merge([(str(i), self._last[i]) for i in range(len(self._sockets)) if i in self._last])
        workers = GaugeMetricFamily("inference_pod_workers", "Worker processes of this pod, by whether they "
                                    "answered this scrape (a missing one's last answer stands in)",
                                    labels=["scrape"])
        answered = sum(a is not None for a in answers)
        workers.add_metric(["answered"], answered)
        workers.add_metric(["missing"], len(self._sockets) - answered)
        yield workers


def pod_metrics_server(sockets: Sequence[Path], listener: Listener) -> MetricServerThread:
    registry = CollectorRegistry()
    registry.register(PodCollector(sockets))
    return serve_registry(registry, listener)
