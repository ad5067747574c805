"""A worker's peer socket (--workers N): what the other workers and the supervisor ask it, over a real Unix
socket."""

from __future__ import annotations

import json

from inference_server.pod import PeerServer, PodStatistics, WorkerSlot, ask, own_figures
from inference_server.pod_metrics import PodCollector
from inference_server.views import StatisticsView
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
        assert answer == [{"name": "m", "version": "1", "stats": json.loads(json.dumps(stats.statistics()))}]
        assert await ask(peer.path, b"metrics") == b"text 1\n"
        assert await ask(peer.path, b"nonsense") == b""  # an unknown request gets nothing, and no crash
    finally:
        await server.stop()
    assert not peer.path.exists()
    assert await PodStatistics(slot).peers() == []  # gone: left out (and logged), not an error
