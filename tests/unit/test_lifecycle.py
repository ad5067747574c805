"""Leases, drains and the registry's routing state, with stand-in sessions (no ONNX Runtime, no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from inference_server.config.model import BatchingConfig, ModelConfig, VersionPolicy
from inference_server.errors import ErrorCode, InferenceError
from inference_server.lifecycle.registry import UNLOADED, ModelRegistry
from inference_server.lifecycle.repository import Repository
from inference_server.lifecycle.version import ModelVersion, State
from tests.support.waiting import turns


class FakeBackend:
    platform = "onnxruntime_onnx"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def version(name: str = "m", number: str = "1") -> ModelVersion:
    cfg = ModelConfig(name=name, version=number)
    return ModelVersion(name, number, cfg, BatchingConfig(max_batch_size=4), (), (), FakeBackend(), "digest",
                        state=State.READY)


async def test_a_drain_waits_for_every_lease_and_refuses_new_ones():
    model = version()
    model.acquire()
    model.acquire()
    drain = asyncio.create_task(model.drain_and_close(5))
    await turns()  # the drain waits on an event, the last lease's release
    assert model.state is State.UNLOADING and not drain.done() and not model.backend.closed
    with pytest.raises(InferenceError) as e:
        model.acquire()
    assert e.value.code is ErrorCode.UNAVAILABLE
    model.release()
    await turns()
    assert not drain.done()  # one request still owed
    model.release()
    await asyncio.wait_for(drain, 1)
    assert model.backend.closed and model.state is State.UNAVAILABLE


async def test_a_drain_gives_up_after_its_grace(caplog):
    model = version()
    model.acquire()
    await asyncio.wait_for(model.drain_and_close(0.05), 1)
    assert model.backend.closed and "drain grace of 0.1s expired with 1 requests in flight" in caplog.text


def test_publish_flips_the_serving_set_and_default_in_one_step():
    registry = ModelRegistry()
    v1, v2 = version(number="1"), version(number="2")
    assert registry.publish("m", {"1": v1}) == []
    assert registry.resolve("m") is v1 and v1.leases == 1  # routing takes the lease
    left = registry.publish("m", {"2": v2})
    assert left == [v1] and v1.state is State.UNLOADING
    assert registry.resolve("m") is v2 and registry.versions("m") == ["2"]
    assert set(registry.snapshot()) == {v1, v2}  # the draining version is still scraped
    assert [(e.version, e.state) for e in registry.index()] == [("1", "UNLOADING"), ("2", "READY")]
    registry.drained(v1)
    assert registry.snapshot() == (v2,) and [(e.version, e.state) for e in registry.index()] == [("2", "READY")]


def test_default_version_is_the_newest_numerically_and_lookups_say_why_they_fail():
    registry = ModelRegistry()
    v2, v10 = version(number="2"), version(number="10")
    registry.publish("m", {"2": v2, "10": v10})
    assert registry.find("m") is v10 and registry.find("m", "2") is v2
    assert registry.ready("m") and registry.ready("m", "2") and not registry.ready("m", "3")
    assert not registry.ready("ghost")
    registry.set_status("m", "11", State.LOADING)
    registry.set_status("m", "12", State.UNAVAILABLE, "ONNX Runtime cannot load it")
    for version_, code, text in (("11", ErrorCode.UNAVAILABLE, "is loading"),
                                 ("12", ErrorCode.UNAVAILABLE, "ONNX Runtime cannot load it"),
                                 ("13", ErrorCode.NOT_FOUND, "'m' version 13 is not found")):
        with pytest.raises(InferenceError) as e:
            registry.find("m", version_)
        assert e.value.code is code and text in e.value.message
    with pytest.raises(InferenceError) as e:
        registry.find("ghost")
    assert e.value.code is ErrorCode.NOT_FOUND
    for left in registry.publish("m", {}):
        registry.drained(left)
    registry.clear_statuses("m")
    registry.set_model_reason("m", UNLOADED)
    with pytest.raises(InferenceError) as e:
        registry.find("m")
    assert e.value.code is ErrorCode.NOT_FOUND and "unloaded" in e.value.message
    registry.set_model_reason("m", "MLflow registry unreachable")
    with pytest.raises(InferenceError) as e:
        registry.find("m")
    assert e.value.code is ErrorCode.UNAVAILABLE and "MLflow registry unreachable" in e.value.message
    assert [(e.name, e.version, e.state, e.reason) for e in registry.index()] == [
        ("m", "", "UNAVAILABLE", "MLflow registry unreachable")]


def test_all_ready_needs_a_ready_version_of_every_named_model():
    registry = ModelRegistry()
    registry.publish("a", {"1": version("a")})
    assert registry.all_ready({"a"}) and registry.all_ready(set())
    assert not registry.all_ready({"a", "b"})


@pytest.mark.parametrize("policy, served", [
    (VersionPolicy(), ["10"]), (VersionPolicy(latest=2), ["3", "10"]), (VersionPolicy(kind="all"), ["1", "3", "10"]),
    (VersionPolicy(kind="specific", specific=("3", "7")), ["3"]),
])
def test_version_policy_selects_numerically(policy, served):
    assert policy.select(["10", "1", "3"]) == served


def test_a_fingerprint_changes_with_every_write_and_is_none_when_the_model_is_gone(tmp_path):
    repo = Repository(tmp_path, ModelConfig(name="defaults"), lambda text: {})
    (tmp_path / "m" / "1").mkdir(parents=True)
    model = tmp_path / "m" / "1" / "model.onnx"
    model.write_bytes(b"half")
    first = repo.fingerprint("m")
    assert first == repo.fingerprint("m")  # nothing changed
    model.write_bytes(b"half and the rest")
    second = repo.fingerprint("m")
    assert second != first and second["1"] != first["1"] and set(second) == {"1"}
    (tmp_path / "m" / "config.toml").write_text("")
    assert set(repo.fingerprint("m")) == {"", "1"}
    assert repo.fingerprint("gone") is None


async def test_a_closed_batcher_is_freed_by_reference_counting_alone():
    """No reference cycle through the statistics: a closed version's instances (its ONNX Runtime sessions)
    are freed as soon as it is dropped, not at some later full garbage collection (measured: RSS grew 5 MB per
    50 reloads while a cycle held them)."""
    import gc
    import weakref

    from inference_server.execution.batching import DynamicBatcher
    from inference_server.observability.stats import ModelStats

    class Instance:
        async def run(self, inputs):
            return dict(inputs)

    instance = Instance()
    stats = ModelStats()
    batcher = DynamicBatcher([instance], max_batch_size=4, stats=stats)
    batcher.start()
    await batcher.close(1)
    refs = [weakref.ref(o) for o in (batcher, instance)]
    gc.disable()
    try:
        del batcher, instance
        await asyncio.sleep(0)
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
    assert stats.pending() == 0  # the statistics outlive the batcher and still answer


def test_a_source_that_cannot_be_read_is_logged_once_per_distinct_reason():
    """Following.failed decides whether a failed poll is logged: a new reason is, the same one again is not, and
    every unreachable-registry error is one reason whatever details its message carries."""
    from inference_server.lifecycle.following import Following
    from inference_server.lifecycle.mlflow_source import RegistryUnreachable, SourceError

    following = Following(manager=None)  # type: ignore[arg-type]  # failed() reads only its own outages
    assert following.failed("m", SourceError("alias 'prod' of model 'm' not found"))
    assert not following.failed("m", SourceError("alias 'prod' of model 'm' not found"))
    assert following.failed("m", RegistryUnreachable("unreachable: connection refused (pool at 0x7f01)"))
    assert not following.failed("m", RegistryUnreachable("unreachable: connection refused (pool at 0x7f99)"))
    assert following.failed("other", RegistryUnreachable("unreachable"))  # per model
    assert following.failed("m", SourceError("alias 'prod' of model 'm' not found"))  # the reason changed back
