"""A worker's peer socket (--workers N): what the other workers and the supervisor ask it, over a real Unix
socket."""

from __future__ import annotations

import asyncio
import json

from inference_server.pod.metrics import PodCollector
from inference_server.pod.peers import PeerServer, PodStatistics, WorkerSlot, ask
from inference_server.service.views import own_figures
from inference_server.service.views import StatisticsView
from tests.unit.test_pod import worker_stats


def test_a_worker_that_does_not_answer_is_left_out_and_counted_missing(tmp_path):
    families = {f.name: f for f in PodCollector([tmp_path / "worker-0.sock"]).collect()}
    workers = {s.labels["scrape"]: s.value for s in families["inference_pod_workers"].samples}
    assert workers == {"answered": 0, "missing": 1}


async def test_a_peer_answers_statistics_and_metrics_on_its_socket(tmp_path):
    slot, peer = WorkerSlot(tmp_path, 0, 2), WorkerSlot(tmp_path, 1, 2)
    stats = worker_stats(4, 4)
    server = PeerServer(peer.path, lambda: own_figures([StatisticsView("m", "1", stats)]), lambda: b"text 1\n")
    await server.start()
    try:
        [answer] = await PodStatistics(slot).peers()
        assert answer == [{"name": "m", "version": "1", "stats": json.loads(json.dumps(stats.to_json()))}]
        assert await ask(peer.path, b"metrics") == b"text 1\n"
        assert await ask(peer.path, b"nonsense") == b""  # an unknown request gets nothing, and no crash
    finally:
        await server.stop()
    assert not peer.path.exists()
    assert await PodStatistics(slot).peers() == []  # gone: left out (and logged), not an error


async def test_a_worker_that_stops_answering_keeps_its_last_answer_so_counters_never_go_down(tmp_path):
    slot = WorkerSlot(tmp_path, 0, 1)
    answer = [b"# TYPE requests_total counter\nrequests_total 7\n"]
    server = PeerServer(slot.path, list, lambda: answer[0])
    await server.start()
    collector = PodCollector([slot.path])
    try:
        def scrape() -> dict:
            return {(s.name, s.labels.get("scrape")): s.value for f in collector.collect() for s in f.samples}

        first = await asyncio.to_thread(scrape)
        assert first[("requests_total", None)] == 7 and first[("inference_pod_workers", "answered")] == 1
        for bad in (b"", b"requests_total{", b"\xff\xfe"):  # empty, cut off, not text
            answer[0] = bad
            samples = await asyncio.to_thread(scrape)
            assert samples[("requests_total", None)] == 7, bad  # the last good answer, not a drop to 0
            assert samples[("inference_pod_workers", "missing")] == 1, bad
    finally:
        await server.stop()


async def test_a_collector_that_fails_gives_the_asker_nothing_and_the_worker_serves_on(tmp_path):
    slot = WorkerSlot(tmp_path, 0, 1)

    def broken() -> bytes:
        raise RuntimeError("dictionary changed size during iteration")

    server = PeerServer(slot.path, list, broken)
    await server.start()
    try:
        assert await ask(slot.path, b"metrics") == b""
        assert await ask(slot.path, b"statistics") == b"[]"  # the next request is answered
    finally:
        await server.stop()


async def test_a_peer_whose_statistics_are_cut_off_is_left_out_not_an_error(tmp_path):
    slot, peer = WorkerSlot(tmp_path, 0, 2), WorkerSlot(tmp_path, 1, 2)
    server = PeerServer(peer.path, list, bytes)
    server._answers[b"statistics"] = lambda: b'[{"name": "m", "ver'  # as if the peer died mid-answer
    await server.start()
    try:
        assert await PodStatistics(slot).peers() == []
    finally:
        await server.stop()
