"""ModelStats: the counters behind ModelStatistics and the Prometheus endpoint."""

from __future__ import annotations

from inference_server.errors import ErrorCode
from inference_server.observability.stats import Histogram, ModelStats


def test_histogram_bounds_are_inclusive_and_cumulative():
    h = Histogram([0.001, 0.01])
    for value in (0.0005, 0.001, 0.002, 0.5):
        h.observe(value)
    assert h.counts == [2, 1, 1] and h.count == 4 and abs(h.sum - 0.5035) < 1e-12
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]


def test_a_batch_counts_once_per_request_and_once_per_execution():
    s = ModelStats()
    s.record_batch(5, [0.001, 0.002, 0.003], 0.0001, 0.004, 0.0002)
    s.record_batch(1, [0.0], 0.0, 0.001, 0.0)
    assert (s.inference_count, s.execution_count) == (6, 2)
    assert (s.queue.count, s.queue.ns) == (4, 6_000_000)
    # Every request in a batch waited for the whole batch's compute.
    assert (s.compute_infer.count, s.compute_infer.ns) == (4, 3 * 4_000_000 + 1_000_000)
    assert {size: b.compute_infer.count for size, b in s.batches.items()} == {5: 1, 1: 1}
    assert s.batch_rows.cumulative()[:3] == [(1.0, 1), (2.0, 1), (4.0, 1)] and s.batch_rows.sum == 6
    assert s.last_inference_ms > 1_600_000_000_000  # a wall-clock timestamp in ms


def test_requests_are_counted_by_outcome_and_triton_reason():
    s = ModelStats(pending=lambda: 7)
    s.record_request(None, 0.002)
    s.record_request(ErrorCode.INVALID_ARGUMENT, 0.0001)
    s.record_request(ErrorCode.UNAVAILABLE, 0.0001)
    s.record_request(ErrorCode.CANCELLED, 0.5)
    assert (s.success.count, s.success.ns, s.fail.count) == (1, 2_000_000, 3)
    assert s.failures == {"OTHER": 1, "REJECTED": 1, "CANCELED": 1}
    assert {code: h.count for code, h in s.request_s.items()} == {"OK": 1, "INVALID_ARGUMENT": 1, "UNAVAILABLE": 1,
                                                                  "CANCELLED": 1}
    assert s.pending() == 7
    assert [c.failure_reason for c in (ErrorCode.DEADLINE_EXCEEDED, ErrorCode.INTERNAL)] == ["REJECTED", "BACKEND"]
