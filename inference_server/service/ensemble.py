"""Running an ensemble's steps: a step starts once every ensemble tensor it reads exists, and steps that do not wait on
each other run concurrently. How a step runs (a normal request to its composing model, through the RequestRunner) is
the caller's `run_step`; the graph's checks were made at load (config/ensemble.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from inference_server.config.ensemble import Ensemble, EnsembleStep

Arrays = dict[str, np.ndarray]
RunStep = Callable[[EnsembleStep, Arrays], Awaitable[Mapping[str, np.ndarray]]]


async def run_graph(graph: Ensemble, inputs: Mapping[str, np.ndarray], outputs: list[str],
                    run_step: RunStep) -> Arrays:
    """The ensemble outputs, from its inputs. A step's failure (or this call's cancellation) cancels the steps still
    running and is raised as it came."""
    tensors: Arrays = dict(inputs)
    waiting = list(graph.steps)
    running: dict[asyncio.Future[Mapping[str, np.ndarray]], EnsembleStep] = {}

    def keep(step: EnsembleStep, produced: Mapping[str, np.ndarray]) -> None:
        for model_tensor, tensor in step.output_map:
            tensors[tensor] = produced[model_tensor]

    try:
        while waiting or running:
            ready = [s for s in waiting if all(t in tensors for _, t in s.input_map)]
            if not ready and not running:  # the load's checks make this unreachable
                raise RuntimeError(f"ensemble steps {[s.index for s in waiting]} can never run")
            for step in ready:
                waiting.remove(step)
            step_inputs = [(s, {model_tensor: tensors[t] for model_tensor, t in s.input_map}) for s in ready]
            if len(step_inputs) == 1 and not running:  # a chain: the step runs here, no task of its own
                step, given = step_inputs[0]
                keep(step, await run_step(step, given))
                continue
            for step, given in step_inputs:
                running[asyncio.ensure_future(run_step(step, given))] = step
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                keep(running.pop(future), future.result())  # a failure is raised here; `finally` cancels the rest
    finally:
        for future in running:
            future.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return {name: tensors[name] for name in outputs}
