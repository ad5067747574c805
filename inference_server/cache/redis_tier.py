"""The Redis tier of the response cache, through redis.asyncio. It fails open: a Redis error, a timeout or an
open circuit makes a lookup a miss and a write a dropped write; no request ever fails because of Redis.

- Lookups made in the same turn of the event loop share one MGET, bounded by short socket timeouts (no
  retries) and a hard asyncio timeout.
- A circuit breaker stops calling Redis after repeated failures and probes it again after a cool-down.
- Writes leave the request path: `put` encodes and enqueues (a full queue drops and counts), and one
  background task sends what is queued as a pipeline of SETs with the entry's TTL. Until an entry is sent,
  lookups of its key are answered from the queue, so an identical request right behind never misses.

Values hold no pickle: `MAGIC`, a little-endian u32 header length, a JSON header (each output's name, numpy
dtype, shape and byte count, and the entry's expiry), then the outputs' raw bytes (BYTES elements framed as on
the wire). A value that does not decode exactly is counted and treated as a miss.

An optional near cache (an in-process MemoryCache) keeps hot entries in front of Redis: a hit there costs no
round trip. It holds an entry no longer than Redis does (the expiry travels in the value).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, NamedTuple, cast

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from inference_server.breaker import OPEN, CircuitBreaker
from inference_server.cache.memory import MemoryCache, Outputs
from inference_server.config.server import redact_url
from inference_server.protocol.tensors import BYTES, DATATYPES, decode_bytes, encode_bytes, is_bytes

log = logging.getLogger(__name__)

MAGIC = b"ISC1"
KEY_PREFIX = b"inference_server:"
BATCH_MAX = 64  # keys in one MGET, writes in one pipeline
_FIXED_DTYPES = {dt.dtype.str for dt in DATATYPES.values() if dt.itemsize}


def encode_outputs(outputs: Outputs, expires_at_ms: int | None = None) -> bytes:
    """expires_at_ms: when the entry expires (Unix time in ms), for near caches that read it from Redis."""
    header: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, array in outputs.items():
        if array.dtype == object:
            raw, dtype = encode_bytes(array), BYTES
        else:
            raw, dtype = np.ascontiguousarray(array).tobytes(), array.dtype.str
        header.append({"name": name, "dtype": dtype, "shape": list(array.shape), "nbytes": len(raw)})
        parts.append(raw)
    head = json.dumps({"expires_at_ms": expires_at_ms, "outputs": header}, separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head, *parts])


def decode_outputs(blob: bytes) -> tuple[Outputs, int | None]:
    """The inverse of encode_outputs: (outputs, expires_at_ms). ValueError (or an InferenceError from BYTES
    framing) if it is not one."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError("not a cache entry of this server")
    end = 8 + int.from_bytes(blob[4:8], "little")
    head = json.loads(blob[8:end])
    header, expires_at_ms = head["outputs"], head["expires_at_ms"]
    if expires_at_ms is not None and not isinstance(expires_at_ms, int):
        raise ValueError("expires_at_ms is not an integer")
    view = memoryview(blob)
    outputs: Outputs = {}
    pos = end
    for entry in header:
        name, dtype, shape, nbytes = entry["name"], entry["dtype"], entry["shape"], entry["nbytes"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(nbytes, int) and 0 <= nbytes <= len(blob) - pos):
            raise ValueError(f"entry for output {name!r} is malformed")
        raw = view[pos:pos + nbytes]
        pos += nbytes
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if is_bytes(dtype):
            outputs[name] = decode_bytes(bytes(raw), count, name).reshape(shape)
        elif dtype in _FIXED_DTYPES and count * np.dtype(dtype).itemsize == nbytes:
            outputs[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        else:
            raise ValueError(f"output {name!r}: {dtype} x {shape} does not fit {nbytes} bytes")
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last output")
    return outputs, expires_at_ms


def now_ms() -> int:
    """Unix time in ms: an entry's expiry as every server sharing the Redis reads it (a timestamp, not a
    duration: durations use the monotonic clock)."""
    return time.time_ns() // 1_000_000


class Write(NamedTuple):
    key: bytes  # with KEY_PREFIX
    blob: bytes
    ttl_s: float | None
    outputs: Outputs


class RedisCache:
    def __init__(self, url: str, *, password: str | None = None, timeout_s: float = 0.1,
                 breaker: CircuitBreaker | None = None, write_queue_size: int = 1024,
                 near: MemoryCache | None = None, client: Any = None) -> None:
        self.location = redact_url(url)
        # The URL's password wins over `password` (redis-py lets URL options override keyword arguments).
        self.client = client if client is not None else Redis.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0))
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker(f"redis cache at {self.location}")
        self._queue: asyncio.Queue[Write] = asyncio.Queue(write_queue_size)
        self._unsent_entries: dict[bytes, Outputs] = {}  # queued or being sent: answered from here meanwhile
        self._writer: asyncio.Task[None] | None = None
        self._unsent = 0  # writes queued or being sent
        self._lookups: list[tuple[bytes, asyncio.Future[bytes | None]]] = []  # waiting for this turn's MGET
        self._tasks: set[asyncio.Task[None]] = set()  # MGETs in flight
        self.errors: Counter[str] = Counter()  # failed calls, by operation: get (an MGET), put (a pipeline), decode
        self.writes: Counter[str] = Counter()  # by result: written, failed, dropped
        self.skipped = 0  # lookups not sent because the circuit was open
        self.near = near  # hot entries kept in process too; None: every lookup goes to Redis
        self.near_hits = 0

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="redis-cache-writer")
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self.client.ping()
        except Exception as e:  # any error of the client's is Redis failing
            self.breaker.failure(describe(e))
            log.warning("response cache: redis at %s does not answer (%s); serving without it until it does",
                        self.location, describe(e))
        else:
            log.info("response cache: redis at %s", self.location)

    async def get(self, key: bytes) -> Outputs | None:
        unsent = self._unsent_entries.get(KEY_PREFIX + key)
        if unsent is not None:  # stored a moment ago; Redis may not have it yet
            return unsent
        if self.near is not None and (near := await self.near.get(key)) is not None:
            self.near_hits += 1
            return near
        if not self.breaker.allow():
            self.skipped += 1
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if not self._lookups:
            loop.call_soon(self._send_lookups)
        self._lookups.append((KEY_PREFIX + key, future))
        blob = await future
        if blob is None:
            return None
        try:
            outputs, expires_at_ms = decode_outputs(blob)
        except Exception as e:  # a foreign or damaged value is a miss, never a failed request
            self.errors["decode"] += 1
            log.warning("response cache: an entry at %s does not decode (%s); treated as a miss", self.location, e)
            return None
        if self.near is not None:  # kept no longer than Redis keeps it
            left_s = None if expires_at_ms is None else (expires_at_ms - now_ms()) / 1e3
            if left_s is None or left_s > 0:
                await self.near.put(key, outputs, left_s)
        return outputs

    def _send_lookups(self) -> None:
        """Every lookup made in this turn of the event loop goes out as one MGET: one round trip, and about a
        tenth of the client's CPU per key of separate GETs."""
        lookups, self._lookups = self._lookups, []
        for i in range(0, len(lookups), BATCH_MAX):
            task = asyncio.create_task(self._mget(lookups[i:i + BATCH_MAX]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _mget(self, batch: list[tuple[bytes, asyncio.Future[bytes | None]]]) -> None:
        blobs: list[bytes | None] = [None] * len(batch)  # misses, unless Redis answers
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # the socket timeouts bound each step
                # bytes, not str: the client does not decode responses
                blobs = cast("list[bytes | None]", await self.client.mget([key for key, _ in batch]))
        except Exception as e:  # any error of the client's is Redis failing
            self.errors["get"] += 1
            self.breaker.failure(describe(e))
            log.debug("response cache lookup of %d keys failed: %s", len(batch), describe(e))
        else:
            self.breaker.success()
        finally:
            for (_, future), blob in zip(batch, blobs, strict=True):
                if not future.done():  # its request may have been cancelled
                    future.set_result(blob)

    async def put(self, key: bytes, outputs: Outputs, ttl_s: float | None) -> None:
        """Enqueue the write and return: it never waits on Redis."""
        if self.near is not None:  # kept even while Redis is away
            await self.near.put(key, outputs, ttl_s)
        if self.breaker.state == OPEN:
            self.writes["dropped"] += 1
            return
        expires_at_ms = None if ttl_s is None else now_ms() + round(ttl_s * 1000)
        write = Write(KEY_PREFIX + key, encode_outputs(outputs, expires_at_ms), ttl_s, outputs)
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            self.writes["dropped"] += 1
        else:
            self._unsent += 1
            self._unsent_entries[write.key] = outputs

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return self._unsent

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                self._unsent -= len(batch)
                for write in batch:
                    if self._unsent_entries.get(write.key) is write.outputs:  # not replaced by a newer put
                        del self._unsent_entries[write.key]
                    self._queue.task_done()

    async def _write(self, batch: list[Write]) -> None:
        if not self.breaker.allow():
            self.writes["dropped"] += len(batch)
            return
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                pipe = self.client.pipeline(transaction=False)
                for write in batch:
                    pipe.set(write.key, write.blob, px=max(1, round(write.ttl_s * 1000)) if write.ttl_s else None)
                await pipe.execute()
        except Exception as e:  # any error of the client's is Redis failing
            self.errors["put"] += 1
            self.writes["failed"] += len(batch)
            self.breaker.failure(describe(e))
            log.debug("response cache write of %d entries failed: %s", len(batch), describe(e))
        else:
            self.breaker.success()
            self.writes["written"] += len(batch)

    async def close(self, grace_s: float = 1.0) -> None:
        """Send what is queued (up to `grace_s`), then stop the writer and close the connections."""
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._queue.join(), grace_s)
            except TimeoutError:
                log.warning("response cache: %d writes not sent at shutdown", self._queue.qsize())
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)  # each is bounded by the timeout
        await self.client.aclose()


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
