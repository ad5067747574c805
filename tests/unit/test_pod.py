"""--workers N as one pod: ModelStatistics figures added across workers, and the pod's metrics merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inference_server.errors import ErrorCode
from inference_server.observability.stats import ModelStats
from inference_server.pod.metrics import carry, merge, parse
from inference_server.pod.peers import WorkerSlot
from inference_server.service.views import StatisticsSnapshot, StatisticsView, own_figures, snapshot, with_peers


def worker_stats(requests: int, batch_rows: int, *more_batch_rows: int) -> StatisticsSnapshot:
    stats = ModelStats()
    for _ in range(requests):
        stats.record_request(None, 0.002)
    stats.record_request(ErrorCode.INVALID_ARGUMENT, 0.001)
    stats.record_batch(batch_rows, [0.001] * requests, 0.0001, 0.0005, 0.0001)
    stats.record_cache(True, 0.0002)
    for rows in more_batch_rows:
        stats.record_batch(rows, [0.001], 0.0001, 0.0005, 0.0001)
    return snapshot(stats)


def test_statistics_of_two_workers_add_up_field_by_field_through_json():
    a, b = worker_stats(3, 4), worker_stats(5, 4, 8)
    [view] = with_peers([StatisticsView("m", "1", a)], [json.loads(json.dumps(own_figures([StatisticsView(
        "m", "1", b)])))])
    s = view.stats
    assert (s.success.count, s.fail.count, s.success.ns) == (8, 2, a.success.ns + b.success.ns)
    assert (s.inference_count, s.execution_count) == (16, 3)
    assert s.queue.count == a.queue.count + b.queue.count and s.cache_hit.count == 2
    assert {rows: batch.compute_infer.count for rows, batch in s.batches} == {4: 2, 8: 1}
    assert s.last_inference_ms == max(a.last_inference_ms, b.last_inference_ms)
    assert a.success.count == 3  # the worker's own figures are not changed by answering


def test_a_version_only_a_peer_serves_is_not_added_and_others_pass_through():
    a = worker_stats(1, 1)
    peers = [[{"name": "other", "version": "1", "stats": worker_stats(9, 9).to_json()}]]
    [view] = with_peers([StatisticsView("m", "1", a)], peers)
    assert view.stats.success.count == 1


WORKER = """# HELP inference_requests_total Requests
# TYPE inference_requests_total counter
inference_requests_total{{model="m",version="1",code="OK"}} {ok}
# HELP inference_batch_rows Rows
# TYPE inference_batch_rows histogram
inference_batch_rows_bucket{{model="m",version="1",le="1.0"}} {small}
inference_batch_rows_bucket{{model="m",version="1",le="+Inf"}} {ok}
inference_batch_rows_sum{{model="m",version="1"}} {ok}
inference_batch_rows_count{{model="m",version="1"}} {ok}
# HELP nv_inference_request_success Triton's
# TYPE nv_inference_request_success untyped
nv_inference_request_success{{model="m",version="1"}} {ok}
# HELP inference_pending_requests Queued
# TYPE inference_pending_requests gauge
inference_pending_requests{{model="m",version="1"}} {pending}
# HELP inference_model_state State
# TYPE inference_model_state gauge
inference_model_state{{model="m",version="1",state="READY"}} 1
# HELP nv_gpu_utilization GPU
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{{gpu_uuid="GPU-1"}} {gpu}
"""


def merged_samples(*workers: dict) -> dict:
    return served(merge([(str(i), parse(WORKER.format(**w))) for i, w in enumerate(workers)]))


def served(families: list) -> dict:
    registry = CollectorRegistry()
    registry.register(type("Fixed", (), {"collect": lambda self: iter(families)})())
    text = generate_latest(registry).decode()  # what the supervisor serves, parsed back as Prometheus would
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_counters_histograms_and_additive_gauges_are_summed_state_gauges_kept_per_worker_gpu_maxed():
    s = merged_samples({"ok": 3, "small": 1, "pending": 2, "gpu": 0.5}, {"ok": 7, "small": 6, "pending": 1, "gpu": 0.7})
    m = (("model", "m"), ("version", "1"))
    assert s[("inference_requests_total", (("code", "OK"), *m))] == 10
    assert s[("inference_batch_rows_bucket", (("le", "1.0"), *m))] == 7
    assert s[("inference_batch_rows_bucket", (("le", "+Inf"), *m))] == 10
    assert s[("inference_batch_rows_count", m)] == 10
    assert s[("nv_inference_request_success", m)] == 10
    assert s[("inference_pending_requests", m)] == 3
    assert s[("nv_gpu_utilization", (("gpu_uuid", "GPU-1"),))] == 0.7
    states = {k: v for k, v in s.items() if k[0] == "inference_model_state"}
    assert states == {("inference_model_state", (*m[:1], ("state", "READY"), m[1], ("worker", str(w)))): 1
                      for w in (0, 1)}


def test_a_series_one_worker_stops_exporting_keeps_its_last_value_in_the_pods_sum():
    """Worker 0 unloads version 1 (say its MLflow alias moved) before worker 1 does: the pod's counters of version 1
    must not drop to worker 1's alone (Prometheus would read a reset); its gauges go with it."""
    figures = {"ok": 3, "small": 1, "pending": 2, "gpu": 0.5}
    first = parse(WORKER.format(**figures))
    other = parse(WORKER.format(ok=7, small=6, pending=1, gpu=0.7))
    before = served(merge([("0", first), ("1", other)]))
    moved = carry(first, parse(WORKER.format(**figures).replace('version="1"', 'version="2"')))
    after = served(merge([("0", moved), ("1", other)]))
    m1, m2 = (("model", "m"), ("version", "1")), (("model", "m"), ("version", "2"))
    cumulative = [k for k in before if k[0] != "inference_pending_requests" and "worker" not in dict(k[1])
                  and not k[0].startswith("nv_gpu")]
    assert cumulative and all(after[k] == before[k] for k in cumulative)  # version 1: both workers' last values
    assert after[("inference_requests_total", (("code", "OK"), *m1))] == 10
    assert after[("inference_requests_total", (("code", "OK"), *m2))] == 3
    assert after[("inference_pending_requests", m1)] == 1  # a gauge: worker 1's alone
    assert ("inference_model_state", (*m1[:1], ("state", "READY"), m1[1], ("worker", "0"))) not in after
    again = carry(moved, parse(WORKER.format(**figures).replace('version="1"', 'version="2"')))
    assert served(merge([("0", again), ("1", other)])) == after  # carried once, not added up again


def test_the_slot_travels_through_the_environment(tmp_path):
    slot = WorkerSlot(tmp_path, 1, 3)
    assert WorkerSlot.from_environ(slot.environ()) == slot
    assert [p.name for p in slot.peers] == ["worker-0.sock", "worker-2.sock"]
    assert WorkerSlot.from_environ({}) is None


def test_the_peer_directory_falls_back_to_tmp_when_tmpdir_is_too_long_for_a_socket(tmp_path, monkeypatch):
    import tempfile

    from inference_server.pod import peers as pod

    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(deep))
    directory = pod.new_peer_directory(2)
    try:
        assert directory.parent == Path("/tmp") and len(str(pod.socket_path(directory, 1))) <= pod.SOCKET_PATH_MAX
        assert not list(deep.iterdir())  # the too-long attempt was removed
    finally:
        directory.rmdir()
    monkeypatch.setattr(pod, "SOCKET_PATH_MAX", 10)  # nowhere short enough: an error naming the path and TMPDIR
    with pytest.raises(OSError, match="TMPDIR"):
        pod.new_peer_directory(2)
