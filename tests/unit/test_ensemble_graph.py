"""Running an ensemble's graph (service/ensemble.py): independent steps run concurrently, a step waits for every
tensor it reads, and a failure cancels the steps still running."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from inference_server.config.ensemble import EnsembleStep, check_graph
from inference_server.service.ensemble import run_graph

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
