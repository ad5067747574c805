"""Ensembles in config.pbtxt (`platform: "ensemble"`): parsing, and every check Triton makes at load, each refused
with a message naming the step and the tensor (config/ensemble.py, lifecycle/triton_model.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from inference_server.config.ensemble import Signature, check_composing
from inference_server.config.model import BatchingConfig, ModelConfig
from inference_server.errors import ConfigError
from inference_server.lifecycle.triton_model import model_config_from_triton
from inference_server.protocol.triton_config import pbtxt_to_dict

WHERE = "repo/pipeline/config.pbtxt: "


@dataclass
class Defaults:
    device: str = "auto"
    execution: str = "thread"
    batching: BatchingConfig = field(default_factory=BatchingConfig)


HEAD = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
PRE = 'step [ { model_name: "pre" model_version: -1 input_map { key: "x" value: "RAW" } ' \
      'output_map { key: "y" value: "clean" } } ]'
MLP = 'step [ { model_name: "mlp" model_version: -1 input_map { key: "x" value: "clean" } ' \
      'output_map { key: "y" value: "SCORES" } } ]'


def convert(steps: str, head: str = HEAD) -> ModelConfig:
    text = f"{head}\nensemble_scheduling {{ {steps} }}"
    return model_config_from_triton(pbtxt_to_dict(text), name="pipeline", defaults=Defaults(), where=WHERE)


def refusal(steps: str, head: str = HEAD) -> str:
    with pytest.raises(ConfigError) as info:
        convert(steps, head)
    return str(info.value)


def test_a_chain_parses_into_steps_in_dependency_order():
    cfg = convert(MLP + "\n" + PRE)  # written out of order: the graph orders them
    assert cfg.ensemble is not None
    assert [s.model_name for s in cfg.ensemble.steps] == ["pre", "mlp"]
    pre = cfg.ensemble.steps[0]
    assert (pre.index, pre.model_version, pre.input_map, pre.output_map) == (1, "", (("x", "RAW"),), (("y", "clean"),))
    assert cfg.batching.max_batch_size == 8
    assert [(d.kind, d.name, d.datatype, d.dims) for d in cfg.declared] == [
        ("input", "RAW", "FP32", (4,)), ("output", "SCORES", "FP32", (3,))]


def test_a_step_may_name_a_version():
    cfg = convert(PRE + MLP.replace("model_version: -1", "model_version: 2"))
    assert cfg.ensemble is not None and [s.model_version for s in cfg.ensemble.steps] == ["", "2"]


@pytest.mark.parametrize("steps, words", [
    ("", ["at least one step"]),
    (PRE.replace('model_name: "pre" ', "") + MLP, ["step 0", "must name a model"]),
    (PRE.replace('input_map { key: "x" value: "RAW" } ', "") + MLP, ["step 0 (model 'pre')", "input_map"]),
    (PRE + MLP.replace('output_map { key: "y" value: "SCORES" }', ""), ["step 1 (model 'mlp')", "output_map"]),
    # every output produced by a step
    (PRE + MLP.replace('value: "SCORES"', 'value: "other"'), ["ensemble output 'SCORES'", "no step writes"]),
    # every ensemble input used
    (PRE.replace('value: "RAW"', 'value: "clean"') + MLP, ["ensemble input 'RAW'", "not used"]),
    # a tensor written once: two steps, or a step over an ensemble input
    (PRE + MLP + PRE.replace('"pre"', '"pre2"'), ["step 2 (model 'pre2')", "'clean'", "step 0 (model 'pre')",
                                                  "written once"]),
    (PRE + MLP.replace('value: "SCORES"', 'value: "RAW"'), ["step 1 (model 'mlp')", "'RAW'", "ensemble input"]),
    # a tensor nobody writes
    (PRE + MLP.replace('value: "clean"', 'value: "ghost"'), ["step 1 (model 'mlp')", "'ghost'", "neither"]),
    # a cycle: a -> b -> a
    (PRE + MLP + 'step [ { model_name: "a" input_map { key: "x" value: "t2" } input_map { key: "z" value: "RAW" } '
     'output_map { key: "y" value: "t1" } }, { model_name: "b" input_map { key: "x" value: "t1" } '
     'output_map { key: "y" value: "t2" } } ]', ["cycle", "step 2 (model 'a')", "'t2'"]),
])
def test_a_graph_triton_refuses_is_refused_naming_the_step_and_tensor(steps, words):
    message = refusal(steps)
    assert f"{WHERE}ensemble_scheduling" in message and "in ensemble 'pipeline'" in message
    for word in words:
        assert word in message


def test_an_unused_input_is_refused():
    head = HEAD.replace('input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]',
                        'input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] }, '
                        '{ name: "SPARE" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    assert "ensemble input 'SPARE' is not used by any step" in refusal(PRE + MLP, head)


@pytest.mark.parametrize("extra, key", [
    ('model_warmup [ { name: "w" batch_size: 1 } ]', "model_warmup"),
    ("instance_group [ { count: 2 } ]", "instance_group"),
    ('backend: "python"', "backend"),
    ('parameters { key: "intra_op_thread_count" value { string_value: "1" } }', "parameters"),
    ("model_transaction_policy { decoupled: true }", "model_transaction_policy"),
])
def test_what_an_ensemble_does_not_take_is_refused_by_name(extra, key):
    message = refusal(PRE + MLP, HEAD + extra)
    assert f"'{WHERE}{key}'" in message and "not supported" in message


@pytest.mark.parametrize("scheduler", ["dynamic_batching { }", "sequence_batching { }"])
def test_another_scheduler_beside_ensemble_scheduling_is_refused(scheduler):
    with pytest.raises(ValueError, match=f"{scheduler.split()[0]}.*oneof"):  # Triton's schema: one scheduler
        convert(PRE + MLP, HEAD + scheduler)


def test_max_inflight_requests_is_refused_by_name():
    assert "ensemble_scheduling.max_inflight_requests" in refusal(f"max_inflight_requests: 4 {PRE} {MLP}")


# -- checks against the composing models (made when the ensemble loads) --------------------------------------------

def sig(inputs: dict, outputs: dict, max_batch_size: int = 32) -> Signature:
    return Signature(inputs, outputs, max_batch_size)


GOOD = {"pre": sig({"x": ("FP32", (4,))}, {"y": ("FP32", (4,))}),
        "mlp": sig({"x": ("FP32", (4,))}, {"y": ("FP32", (3,))})}
OWN = sig({"RAW": ("FP32", (4,))}, {"SCORES": ("FP32", (3,))}, 8)


def composing_refusal(composing: dict, own: Signature = OWN) -> str:
    cfg = convert(PRE + MLP)
    assert cfg.ensemble is not None
    with pytest.raises(ConfigError) as info:
        check_composing("pipeline", own, cfg.ensemble, composing)
    return str(info.value)


def test_composing_models_that_agree_pass():
    cfg = convert(PRE + MLP)
    assert cfg.ensemble is not None
    check_composing("pipeline", OWN, cfg.ensemble, GOOD)
    # a model that does not batch fits a batching ensemble when its full shape agrees
    check_composing("pipeline", OWN, cfg.ensemble,
                    {**GOOD, "mlp": sig({"x": ("FP32", (-1, 4))}, {"y": ("FP32", (-1, 3))}, 0)})


@pytest.mark.parametrize("change, words", [
    ({"pre": sig({"x": ("FP32", (4,))}, {"y": ("FP32", (4,))}, 4)},
     ["step 0 (model 'pre')", "max_batch_size is 8", "at most 4"]),
    ({"mlp": sig({"x": ("FP64", (4,))}, {"y": ("FP32", (3,))})},
     ["step 1 (model 'mlp')", "ensemble tensor 'clean'", "inconsistent datatype", "FP64", "FP32"]),
    ({"mlp": sig({"x": ("FP32", (5,))}, {"y": ("FP32", (3,))})},
     ["step 1 (model 'mlp')", "ensemble tensor 'clean'", "inconsistent shape", "[-1, 5]", "[-1, 4]"]),
    ({"mlp": sig({"x": ("FP32", (4,))}, {"y": ("FP32", (2,))})},
     ["step 1 (model 'mlp')", "ensemble tensor 'SCORES'", "inconsistent shape"]),
    ({"pre": sig({"input": ("FP32", (4,))}, {"y": ("FP32", (4,))})},
     ["step 0 (model 'pre')", "ensemble tensor 'RAW'", "input 'x'", "does not have"]),
    ({"pre": sig({"x": ("FP32", (4,)), "mask": ("FP32", (4,))}, {"y": ("FP32", (4,))})},
     ["step 0 (model 'pre')", "input 'mask'", "not mapped"]),
    ({"mlp": sig({"x": ("FP32", (4,))}, {"logits": ("FP32", (3,))})},
     ["step 1 (model 'mlp')", "ensemble tensor 'SCORES'", "output 'y'", "does not have"]),
])
def test_composing_models_that_disagree_are_refused_naming_the_step_and_tensor(change, words):
    message = composing_refusal({**GOOD, **change})
    for word in words:
        assert word in message, message
