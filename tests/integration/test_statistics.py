"""ModelStatistics through tritonclient, counted the way perf_analyzer reads it (Triton's InferStatistics)."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


def stats(url: str, model: str = "", version: str = "") -> list[dict]:
    with grpcclient.InferenceServerClient(url) as client:
        return client.get_inference_statistics(model, version, as_json=True).get("model_stats", [])


def count(entry: dict, *path: str) -> int:
    for key in path:
        entry = entry.get(key, {})
    return int(entry or 0)


async def send(url: str, rows: list[int]) -> None:
    async with aioclient.InferenceServerClient(url) as client:
        async def one(n: int) -> None:
            x = aioclient.InferInput("x", [n, 8], "FP32")
            x.set_data_from_numpy(np.ones((n, 8), np.float32))
            await client.infer("mlp", [x])
        await asyncio.gather(*(one(n) for n in rows))


def test_counts_are_what_the_server_did(server):
    (before,) = stats(server.url, "mlp")
    batches_before = Counter(server.batches("mlp"))
    rows = [1] * 20 + [2] * 10 + [3] * 4  # 34 requests, 52 rows, sent at once so that they share batches
    asyncio.run(send(server.url, rows))
    with grpcclient.InferenceServerClient(server.url) as client, pytest.raises(InferenceServerException):
        bad = grpcclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), np.float32))
        client.infer("mlp", [bad])  # reaches the model's statistics as a failure
    (after,) = stats(server.url, "mlp")
    batches = Counter(server.batches("mlp")) - batches_before

    assert (after["name"], after["version"]) == ("mlp", "1") and int(after["version"]) == 1
    delta = {key: count(after, *key) - count(before, *key) for key in [
        ("inference_stats", "success", "count"), ("inference_stats", "fail", "count"),
        ("inference_stats", "queue", "count"), ("inference_stats", "compute_input", "count"),
        ("inference_stats", "compute_infer", "count"), ("inference_stats", "compute_output", "count"),
        ("inference_count",), ("execution_count",)]}
    assert delta == {("inference_stats", "success", "count"): 34, ("inference_stats", "fail", "count"): 1,
                     ("inference_stats", "queue", "count"): 34, ("inference_stats", "compute_input", "count"): 34,
                     ("inference_stats", "compute_infer", "count"): 34,
                     ("inference_stats", "compute_output", "count"): 34,
                     ("inference_count",): 52, ("execution_count",): sum(batches.values())}
    assert sum(batches.values()) < 34  # they did share batches
    for key in ("success", "queue", "compute_infer"):
        assert count(after, "inference_stats", key, "ns") > count(before, "inference_stats", key, "ns")
    by_size = {int(b["batch_size"]): count(b, "compute_infer", "count") for b in after["batch_stats"]}
    old_by_size = {int(b["batch_size"]): count(b, "compute_infer", "count") for b in before.get("batch_stats", [])}
    assert {size: n - old_by_size.get(size, 0) for size, n in by_size.items() if n != old_by_size.get(size, 0)} \
        == dict(batches)
    assert int(after["last_inference"]) > 0  # ms since the epoch


def test_every_model_and_every_version_or_not_found(server):
    names = {(s["name"], s["version"]) for s in stats(server.url)}
    assert {("mlp", "1"), ("types", "1"), ("slow", "1")} <= names
    assert [s["version"] for s in stats(server.url, "mlp", "1")] == ["1"]
    with pytest.raises(InferenceServerException) as e:
        stats(server.url, "no_such_model")
    assert e.value.status() == "StatusCode.NOT_FOUND"
