"""The load budget: which loaded models make room for one more, and in what order (docs/architecture.md, "Many
models"). One decision, made here only; the ModelManager gathers the facts, asks, and carries the answer out.

A budget is `[server] max_loaded_models` (models loaded at once) and/or `model_memory_budget_mb` (what they take:
each version's `model_size_bytes`, else the process's resident memory growth measured around its load). Before a
load that would exceed it, the least recently used idle models are evicted: idle is no request leased, queued or
waiting for the model, no load or unload under way; never a pinned model nor one named by --load-model, nor a
composing model of such an ensemble or of one the server means to serve (lifecycle/manager.py `_kept`). A load
that could fit once busy models are idle waits (bounded by the request's deadline); one that could not fit even
with every evictable model gone is refused with RESOURCE_EXHAUSTED naming the budget.

Also here: how a load's memory is measured (`rss_bytes`), how an unload hands freed memory back to the operating
system (`release_memory`), and the back-off of a model whose on-demand load failed (`Backoff`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference_server.errors import ErrorCode, InferenceError

log = logging.getLogger(__name__)

MIB = 1 << 20
BACKOFF_FIRST_S = 1.0  # a failed on-demand load is not tried again for this long...
BACKOFF_MAX_S = 60.0  # ...doubling with each failure in a row, up to this


@dataclass(frozen=True, slots=True)
class Resident:
    """A loaded model (or one being loaded) as the budget sees it."""
    name: str
    size: int  # bytes it counts against model_memory_budget_mb
    last_used: int  # larger: used more recently (a lease's sequence number)
    idle: bool  # nothing leased, queued or waiting for it, no operation under way: it may be evicted
    permanent: bool  # pinned, named by --load-model, or composing a kept ensemble: never evicted


class Budget:
    def __init__(self, max_models: int = 0, max_bytes: int = 0) -> None:
        self.max_models = max_models  # 0: no limit
        self.max_bytes = max_bytes  # 0: no limit

    @classmethod
    def from_config(cls, max_loaded_models: int, model_memory_budget_mb: int) -> Budget:
        return cls(max_loaded_models, model_memory_budget_mb * MIB)

    @property
    def on(self) -> bool:
        return bool(self.max_models or self.max_bytes)

    def describe(self) -> str:
        parts = []
        if self.max_models:
            parts.append(f"max_loaded_models = {self.max_models}")
        if self.max_bytes:
            parts.append(f"model_memory_budget_mb = {self.max_bytes // MIB}")
        return ", ".join(parts) or "no budget"

    def fits(self, count: int, size: int) -> bool:
        return (not self.max_models or count <= self.max_models) and (not self.max_bytes or size <= self.max_bytes)

    def plan(self, name: str, size: int, residents: Sequence[Resident]) -> list[str] | None:
        """What to evict, least recently used first, so that `name` (`size` bytes, not among `residents`) fits;
        [] when it fits as things are; None when it would fit only once busy models are idle (wait and ask again).
        Raises RESOURCE_EXHAUSTED when it cannot fit even with every evictable model gone."""
        count = len(residents) + 1
        total = sum(r.size for r in residents) + size
        if self.fits(count, total):
            return []
        fixed = [r for r in residents if r.permanent]
        if not self.fits(len(fixed) + 1, sum(r.size for r in fixed) + size):
            raise self.exhausted(name, size, fixed)
        victims = []
        for r in sorted((r for r in residents if r.idle and not r.permanent), key=lambda r: r.last_used):
            victims.append(r.name)
            count -= 1
            total -= r.size
            if self.fits(count, total):
                return victims
        return None  # busy models hold the room: it frees up when they are idle

    def over(self, residents: Sequence[Resident]) -> list[str]:
        """After a load whose measured size exceeded its estimate: the idle models to evict (least recently used
        first) to come back within the budget, as far as idle ones allow."""
        count, total = len(residents), sum(r.size for r in residents)
        victims: list[str] = []
        for r in sorted((r for r in residents if r.idle and not r.permanent), key=lambda r: r.last_used):
            if self.fits(count, total):
                break
            victims.append(r.name)
            count -= 1
            total -= r.size
        return victims

    def exhausted(self, name: str, size: int, fixed: Sequence[Resident] = ()) -> InferenceError:
        held = (f"; models never evicted (pinned, --load-model, an ensemble's composing models) hold {len(fixed)} "
                f"({_mib(sum(r.size for r in fixed))})") \
            if fixed else ""
        return InferenceError(ErrorCode.RESOURCE_EXHAUSTED,
                              f"model '{name}' ({_mib(size)}) does not fit the model budget ({self.describe()})"
                              f"{held}")

    def busy(self, name: str) -> InferenceError:
        return InferenceError(ErrorCode.RESOURCE_EXHAUSTED,
                              f"model '{name}' cannot load within the model budget ({self.describe()}): every model "
                              "that could make room has requests in flight; try again shortly")


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


class Backoff:
    """A model whose on-demand load failed is not tried again on every request: for BACKOFF_FIRST_S, doubling with
    each failure in a row up to BACKOFF_MAX_S, requests are answered UNAVAILABLE with the failure's reason."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._failed: dict[str, tuple[int, float, str]] = {}  # name -> (failures in a row, retry at, reason)

    def failed(self, name: str, reason: str, now: float) -> float:
        """Record a failure; returns how long the model is left alone."""
        failures = self._failed.get(name, (0, 0.0, ""))[0] + 1
        wait_s = min(self.max_s, self.first_s * 2 ** (failures - 1))
        self._failed[name] = (failures, now + wait_s, reason)
        return wait_s

    def check(self, name: str, now: float) -> None:
        """UNAVAILABLE with the last failure's reason while the model is backed off."""
        entry = self._failed.get(name)
        if entry is not None and now < entry[1]:
            failures, until, reason = entry
            raise InferenceError(ErrorCode.UNAVAILABLE,
                                 f"model '{name}' failed to load ({failures} time{'s' if failures > 1 else ''} in a "
                                 f"row); next try in {until - now:.1f}s: {reason}")

    def clear(self, name: str) -> None:
        self._failed.pop(name, None)


# -- memory --------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident memory now (Linux: /proc/self/statm, its second field in pages); 0 elsewhere. A load
    is measured as the growth of this across it, so loads running at once (two threads) blur each other's figure;
    a model's `model_size_bytes` avoids the measurement."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return getattr(libc, "malloc_trim", None) if libc is not None else None  # glibc only
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """After sessions closed (in a worker thread): ask glibc to give its arenas' free pages back to the system
    (malloc_trim(0)); without it the freed memory of many unloads stays in the process (freed, but resident). The
    sessions are closed explicitly (OnnxBackend.close), so no gc.collect() is needed: a full collection per eviction
    held the GIL for tens of milliseconds under thrashing."""
    if _TRIM is not None:
        _TRIM(0)
