"""The in-process response cache through a real server: hits skip the model, subsets and versions are
answered correctly, identical concurrent misses run the model once, and statistics count it all."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.conftest import ServerThread, server_config
from tests.integration.test_statistics import count, stats

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cached(repository):
    thread = ServerThread(server_config(repository, cache="memory:16")).start()
    yield thread
    thread.stop()


def infer(url: str, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    t = grpcclient.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("mlp", [t], outputs=wanted)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response(as_json=True)["outputs"]}


def executions(thread: ServerThread) -> int:
    return sum(thread.batches("mlp").values())


def test_a_hit_after_a_miss_never_reaches_the_model(cached):
    x = np.random.default_rng(10).standard_normal((2, 8)).astype(np.float32)
    (before,) = stats(cached.url, "mlp")
    first = infer(cached.url, x)
    ran = executions(cached)
    second = infer(cached.url, x)
    assert executions(cached) == ran  # answered from the cache
    for name in ("y", "h"):
        np.testing.assert_array_equal(first[name], second[name])
    (after,) = stats(cached.url, "mlp")
    delta = {k: count(after, "inference_stats", k, "count") - count(before, "inference_stats", k, "count")
             for k in ("success", "queue", "compute_infer", "cache_hit", "cache_miss")}
    # A hit counts as a success and in the queue (as Triton counts it), never as a model execution.
    assert delta == {"success": 2, "queue": 2, "compute_infer": 1, "cache_hit": 1, "cache_miss": 1}
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 2


def test_a_different_requested_output_subset_is_answered_with_exactly_those_outputs(cached):
    x = np.random.default_rng(11).standard_normal((1, 8)).astype(np.float32)
    full = infer(cached.url, x)
    only_y = infer(cached.url, x, ["y"])
    only_h = infer(cached.url, x, ["h"])
    assert set(only_y) == {"y"} and set(only_h) == {"h"}
    np.testing.assert_array_equal(only_y["y"], full["y"])
    np.testing.assert_array_equal(only_h["h"], full["h"])
    assert set(infer(cached.url, x, ["y"])) == {"y"}  # and its hit, too


def test_identical_concurrent_misses_run_the_model_once(cached):
    x = np.random.default_rng(12).standard_normal((1, 8)).astype(np.float32)
    before = Counter(cached.batches("mlp"))

    async def burst() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(cached.url) as client:
            async def one() -> np.ndarray:
                t = aioclient.InferInput("x", [1, 8], "FP32")
                t.set_data_from_numpy(x)
                return (await client.infer("mlp", [t])).as_numpy("y")
            return await asyncio.gather(*(one() for _ in range(16)))

    answers = asyncio.run(burst())
    # One execution of one row: not even a batch of 16 (which the model's 5 ms queue delay would form).
    assert Counter(cached.batches("mlp")) - before == {1: 1}
    assert all(np.array_equal(a, answers[0]) for a in answers)


def test_model_config_says_the_cache_is_on(cached, server):
    with grpcclient.InferenceServerClient(cached.url) as client:
        assert client.get_model_config("mlp", as_json=True)["config"]["response_cache"]["enable"] is True
    with grpcclient.InferenceServerClient(server.url) as client:  # the default server has no cache
        assert "response_cache" not in client.get_model_config("mlp", as_json=True)["config"]
