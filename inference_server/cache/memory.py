"""Response cache: a digest of what determines the answer, looked up before the request is queued.

The key (`cache_key`) is a BLAKE2b digest over the model name, the resolved version, every input's name,
datatype, shape and bytes (inputs in name order), and the requested outputs; it is prefixed with model,
version and a digest of the model file, so neither a new version nor a version reloaded from another file
ever serves an old answer. Triton's hash covers only input bytes, so two inputs
equal in bytes but different in shape or datatype collide there; here they cannot.

Values are the outputs the request asked for (name -> array); a hit answers with exactly those. `MemoryCache`
is an in-process LRU bounded in bytes with a TTL; `redis_cache.RedisCache` is the shared tier. `Coalescer`
makes concurrent identical requests share one lookup and, on a miss, one model execution.

The in-process bound counts what an entry costs the process (`entry_bytes`), not just its arrays' bytes: a
small answer (the 1-8 rows of a cheap model, 40-320 bytes of floats) costs about 950 bytes once its key, its
dict, its array objects, the allocators' rounding and the LRU's own tables are counted, so a bound of array
bytes alone let the process grow to several times it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

Outputs = dict[str, np.ndarray]


def cache_key(model: str, version: str, inputs: Mapping[str, tuple[str, np.ndarray]],
              requested: Sequence[str], revision: str = "") -> bytes:
    """inputs: name -> (v2 datatype, array). revision: a digest of the model file, so a version reloaded from a
    different file never answers from its previous file's entries."""
    digest = hashlib.blake2b(digest_size=32)
    for part in (model, version, revision):
        digest.update(len(part).to_bytes(4, "little") + part.encode())
    for name in sorted(inputs):
        datatype, array = inputs[name]
        header = f"{name}\0{datatype}\0{','.join(map(str, array.shape))}".encode()
        digest.update(len(header).to_bytes(4, "little") + header)
        if array.dtype == object:  # BYTES: each element length-prefixed, str as UTF-8
            for element in array.ravel():
                raw = element.encode() if isinstance(element, str) else bytes(element)
                digest.update(len(raw).to_bytes(4, "little") + raw)
        else:
            raw = np.ascontiguousarray(array).tobytes()
            digest.update(len(raw).to_bytes(8, "little") + raw)
    wanted = "\0".join(requested).encode()
    digest.update(len(wanted).to_bytes(4, "little") + wanted)
    return f"{model}:{version}:{revision}:".encode() + digest.digest()


def outputs_nbytes(outputs: Outputs) -> int:
    """The answer's payload: its arrays' bytes (a BYTES element's length). What `[cache] max_entry_bytes` limits."""
    return sum(a.nbytes if a.dtype != object else sum(len(x) for x in a.ravel()) for a in outputs.values())


def _pymalloc(n: int) -> int:
    """What CPython's allocator hands out for n bytes: 16-byte blocks up to 512 bytes, malloc beyond."""
    return (n + 15) & ~15 if n <= 512 else _malloc(n)


def _malloc(n: int) -> int:
    """glibc malloc on 64-bit: an 8-byte header, 16-byte chunks, 32 at least (numpy's data and dims use it)."""
    return max(32, (n + 8 + 15) & ~15)


# Per entry, beyond its key, its outputs dict and its arrays: the (expires, outputs, size) tuple, its float and
# its int (64, 24 in a 32-byte block, 32), the OrderedDict's node (32) and its share of the OrderedDict's tables,
# which a dict that churns keeps between 3 and 6 slots per entry, 28 bytes a slot (24 + 4 + 8 for the entries,
# the index and the OrderedDict's node array): 84 to 168 bytes, 126 counted. Checked against tracemalloc in
# tests/unit/test_cache.py and against the server's RSS in tests/system/test_cache_memory.py.
_ENTRY_OVERHEAD = 64 + 32 + 32 + 32 + 126


def entry_bytes(key: bytes, outputs: Outputs) -> int:
    """What an entry holding these (owned, contiguous) arrays under `key` costs the process, in bytes."""
    size = _ENTRY_OVERHEAD + _pymalloc(sys.getsizeof(key)) + _pymalloc(sys.getsizeof(outputs))
    for array in outputs.values():
        size += _pymalloc(sys.getsizeof(array) - array.nbytes) + _malloc(array.nbytes)
        size += _malloc(16 * max(array.ndim, 1))  # numpy's block for the shape and strides
        if array.dtype == object:  # the elements themselves (bytes or str objects), each its own block
            size += sum(_pymalloc(sys.getsizeof(element)) for element in array.ravel())
    return size


class ResponseCache(Protocol):
    async def start(self) -> None: ...
    async def get(self, key: bytes) -> Outputs | None: ...
    async def put(self, key: bytes, outputs: Outputs, ttl_s: float | None) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """LRU bounded in the bytes its entries cost the process (`entry_bytes`), entries expire after their TTL
    (monotonic clock)."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float | None, Outputs, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0

    async def get(self, key: bytes) -> Outputs | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, outputs, _ = entry
        if expires is not None and self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return outputs

    async def put(self, key: bytes, outputs: Outputs, ttl_s: float | None) -> None:
        # Copies: a cached answer must not keep the whole batch's output arrays alive, and owned arrays are
        # what entry_bytes counts.
        stored = {name: array.copy() for name, array in outputs.items()}
        size = entry_bytes(key, stored)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._entries[key] = (expires, stored, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, key: bytes) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size


class Coalescer:
    """Concurrent callers with the same key share one computation: the first computes, the rest await it."""

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Future[Outputs]] = {}

    async def run(self, key: bytes, compute: Callable[[], Awaitable[Outputs]]) -> tuple[Outputs, bool]:
        """(outputs, whether this caller waited on another's computation)."""
        while (pending := self._inflight.get(key)) is not None:
            try:
                return await asyncio.shield(pending), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller was cancelled
                # the computing caller went away: compute again (or join whoever does)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            outputs = await compute()
        except Exception as e:
            future.set_exception(e)
            future.exception()  # marked retrieved: with no waiter there is nothing to warn about
            raise
        except BaseException:
            future.cancel()  # waiters compute again
            raise
        else:
            future.set_result(outputs)
            return outputs, False
        finally:
            del self._inflight[key]
