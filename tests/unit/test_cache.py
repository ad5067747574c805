"""The response cache's key, the in-process LRU, and coalescing of identical misses."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import numpy as np
import pytest

from inference_server.cache.memory import Coalescer, MemoryCache, cache_key, entry_bytes, outputs_nbytes


def key(model="m", version="1", inputs=None, requested=("y",)) -> bytes:
    inputs = inputs if inputs is not None else {"x": ("FP32", np.arange(4, dtype=np.float32).reshape(1, 4))}
    return cache_key(model, version, inputs, list(requested))


def test_the_key_covers_everything_that_determines_the_answer():
    base = key()
    assert key() == base and base.startswith(b"m:1:")
    same_bytes = np.arange(4, dtype=np.float32)
    assert key(inputs={"x": ("FP32", same_bytes.reshape(2, 2))}) != base  # shape
    assert key(inputs={"x": ("INT32", same_bytes.view(np.int32).reshape(1, 4))}) != base  # datatype, same bytes
    assert key(inputs={"z": ("FP32", same_bytes.reshape(1, 4))}) != base  # input name
    assert key(version="2") != base and key(version="2").startswith(b"m:2:")  # a new version never hits
    assert key(model="n") != base
    assert key(requested=("y", "h")) != base  # the outputs asked for
    text = {"s": ("BYTES", np.array(["ab", "c"], dtype=object))}
    assert key(inputs=text) != key(inputs={"s": ("BYTES", np.array(["a", "bc"], dtype=object))})
    assert key(inputs=text) == key(inputs={"s": ("BYTES", np.array([b"ab", b"c"], dtype=object))})


async def test_lru_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    cache = MemoryCache(max_bytes=3 * entry_bytes(b"a" * 8, {"y": np.zeros(100, np.float32)}))
    for name in (b"a", b"b", b"c"):
        await cache.put(name * 8, {"y": np.zeros(100, np.float32)}, None)
    assert await cache.get(b"a" * 8) is not None  # now the most recently used
    await cache.put(b"d" * 8, {"y": np.zeros(100, np.float32)}, None)
    assert await cache.get(b"b" * 8) is None and await cache.get(b"a" * 8) is not None
    assert len(cache) == 3 and cache.evictions == 1 and cache.bytes <= cache.max_bytes
    await cache.put(b"huge", {"y": np.zeros(10_000, np.float32)}, None)  # larger than the whole cache
    assert await cache.get(b"huge") is None and len(cache) == 3


async def test_the_bound_counts_what_entries_really_hold():
    """The cheap MLP's answers (1-8 rows of 10 floats) under the server's keys: what the cache counts covers every
    byte Python and numpy allocate for its entries (tracemalloc, which leaves out malloc's own headers, so the
    count runs above it: 1.3x here, while RSS grows by about the count, tests/system/test_cache_memory.py)
    and is no gross overestimate. Counting the arrays' bytes alone (and the key's)
    comes to about a third of it."""
    batch = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    inputs = [np.full((1 + i % 8, 64), float(i), np.float32) for i in range(6000)]
    keys = [cache_key("cheap", "2", {"x": ("FP32", x)}, ["y"], "0" * 32) for x in inputs]
    cache = MemoryCache(max_bytes=2 << 20)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, x in zip(keys, inputs, strict=True):
            await cache.put(key, {"y": batch[:len(x)]}, 3600.0)  # a view into the batch, as the batcher gives it
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.evictions > 0 and cache.bytes <= cache.max_bytes
    assert 0.7 * cache.bytes <= held <= cache.bytes, (held, cache.bytes, len(cache))
    arrays_only = sum(outputs_nbytes({"y": batch[:len(x)]}) + len(k) for k, x in zip(keys, inputs, strict=True)
                      if k in cache._entries)
    assert arrays_only < 0.4 * held


async def test_entries_expire_after_their_ttl_and_are_copies():
    now = [100.0]
    cache = MemoryCache(max_bytes=1 << 20, clock=lambda: now[0])
    batch = np.arange(6, dtype=np.float32)
    await cache.put(b"k", {"y": batch[:2]}, ttl_s=5)
    batch[:] = -1  # the batch's array is reused or freed: the cached answer must not change
    np.testing.assert_array_equal((await cache.get(b"k"))["y"], [0, 1])
    now[0] = 104.9
    assert await cache.get(b"k") is not None
    now[0] = 105.0
    assert await cache.get(b"k") is None and cache.bytes == 0


async def test_concurrent_identical_misses_share_one_computation():
    coalescer, calls = Coalescer(), []
    gate = asyncio.Event()

    async def compute():
        calls.append(1)
        await gate.wait()
        return {"y": np.ones(1)}

    tasks = [asyncio.create_task(coalescer.run(b"k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert len(calls) == 1 and [shared for _, shared in results] == [False, True, True, True, True]
    await coalescer.run(b"k", compute)  # nothing in flight any more: computes again
    assert len(calls) == 2


async def test_a_failed_computation_fails_every_waiter_and_a_cancelled_one_is_retried():
    coalescer = Coalescer()
    gate = asyncio.Event()

    async def fails():
        await gate.wait()
        raise ValueError("model failed")

    tasks = [asyncio.create_task(coalescer.run(b"k", fails)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert all(isinstance(r, ValueError) for r in await asyncio.gather(*tasks, return_exceptions=True))

    async def slow():
        await asyncio.sleep(10)  # a computation that never ends within the test: its leader is cancelled

    async def fast():
        return {"y": np.zeros(1)}

    leader = asyncio.create_task(coalescer.run(b"k", slow))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(coalescer.run(b"k", fast))
    await asyncio.sleep(0)
    leader.cancel()  # its client went away; the waiter computes for itself
    outputs, shared = await asyncio.wait_for(waiter, 2)
    assert shared is False and outputs["y"].shape == (1,)
    with pytest.raises(asyncio.CancelledError):
        await leader
