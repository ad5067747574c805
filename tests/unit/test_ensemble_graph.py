"""Running an ensemble's graph (service/ensemble.py): independent steps run concurrently, a step waits for every
tensor it reads, and a failure cancels the steps still running; a step's tensors change batch form at its boundary
where the ensemble and its model batch differently."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference_server.config.ensemble import EnsembleStep, check_graph
from inference_server.errors import ErrorCode, InferenceError
from inference_server.service.ensemble import ADDED, KEPT, STRIPPED, into_step, out_of_step, run_graph

A = EnsembleStep(0, "a", "", (("x", "IN"),), (("y", "A"),))
B = EnsembleStep(1, "b", "", (("x", "IN"),), (("y", "B"),))
JOIN = EnsembleStep(2, "join", "", (("p", "A"), ("q", "B")), (("s", "OUT"),))
GRAPH = check_graph("fan", ["IN"], ["OUT"], [A, B, JOIN])


async def test_independent_steps_run_concurrently_and_the_join_waits_for_both():
    both_started = asyncio.Event()
    started: list[str] = []

    async def run_step(step: EnsembleStep, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.append(step.model_name)
        if step.model_name == "join":
            return {"s": given["p"] + given["q"]}
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)  # `a` finishes only once `b` has started: concurrency
        return {"y": given["x"] * (2 if step.model_name == "a" else 3)}

    out = await run_graph(GRAPH, {"IN": np.ones(2, np.float32)}, ["OUT"], run_step)
    np.testing.assert_array_equal(out["OUT"], np.full(2, 5, np.float32))
    assert started[2] == "join" and sorted(started[:2]) == ["a", "b"]


async def test_a_failing_step_cancels_its_sibling_and_the_failure_is_raised():
    cancelled = asyncio.Event()

    async def run_step(step: EnsembleStep, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if step.model_name == "a":
            await asyncio.sleep(0)
            raise ValueError("step a broke")
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    with pytest.raises(ValueError, match="step a broke"):
        await run_graph(GRAPH, {"IN": np.ones(2, np.float32)}, ["OUT"], run_step)
    assert cancelled.is_set()


async def test_a_chain_runs_each_step_after_the_one_it_reads():
    first = EnsembleStep(0, "first", "", (("x", "IN"),), (("y", "MID"),))
    second = EnsembleStep(1, "second", "", (("x", "MID"),), (("y", "OUT"),))
    order: list[str] = []

    async def run_step(step: EnsembleStep, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        order.append(step.model_name)
        return {"y": given["x"] + 1}

    graph = check_graph("chain", ["IN"], ["OUT"], [second, first])
    out = await run_graph(graph, {"IN": np.zeros(1)}, ["OUT"], run_step)
    assert order == ["first", "second"] and out["OUT"][0] == 2


def test_a_step_boundary_adds_or_strips_a_batch_of_one_as_views_and_leaves_fitting_tensors_alone():
    row = np.arange(4, dtype=np.float32)
    # a non-batching ensemble's tensor with the batching model's dims: a batch of 1 in front, off its outputs after
    given, done = into_step(A, False, True, {"x": (4,)}, {"x": row})
    assert done == ADDED and given["x"].shape == (1, 4) and np.shares_memory(given["x"], row)
    back = out_of_step(done, {"y": given["x"] * 2})
    assert back["y"].shape == (4,)
    # one that has a batch dimension already (the ensemble declares [-1, 4]) goes as it is, even with a batch of 1
    batch = np.ones((1, 4), np.float32)
    given, done = into_step(A, False, True, {"x": (4,)}, {"x": batch})
    assert done == KEPT and given["x"] is batch
    # a batching ensemble's batch of 1 into a model that does not batch: stripped, and put back on its outputs
    given, done = into_step(A, True, False, {"x": (4,)}, {"x": batch})
    assert done == STRIPPED and given["x"].shape == (4,) and np.shares_memory(given["x"], batch)
    assert out_of_step(done, {"y": row})["y"].shape == (1, 4)
    # a model whose own dims take the batch ([-1, 4]) gets any batch as it is
    rows = np.ones((3, 4), np.float32)
    given, done = into_step(A, True, False, {"x": (-1, 4)}, {"x": rows})
    assert done == KEPT and given["x"] is rows
    # the same batching on both sides: nothing changes
    given, done = into_step(A, True, True, {"x": (4,)}, {"x": rows})
    assert done == KEPT and given["x"] is rows


def test_a_batch_larger_than_one_into_a_model_that_does_not_batch_is_refused_naming_the_tensor():
    with pytest.raises(InferenceError) as e:
        into_step(A, True, False, {"x": (4,)}, {"x": np.ones((3, 4), np.float32)})
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert "ensemble tensor 'IN' (input 'x') has a batch of 3" in e.value.message
    assert "model 'a' does not batch" in e.value.message
