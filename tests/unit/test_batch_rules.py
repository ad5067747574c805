"""The two batch rules (config/model.py), and that each place that checks one agrees with it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from inference_server.config.model import (
    BatchingConfig,
    ModelConfig,
    WarmupConfig,
    parse_batching,
    preferred_sizes_fit,
    rows_fit,
)
from inference_server.errors import ConfigError, ErrorCode, InferenceError, ModelLoadError
from inference_server.execution.backend import TensorSpec
from inference_server.execution.batching import check_rows
from inference_server.lifecycle.triton_model import model_config_from_triton
from inference_server.lifecycle.version import resolve_batching, warm_up
from inference_server.protocol.tensors import Tensor
from inference_server.service.validation import validate_inputs


def test_rows_fit_up_to_max_batch_size_and_anything_fits_a_model_that_does_not_batch():
    assert rows_fit(1, 4) and rows_fit(4, 4)
    assert not rows_fit(5, 4)
    assert rows_fit(1000, 0)  # 0: requests run whole, one at a time


def test_preferred_sizes_fit_up_to_max_batch_size_and_none_fit_a_model_that_does_not_batch():
    assert preferred_sizes_fit((), 0) and preferred_sizes_fit((), 4)
    assert preferred_sizes_fit((2, 4), 4)
    assert not preferred_sizes_fit((2, 5), 4)
    assert not preferred_sizes_fit((1,), 0)


def test_check_rows_refuses_with_the_batchers_message():
    check_rows(4, 4, "m")
    check_rows(9, 0, "m")
    with pytest.raises(InferenceError) as e:
        check_rows(5, 4, "m")
    assert e.value.code == ErrorCode.INVALID_ARGUMENT
    assert e.value.message == "batch size 5 exceeds the maximum batch size 4 of model 'm'"


class Defaults:
    device, execution, batching = "auto", "auto", BatchingConfig()


def batchable_backend():
    spec = TensorSpec("x", "FP32", (-1, 3))
    return SimpleNamespace(inputs=(spec,), outputs=(spec,))


CASES = [((), 0), ((1,), 0), ((2, 4), 4), ((5,), 4), ((4,), 4), ((8,), 16)]


@pytest.mark.parametrize(("preferred", "max_batch_size"), CASES)
def test_every_place_that_checks_preferred_sizes_agrees_with_the_rule(preferred, max_batch_size):
    fits = preferred_sizes_fit(preferred, max_batch_size)
    table = {"max_batch_size": max_batch_size, "preferred_batch_size": list(preferred)}
    triton = {"max_batch_size": max_batch_size, "dynamic_batching": {"preferred_batch_size": list(preferred)}}
    cfg = ModelConfig(name="m", batching=BatchingConfig(max_batch_size=max_batch_size,
                                                        preferred_batch_size=preferred))
    checks = [
        (lambda: parse_batching(table, "batching.", BatchingConfig()), ConfigError),
        (lambda: model_config_from_triton(triton, name="m", defaults=Defaults(), where="m:"), ConfigError),
        (lambda: resolve_batching(cfg, batchable_backend()), ModelLoadError),
    ]
    for check, error in checks:
        if fits:
            check()
        else:
            with pytest.raises(error, match="preferred_batch_size"):
                check()


ROWS = [(1, 4), (4, 4), (5, 4), (9, 8)]


@pytest.mark.parametrize(("rows", "max_batch_size"), ROWS)
def test_every_place_that_checks_rows_agrees_with_the_rule(rows, max_batch_size):
    fits = rows_fit(rows, max_batch_size)
    spec = TensorSpec("x", "FP32", (-1, 3))
    model = SimpleNamespace(name="m", max_batch_size=max_batch_size, inputs=(spec,))
    tensor = Tensor("x", "FP32", (rows, 3), np.zeros((rows, 3), np.float32))
    backend = SimpleNamespace(inputs=(spec,), instances=[SimpleNamespace(run_sync=lambda inputs: None)])
    cfg = ModelConfig(name="m", warmup=WarmupConfig(batch_sizes=(rows,)))
    checks = [
        (lambda: validate_inputs(model, [tensor]), InferenceError),
        (lambda: check_rows(rows, max_batch_size, "m"), InferenceError),  # the batcher's check
        (lambda: warm_up(cfg, backend, max_batch_size), ModelLoadError),
    ]
    for check, error in checks:
        if fits:
            check()
        else:
            with pytest.raises(error, match=f"batch size {rows} exceeds"):
                check()
