"""The load budget's decision (lifecycle/budget.py), the back-off of a failed on-demand load, and the settings that
turn them on ([server] keys and flags, a model's `pinned` and `model_size_bytes` in config.toml and config.pbtxt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server.config.cli import load_config
from inference_server.config.server import ServerConfig, parse_model, parse_server
from inference_server.errors import ConfigError, ErrorCode, InferenceError
from inference_server.lifecycle.budget import MIB, Backoff, Budget, Resident, release_memory, rss_bytes
from inference_server.lifecycle.triton_model import model_config_from_triton


def resident(name: str, used: int, *, size: int = 0, idle: bool = True, permanent: bool = False) -> Resident:
    return Resident(name, size, used, idle, permanent)


def test_a_load_that_fits_evicts_nothing():
    assert Budget(max_models=3).plan("c", 0, [resident("a", 1), resident("b", 2)]) == []
    assert Budget().plan("z", 10**12, [resident(str(i), i) for i in range(100)]) == []  # no budget: no limit


def test_the_least_recently_used_idle_model_is_evicted_first():
    residents = [resident("a", 5), resident("b", 2), resident("c", 9), resident("d", 7)]
    assert Budget(max_models=4).plan("e", 0, residents) == ["b"]
    assert Budget(max_models=2).plan("e", 0, residents) == ["b", "a", "d"]


def test_busy_pinned_and_load_model_models_are_never_chosen():
    residents = [resident("busy", 1, idle=False), resident("pinned", 2, permanent=True), resident("idle", 3)]
    assert Budget(max_models=3).plan("new", 0, residents) == ["idle"]


def test_a_load_that_fits_only_once_busy_models_are_idle_waits():
    residents = [resident("a", 1, idle=False), resident("b", 2, idle=False)]
    assert Budget(max_models=2).plan("c", 0, residents) is None


def test_a_load_that_cannot_fit_even_with_every_evictable_model_gone_is_refused_naming_the_budget():
    residents = [resident("p", 1, permanent=True, size=300 * MIB), resident("q", 2, size=10 * MIB)]
    with pytest.raises(InferenceError) as e:
        Budget(max_bytes=400 * MIB).plan("big", 200 * MIB, residents)
    assert e.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "model_memory_budget_mb = 400" in e.value.message and "'big'" in e.value.message
    with pytest.raises(InferenceError) as e:
        Budget(max_models=1).plan("x", 0, [resident("p", 1, permanent=True)])
    assert "max_loaded_models = 1" in e.value.message


def test_a_memory_budget_evicts_by_size_until_the_load_fits():
    residents = [resident("a", 1, size=100 * MIB), resident("b", 2, size=100 * MIB), resident("c", 3, size=100 * MIB)]
    budget = Budget(max_bytes=350 * MIB)
    assert budget.plan("d", 40 * MIB, residents) == []
    assert budget.plan("d", 120 * MIB, residents) == ["a"]
    assert budget.plan("d", 250 * MIB, residents) == ["a", "b"]
    both = Budget(max_models=2, max_bytes=350 * MIB)  # the count and the memory: both must hold
    assert both.plan("d", 10 * MIB, residents) == ["a", "b"]


def test_over_budget_after_a_measured_load_evicts_idle_models_as_far_as_it_can():
    budget = Budget(max_bytes=100 * MIB)
    residents = [resident("new", 9, size=80 * MIB, idle=False), resident("a", 1, size=30 * MIB),
                 resident("b", 2, size=30 * MIB, idle=False)]
    assert budget.over(residents) == ["a"]
    assert budget.over(residents[:1]) == []


def test_backoff_doubles_to_its_cap_and_names_the_reason():
    backoff = Backoff(first_s=1.0, max_s=5.0)
    backoff.check("m", 0.0)  # never failed: nothing to refuse
    assert [backoff.failed("m", "bad file", t) for t in (0.0, 10.0, 20.0, 30.0, 40.0)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(InferenceError) as e:
        backoff.check("m", 41.0)
    assert e.value.code is ErrorCode.UNAVAILABLE and "bad file" in e.value.message and "5 times" in e.value.message
    backoff.check("m", 45.0)  # the back-off is over: the next request tries again
    backoff.clear("m")
    assert backoff.failed("m", "again", 50.0) == 1.0


def test_rss_is_measured_and_release_memory_runs():
    before = rss_bytes()
    assert before > 0  # Linux: /proc/self/statm
    release_memory()


def test_the_server_keys_and_their_flags():
    cfg = load_config(["--model-repository", "/tmp", "--model-control-mode", "explicit", "--load-on-demand",
                       "--max-loaded-models", "4", "--model-memory-budget-mb", "512"], {})
    assert (cfg.load_on_demand, cfg.max_loaded_models, cfg.model_memory_budget_mb) == (True, 4, 512)
    cfg = parse_server({"server": {"model_control_mode": "poll", "repository_poll_secs": 1, "model_repository": "/m",
                                   "load_on_demand": True, "max_loaded_models": 2}})
    assert cfg.load_on_demand and cfg.max_loaded_models == 2
    assert not ServerConfig().load_on_demand and not ServerConfig().max_loaded_models


@pytest.mark.parametrize("key, value", [("load_on_demand", True), ("max_loaded_models", 3),
                                        ("model_memory_budget_mb", 100)])
def test_on_demand_and_budgets_need_explicit_or_poll_mode(key, value):
    with pytest.raises(ConfigError) as e:
        parse_server({"server": {key: value}})
    assert e.value.key == f"server.{key}" and "explicit or poll" in str(e.value)


def test_a_negative_budget_is_refused():
    with pytest.raises(ConfigError) as e:
        parse_server({"server": {"model_control_mode": "explicit", "max_loaded_models": -1}})
    assert e.value.key == "server.max_loaded_models"


def test_pinned_and_model_size_bytes_in_config_toml_and_config_pbtxt():
    cfg = parse_model({"pinned": True, "model_size_bytes": 1234}, "", ServerConfig(), name="m", path=Path("m.onnx"))
    assert cfg.pinned and cfg.model_size_bytes == 1234
    plain = parse_model({}, "", ServerConfig(), name="m", path=Path("m.onnx"))
    assert not plain.pinned and plain.model_size_bytes is None
    doc = {"parameters": {"model_size_bytes": {"string_value": "5000000"}, "pinned": {"string_value": "true"}}}
    triton = model_config_from_triton(doc, name="m", defaults=ServerConfig(), where="config.pbtxt: ")
    assert triton.pinned and triton.model_size_bytes == 5_000_000
    with pytest.raises(ConfigError) as e:
        model_config_from_triton({"parameters": {"pinned": {"string_value": "maybe"}}}, name="m",
                                 defaults=ServerConfig(), where="config.pbtxt: ")
    assert "parameters.pinned" in e.value.key
