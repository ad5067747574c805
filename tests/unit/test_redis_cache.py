"""The Redis tier without a socket: the value encoding, and fail-open behaviour against a stand-in client whose
failures, hangs and slowness the test controls. (The real redis-server is in tests/integration and system.)"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from inference_server.breaker import OPEN, CircuitBreaker
from inference_server.cache.memory import MemoryCache
from inference_server.cache.redis_tier import KEY_PREFIX, RedisCache, decode_outputs, encode_outputs, now_ms
from inference_server.protocol.tensors import DATATYPES


class StubRedis:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.px: dict[bytes, int | None] = {}
        self.calls: Counter[str] = Counter()
        self.error: Exception | None = None
        self.hang = False
        self.gate: asyncio.Event | None = None  # writes wait on it when set
        self.closed = False
        self.batches: list[int] = []  # keys per MGET

    async def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error

    async def ping(self) -> bool:
        await self._call("ping")
        return True

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        await self._call("mget")
        self.batches.append(len(keys))
        return [self.data.get(key) for key in keys]

    def pipeline(self, transaction: bool = True) -> StubPipeline:
        assert transaction is False
        return StubPipeline(self)

    async def aclose(self) -> None:
        self.closed = True


class StubPipeline:
    def __init__(self, redis: StubRedis) -> None:
        self.redis = redis
        self.ops: list[tuple[bytes, bytes, int | None]] = []

    def set(self, key: bytes, value: bytes, px: int | None = None) -> None:
        self.ops.append((key, value, px))

    async def execute(self) -> list[bool]:
        if self.redis.gate is not None:
            await self.redis.gate.wait()
        await self.redis._call("execute")
        for key, value, px in self.ops:
            self.redis.data[key], self.redis.px[key] = value, px
        return [True] * len(self.ops)


def outputs() -> dict[str, np.ndarray]:
    return {"y": np.arange(6, dtype=np.float32).reshape(2, 3), "label": np.array([3, 1], dtype=np.int64)}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        np.testing.assert_array_equal(a[name], b[name])


def test_every_datatype_round_trips_with_its_dtype_and_shape():
    rng = np.random.default_rng(0)
    values = {}
    for name, dt in DATATYPES.items():
        if dt.itemsize:
            values[name] = rng.integers(0, 2, (2, 3)).astype(dt.dtype)
    values["text"] = np.array([["a", ""], ["\0x", "é"]], dtype=object)
    values["empty"] = np.zeros((0, 4), dtype=np.float32)
    values["scalar"] = np.array(7.5, dtype=np.float64)
    decoded, expires_at_ms = decode_outputs(encode_outputs(values, 1234))
    assert expires_at_ms == 1234 and decode_outputs(encode_outputs(values))[1] is None
    expected = {**values, "text": np.array([[b"a", b""], [b"\0x", "é".encode()]], dtype=object)}
    assert_same(decoded, expected)


@pytest.mark.parametrize("damage", [
    lambda b: b"XXXX" + b[4:],  # another writer's value
    lambda b: b[:-1],  # truncated
    lambda b: b + b"\0",  # trailing bytes
    lambda b: b[:8] + b[8:].replace(b'"<f4"', b'"|O8"'),  # a dtype we never write (object: no arrays of refs)
    lambda b: b[:8] + b[8:].replace(b'"<f4"', b'"<f8"'),  # sizes that do not fit
    lambda b: b[:8] + b[8:].replace(b"[2,3]", b"[3,3]"),
    lambda b: b"ISC1",
])
def test_a_value_that_does_not_decode_exactly_is_refused(damage):
    with pytest.raises(Exception):  # noqa: B017 (any error: the caller counts it and answers a miss)
        decode_outputs(damage(encode_outputs(outputs())))


async def started(stub: StubRedis, **kwargs) -> RedisCache:
    kwargs.setdefault("breaker", CircuitBreaker("test", failure_threshold=3, cooldown_s=60))
    cache = RedisCache("redis://127.0.0.1:1/0", client=stub, timeout_s=0.01, **kwargs)
    await cache.start()
    return cache


async def test_a_put_is_written_in_the_background_with_its_ttl_and_read_back():
    stub = StubRedis()
    cache = await started(stub)
    await cache.put(b"m:1:k", outputs(), 2.5)
    await cache.put(b"m:1:forever", outputs(), None)
    assert cache.pending_writes == 2 and not stub.data  # put only enqueues
    await cache._queue.join()
    assert stub.px == {KEY_PREFIX + b"m:1:k": 2500, KEY_PREFIX + b"m:1:forever": None}
    assert stub.calls["execute"] == 1  # both in one pipeline
    assert_same(await cache.get(b"m:1:k"), outputs())
    assert cache.writes["written"] == 2
    await cache.close()
    assert stub.closed


async def test_failures_answer_misses_then_the_circuit_opens_and_redis_is_left_alone():
    stub = StubRedis()
    stub.error = RedisConnectionError("Connection refused")
    cache = await started(stub)  # the start-up ping is failure 1
    assert await cache.get(b"k") is None and await cache.get(b"k") is None  # failures 2 and 3
    assert cache.breaker.state == OPEN and cache.errors["get"] == 2
    calls = stub.calls["mget"]
    for _ in range(10):
        assert await cache.get(b"k") is None
        await cache.put(b"k", outputs(), 1.0)
    assert stub.calls["mget"] == calls and cache.skipped == 10 and cache.writes["dropped"] == 10
    await cache.close()


async def test_a_hung_redis_costs_a_lookup_at_most_its_timeout():
    stub = StubRedis()
    cache = await started(stub)
    stub.hang = True
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await cache.get(b"k") is None
    assert loop.time() - start < 5  # bounded by 2 x timeout_s (0.02 s); 5 s only guards against a hang
    assert cache.errors["get"] == 1
    stub.hang = False
    await cache.close()


async def test_a_slow_redis_never_holds_up_a_put_and_the_write_queue_is_bounded():
    stub = StubRedis()
    stub.gate = asyncio.Event()
    cache = await started(stub, write_queue_size=2)
    await cache.put(b"a", outputs(), 1.0)
    await asyncio.sleep(0)  # the writer takes "a" and waits on Redis
    for key in (b"b", b"c", b"d", b"e"):
        await cache.put(key, outputs(), 1.0)  # returns at once
    assert cache.pending_writes == 3 and cache.writes["dropped"] == 2  # "a" being sent, "b" and "c" queued
    stub.gate.set()
    await cache._queue.join()
    assert sorted(stub.data) == [KEY_PREFIX + k for k in (b"a", b"b", b"c")] and cache.writes["written"] == 3
    await cache.close()


async def test_a_damaged_value_is_a_miss_not_a_redis_failure():
    stub = StubRedis()
    cache = await started(stub)
    stub.data[KEY_PREFIX + b"k"] = b"not ours"
    assert await cache.get(b"k") is None
    assert cache.errors["decode"] == 1 and cache.errors["get"] == 0 and cache.breaker.state != OPEN
    await cache.close()


async def test_close_sends_what_is_queued_first():
    stub = StubRedis()
    cache = await started(stub)
    for i in range(100):
        await cache.put(b"k%d" % i, outputs(), 1.0)
    await cache.close()
    assert len(stub.data) == 100 and stub.calls["execute"] >= 2  # at most 64 per pipeline


async def test_lookups_made_together_share_one_mget_and_each_gets_its_own_answer():
    stub = StubRedis()
    cache = await started(stub)
    for i in range(3):
        await cache.put(b"k%d" % i, {"y": np.full(2, i, np.float32)}, None)
    await cache._queue.join()
    found = await asyncio.gather(*(cache.get(b"k%d" % i) for i in (2, 0, 9, 1)))
    assert stub.batches == [4]
    assert [None if f is None else int(f["y"][0]) for f in found] == [2, 0, None, 1]
    await cache.close()


async def test_an_entry_not_yet_sent_is_answered_from_the_queue():
    stub = StubRedis()
    stub.gate = asyncio.Event()  # Redis is slow to take the write
    cache = await started(stub)
    await cache.put(b"k", outputs(), 1.0)
    assert_same(await cache.get(b"k"), outputs())
    assert stub.calls["mget"] == 0 and not stub.data
    stub.gate.set()
    await cache._queue.join()
    assert_same(await cache.get(b"k"), outputs())  # now from Redis
    assert stub.calls["mget"] == 1 and not cache._unsent_entries
    await cache.close()


async def test_a_near_cache_answers_hot_entries_without_a_round_trip_and_never_outlives_redis():
    stub = StubRedis()
    near = MemoryCache(1 << 20)
    cache = await started(stub, near=near)
    await cache.put(b"mine", outputs(), 60.0)  # this server's own answer: near at once
    await cache._queue.join()
    assert_same(await cache.get(b"mine"), outputs())
    assert stub.calls["mget"] == 0
    # Entries another server wrote: the near copy lives only as long as Redis keeps the entry.
    stub.data[KEY_PREFIX + b"theirs"] = encode_outputs(outputs(), now_ms() + 30_000)
    stub.data[KEY_PREFIX + b"stale"] = encode_outputs(outputs(), now_ms() - 1)
    assert_same(await cache.get(b"theirs"), outputs())
    assert await cache.get(b"stale") is not None  # Redis answered it (its own expiry is Redis's business)
    assert stub.calls["mget"] == 2
    expires, _, _ = near._entries[b"theirs"]
    assert 29 < expires - near._clock() <= 30 and b"stale" not in near._entries
    assert_same(await cache.get(b"theirs"), outputs())
    assert stub.calls["mget"] == 2 and cache.near_hits == 2
    # Redis goes away: the near cache still answers, and new answers still enter it.
    stub.error = RedisConnectionError("Connection refused")
    for _ in range(3):
        await cache.get(b"missing")
    assert cache.breaker.state == OPEN
    await cache.put(b"new", outputs(), 60.0)
    assert_same(await cache.get(b"new"), outputs())
    assert_same(await cache.get(b"theirs"), outputs())
    assert cache.near_hits == 4 and stub.calls["mget"] == 5  # the 3 failed lookups that opened it, no more
    await cache.close()
