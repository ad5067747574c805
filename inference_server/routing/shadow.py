"""Shadow traffic: copies of a route's requests sent to another model version after the real answer, through
a bounded queue with its own concurrency. A copy that finds the queue full is dropped and counted.

Shadow answers are recorded (outcome counts, durations, the prediction log with a shadow mark, and how far
they are from the primary's answer) and are never returned, never cached, and never delay or fail the real
answer: the request path only does a `put_nowait`.

Shadows take spare capacity only: before each copy a worker waits until the event loop (which parses,
batches and answers every real request) has been busy at most `pause_above_loop_busy_percent` of the last
tenth of a second, and at most `pause_above_in_flight` real requests are in flight (work queued for models
that run in threads or on a GPU). New copies meanwhile fill the queue and are then dropped and counted. The
CPU a shadow model itself takes is its model's: `cpu_priority = "background"` in its config runs it in a
thread of the lowest priority.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from inference_server.config.routes import ShadowConfig
from inference_server.errors import ErrorCode, InferenceError, invalid
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.lifecycle.version import ModelVersion
from inference_server.observability.stats import DURATION_BUCKETS_S, Histogram
from inference_server.routing.split import BUCKETS, bucket

if TYPE_CHECKING:
    from inference_server.observability.tracing import Scope

log = logging.getLogger(__name__)

# Outcomes: ok; error (the shadow failed); unavailable (its version is not loaded); incompatible (its inputs
# differ from the primary's); dropped (the queue was full, or the server stopped before it ran).
OUTCOMES = ("ok", "error", "unavailable", "incompatible", "dropped")
# The largest absolute difference between a shadow output and the primary's (for text outputs: the share of
# elements that differ); an output whose shape differs counts as infinitely different.
PAUSE_POLL_S = 0.05  # how often a paused shadow looks again: each look costs CPU (~0.2 ms here), and the
# loop's load changes only once per BUSY_WINDOW_S anyway
BUSY_WINDOW_S = 0.1  # the event loop's load is measured over windows this long
DIFFERENCE_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0)


class LoopLoad:
    """The share of wall time the event loop's thread spent on the CPU over about the last BUSY_WINDOW_S.
    Made and called on the loop's thread only (time.thread_time is the calling thread's CPU time); it reads as
    fully busy until its first window has passed."""

    def __init__(self, wall: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self._clocks = wall, cpu
        self._wall, self._cpu, self._busy = wall(), cpu(), 1.0

    def busy(self) -> float:
        wall, cpu = self._clocks[0](), self._clocks[1]()
        if wall - self._wall >= BUSY_WINDOW_S:
            self._busy = (cpu - self._cpu) / (wall - self._wall)
            self._wall, self._cpu = wall, cpu
        return self._busy


class ShadowStats:
    """Every route's shadow figures (changed on the loop, read by the scrape thread through copies)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (route, outcome)
        self.duration_s: dict[str, Histogram] = {}  # by route: the shadow's own duration
        self.difference: dict[tuple[str, str], Histogram] = {}  # (route, output)

    def count(self, route: str, outcome: str) -> None:
        self.requests[(route, outcome)] += 1

    def observe(self, route: str, duration_s: float, differences: dict[str, float]) -> None:
        self.requests[(route, "ok")] += 1
        histogram = self.duration_s.get(route)
        if histogram is None:
            histogram = self.duration_s[route] = Histogram(DURATION_BUCKETS_S)
        histogram.observe(duration_s)
        for output, value in differences.items():
            h = self.difference.get((route, output))
            if h is None:
                h = self.difference[(route, output)] = Histogram(DIFFERENCE_BUCKETS)
            h.observe(value)


def difference(shadow: np.ndarray, primary: np.ndarray) -> float:
    if shadow.shape != primary.shape:
        return float("inf")
    if not shadow.size:
        return 0.0
    if shadow.dtype.kind in "biuf" and primary.dtype.kind in "biuf":
        return float(np.max(np.abs(shadow.astype(np.float64) - primary.astype(np.float64))))
    return float(np.mean(shadow != primary))


# A copy's run on the shadow's version (the request runner's `run_copy`: the batcher, or an ensemble's steps, then
# the version's statistics and the prediction log; its `compute` span under the copy's span when traced); raises
# InferenceError when the version fails it.
RunCopy = Callable[[ModelVersion, dict[str, np.ndarray], int, str, "Scope | None"], Awaitable[dict[str, np.ndarray]]]


async def submit_copy(model: ModelVersion, inputs: dict[str, np.ndarray], rows: int, request_id: str,
                      trace: Scope | None = None) -> dict[str, np.ndarray]:
    """A copy straight to the batcher, recorded nowhere else (a shadow built without a request runner). An ensemble
    has no batcher: its copies run through its steps, which only the request runner's `run_copy` does."""
    if model.ensemble is not None:
        raise InferenceError(ErrorCode.FAILED_PRECONDITION, f"shadow '{model.name}' is an ensemble: its copies run "
                                                            "through the request runner (run_copy)")
    return await model.submit(inputs, rows, None, request_id)


@dataclass(slots=True)
class _Copy:
    inputs: dict[str, np.ndarray]
    rows: int
    primary: dict[str, np.ndarray]
    request_id: str
    trace: Scope | None  # the request's InferRequest span, when it was traced


class Shadow:
    def __init__(self, route: str, cfg: ShadowConfig, registry: ModelRegistry, stats: ShadowStats,
                 in_flight: Callable[[], int] = lambda: 0, run: RunCopy = submit_copy) -> None:
        self.route = route
        self._in_flight = in_flight  # real requests in flight now
        self.cfg = cfg
        self._registry = registry
        self._stats = stats
        self._run_copy = run
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue(cfg.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._loop_load: LoopLoad | None = None  # made on the loop's thread with the first copy
        self._closed = False

    def wants(self, key: str | None) -> bool:
        """Whether this request is one of the mirrored share (sticky by routing key; random without one)."""
        b = bucket("shadow:" + key) if key is not None else random.randrange(BUCKETS)
        return b < self.cfg.percent * BUCKETS / 100

    def offer(self, inputs: dict[str, np.ndarray], rows: int, primary: dict[str, np.ndarray],
              request_id: str, trace: Scope | None = None) -> None:
        """From the request path, after its answer: never blocks, never raises. `trace`: the request's span, for a
        traced request (the copy's span goes under it)."""
        if self._closed:
            return
        if not self._workers:
            self._loop_load = LoopLoad()
            # In a context of their own: not the first request's (its request and trace ids on every log line)
            self._workers = [asyncio.get_running_loop().create_task(self._work(), name=f"shadow-{self.route}-{i}",
                                                                    context=contextvars.Context())
                             for i in range(self.cfg.concurrency)]
        try:
            self._queue.put_nowait(_Copy(inputs, rows, primary, request_id, trace))
        except asyncio.QueueFull:
            self._stats.count(self.route, "dropped")

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._spare_capacity()
            except asyncio.CancelledError:  # closed while it waited: dropped like the queued ones
                self._stats.count(self.route, "dropped")
                raise
            try:
                await self._run(copy)
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow must never take the server down; it is counted and logged
                log.exception("route '%s': shadow request %s failed", self.route, copy.request_id)
                self._stats.count(self.route, "error")

    async def _spare_capacity(self) -> None:
        """Until the real traffic leaves room (see the module's docstring)."""
        limit, busy = self.cfg.pause_above_in_flight, self.cfg.pause_above_loop_busy_percent / 100
        assert self._loop_load is not None
        while (limit and self._in_flight() > limit) or (busy < 1 and self._loop_load.busy() > busy):
            await asyncio.sleep(PAUSE_POLL_S)

    async def _run(self, copy: _Copy) -> None:
        scope = None if copy.trace is None else copy.trace.shadow(self.route, self.cfg.model)
        error: BaseException | None
        try:
            outcome, error = await self._outcome(copy, scope)
        except BaseException as e:
            outcome, error = "error", e
            raise
        finally:
            if scope is not None:
                scope.outcome(outcome, error)
                scope.end()

    async def _outcome(self, copy: _Copy, scope: Scope | None) -> tuple[str, InferenceError | None]:
        """Run the copy and count its outcome: the outcome, and the error of one that failed."""
        cfg = self.cfg
        try:
            lease = self._registry.lease(cfg.model, cfg.version)
        except InferenceError as e:
            self._stats.count(self.route, "unavailable")
            return "unavailable", e
        with lease as model:
            if scope is not None:
                scope.served_by(model.version)
            if {s.name for s in model.inputs} != set(copy.inputs):
                self._stats.count(self.route, "incompatible")
                return "incompatible", invalid(f"the shadow's inputs ({', '.join(s.name for s in model.inputs)}) "
                                               f"are not the primary's ({', '.join(copy.inputs)})")
            start = time.perf_counter()
            try:
                outputs = await self._run_copy(model, copy.inputs, copy.rows, copy.request_id, scope)
            except InferenceError as e:
                self._stats.count(self.route, "error")
                log.debug("route '%s': shadow %s v%s failed: %s", self.route, model.name, model.version, e.message)
                return "error", e
            self._stats.observe(self.route, time.perf_counter() - start,
                                {name: difference(outputs[name], copy.primary[name])
                                 for name in outputs if name in copy.primary})
            return "ok", None

    async def close(self) -> None:
        """Stop: copies still queued are dropped and counted (shadows never hold up a shutdown)."""
        self._closed = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
            self._stats.count(self.route, "dropped")
