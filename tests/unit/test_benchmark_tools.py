"""The parsers of the benchmark's external tools, on captured output (no install, no sockets)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from benchmarks import http, lifecycle, peers, perf_analyzer, scenarios
from clients.python import loadgen

# perf_analyzer 2.51.0 --verbose-csv against a server without statistics, and against Triton (with them).
PA_CSV = ("Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
          "Avg latency,request/response,response wait\n2,439.052,8,2,2046,7279,11639,58740,4535,10,4483\n")
PA_CSV_SERVER = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
                 "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,"
                 "p99 latency,Avg latency,request/response,response wait\n"
                 "32,2250.5,10,900,1200,20,3000,15,3,14000,16000,17000,20000,14100,12,14000\n")


def test_perf_analyzer_csv_to_ms():
    assert perf_analyzer.parse_csv(PA_CSV) == {"concurrency": 2, "infer_per_s": 439.1, "p50_ms": 2.046,
                                               "p90_ms": 7.279, "p99_ms": 58.74, "mean_ms": 4.535}
    with_server = perf_analyzer.parse_csv(PA_CSV_SERVER)
    assert with_server["p99_ms"] == 20.0
    assert (with_server["server_queue_ms"], with_server["server_compute_infer_ms"]) == (1.2, 3.0)
    assert "server_queue_ms" not in perf_analyzer.parse_csv(PA_CSV)


def test_perf_analyzer_csv_without_avg_latency_is_an_error():
    without_avg = "Concurrency,Inferences/Second,p50 latency,p90 latency,p99 latency\n4,1361.2,2005,6429,9521\n"
    with pytest.raises(RuntimeError, match="Avg latency"):
        perf_analyzer.parse_csv(without_avg)
    with pytest.raises(RuntimeError, match="no CSV rows"):
        perf_analyzer.parse_csv("Concurrency,Inferences/Second\n")


def test_mlserver_batch_metric():
    text = ('# HELP peer_batch_rows_count rows\n'
            'peer_batch_rows_bucket{le="1.0",model_name="mlp",model_version=""} 10.0\n'
            'peer_batch_rows_count{model_name="mlp",model_version=""} 588.0\n'
            'peer_batch_rows_sum{model_name="mlp",model_version=""} 604.0\n'
            'peer_batch_rows_sum{model_name="mlp2",model_version=""} 9.0\n')
    assert peers.parse_batch_metric(text, "mlp") == (604, 588)
    assert peers.parse_batch_metric(text, "other") is None



def test_server_batch_lines_are_summed_over_worker_processes():
    line = ("INFO inference_server.execution.batching: model '{}': executed {} batches, {} rows "
            "(mean 1.00 rows per batch)\n")
    log = line.format("cheap", 10, 40) + line.format("large", 3, 3) + line.format("cheap", 5, 5)
    assert scenarios.batch_summary(log, "cheap") == (15, 45)
    assert scenarios.batch_summary(log, "missing") is None


def test_lifecycle_finds_when_the_alias_poll_noticed_a_move():
    log = ("2026-12-01 22:15:38,484 INFO inference_server.lifecycle.manager: model 'cheap': models:/cheap@production "
           "now names version 12; loading it\n")
    assert lifecycle.moved_at(log, "12") == datetime(2026, 12, 1, 22, 15, 38, 484000).timestamp()
    assert lifecycle.moved_at(log, "1") is None and lifecycle.moved_at(log, "2") is None


async def test_open_loop_latency_counts_from_the_scheduled_send_time(monkeypatch):
    """A stall that delays the sends is charged to the requests sent late (no coordinated omission)."""

    class StallingClient:
        calls = 0

        def __init__(self, *args, **kwargs) -> None:
            pass

        async def infer(self, *args, **kwargs):
            StallingClient.calls += 1
            if StallingClient.calls == 1:
                time.sleep(0.2)  # blocks the loop: the next ~20 sends go out late

        async def close(self) -> None:
            pass

    monkeypatch.setattr(loadgen.aioclient, "InferenceServerClient", StallingClient)
    result = await loadgen.open_loop("x", loadgen.Workload("m", [[]], 1), rate_per_s=100, duration_s=0.5,
                                     warmup_s=0.0)
    assert result.requests == 50 and result.not_sent == 0
    late = [t for t in result.latencies_s if t > 0.05]
    assert len(late) >= 15 and max(result.latencies_s) >= 0.19


def test_proc_stat_cpu_and_process_trees():
    # comm may hold spaces and parentheses; fields 14 and 15 (utime, stime) are in clock ticks
    line = "4242 (python (x) y) S 4000 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0\n"
    assert http.parse_stat(line) == (4000, 300 / http.CLOCK)
    table = {1: (0, 0.0), 10: (1, 1.0), 11: (10, 2.0), 12: (11, 3.0), 20: (1, 4.0), 30: (99, 5.0)}
    assert http.subtree(table, 10) == {10, 11, 12}
    assert http.subtree(table, 20) == {20} and http.subtree(table, 7) == set()
    first = http.Sample(0.0, {10: (1, 1.0), 11: (10, 2.0), 12: (11, 3.0)}, 0.0)
    last = http.Sample(2.0, {10: (1, 2.0), 11: (10, 3.0), 13: (10, 9.0)}, 0.0)  # 12 exited, 13 is new: neither counts
    assert http.tree_cores(first, last, {10, 11, 12, 13}) == 1.0


def test_http_ratios_and_their_targets():
    def point(target, protocol, model, gen, c, rate):
        return {"target": target, "protocol": protocol, "model": model, "gen": gen, "concurrency": c,
                "infer_per_s": rate, "p99_ms": 10.0, "error_count": 0}

    triton, ours = "Triton via PyTriton: Triton 2.51.0 via PyTriton 0.7.0", scenarios.OURS
    points = [point(ours, "HTTP", "cheap", "aio", 32, 2100), point(triton, "HTTP", "cheap", "aio", 32, 2000),
              point(ours, "gRPC", "cheap", "aio", 32, 3500), point(ours, "HTTP", "cheap", "aio", 1, 900),
              point(ours, "gRPC", "cheap", "aio", 1, 1000), point(ours, "HTTP", "large", "aio", 32, 90),
              point(triton, "HTTP", "large", "aio", 32, 100), point(ours, "gRPC", "large", "aio", 32, 100)]
    rows = {(r["what"], r["model"], r["concurrency"]): r for r in http.ratio_rows(points)}
    vs_triton = rows[("ours HTTP / Triton HTTP", "cheap", 32)]
    assert (vs_triton["ratio"], vs_triton["target"], vs_triton["met"]) == (1.05, ">= 1.0", "yes")
    assert rows[("ours HTTP / Triton HTTP", "large", 32)]["met"] == "no"
    vs_grpc = rows[("ours HTTP / ours gRPC", "cheap", 32)]
    assert (vs_grpc["ratio"], vs_grpc["met"]) == (0.6, "no")
    assert rows[("ours HTTP / ours gRPC", "cheap", 1)]["met"] == "yes"  # 0.9
    assert rows[("ours HTTP / ours gRPC", "large", 32)]["target"] == "–"  # the target is the cheap MLP's
    assert ("ours HTTP / Triton HTTP", "cheap", 1) not in rows  # no Triton point at c=1


def test_perf_analyzer_refuses_an_unknown_protocol(tmp_path):
    with pytest.raises(ValueError, match="protocol"):
        perf_analyzer.run("127.0.0.1:1", "m", 1, work_dir=tmp_path, protocol="grpcs")
