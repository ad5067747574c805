"""DynamicBatcher: one queue per model version, batches counted in rows, one batch per free instance.

Rules (Triton's dynamic batcher semantics):
- A batch holds at most `max_batch_size` rows (dim 0); a request is never split.
- An execution slot (a free model instance) is taken *before* a batch closes, so while every instance is
  busy the queue keeps growing into the next batch.
- With a slot in hand the batch closes when it is full (max rows, or the next request does not fit or has
  other non-batch shapes), when its rows reach a preferred size, or when the oldest queued request has
  waited `max_queue_delay_us`.
- Requests whose non-batch shapes or dtypes differ are never mixed; order is kept.
- Cancelled and expired requests leave the queue and never reach the model.
- Priority levels and queue policies (Triton's, execution/priority.py): a model with them queues in a
  PriorityQueue instead of the plain deque, so batches take the highest-priority requests first; a request whose
  queue timeout passes is answered UNAVAILABLE ("Request timeout expired") or, under DELAY, moved behind the
  others of its level; a level's max_queue_size bounds that level. Its timer fires when the timeout passes,
  not when the running batch ends. Without them nothing of this runs: one deque, as before.
- Dim 0 of every output must equal the batch's rows, otherwise the whole batch fails with INTERNAL.
- Inline instances (cheap models run on the event loop) with no queue delay: a request that finds the
  queue empty runs at once, as a batch of its own. An inline run never yields to the loop, so no other
  request can arrive to join it; queueing it would only add a task switch.
Each request's future lives in its queue item; no side table keyed by id. A traced request brings its `Marks`
(observability/trace_marks.py): the batcher stamps when it was queued and when its batch began and ended computing;
the tracing code makes the spans of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inference_server.config.model import QueueConfig, rows_fit
from inference_server.errors import ErrorCode, InferenceError, QueueFull, internal, invalid, unavailable
from inference_server.execution.backend import ModelInstance
from inference_server.execution.priority import PriorityQueue, queue_for
from inference_server.observability.logs import Throttled
from inference_server.observability.stats import ModelStats
from inference_server.observability.trace_marks import BatchMarks, Marks
from inference_server.protocol.tensors import concatenate_aligned

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]


@dataclass(slots=True, eq=False)
class _Item:
    inputs: Arrays
    rows: int
    signature: tuple[tuple[str, str, tuple[int, ...]], ...]
    arrival: float
    deadline: float | None
    future: asyncio.Future[dict[str, np.ndarray]]
    request_id: str
    marks: Marks | None = None  # a traced request's moments
    level: int = 0  # its priority level (0 without levels)
    timeout_at: float | None = None  # when its queue policy's timeout passes (REJECT); None: none applies
    queued: bool = True
    waited_s: float = 0.0  # time in the queue, set when the item leaves it for a batch


def _set_result(future: asyncio.Future, value: dict[str, np.ndarray]) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _expired() -> InferenceError:
    return InferenceError(ErrorCode.DEADLINE_EXCEEDED, "request timeout expired while queued")


def _timed_out() -> InferenceError:
    """A queue policy's REJECT: Triton's status and words (core's dynamic_batch_scheduler)."""
    return InferenceError(ErrorCode.UNAVAILABLE, "Request timeout expired")


def check_rows(rows: int, max_batch_size: int, model: str) -> None:
    """INVALID_ARGUMENT for a request of more rows than one batch of the model holds (config.rows_fit)."""
    if not rows_fit(rows, max_batch_size):
        raise invalid(f"batch size {rows} exceeds the maximum batch size {max_batch_size} of model '{model}'")


class DynamicBatcher:
    def __init__(self, instances: Sequence[ModelInstance], *, max_batch_size: int, max_queue_delay_us: int = 0,
                 preferred_batch_size: Sequence[int] = (), max_queue_size: int = 0, name: str = "model",
                 inline: bool = False, stats: ModelStats | None = None, policy: QueueConfig | None = None) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one model instance")
        self.name = name
        self._failures = Throttled(log)  # a model failing every batch logs about once a second
        self._instances = list(instances)
        self._max_rows = max_batch_size  # 0: no batching, every request runs on its own
        self._delay_s = max_queue_delay_us / 1e6
        self._preferred = frozenset(preferred_batch_size)
        self._max_queue = max_queue_size
        self._run_at_once = inline and not max_queue_delay_us
        # `policy`: priority levels and queue policies, when the model has any; else the one plain deque.
        self._policy: PriorityQueue[_Item] | None = queue_for(policy, max_queue_size) if policy is not None else None
        self._queue: deque[_Item] | PriorityQueue[_Item] = deque() if self._policy is None else self._policy
        self._wakeup = asyncio.Event()
        self._free: asyncio.Queue[ModelInstance] = asyncio.Queue()
        self._running: dict[asyncio.Task[None], list[_Item]] = {}  # executing batches
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.executed_batches: Counter[int] = Counter()  # batches handed to the model, by row count
        # The statistics belong to the model version, which hands them in; the batcher records into them.
        self.stats = stats if stats is not None else ModelStats()
        # len of the queue itself, not a closure over the batcher: batcher -> stats -> batcher would be a
        # reference cycle that keeps a closed version's sessions in memory until a full garbage collection.
        self.stats.pending = functools.partial(len, self._queue)
        self.stats.max_queue_size = max_queue_size
        self.stats.pending_levels = self._policy.sizes if self._policy is not None and self._policy.priority_levels \
            else None

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not yet in a batch)."""
        return len(self._queue)

    def start(self) -> None:
        for instance in self._instances:
            self._free.put_nowait(instance)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._loop_done)

    async def submit(self, inputs: Arrays, rows: int, deadline: float | None = None,
                     request_id: str = "", marks: Marks | None = None, priority: int = 0,
                     timeout_us: int | None = None) -> dict[str, np.ndarray]:
        """Queue one request of `rows` rows; returns its own rows of every output. `marks`: a traced request's,
        stamped as it goes. `priority` and `timeout_us`: Triton's request parameters (0 and None: none given)."""
        if self._closing or self._task is None:
            raise unavailable(f"model '{self.name}' is not accepting requests (shutting down)")
        check_rows(rows, self._max_rows, self.name)
        if self._policy is not None:
            return await self._submit_by_policy(self._policy, inputs, rows, deadline, request_id, marks, priority,
                                                timeout_us)
        if self._max_queue and len(self._queue) >= self._max_queue:
            raise QueueFull(f"Exceeds maximum queue size ({self._max_queue}) of model '{self.name}'")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if timeout_us:  # no queue policy: the request's `timeout` is its own queue deadline
            deadline = _sooner(deadline, now + timeout_us / 1e6)
        if deadline is not None and deadline <= now:
            raise _expired()
        if marks is not None:
            marks.queue_start_ns = time.time_ns()
        if self._run_at_once and not self._queue:
            return await self._run_alone(inputs, rows, request_id, marks)
        signature = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())
        item = _Item(inputs, rows, signature, now, deadline, loop.create_future(), request_id, marks)
        self._queue.append(item)
        self._wakeup.set()
        timer = loop.call_at(deadline, self._expire, item) if deadline is not None else None
        try:
            return await item.future
        except asyncio.CancelledError:
            self._remove(item)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _submit_by_policy(self, queue: PriorityQueue[_Item], inputs: Arrays, rows: int,
                                deadline: float | None, request_id: str, marks: Marks | None, priority: int,
                                timeout_us: int | None) -> dict[str, np.ndarray]:
        """submit() for a model with priority levels or queue timeouts: the request goes to its level's queue,
        bounded by the level's max_queue_size, with its level's timeout."""
        level = queue.level(priority)
        bound = queue.full(level)
        if bound:
            raise QueueFull(f"Exceeds maximum queue size ({bound}) of priority level {level} of model '{self.name}'"
                            if queue.priority_levels else
                            f"Exceeds maximum queue size ({bound}) of model '{self.name}'")
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit_us = 0
        if queue.timeouts:
            limit_us = queue.timeout_us(level, timeout_us)
        elif timeout_us:
            deadline = _sooner(deadline, now + timeout_us / 1e6)
        if deadline is not None and deadline <= now:
            raise _expired()
        if marks is not None:
            marks.queue_start_ns = time.time_ns()
        if self._run_at_once and not queue:  # nothing queued to go before it, no time in the queue to limit
            return await self._run_alone(inputs, rows, request_id, marks)
        signature = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())
        item = _Item(inputs, rows, signature, now, deadline, loop.create_future(), request_id, marks, level)
        queue.append(item)
        self._wakeup.set()
        timers = []
        if deadline is not None:
            timers.append(loop.call_at(deadline, self._expire, item))
        if limit_us:
            at = now + limit_us / 1e6
            if queue.policy(level).timeout_action == "DELAY":
                timers.append(loop.call_at(at, self._delay, item))
            else:
                item.timeout_at = at
                timers.append(loop.call_at(at, self._time_out, item))
        try:
            return await item.future
        except asyncio.CancelledError:
            self._remove(item)
            raise
        finally:
            for timer in timers:
                timer.cancel()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop accepting; run what is queued and in flight; after `grace_s` fail the rest (UNAVAILABLE)."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._drained()), grace_s)
            batches = sum(self.executed_batches.values())
            rows = sum(r * n for r, n in self.executed_batches.items())
            log.info("model '%s': executed %d batches, %d rows (mean %.2f rows per batch)",
                     self.name, batches, rows, rows / batches if batches else 0.0)
        except TimeoutError:
            log.warning("model '%s': drain grace of %.1fs expired; failing %d queued and %d running batches",
                        self.name, grace_s, len(self._queue), len(self._running))
            self._task.cancel()
            error = unavailable(f"model '{self.name}' shut down before the request finished")
            self._fail_queued(error)
            for batch in self._running.values():
                self._fail(batch, error)

    async def _drained(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        while self._running:  # batches formed while draining are added as the loop runs
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the batch loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            instance = await self._free.get()  # the slot first: the batch keeps growing meanwhile
            batch = await self._next_batch()
            if batch is None:
                self._free.put_nowait(instance)
                return
            task = asyncio.create_task(self._execute(instance, batch))
            self._running[task] = batch
            task.add_done_callback(self._running.pop)

    async def _next_batch(self) -> list[_Item] | None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            count, full, preferred = self._scan()
            oldest = self._queue[0].arrival if self._policy is None else self._policy.oldest(count)
            wait_s = oldest + self._delay_s - loop.time()
            if full or wait_s <= 0 or self._closing:
                batch = self._take(count, loop.time())
            elif preferred:
                batch = self._take(preferred, loop.time())
            else:
                # Sleep until a new request arrives or the oldest one has waited long enough. Clearing
                # the event is race-free: nothing else runs between the scan above and this wait.
                self._wakeup.clear()
                timer = loop.call_at(loop.time() + wait_s, self._wakeup.set)
                await self._wakeup.wait()
                timer.cancel()
                continue
            if batch:
                return batch

    def _scan(self) -> tuple[int, bool, int]:
        """How many head items form a batch, whether it can grow no more, and the preferred cut."""
        if not self._max_rows:
            return 1, True, 0
        head = self._queue[0]
        rows = count = preferred = 0
        for item in self._queue:
            if item.signature != head.signature or rows + item.rows > self._max_rows:
                return count, True, preferred
            rows += item.rows
            count += 1
            if rows in self._preferred:
                preferred = count
            if rows == self._max_rows:
                return count, True, preferred
        return count, False, preferred

    def _take(self, count: int, now: float) -> list[_Item]:
        batch = []
        for _ in range(count):
            item = self._queue.popleft()
            item.queued = False
            item.waited_s = now - item.arrival
            if item.future.done():
                continue  # cancelled by its caller
            if item.deadline is not None and item.deadline <= now:
                _set_exception(item.future, _expired())
                continue
            if item.timeout_at is not None and item.timeout_at <= now:  # its timer is due but has not run yet
                _set_exception(item.future, _timed_out())
                continue
            batch.append(item)
        return batch

    async def _run_alone(self, inputs: Arrays, rows: int, request_id: str,
                         marks: Marks | None) -> dict[str, np.ndarray]:
        self.executed_batches[rows] += 1
        traced = [marks] if marks is not None else None
        try:
            start = time.perf_counter()
            start_ns = _began(traced)
            try:
                outputs = await self._instances[0].run(inputs)
            except BaseException as e:
                if traced:
                    _ended(traced, self.name, 1, rows, start_ns, e)
                raise
            if traced:
                _ended(traced, self.name, 1, rows, start_ns)
            self._check_rows(outputs, rows)
            self.stats.record_batch(rows, [0.0], 0.0, time.perf_counter() - start, 0.0)
            return outputs
        except InferenceError as error:
            self._failures.log(logging.ERROR, "model '%s': batch failed (requests %s): %s", self.name,
                               request_id or "-", error.message)
            raise
        except Exception:
            self._failures.log(logging.ERROR, "model '%s': batch execution raised (requests %s)", self.name,
                               request_id or "-", exc_info=True)
            raise internal(f"model '{self.name}' failed to execute the batch") from None

    async def _execute(self, instance: ModelInstance, batch: list[_Item]) -> None:
        released = False
        try:
            live = [item for item in batch if not item.future.done()]  # dropped while waiting for a slot
            if not live:
                return
            rows = sum(item.rows for item in live)
            traced = [item.marks for item in live if item.marks is not None]
            start = time.perf_counter()
            start_ns = _began(traced)
            if len(live) == 1:
                inputs = live[0].inputs
            else:
                inputs = {name: concatenate_aligned([item.inputs[name] for item in live]) for name in live[0].inputs}
            self.executed_batches[rows] += 1
            input_s = (ran := time.perf_counter()) - start
            try:
                outputs = await instance.run(inputs)
            except BaseException as e:
                if traced:
                    _ended(traced, self.name, len(live), rows, start_ns, e)
                raise
            infer_s = time.perf_counter() - ran
            if traced:
                _ended(traced, self.name, len(live), rows, start_ns)
            # Start the next batch before answering this one: the answers wake one task per request, and
            # the loop would run them all before the batch loop got the instance back.
            self._free.put_nowait(instance)
            released = True
            await asyncio.sleep(0)
            answering = time.perf_counter()
            self._check_rows(outputs, rows)
            if len(live) == 1:
                _set_result(live[0].future, outputs)
            else:
                offset = 0
                for item in live:
                    end = offset + item.rows
                    _set_result(item.future, {name: array[offset:end] for name, array in outputs.items()})
                    offset = end
            self.stats.record_batch(rows, [item.waited_s for item in live], input_s, infer_s,
                                    time.perf_counter() - answering)
        except InferenceError as error:
            self._failures.log(logging.ERROR, "model '%s': batch failed (requests %s): %s", self.name, _ids(batch),
                               error.message)
            self._fail(batch, error)
        except Exception:
            self._failures.log(logging.ERROR, "model '%s': batch execution raised (requests %s)", self.name,
                               _ids(batch), exc_info=True)
            self._fail(batch, internal(f"model '{self.name}' failed to execute the batch"))
        finally:
            if not released:
                self._free.put_nowait(instance)

    def _check_rows(self, outputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        if self._max_rows:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
                    raise internal(f"model '{self.name}' returned output '{name}' with {got} "
                                   f"for a batch of {rows} rows")
        return outputs

    # -- removal paths ---------------------------------------------------------------------------

    def _expire(self, item: _Item) -> None:
        if item.queued:
            self._remove(item)
            _set_exception(item.future, _expired())

    def _time_out(self, item: _Item) -> None:
        """Its queue policy's timeout passed (REJECT): answered at once, whatever the model is running."""
        if item.queued:
            self._remove(item)
            _set_exception(item.future, _timed_out())

    def _delay(self, item: _Item) -> None:
        """Its queue policy's timeout passed (DELAY): behind the other requests of its level, still served."""
        if item.queued and self._policy is not None:
            self._policy.delay(item)
            self._wakeup.set()  # the batch being formed may have changed

    def _remove(self, item: _Item) -> None:
        if item.queued:
            item.queued = False
            self._queue.remove(item)

    @staticmethod
    def _fail(batch: list[_Item], error: InferenceError) -> None:
        for item in batch:
            _set_exception(item.future, error)

    def _fail_queued(self, error: InferenceError) -> None:
        while self._queue:
            item = self._queue.popleft()
            item.queued = False
            _set_exception(item.future, error)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("model '%s': batch loop stopped", self.name, exc_info=task.exception())
            self._closing = True
            self._fail_queued(internal(f"model '{self.name}' batcher stopped"))


def _sooner(deadline: float | None, other: float) -> float:
    return other if deadline is None else min(deadline, other)


def _began(traced: list[Marks] | None) -> int:
    """A batch begins computing: its traced requests' COMPUTE_START (0 when none is traced: no clock read)."""
    if not traced:
        return 0
    now = time.time_ns()
    for marks in traced:
        marks.compute_start_ns = now
    return now


def _ended(traced: list[Marks], model: str, requests: int, rows: int, start_ns: int,
           failed: BaseException | None = None) -> None:
    """The batch computed (or `failed`): its traced requests' COMPUTE_END, and the execution they shared."""
    end_ns = time.time_ns()
    batch = BatchMarks(model, requests, rows, start_ns, end_ns)
    if failed is not None:
        if isinstance(failed, InferenceError):
            batch.error_code, batch.error = failed.code.name, f"{failed.code.name}: {failed.message}"
        else:  # what the requests are answered: internal(...) in the except clauses
            batch.error_code = ErrorCode.INTERNAL.name
            batch.error = f"INTERNAL: {type(failed).__name__}: {failed}"
    for marks in traced:
        marks.compute_end_ns = end_ns
        marks.batch = batch


def _ids(batch: list[_Item]) -> str:
    return ",".join(item.request_id or "-" for item in batch)
