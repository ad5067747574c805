"""The prediction log: sampled JSON lines written off the request path; a full queue drops and counts."""

from __future__ import annotations

import json

import numpy as np

from inference_server.observability.predictions import PredictionLog


async def test_sampled_records_are_written_as_json_lines(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl", sample_rate=1.0)
    log.start()
    for i in range(3):
        log.offer("m", "1", f"id-{i}", {"x": np.array([[i, 1.5]], np.float32), "s": np.array(["a"], object)},
                  {"y": np.array([[2 * i]], np.int64)}, 0.0015)
    await log.close()
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["id-0", "id-1", "id-2"] and log.written == 3
    assert lines[2]["inputs"] == {"x": [[2.0, 1.5]], "s": ["a"]} and lines[2]["outputs"] == {"y": [[4]]}
    assert (lines[0]["model"], lines[0]["version"], lines[0]["latency_ms"]) == ("m", "1", 1.5)


async def test_sample_rate_zero_writes_nothing_and_a_full_queue_drops(tmp_path):
    never = PredictionLog(tmp_path / "never.jsonl", sample_rate=0.0)
    never.offer("m", "1", "", {}, {}, 0.0)
    assert never._queue.empty()
    full = PredictionLog(tmp_path / "full.jsonl", sample_rate=1.0, queue_size=2)  # not started: never drained
    for _ in range(5):
        full.offer("m", "1", "", {}, {}, 0.0)
    assert full.dropped == 3
