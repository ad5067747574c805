"""Priority levels and queue policies: the PriorityQueue's decisions, the [batching] table's keys, the `priority`
parameter's rule, and the batcher serving by level (a gated fake instance: no wall-clock waiting but the timeouts
under test)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from inference_server.config.model import (
    DEFAULT_MAX_QUEUE_SIZE,
    BatchingConfig,
    QueueConfig,
    QueuePolicy,
    parse_model_batching,
)
from inference_server.errors import ConfigError, ErrorCode, InferenceError
from inference_server.execution.priority import PriorityQueue, queue_for
from inference_server.protocol import rules
from tests.unit.test_batching import FakeInstance, InlineInstance, make, req, settle, submit

LEVELS = QueueConfig(priority_levels=3, default_priority_level=2,
                     priority_queue_policy=((1, QueuePolicy(default_timeout_us=500, allow_timeout_override=True,
                                                            max_queue_size=2)),))


@dataclass(eq=False)
class Item:
    level: int
    arrival: float = 0.0


# -- the queue ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("priority, level", [(0, 2), (1, 1), (3, 3), (4, 2), (2**64 - 1, 2)])
def test_zero_and_priorities_above_the_levels_mean_the_default_level(priority, level):
    assert PriorityQueue(LEVELS, 8).level(priority) == level


def test_without_levels_every_priority_is_the_one_queue():
    queue = PriorityQueue(QueueConfig(default_timeout_us=10), 8)
    assert {queue.level(p) for p in (0, 1, 7)} == {0}


def test_requests_are_served_by_level_then_in_arrival_order_with_delayed_ones_last_in_their_level():
    queue: PriorityQueue[Item] = PriorityQueue(LEVELS, 8)
    low1, high1, mid, low2, high2 = Item(3), Item(1), Item(2), Item(3), Item(1)
    for item in (low1, high1, mid, low2, high2):
        queue.append(item)
    queue.delay(high1)  # timed out under DELAY: behind high2, still ahead of lower levels
    assert list(queue) == [high2, high1, mid, low1, low2] and len(queue) == 5 and queue[0] is high2
    queue.remove(mid)
    assert [queue.popleft() for _ in range(4)] == [high2, high1, low1, low2] and not queue
    with pytest.raises(IndexError):
        queue.popleft()


def test_each_level_is_bounded_by_its_own_max_queue_size():
    queue: PriorityQueue[Item] = PriorityQueue(LEVELS, 3)  # the default policy's bound: levels 2 and 3
    for level in (1, 1, 2, 2, 2, 3):
        assert not queue.full(level)
        queue.append(Item(level))
    assert (queue.full(1), queue.full(2), queue.full(3)) == (2, 3, 0)


def test_a_request_may_only_shorten_its_levels_timeout_and_only_where_allowed():
    queue = PriorityQueue(QueueConfig(priority_levels=2, default_priority_level=2, default_timeout_us=1000,
                                      priority_queue_policy=((1, QueuePolicy(default_timeout_us=1000,
                                                                             allow_timeout_override=True)),)), 8)
    assert [queue.timeout_us(1, t) for t in (None, 0, 10, 5000)] == [1000, 1000, 10, 1000]
    assert queue.timeout_us(2, 10) == 1000  # level 2 allows no override
    nothing = PriorityQueue(QueueConfig(allow_timeout_override=True), 8)
    assert nothing.timeout_us(0, 10) == 0  # no default timeout to shorten: Triton uses none (PolicyQueue::Enqueue)


def test_levels_without_a_policy_are_dropped_once_empty_and_reported_while_they_hold_requests():
    queue: PriorityQueue[Item] = PriorityQueue(LEVELS, 8)
    assert queue.sizes() == [(1, 0), (2, 0)]  # the levels with a policy and the default level stay
    third = Item(3)
    queue.append(third)
    assert queue.sizes() == [(1, 0), (2, 0), (3, 1)]
    queue.remove(third)
    assert queue.sizes() == [(1, 0), (2, 0)]


def test_a_model_with_one_level_and_no_timeouts_keeps_the_plain_deque():
    assert queue_for(QueueConfig(), 8) is None
    assert queue_for(QueueConfig(timeout_action="DELAY"), 8) is not None
    assert queue_for(QueueConfig(priority_levels=1, default_priority_level=1), 8) is not None


# -- the [batching] table -----------------------------------------------------------------------------------------

def test_the_batching_table_takes_tritons_queue_keys():
    batching, queue = parse_model_batching({
        "max_batch_size": 8, "priority_levels": 2, "default_priority_level": 2,
        "default_queue_policy": {"timeout_action": "DELAY", "default_timeout_microseconds": 100,
                                 "allow_timeout_override": True, "max_queue_size": 5},
        "priority_queue_policy": {"1": {"default_timeout_microseconds": 50, "max_queue_size": 0}}},
        "batching.", BatchingConfig())
    assert batching == BatchingConfig(max_batch_size=8, max_queue_size=5)
    assert queue == QueueConfig(priority_levels=2, default_priority_level=2, timeout_action="DELAY",
                                default_timeout_us=100, allow_timeout_override=True,
                                priority_queue_policy=((1, QueuePolicy(default_timeout_us=50, max_queue_size=0)),))
    _, plain = parse_model_batching({"priority_levels": 1, "default_priority_level": 1,
                                     "priority_queue_policy": {"1": {}}}, "batching.", BatchingConfig())
    assert plain.priority_queue_policy == ((1, QueuePolicy(max_queue_size=DEFAULT_MAX_QUEUE_SIZE)),)


@pytest.mark.parametrize("table, key", [
    ({"priority_levels": 2}, "batching.default_priority_level"),
    ({"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": {"3": {}}},
     "batching.priority_queue_policy.3"),
    ({"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": {"one": {}}},
     "batching.priority_queue_policy.one"),
    ({"default_priority_level": 1}, "batching.default_priority_level"),
    ({"default_queue_policy": {"timeout_action": "reject"}}, "batching.default_queue_policy.timeout_action"),
    ({"default_queue_policy": {"default_timeout_us": 5}}, "batching.default_queue_policy.default_timeout_us"),
    ({"default_queue_policy": {"max_queue_size": 5}, "max_queue_size": 5},
     "batching.default_queue_policy.max_queue_size"),
    ({"priority_levels": -1}, "batching.priority_levels"),
])
def test_bad_queue_keys_are_refused_by_name(table, key):
    with pytest.raises(ConfigError) as e:
        parse_model_batching(table, "batching.", BatchingConfig())
    assert e.value.key == key


# -- the request parameter ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, expected", [({}, 0), ({"priority": 0}, 0), ({"priority": 1}, 1),
                                              ({"priority": 2**64 - 1}, 2**64 - 1)])
def test_priority_parameter(params, expected):
    assert rules.priority(params) == expected


@pytest.mark.parametrize("value", [-1, True, 1.0, "1", 2**64])
def test_a_priority_that_is_not_a_non_negative_integer_is_refused(value):
    with pytest.raises(InferenceError) as e:
        rules.priority({"priority": value})
    assert e.value.code is ErrorCode.INVALID_ARGUMENT and "parameter 'priority' must be a non-negative integer" in (
        e.value.message)


# -- the batcher -----------------------------------------------------------------------------------------------

def first_values(inst: FakeInstance) -> list[list[float]]:
    return [[float(v) for v in batch[:, 0]] for batch in inst.batches]


async def test_batches_take_the_highest_priority_requests_first():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=2, policy=LEVELS)
    running = submit(b, 0)
    await inst.running.wait()
    lows = [submit(b, v, priority=3) for v in (10, 11, 12)]
    await settle()
    default = submit(b, 20)  # priority 0: the default level, 2
    highs = [submit(b, v, priority=1) for v in (30, 31)]
    await settle()
    assert b.stats.pending_levels is not None and b.stats.pending_levels() == [(1, 2), (2, 1), (3, 3)]
    inst.gate.set()
    await asyncio.gather(running, *lows, default, *highs)
    assert first_values(inst) == [[0], [30, 31], [20, 10], [11, 12]]
    await b.close()


async def test_reject_answers_unavailable_when_the_timeout_passes_while_the_model_is_busy():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=4, policy=QueueConfig(default_timeout_us=20_000))
    running = submit(b, 0)
    await inst.running.wait()
    expiring = submit(b, 7)
    with pytest.raises(InferenceError) as e:
        await expiring  # while the running batch still runs (Triton's #7512 waits for it)
    assert e.value.code is ErrorCode.UNAVAILABLE and e.value.message == "Request timeout expired"
    assert not running.done()
    inst.gate.set()
    await running
    assert first_values(inst) == [[0]]
    await b.close()


async def test_delay_moves_a_timed_out_request_behind_the_others_of_its_level():
    inst = FakeInstance(gated=True)
    policy = QueueConfig(timeout_action="DELAY", default_timeout_us=60_000_000, allow_timeout_override=True)
    b = make([inst], max_batch_size=1, policy=policy)
    running = submit(b, 0)
    await inst.running.wait()
    late = submit(b, 1, timeout_us=1)  # its own, shorter timeout: allowed
    others = [submit(b, 2), submit(b, 3)]
    while not b._policy._levels[0].delayed:  # until its 1 µs timer has run (yielding to the loop, no fixed wait)
        await asyncio.sleep(0)
    inst.gate.set()
    await asyncio.gather(running, late, *others)
    assert first_values(inst) == [[0], [2], [3], [1]]
    await b.close()


async def test_without_a_timeout_policy_the_timeout_parameter_stays_the_requests_deadline():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=1, policy=QueueConfig(priority_levels=2, default_priority_level=1))
    running = submit(b, 0)
    await inst.running.wait()
    with pytest.raises(InferenceError) as e:
        await submit(b, 1, timeout_us=20_000)
    assert e.value.code is ErrorCode.DEADLINE_EXCEEDED
    inst.gate.set()
    await running
    await b.close()


async def test_a_full_level_refuses_while_other_levels_still_queue():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=1, max_queue_size=1, policy=LEVELS)
    running = submit(b, 0)
    await inst.running.wait()
    queued = [submit(b, 1, priority=1), submit(b, 2, priority=1), submit(b, 3)]
    await settle()
    with pytest.raises(InferenceError) as e:
        await b.submit(req(4), 1, priority=1)
    assert e.value.code is ErrorCode.UNAVAILABLE
    assert e.value.message == "Exceeds maximum queue size (2) of priority level 1 of model 'm'"
    with pytest.raises(InferenceError) as e:
        await b.submit(req(5), 1)
    assert "(1) of priority level 2" in e.value.message
    accepted = submit(b, 6, priority=3)  # level 3 has its own queue
    inst.gate.set()
    await asyncio.gather(running, *queued, accepted)
    assert np.concatenate(inst.batches)[:, 0].tolist() == [0, 1, 2, 3, 6]
    await b.close()


async def test_a_cancelled_request_leaves_its_level():
    inst = FakeInstance(gated=True)
    b = make([inst], max_batch_size=1, policy=LEVELS)
    running = submit(b, 0)
    await inst.running.wait()
    gone = submit(b, 1, priority=3)
    await settle()
    gone.cancel()
    await settle()
    assert b.pending == 0 and b.stats.pending_levels() == [(1, 0), (2, 0)]
    inst.gate.set()
    await running
    await b.close()


async def test_an_inline_model_with_levels_still_runs_a_request_that_finds_the_queue_empty_at_once():
    inst = InlineInstance()
    b = make([inst], inline=True, policy=LEVELS)
    await b.submit(req(3), 1, priority=1, timeout_us=1)
    assert inst.tasks == [asyncio.current_task()]  # not queued: no level to pass, no time in the queue to limit
    await b.close()
