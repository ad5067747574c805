"""DynamicBatcher rules, driven through submit() and close() only, with a gated fake model instance."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference_server.errors import ErrorCode, InferenceError
from inference_server.execution.batching import DynamicBatcher
from inference_server.observability.trace_marks import Marks


class FakeInstance:
    """Records every batch; doubles `x` into `y`. Blocks on `gate` while it is cleared."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.started_at: list[float] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.running = asyncio.Event()
        self.fail_next: list[Exception] = []
        self.drop_row = False

    async def run(self, inputs):
        x = inputs["x"]
        self.batches.append(x.copy())
        self.started_at.append(asyncio.get_running_loop().time())
        self.running.set()
        await self.gate.wait()
        if self.fail_next:
            raise self.fail_next.pop(0)
        y = x * 2
        return {"y": y[1:] if self.drop_row else y}

    @property
    def rows(self) -> list[int]:
        return [len(b) for b in self.batches]


def req(value: float, rows: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


def make(instances, **kw) -> DynamicBatcher:
    kw.setdefault("max_batch_size", 8)
    batcher = DynamicBatcher(instances, name="m", **kw)
    batcher.start()
    return batcher


async def settle() -> None:
    """Let every ready callback and task run (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


def submit(batcher: DynamicBatcher, value: float, rows: int = 1, **kw) -> asyncio.Task:
    return asyncio.create_task(batcher.submit(req(value, rows), rows, **kw))


async def test_batch_closes_at_max_rows_without_waiting_for_delay():
    inst = FakeInstance()
    b = make([inst], max_batch_size=4, max_queue_delay_us=60_000_000)
    tasks = [submit(b, i) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*tasks[:4]), 2)
    await settle()
    assert inst.rows == [4]
    assert not tasks[4].done()  # the fifth waits for the (long) delay
    await b.close()
    assert inst.rows == [4, 1]  # close runs what is queued at once


async def test_request_that_does_not_fit_closes_the_batch_and_starts_the_next():
    inst = FakeInstance()
    b = make([inst], max_batch_size=4, max_queue_delay_us=60_000_000)
    first, second = submit(b, 1, rows=3), submit(b, 2, rows=2)
    await asyncio.wait_for(first, 2)
    assert inst.rows == [3]
    assert not second.done()
    await b.close()
    assert inst.rows == [3, 2] and (await second)["y"].shape == (2, 2)


async def test_batch_closes_when_oldest_request_waited_max_queue_delay():
    inst = FakeInstance()
    delay_s = 0.4
    b = make([inst], max_batch_size=8, max_queue_delay_us=int(delay_s * 1e6))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first = submit(b, 1)
    await asyncio.sleep(delay_s / 2)  # the behaviour under test: a second request arrives while the first waits
    t1 = loop.time()
    second = submit(b, 2)
    await asyncio.gather(first, second)
    assert inst.rows == [2]
    # Anchored on the oldest request (t0 + delay), not on the newest (t1 + delay): no upper bound on how late a busy
    # machine runs the timer, only that it was the first request's (a timer never fires early).
    started = inst.started_at[0]
    assert t0 + delay_s * 0.95 <= started < t1 + delay_s, (started - t0, t1 - t0)
    await b.close()


async def test_batch_keeps_growing_while_every_instance_is_busy():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8, max_queue_delay_us=0)
    first = submit(b, 0)
    await inst.running.wait()
    later = []
    for i in range(1, 6):  # arriving one by one while the model is busy
        later.append(submit(b, i))
        await settle()
    assert inst.rows == [1]  # the slot is taken: nothing else dispatched
    inst.gate.set()
    results = await asyncio.gather(first, *later)
    assert inst.rows == [1, 5]
    assert [float(r["y"][0, 0]) for r in results] == [0, 2, 4, 6, 8, 10]
    await b.close()


async def test_each_request_gets_its_own_rows_back():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8)
    blocker = submit(b, -1)
    await inst.running.wait()
    tasks = [submit(b, v, rows=r) for v, r in ((1, 1), (2, 3), (3, 2))]
    await settle()
    inst.gate.set()
    await blocker
    outs = await asyncio.gather(*tasks)
    assert inst.rows == [1, 6]
    assert [o["y"].shape[0] for o in outs] == [1, 3, 2]
    assert [set(o["y"].ravel().tolist()) for o in outs] == [{2.0}, {4.0}, {6.0}]
    await b.close()


async def test_preferred_batch_size_closes_the_batch_before_the_delay():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8, max_queue_delay_us=60_000_000, preferred_batch_size=[2])
    first = submit(b, 0)
    await settle()
    assert inst.rows == []  # one row is not a preferred size: it waits (here for a long delay)
    second, third = submit(b, 1), submit(b, 2)
    await inst.running.wait()
    assert inst.rows == [2]  # cut at the preferred size; the third request stays queued
    inst.gate.set()
    await asyncio.gather(first, second)
    assert not third.done()
    await b.close()
    assert inst.rows == [2, 1]


async def test_requests_with_different_non_batch_shapes_are_never_mixed():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8)
    blocker = submit(b, 0)
    await inst.running.wait()
    narrow = [asyncio.create_task(b.submit(req(1, width=2), 1)) for _ in range(2)]
    wide = asyncio.create_task(b.submit(req(2, width=3), 1))
    narrow.append(asyncio.create_task(b.submit(req(3, width=2), 1)))
    await settle()
    inst.gate.set()
    await asyncio.gather(blocker, wide, *narrow)
    assert [bt.shape for bt in inst.batches] == [(1, 2), (2, 2), (1, 3), (1, 2)]  # order kept, never mixed
    await b.close()


async def test_queue_full_answers_unavailable():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=1, max_queue_size=2)
    running = submit(b, 0)
    await inst.running.wait()
    queued = [submit(b, 1), submit(b, 2)]
    await settle()
    with pytest.raises(InferenceError) as e:
        await b.submit(req(3), 1)
    assert e.value.code is ErrorCode.UNAVAILABLE and "maximum queue size" in e.value.message
    inst.gate.set()
    await asyncio.gather(running, *queued)
    await b.close()


async def test_expired_request_never_reaches_the_model():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=4)
    running = submit(b, 0)
    await inst.running.wait()
    loop = asyncio.get_running_loop()
    expiring = submit(b, 7, deadline=loop.time() + 0.05)
    keeper = submit(b, 8)
    with pytest.raises(InferenceError) as e:
        await expiring  # fails while the model is still busy: it is not held until a slot frees
    assert e.value.code is ErrorCode.DEADLINE_EXCEEDED
    inst.gate.set()
    await asyncio.gather(running, keeper)
    assert 7.0 not in np.concatenate(inst.batches).ravel()
    assert inst.rows == [1, 1]
    await b.close()


async def test_request_already_past_its_deadline_is_refused():
    b = make([FakeInstance()])
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1), 1, deadline=asyncio.get_running_loop().time() - 1)
    assert e.value.code is ErrorCode.DEADLINE_EXCEEDED
    await b.close()


async def test_cancelled_request_is_not_sent_to_the_model():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8)
    running = submit(b, 0)
    await inst.running.wait()
    cancelled, kept = submit(b, 5), submit(b, 6)
    await settle()
    cancelled.cancel()
    await settle()
    inst.gate.set()
    await asyncio.gather(running, kept)
    assert cancelled.cancelled()
    assert inst.rows == [1, 1] and float(inst.batches[1][0, 0]) == 6.0
    await b.close()


async def test_model_exception_fails_only_its_batch():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8)
    inst.fail_next.append(RuntimeError("boom"))
    doomed = submit(b, 0)
    await inst.running.wait()
    survivors = [submit(b, 1), submit(b, 2)]
    await settle()
    inst.gate.set()
    with pytest.raises(InferenceError) as e:
        await doomed
    assert e.value.code is ErrorCode.INTERNAL and "boom" not in e.value.message  # no internals leaked
    outs = await asyncio.gather(*survivors)
    assert [float(o["y"][0, 0]) for o in outs] == [2.0, 4.0]
    await b.close()


async def test_inference_error_from_the_model_keeps_its_code():
    inst = FakeInstance()
    inst.fail_next.append(InferenceError(ErrorCode.INVALID_ARGUMENT, "bad values"))
    b = make([inst])
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1), 1)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    await b.close()


async def test_wrong_output_row_count_fails_the_batch_with_internal():
    inst = FakeInstance()
    inst.drop_row = True
    b = make([inst])
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1, rows=3), 3)
    assert e.value.code is ErrorCode.INTERNAL and "2 rows for a batch of 3 rows" in e.value.message
    await b.close()


async def test_request_over_max_batch_size_is_rejected():
    inst = FakeInstance()
    b = make([inst], max_batch_size=4)
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1, rows=5), 5)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert inst.batches == []
    await b.close()


async def test_several_instances_run_batches_concurrently():
    a, c = FakeInstance(gated=True), FakeInstance(gated=True)
    b = make([a, c], max_batch_size=1)
    first, second = submit(b, 1), submit(b, 2)
    await asyncio.wait_for(asyncio.gather(a.running.wait(), c.running.wait()), 2)
    a.gate.set()
    c.gate.set()
    await asyncio.gather(first, second)
    assert a.rows == [1] and c.rows == [1]
    await b.close()


async def test_without_batching_every_request_runs_alone():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=0)
    tasks = [asyncio.create_task(b.submit(req(i, rows=2), 1)) for i in range(3)]
    await inst.running.wait()
    inst.gate.set()
    await asyncio.gather(*tasks)
    assert inst.rows == [2, 2, 2]
    await b.close()


async def test_close_runs_queued_requests_then_refuses_new_ones():
    inst = FakeInstance()
    b = make([inst], max_batch_size=8, max_queue_delay_us=60_000_000)
    queued = [submit(b, i) for i in range(3)]
    await settle()
    await b.close()
    assert [float(r["y"][0, 0]) for r in await asyncio.gather(*queued)] == [0, 2, 4]
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1), 1)
    assert e.value.code is ErrorCode.UNAVAILABLE


async def test_close_fails_what_outlives_the_grace_with_unavailable():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=1)
    running, queued = submit(b, 0), submit(b, 1)
    await inst.running.wait()
    await b.close(grace_s=0.05)
    for task in (running, queued):
        with pytest.raises(InferenceError) as e:
            await task
        assert e.value.code is ErrorCode.UNAVAILABLE
    inst.gate.set()


async def test_batcher_counts_executed_batches_by_rows():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8)
    first = submit(b, 0)
    await inst.running.wait()
    rest = [submit(b, i, rows=2) for i in range(3)]
    await settle()
    assert b.pending == 3
    inst.gate.set()
    await asyncio.gather(first, *rest)
    assert b.executed_batches == {1: 1, 6: 1}
    await b.close()


class InlineInstance:
    """Runs on the caller's task without yielding, as an inline ONNX Runtime instance does."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task | None] = []
        self.drop_row = False

    async def run(self, inputs):
        self.tasks.append(asyncio.current_task())
        y = inputs["x"] * 2
        return {"y": y[1:] if self.drop_row else y}


async def test_inline_instance_without_delay_runs_a_request_on_its_own_task():
    inst = InlineInstance()
    b = make([inst], inline=True)
    out = await b.submit(req(3, rows=2), 2)
    np.testing.assert_array_equal(out["y"], np.full((2, 2), 6, dtype=np.float32))
    assert inst.tasks == [asyncio.current_task()]  # not handed to the batch loop
    assert b.executed_batches == {2: 1}
    inst.drop_row = True
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1, rows=2), 2)
    assert e.value.code == ErrorCode.INTERNAL and "returned output 'y' with 1 rows" in e.value.message
    await b.close()


async def test_inline_instance_with_a_delay_still_batches():
    inst = InlineInstance()
    b = make([inst], inline=True, max_queue_delay_us=50_000)
    outs = await asyncio.wait_for(asyncio.gather(*(submit(b, i) for i in range(3))), 2)
    assert [float(o["y"][0, 0]) for o in outs] == [0.0, 2.0, 4.0]
    assert b.executed_batches == {3: 1}
    await b.close()


async def test_next_batch_starts_before_the_previous_batch_is_answered():
    """Answering a batch wakes one task per request; the instance is handed on first, so the model is
    never idle behind them."""
    events: list[str] = []
    inst = FakeInstance(gated=True)
    original_run = inst.run

    async def run(inputs):
        events.append(f"run {len(inputs['x'])}")
        return await original_run(inputs)

    inst.run = run
    b = make([inst], max_batch_size=2)

    async def call(value: float) -> None:
        await b.submit(req(value), 1)
        events.append(f"answer {value:g}")

    first = asyncio.create_task(call(0))
    await inst.running.wait()
    rest = [asyncio.create_task(call(v)) for v in (1, 2)]
    await settle()
    inst.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 2)
    assert events == ["run 1", "run 2", "answer 0", "answer 1", "answer 2"]
    await b.close()


async def test_traced_requests_are_stamped_and_the_traced_requests_of_a_batch_share_its_marks():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8, max_queue_delay_us=0)
    first = Marks()
    running = submit(b, 0, marks=first)
    await inst.running.wait()  # the instance is busy: the next three queue into one batch
    traced = [Marks(), Marks()]
    rest = [submit(b, 1, marks=traced[0]), submit(b, 2, rows=2), submit(b, 3, marks=traced[1])]
    await settle()
    assert all(m.queue_start_ns and not m.compute_start_ns for m in traced)  # queued, not computing
    inst.gate.set()
    await asyncio.gather(running, *rest)
    assert inst.rows == [1, 4]
    assert first.batch is not None and (first.batch.requests, first.batch.rows) == (1, 1)
    batch = traced[0].batch
    assert batch is not None and batch is traced[1].batch and batch is not first.batch
    assert (batch.model, batch.requests, batch.rows) == ("m", 3, 4)  # the untraced request counts in its batch
    for m in traced:
        assert first.compute_end_ns <= m.compute_start_ns
        assert m.queue_start_ns <= m.compute_start_ns == batch.start_ns <= m.compute_end_ns == batch.end_ns
    await b.close()


async def test_a_traced_request_that_expires_in_the_queue_keeps_only_its_queue_start():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8, max_queue_delay_us=0)
    busy = submit(b, 0)
    await inst.running.wait()
    marks = Marks()
    with pytest.raises(InferenceError) as e:
        await b.submit(req(1), 1, deadline=asyncio.get_running_loop().time() + 0.01, marks=marks)
    assert e.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert marks.queue_start_ns and not marks.compute_start_ns and marks.batch is None
    inst.gate.set()
    await busy
    await b.close()


async def test_an_inline_run_stamps_its_marks_as_a_batch_of_its_own():
    marks = Marks()
    b = make([InlineInstance()], inline=True)
    await b.submit(req(3, rows=2), 2, marks=marks)
    assert marks.batch is not None and (marks.batch.requests, marks.batch.rows) == (1, 2)
    assert 0 < marks.queue_start_ns <= marks.compute_start_ns <= marks.compute_end_ns
    await b.close()


async def test_a_failed_execution_still_stamps_its_traced_requests_and_says_why():
    """A batch whose execution raises is still one execution: its traced requests share its marks, with the error
    they are all answered with (the tracing code gives the batch and compute spans that status)."""
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=8, max_queue_delay_us=0)
    busy = submit(b, 0)
    await inst.running.wait()
    traced = [Marks(), Marks()]
    failing = [submit(b, 1, marks=traced[0]), submit(b, 2, marks=traced[1])]
    await settle()
    # the busy request's own batch fails first, then the batch of the two traced ones
    inst.fail_next += [InferenceError(ErrorCode.INVALID_ARGUMENT, "a value out of range"), RuntimeError("boom")]
    inst.gate.set()
    with pytest.raises(InferenceError) as e:
        await busy
    for task in failing:
        with pytest.raises(InferenceError):
            await task
    batch = traced[0].batch
    assert e.value.code == ErrorCode.INVALID_ARGUMENT
    assert batch is not None and batch is traced[1].batch and (batch.requests, batch.rows) == (2, 2)
    assert (batch.error_code, batch.error) == ("INTERNAL", "INTERNAL: RuntimeError: boom")
    assert all(m.compute_start_ns == batch.start_ns <= m.compute_end_ns == batch.end_ns for m in traced)
    await b.close()
