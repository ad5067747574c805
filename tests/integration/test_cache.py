"""The response cache through a real server, for both tiers (in-process LRU and a real redis-server): hits skip
the model, subsets, versions, shapes and TTLs are answered correctly, identical concurrent misses run the model
once, and statistics count it all."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from inference_server.config.server import CacheConfig, ModelConfig
from tests.conftest import ServerThread, server_config
from tests.integration.test_metrics import scrape
from tests.integration.test_statistics import count, stats
from tests.support import onnx_models

pytestmark = pytest.mark.integration
TTL_S = 0.5


@pytest.fixture(scope="module")
def cache_models(tmp_path_factory):
    """Two versions of one model (different weights), a model whose second dimension is free, and one with a
    short TTL."""
    root = tmp_path_factory.mktemp("cache_models")
    twins = tuple(ModelConfig(name="twin", version=str(v), path=onnx_models.write_model(
        root, "twin", onnx_models.mlp([4, 3], seed=v), version=v)) for v in (1, 2))
    echo = onnx_models.write_model(root, "echo", onnx_models.identity(["FP32"], width="W"))
    short = onnx_models.write_model(root, "short", onnx_models.mlp([4, 3], seed=3))
    return twins + (ModelConfig(name="echo", path=echo), ModelConfig(name="short", path=short, cache_ttl_s=TTL_S))


@pytest.fixture(scope="module", params=["memory", "redis", "redis+near"])
def cached(request, repository, cache_models):
    """A server per tier: in-process, Redis, and Redis with a near cache in front."""
    spec, redis = "memory:16", None
    if request.param != "memory":
        redis = request.getfixturevalue("redis_server")
        with redis.client() as client:
            client.flushall()
        spec = redis.url
    cfg = server_config(repository, cache=spec)
    near = CacheConfig(near_cache_mib=16 if request.param == "redis+near" else 0)
    thread = ServerThread(dataclasses.replace(cfg, models=cfg.models + cache_models, cache_config=near)).start()
    thread.tier = "memory" if request.param == "memory" else "redis"
    thread.redis = redis
    yield thread
    thread.stop()


def settled(thread: ServerThread) -> None:
    """Until the cache has sent its writes (Redis writes leave the request path; memory writes are immediate)."""
    deadline = time.monotonic() + 10
    while getattr(thread.app.cache, "pending_writes", 0):
        assert time.monotonic() < deadline, "cache writes not sent in 10 s"
        time.sleep(0.005)


def infer(url: str, x: np.ndarray, outputs: list[str] | None = None, model: str = "mlp", version: str = "",
          input_name: str = "x") -> dict[str, np.ndarray]:
    t = grpcclient.InferInput(input_name, list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, [t], model_version=version, outputs=wanted)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response(as_json=True)["outputs"]}


def executions(thread: ServerThread, model: str = "mlp", version: str = "") -> int:
    return thread.app.registry.find(model, version).stats.execution_count


def test_a_hit_after_a_miss_never_reaches_the_model(cached):
    x = np.random.default_rng(10).standard_normal((2, 8)).astype(np.float32)
    (before,) = stats(cached.url, "mlp")
    first = infer(cached.url, x)
    settled(cached)
    ran = executions(cached)
    second = infer(cached.url, x)
    assert executions(cached) == ran  # answered from the cache
    for name in ("y", "h"):
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name].dtype == second[name].dtype and first[name].shape == second[name].shape
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
    settled(cached)
    ran = executions(cached)
    assert set(infer(cached.url, x, ["y"])) == {"y"} and set(infer(cached.url, x, ["h"])) == {"h"}  # hits
    assert executions(cached) == ran


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


def test_a_new_model_version_never_gets_an_old_versions_answer(cached):
    x = np.random.default_rng(13).standard_normal((1, 4)).astype(np.float32)
    v1 = infer(cached.url, x, model="twin", version="1")["y"]
    settled(cached)
    ran = executions(cached, "twin", "2")
    v2 = infer(cached.url, x, model="twin", version="2")["y"]
    assert executions(cached, "twin", "2") == ran + 1  # a miss: version 2 ran
    assert not np.array_equal(v1, v2)  # and answered with its own weights
    settled(cached)
    np.testing.assert_array_equal(infer(cached.url, x, model="twin", version="1")["y"], v1)
    np.testing.assert_array_equal(infer(cached.url, x, model="twin")["y"], v2)  # latest = 2, from the cache
    assert executions(cached, "twin", "2") == ran + 1


def test_inputs_equal_in_bytes_but_not_in_shape_or_datatype_never_share_an_entry(cached):
    """Triton's key hashes only the bytes, so [2, 6] and [3, 4] of the same 12 floats collide there, and so do
    the same bytes sent as FP32 and as INT32."""
    data = np.arange(12, dtype=np.float32)
    wide = infer(cached.url, data.reshape(2, 6), model="echo", input_name="in_FP32")["out_FP32"]
    settled(cached)
    narrow = infer(cached.url, data.reshape(3, 4), model="echo", input_name="in_FP32")["out_FP32"]
    assert wide.shape == (2, 6) and narrow.shape == (3, 4)
    np.testing.assert_array_equal(narrow, data.reshape(3, 4))
    # The same bytes and shape as a cached entry, another datatype: refused as the model's input says, never
    # answered with the FP32 entry.
    t = grpcclient.InferInput("in_FP32", [2, 6], "INT32")
    t.set_data_from_numpy(data.view(np.int32).reshape(2, 6))
    with grpcclient.InferenceServerClient(cached.url) as client, pytest.raises(InferenceServerException) as refused:
        client.infer("echo", [t])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "datatype INT32" in refused.value.message()
    (entry,) = stats(cached.url, "echo")
    assert count(entry, "inference_stats", "cache_miss", "count") == 2
    assert count(entry, "inference_stats", "cache_hit", "count") == 0


def test_an_entry_expires_after_the_models_ttl(cached):
    x = np.random.default_rng(14).standard_normal((1, 4)).astype(np.float32)
    first = infer(cached.url, x, model="short")["y"]
    settled(cached)
    ran = executions(cached, "short")
    infer(cached.url, x, model="short")
    assert executions(cached, "short") == ran  # a hit while fresh
    time.sleep(TTL_S + 0.2)  # the behaviour under test: the entry's time to live runs out
    np.testing.assert_array_equal(infer(cached.url, x, model="short")["y"], first)
    assert executions(cached, "short") == ran + 1  # expired: the model ran again


def test_every_entry_sits_under_its_model_and_version_and_expires(cached):
    infer(cached.url, np.random.default_rng(15).standard_normal((1, 8)).astype(np.float32))
    settled(cached)
    if cached.tier == "redis":
        with cached.redis.client() as client:
            found = list(client.scan_iter(b"inference_server:*"))
            ttls_s = [client.pttl(k) / 1e3 for k in found]
        keys = [k.removeprefix(b"inference_server:") for k in found]
    else:  # read from the test thread while the server is idle
        now = time.monotonic()
        live = {k: e for k, e in dict(cached.app.cache._entries).items() if e[0] is None or e[0] > now}
        keys, ttls_s = list(live), [None if e[0] is None else e[0] - now for e in live.values()]
    assert keys and all(k.split(b":")[0] in (b"mlp", b"twin", b"echo", b"short") for k in keys)
    assert any(k.startswith(b"mlp:1:") for k in keys)
    # Models without their own TTL get [cache] ttl_s (1 h): nothing lives forever, in a shared Redis least of all.
    assert all(ttl is not None and 0 < ttl <= 3600 for ttl in ttls_s), ttls_s


def test_model_config_says_the_cache_is_on(cached, server):
    with grpcclient.InferenceServerClient(cached.url) as client:
        assert client.get_model_config("mlp", as_json=True)["config"]["response_cache"]["enable"] is True
    with grpcclient.InferenceServerClient(server.url) as client:  # the default server has no cache
        assert "response_cache" not in client.get_model_config("mlp", as_json=True)["config"]


def test_the_cache_and_its_tier_show_in_the_metrics(cached):
    x = np.random.default_rng(16).standard_normal((1, 8)).astype(np.float32)
    before = scrape(cached)
    infer(cached.url, x)
    settled(cached)
    infer(cached.url, x)
    after = scrape(cached)
    labels = (("model", "mlp"), ("version", "1"))

    def grew(name: str, extra: tuple[tuple[str, str], ...] = ()) -> float:
        key = (name, tuple(sorted(labels + extra)))
        return after[key] - before.get(key, 0.0)

    assert grew("inference_cache_requests_total", (("result", "hit"),)) == 1
    assert grew("inference_cache_requests_total", (("result", "miss"),)) == 1
    assert grew("nv_cache_num_hits_per_model") == 1 and grew("nv_cache_num_misses_per_model") == 1
    assert grew("inference_cache_lookup_seconds_count") == 2
    if cached.tier == "memory":
        assert after[("inference_cache_entries", ())] >= 1 and after[("inference_cache_bytes", ())] > 0
    else:
        assert after[("inference_cache_writes_total", (("result", "written"),))] >= 1
        assert after[("inference_cache_circuit_state", (("state", "closed"),))] == 1
        assert after[("inference_cache_errors_total", (("operation", "get"),))] == 0
