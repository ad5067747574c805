"""Per model version statistics: one set of counters that feeds both ModelStatistics and Prometheus.

Recorded where the work happens (the batcher times queue wait and compute; the service times the whole
request), as plain integer additions and one bisect per histogram, so the hot path pays about a
microsecond per observation and the two views can never disagree. Durations come from perf_counter
(monotonic) and are kept in nanoseconds, as Triton's statistics are.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inference_server.errors import ErrorCode

NS_PER_S = 1_000_000_000
# Seconds; fine below a millisecond, where a cheap model's whole request lives.
DURATION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                      0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)



class Histogram:
    """Counts per upper bound (not cumulative) plus an overflow slot, and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """Prometheus buckets: (upper bound, observations <= it), ending with infinity."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((float(bound), running))
        return out


@dataclass(slots=True)
class Duration:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count


@dataclass(slots=True)
class BatchStats:
    """Executions of one batch size (Triton's InferBatchStatistics)."""
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStats:
    """Everything measured for one model version (name and number) since the process started: the manager keeps
    one per version across its loads, so a reload continues the counts (the batcher of the load that serves sets
    the queue gauges)."""

    def __init__(self, pending: Callable[[], int] = lambda: 0) -> None:
        self.pending = pending  # queued requests, read at collection time
        self.max_queue_size = 0  # the queue's bound (the batcher sets it); 0 = unbounded
        # With priority levels: (level, queued requests) of each level, read at collection time (the batcher sets it)
        self.pending_levels: Callable[[], list[tuple[int, int]]] | None = None
        # ModelStatistics (counts are requests; compute durations are the batch's, per request in it)
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0  # rows
        self.execution_count = 0  # batches
        self.last_inference_ms = 0  # wall clock, as Triton reports it
        self.cache_hit = Duration()  # lookup time of hits
        self.cache_miss = Duration()  # lookup and insert time of misses
        self.cache_lookup_s = Histogram(DURATION_BUCKETS_S)
        self.batches: dict[int, BatchStats] = {}
        self.failures: Counter[str] = Counter()  # by Triton's reason (ErrorCode.failure_reason)
        # Histograms, in seconds (rows for batch sizes)
        self.request_s: dict[str, Histogram] = {}  # by outcome code
        self.queue_s = Histogram(DURATION_BUCKETS_S)
        self.compute_input_s = Histogram(DURATION_BUCKETS_S)
        self.compute_infer_s = Histogram(DURATION_BUCKETS_S)
        self.compute_output_s = Histogram(DURATION_BUCKETS_S)
        self.batch_rows = Histogram(ROWS_BUCKETS)

    def record_batch(self, rows: int, queue_s: list[float], input_s: float, infer_s: float,
                     output_s: float) -> None:
        """One executed batch of len(queue_s) requests, each with its own queue wait."""
        requests = len(queue_s)
        input_ns, infer_ns, output_ns = (int(s * NS_PER_S) for s in (input_s, infer_s, output_s))
        for wait_s in queue_s:
            self.queue.add(int(wait_s * NS_PER_S))
            self.queue_s.observe(wait_s)
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        self.compute_input_s.observe(input_s)
        self.compute_infer_s.observe(infer_s)
        self.compute_output_s.observe(output_s)
        self.batch_rows.observe(rows)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000  # a timestamp, not a duration
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def record_execution(self, rows: int, duration_s: float) -> None:
        """An ensemble's run of its steps: no batch and no queue of its own (its composing models count theirs), so
        it counts as one execution that waited 0 and computed (infer) for the whole run (perf_analyzer finds the
        version that served from the queue count's growth)."""
        ns = int(duration_s * NS_PER_S)
        self.queue.add(0)
        self.queue_s.observe(0.0)
        self.compute_input.add(0)  # perf_analyzer wants the three compute counts equal
        self.compute_infer.add(ns)
        self.compute_output.add(0)
        self.compute_infer_s.observe(duration_s)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_cache(self, hit: bool, duration_s: float | None) -> None:
        """A cache lookup (and, for a miss, its insert). A hit also counts in `queue` with no wait, as
        Triton counts it, and never in compute, inference_count or execution_count. duration_s None: a hit
        that shared another request's lookup (counted, with no lookup time of its own)."""
        ns = 0 if duration_s is None else int(duration_s * NS_PER_S)
        (self.cache_hit if hit else self.cache_miss).add(ns)
        if duration_s is not None:
            self.cache_lookup_s.observe(duration_s)
        if hit:
            self.queue.add(0)
            self.queue_s.observe(0.0)

    def record_request(self, code: ErrorCode | None, duration_s: float) -> None:
        """One request's end: code None means success."""
        ns = int(duration_s * NS_PER_S)
        if code is None:
            self.success.add(ns)
            label = "OK"
        else:
            self.fail.add(ns)
            self.failures[code.failure_reason] += 1
            label = code.name
        histogram = self.request_s.get(label)
        if histogram is None:
            histogram = self.request_s[label] = Histogram(DURATION_BUCKETS_S)
        histogram.observe(duration_s)

