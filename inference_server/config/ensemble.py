"""A Triton ensemble (`platform: "ensemble"`, `ensemble_scheduling`): its steps and the checks Triton makes at load.

Pure data and pure checks, no model in sight: `check_graph` is what the config alone decides (every step names a
model and maps tensors, every tensor is written once, every ensemble input is used, every ensemble output is
produced by exactly one step, every step's inputs can exist, no cycle) and runs when the config is read;
`check_composing` is what the composing models decide (the tensors a step maps are theirs, every input of theirs is
mapped, datatypes and shapes agree wherever a tensor is used, max_batch_size fits) and runs when the ensemble loads,
against the serving versions' signatures. Every refusal is a ConfigError naming the step and the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from inference_server.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One `ensemble_scheduling.step`: a request to `model_name`, its inputs read from ensemble tensors and its outputs
    written to others. Maps are (composing model's tensor, ensemble tensor) pairs, as Triton's key and value."""
    index: int
    model_name: str
    model_version: str  # "" for -1: the version the model serves by default when the step runs
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True, slots=True)
class Ensemble:
    steps: tuple[EnsembleStep, ...]  # in dependency order: a step comes after every step it reads from


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's tensors as an ensemble check sees them: name -> (datatype, dims without the batch dimension when
    max_batch_size > 0), and its max_batch_size."""
    inputs: Mapping[str, tuple[str, tuple[int, ...]]]
    outputs: Mapping[str, tuple[str, tuple[int, ...]]]
    max_batch_size: int


KEY = "ensemble_scheduling"


def _fail(key: str, ensemble: str, message: str) -> ConfigError:
    return ConfigError(key, f"in ensemble '{ensemble}', {message}")


def check_graph(ensemble: str, inputs: list[str], outputs: list[str], steps: list[EnsembleStep],
                key: str = KEY) -> Ensemble:
    """The checks the config alone decides; returns the steps in an order that respects their dependencies. Errors
    are ConfigError at `key`."""
    if not steps:
        raise _fail(key, ensemble, "ensemble_scheduling must have at least one step")
    writer: dict[str, EnsembleStep] = {}
    for step in steps:
        if not step.model_name:
            raise _fail(key, ensemble, f"step {step.index} must name a model (model_name)")
        if not step.input_map:
            raise _fail(key, ensemble, f"{step.describe()} must map its inputs (input_map)")
        if not step.output_map:
            raise _fail(key, ensemble, f"{step.describe()} must map its outputs (output_map)")
        for model_tensor, tensor in step.output_map:
            if tensor in inputs:
                raise _fail(key, ensemble, f"{step.describe()} writes ensemble tensor '{tensor}' (from its output "
                                      f"'{model_tensor}'), which is an ensemble input: a tensor is written once")
            if tensor in writer:
                raise _fail(key, ensemble, f"{step.describe()} writes ensemble tensor '{tensor}', which "
                                      f"{writer[tensor].describe()} writes too: a tensor is written once")
            writer[tensor] = step
    for output in outputs:
        if output not in writer:
            raise _fail(key, ensemble, f"no step writes ensemble output '{output}'")
    read = {tensor for step in steps for _, tensor in step.input_map}
    for name in inputs:
        if name not in read:
            raise _fail(key, ensemble, f"ensemble input '{name}' is not used by any step")
    for step in steps:
        for model_tensor, tensor in step.input_map:
            if tensor not in writer and tensor not in inputs:
                raise _fail(key, ensemble, f"{step.describe()} reads ensemble tensor '{tensor}' (into its input "
                                      f"'{model_tensor}'), which is neither an ensemble input nor written by a step")
    return Ensemble(_ordered(key, ensemble, set(inputs), steps))


def _ordered(key: str, ensemble: str, available: set[str], steps: list[EnsembleStep]) -> tuple[EnsembleStep, ...]:
    """The steps in dependency order (Kahn's); a step that can never run is on a cycle."""
    done: list[EnsembleStep] = []
    waiting = list(steps)
    while waiting:
        ready = [s for s in waiting if all(t in available for _, t in s.input_map)]
        if not ready:
            step = waiting[0]
            missing = next(t for _, t in step.input_map if t not in available)
            raise _fail(key, ensemble, f"{step.describe()} is on a cycle: its input tensor '{missing}' depends on its "
                                  "own output")
        for step in ready:
            done.append(step)
            waiting.remove(step)
            available.update(t for _, t in step.output_map)
    return tuple(done)


def _dims_agree(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == -1 or y == -1 or x == y for x, y in zip(a, b, strict=True))


def check_composing(ensemble: str, own: Signature, graph: Ensemble, composing: Mapping[str, Signature]) -> None:
    """The checks the composing models decide (`composing`: each step's model's serving signature, by name)."""
    seen: dict[str, tuple[str, tuple[int, ...], bool, str]] = {}  # tensor -> datatype, dims, batching, whose
    batching = own.max_batch_size > 0
    for name, (datatype, dims) in {**own.inputs, **own.outputs}.items():
        seen[name] = (datatype, dims, batching, f"ensemble '{ensemble}'")

    def agree(step: EnsembleStep, tensor: str, datatype: str, dims: tuple[int, ...], model_batching: bool) -> None:
        known = seen.get(tensor)
        if known is None:
            seen[tensor] = (datatype, dims, model_batching, f"model '{step.model_name}'")
            return
        other_type, other_dims, other_batching, whose = known
        if other_type != datatype:
            raise _fail(KEY, ensemble, f"{step.describe()}, ensemble tensor '{tensor}': inconsistent datatype: "
                                       f"{datatype} from model '{step.model_name}', {other_type} from {whose}")
        full = (-1, *dims) if model_batching else dims
        other_full = (-1, *other_dims) if other_batching else other_dims
        if not _dims_agree(dims, other_dims) and not _dims_agree(full, other_full):
            raise _fail(KEY, ensemble, f"{step.describe()}, ensemble tensor '{tensor}': inconsistent shape: "
                                  f"{list(full)} from model '{step.model_name}', {list(other_full)} from {whose}")

    for step in graph.steps:
        model = composing[step.model_name]
        if model.max_batch_size and model.max_batch_size < own.max_batch_size:
            raise _fail(KEY, ensemble, f"{step.describe()}: the ensemble's max_batch_size is {own.max_batch_size} but "
                                  f"model '{step.model_name}' allows at most {model.max_batch_size}")
        mapped = [model_tensor for model_tensor, _ in step.input_map]
        for model_tensor, tensor in step.input_map:
            if model_tensor not in model.inputs:
                raise _fail(KEY, ensemble, f"{step.describe()}: ensemble tensor '{tensor}' is mapped to input "
                                      f"'{model_tensor}', which model '{step.model_name}' does not have (its "
                                      f"inputs: {', '.join(model.inputs)})")
            if mapped.count(model_tensor) > 1:
                raise _fail(KEY, ensemble, f"{step.describe()}: input '{model_tensor}' is mapped more than once")
            agree(step, tensor, *model.inputs[model_tensor], model.max_batch_size > 0)
        for name in model.inputs:
            if name not in mapped:
                raise _fail(KEY, ensemble, f"{step.describe()}: input '{name}' of model '{step.model_name}' is not "
                                           "mapped to any ensemble tensor")
        for model_tensor, tensor in step.output_map:
            if model_tensor not in model.outputs:
                raise _fail(KEY, ensemble, f"{step.describe()}: ensemble tensor '{tensor}' is mapped from output "
                                      f"'{model_tensor}', which model '{step.model_name}' does not have (its "
                                      f"outputs: {', '.join(model.outputs)})")
            agree(step, tensor, *model.outputs[model_tensor], model.max_batch_size > 0)
