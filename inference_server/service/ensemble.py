"""Running an ensemble's steps: a step starts once every ensemble tensor it reads exists, and steps that do not wait on
each other run concurrently. How a step runs (a normal request to its composing model, through the RequestRunner) is
the caller's `run_step`; the graph's checks were made at load (config/ensemble.py).

Where the ensemble batches and a composing model does not, or the other way round, a step's tensors change shape at
its boundary (`into_step`, `out_of_step`), as Triton's EnsembleContext::ReshapeTensorDims changes them: every
ensemble tensor has the ensemble's form (a leading batch dimension when its max_batch_size > 0), and a step's model
gets its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from inference_server.config.ensemble import Ensemble, EnsembleStep
from inference_server.errors import invalid

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


# -- batch dimensions at a step's boundary --------------------------------------------------------------------------

ADDED, STRIPPED, KEPT = 1, -1, 0  # what into_step did to the step's inputs; out_of_step undoes it on its outputs


def _fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or s == d for s, d in zip(shape, dims, strict=True))


def into_step(step: EnsembleStep, batching: bool, model_batching: bool, dims: Mapping[str, tuple[int, ...]],
              inputs: Mapping[str, np.ndarray]) -> tuple[Arrays, int]:
    """The step's inputs (by the model's tensor names) in the shape its model takes, and what was done: `batching`
    is the ensemble's, `model_batching` and `dims` (each input's dims, without the batch dimension when the model
    batches) the serving version's. Into a batching model from a non-batching ensemble, a tensor that has the
    model's dims gets a batch of 1 in front (ADDED); into a non-batching model from a batching ensemble, a tensor
    whose batch is 1 loses it (STRIPPED), and one whose batch is larger is refused (INVALID_ARGUMENT, naming the
    tensor). A tensor that already fits the model, or fits it in neither shape, goes as it is (validation answers
    the latter). Numpy views: nothing is copied."""
    if batching == model_batching:
        return dict(inputs), KEPT
    tensors = dict(step.input_map)
    done, out = KEPT, {}
    for name, array in inputs.items():
        want = dims.get(name)
        out[name] = array  # as it is, unless it changes below
        if want is None:  # not an input of the model: validation refuses it
            continue
        if model_batching:  # a non-batching ensemble's tensor
            if _fits(array.shape, want):
                out[name], done = array.reshape((1, *array.shape)), ADDED
        elif not _fits(array.shape, want) and array.ndim and _fits(array.shape[1:], want):  # a batch to strip
            if array.shape[0] != 1:
                raise invalid(f"ensemble tensor '{tensors.get(name, name)}' (input '{name}') has a batch of "
                              f"{array.shape[0]}, but model '{step.model_name}' does not batch (max_batch_size 0): "
                              "only a batch of 1 can be given to it")
            out[name], done = array.reshape(array.shape[1:]), STRIPPED
    return out, done


def out_of_step(done: int, outputs: Mapping[str, np.ndarray]) -> Arrays:
    """The step's outputs in the ensemble's form: the batch of 1 into_step added is stripped again, the one it
    stripped added again (views)."""
    if done == ADDED:
        return {name: a.reshape(a.shape[1:]) if a.ndim and a.shape[0] == 1 else a for name, a in outputs.items()}
    if done == STRIPPED:
        return {name: a.reshape((1, *a.shape)) for name, a in outputs.items()}
    return dict(outputs)
