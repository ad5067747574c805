"""The Redis tier of the response cache, through redis.asyncio. It fails open: a Redis error, a timeout or an
open circuit makes a lookup a miss and a write a dropped write; no request ever fails because of Redis.

- Lookups are bounded by short socket timeouts (no retries) and a hard asyncio timeout.
- A circuit breaker stops calling Redis after repeated failures and probes it again after a cool-down.
- Writes leave the request path: `put` encodes and enqueues (a full queue drops and counts), and one
  background task sends what is queued as a pipeline of SETs with the entry's TTL.

Values hold no pickle: `MAGIC`, a little-endian u32 header length, a JSON header (each output's name, numpy
dtype, shape and byte count), then the outputs' raw bytes (BYTES elements framed as on the wire). A value
that does not decode exactly is counted and treated as a miss.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .breaker import OPEN, CircuitBreaker
from .cache import Outputs
from .config import redact_url
from .tensors import DATATYPES, decode_bytes, encode_bytes

log = logging.getLogger(__name__)

MAGIC = b"ISC1"
KEY_PREFIX = b"inference_server:"
PIPELINE_MAX = 64  # writes sent in one round trip
_FIXED_DTYPES = {dt.dtype.str for dt in DATATYPES.values() if dt.itemsize}
_FAILURES = (RedisError, OSError, TimeoutError)


def encode_outputs(outputs: Outputs) -> bytes:
    header: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, array in outputs.items():
        if array.dtype == object:
            raw, dtype = encode_bytes(array), "BYTES"
        else:
            raw, dtype = np.ascontiguousarray(array).tobytes(), array.dtype.str
        header.append({"name": name, "dtype": dtype, "shape": list(array.shape), "nbytes": len(raw)})
        parts.append(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head, *parts])


def decode_outputs(blob: bytes) -> Outputs:
    """The inverse of encode_outputs; ValueError (or an InferenceError from BYTES framing) if it is not one."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError("not a cache entry of this server")
    end = 8 + int.from_bytes(blob[4:8], "little")
    header = json.loads(blob[8:end])
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
        if dtype == "BYTES":
            outputs[name] = decode_bytes(bytes(raw), count, name).reshape(shape)
        elif dtype in _FIXED_DTYPES and count * np.dtype(dtype).itemsize == nbytes:
            outputs[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
        else:
            raise ValueError(f"output {name!r}: {dtype} x {shape} does not fit {nbytes} bytes")
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last output")
    return outputs


class RedisCache:
    def __init__(self, url: str, *, password: str | None = None, timeout_s: float = 0.1,
                 breaker: CircuitBreaker | None = None, write_queue_size: int = 1024,
                 client: Any = None) -> None:
        self.location = redact_url(url)
        # The URL's password wins over `password` (redis-py lets URL options override keyword arguments).
        self.client = client if client is not None else Redis.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), client_name="inference_server")
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker(f"redis cache at {self.location}")
        self._queue: asyncio.Queue[tuple[bytes, bytes, float | None]] = asyncio.Queue(write_queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._unsent = 0  # writes queued or being sent
        self.errors: Counter[str] = Counter()  # by operation: get, put, decode
        self.writes: Counter[str] = Counter()  # by result: written, failed, dropped
        self.skipped = 0  # lookups not sent because the circuit was open

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="redis-cache-writer")
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self.client.ping()
        except _FAILURES as e:
            self.breaker.failure(describe(e))
            log.warning("response cache: redis at %s does not answer (%s); serving without it until it does",
                        self.location, describe(e))
        else:
            log.info("response cache: redis at %s", self.location)

    async def get(self, key: bytes) -> Outputs | None:
        if not self.breaker.allow():
            self.skipped += 1
            return None
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # the socket timeouts bound each step
                blob = await self.client.get(KEY_PREFIX + key)
        except _FAILURES as e:
            self.errors["get"] += 1
            self.breaker.failure(describe(e))
            log.debug("response cache lookup failed: %s", describe(e))
            return None
        self.breaker.success()
        if blob is None:
            return None
        try:
            return decode_outputs(blob)
        except Exception as e:  # a foreign or damaged value is a miss, never a failed request
            self.errors["decode"] += 1
            log.warning("response cache: an entry at %s does not decode (%s); treated as a miss", self.location, e)
            return None

    async def put(self, key: bytes, outputs: Outputs, ttl_s: float | None) -> None:
        """Enqueue the write and return: it never waits on Redis."""
        if self.breaker.state == OPEN:
            self.writes["dropped"] += 1
            return
        try:
            self._queue.put_nowait((KEY_PREFIX + key, encode_outputs(outputs), ttl_s))
        except asyncio.QueueFull:
            self.writes["dropped"] += 1
        else:
            self._unsent += 1

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return self._unsent

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PIPELINE_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                self._unsent -= len(batch)
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[tuple[bytes, bytes, float | None]]) -> None:
        if not self.breaker.allow():
            self.writes["dropped"] += len(batch)
            return
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                pipe = self.client.pipeline(transaction=False)
                for key, blob, ttl_s in batch:
                    pipe.set(key, blob, px=max(1, round(ttl_s * 1000)) if ttl_s else None)
                await pipe.execute()
        except _FAILURES as e:
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
        await self.client.aclose()


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
