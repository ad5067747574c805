"""lifecycle/onnx_flavor.py: an MLmodel's onnx flavour -> the model's session settings, and their precedence."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from inference_server.config.model import BatchingConfig, ModelConfig, parse_model
from inference_server.errors import ConfigError
from inference_server.lifecycle.onnx_flavor import Flavor, Setting, apply_flavor, read_flavor
from inference_server.lifecycle.triton_model import model_config_from_triton
from inference_server.protocol.triton_config import pbtxt_to_dict

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
# As mlflow.onnx.log_model writes it (MLflow 3.18), with every session option it validates and its loader honours.
FLAVOR = {"code": None, "data": "model.onnx", "onnx_version": "1.23.2", "providers": [CPU],
          "onnx_session_options": {"intra_op_num_threads": 2, "inter_op_num_threads": 3, "execution_mode": "Parallel",
                                   "graph_optimization_level": 1,
                                   "extra_session_config": {"session.intra_op.allow_spinning": "0"}}}


@dataclass
class Defaults:
    device: str = "auto"
    execution: str = "auto"
    batching: BatchingConfig = field(default_factory=BatchingConfig)


def settings(flavor: dict[str, Any]) -> dict[str, Any]:
    return {s.field: s.value for s in read_flavor(flavor).settings}


def test_every_option_mlflow_records_maps_to_a_model_setting() -> None:
    assert read_flavor(FLAVOR) == Flavor((
        Setting("device", "cpu", "providers"),
        Setting("intra_op_threads", 2, "onnx_session_options.intra_op_num_threads"),
        Setting("inter_op_threads", 3, "onnx_session_options.inter_op_num_threads"),
        Setting("execution_mode", "parallel", "onnx_session_options.execution_mode"),
        Setting("graph_optimization_level", "basic", "onnx_session_options.graph_optimization_level"),
        Setting("session_config", (("session.intra_op.allow_spinning", "0"),),
                "onnx_session_options.extra_session_config")), ())


@pytest.mark.parametrize(("providers", "device"), [
    ([CUDA, CPU], "auto"),  # mlflow's default: the server's usual choice
    ([CPU], "cpu"),  # CPU only, even on a GPU node
    ([CPU, CUDA], "cpu"),  # CPU first takes every node
    (CPU, "cpu"),  # a lone name, as mlflow's loader takes it
    ([TRT, CUDA, CPU], "auto"),  # the first provider this server runs decides
    (["OpenVINOExecutionProvider", CPU], "cpu"),
    ([[CUDA, {"device_id": 1}], CPU], "auto"),  # a provider with options, as the MLmodel's YAML keeps the tuple
])
def test_the_first_provider_this_server_runs_decides_the_device(providers: Any, device: str) -> None:
    assert settings({"providers": providers}) == {"device": device}


@pytest.mark.parametrize(("flavor", "skipped"), [
    ({"providers": [TRT, CUDA, CPU]}, ("providers TensorrtExecutionProvider",)),
    ({"providers": [[CUDA, {"device_id": 1}], [CPU, {}]]}, ("the options of CUDAExecutionProvider {'device_id': 1}",)),
    ({"providers": [7, CPU]}, ("providers[0] 7",)),
    ({"onnx_session_options": {"enable_cpu_mem_arena": False, "enable_profiling": True, "intra_op_num_threads": 2}},
     ("onnx_session_options.enable_cpu_mem_arena", "onnx_session_options.enable_profiling")),
])
def test_what_this_server_does_not_apply_is_skipped_and_named(flavor: dict[str, Any],
                                                              skipped: tuple[str, ...]) -> None:
    assert read_flavor(flavor).skipped == skipped
    assert all(s.problem is None for s in read_flavor(flavor).settings)


def test_providers_of_which_the_server_runs_none_set_no_device() -> None:
    """MLflow's loader falls back to CPU when it has none of them; this server makes its usual choice."""
    flavor = read_flavor({"providers": ["NoSuchProvider", TRT]})
    assert flavor.settings == ()
    assert flavor.skipped == ("providers NoSuchProvider", "providers TensorrtExecutionProvider",
                              "providers: none of them is one this server runs (CPUExecutionProvider, "
                              "CUDAExecutionProvider), so the server chooses the device")


@pytest.mark.parametrize(("level", "name"), [(0, "disable"), (1, "basic"), (2, "extended"), (99, "all")])
def test_graph_optimization_levels(level: int, name: str) -> None:
    assert settings({"onnx_session_options": {"graph_optimization_level": level}}) == {
        "graph_optimization_level": name}


def test_what_is_not_a_setting_gives_none() -> None:
    """No providers (or an empty list: mlflow's loader then uses its default), no options, zero threads (ONNX
    Runtime's default, as mlflow's loader leaves them), an empty extra_session_config, a None value."""
    assert read_flavor({"data": "model.onnx", "onnx_version": "1.16.0", "providers": []}) == Flavor()
    assert read_flavor({"onnx_session_options": None}) == Flavor()
    assert read_flavor({"onnx_session_options": {"intra_op_num_threads": 0, "inter_op_num_threads": 0,
                                                 "extra_session_config": {}, "execution_mode": None}}) == Flavor()


def test_session_options_that_are_not_a_table_are_refused() -> None:
    """MLflow's own loader fails on them too."""
    with pytest.raises(ConfigError) as info:
        read_flavor({"onnx_session_options": ["intra_op_num_threads"]})
    assert info.value.key == "MLmodel flavors.onnx.onnx_session_options"
    assert "expected a table" in str(info.value)


WRONG = [
    ({"providers": {"a": 1}}, "providers", "device", "expected a list of execution providers"),
    ({"onnx_session_options": {"intra_op_num_threads": -1}}, "onnx_session_options.intra_op_num_threads",
     "intra_op_threads", ">= 0"),
    ({"onnx_session_options": {"inter_op_num_threads": "2"}}, "onnx_session_options.inter_op_num_threads",
     "inter_op_threads", "'2'"),
    ({"onnx_session_options": {"intra_op_num_threads": True}}, "onnx_session_options.intra_op_num_threads",
     "intra_op_threads", "True"),
    ({"onnx_session_options": {"execution_mode": "fast"}}, "onnx_session_options.execution_mode", "execution_mode",
     "'sequential' or 'parallel', got 'fast'"),
    ({"onnx_session_options": {"graph_optimization_level": 3}}, "onnx_session_options.graph_optimization_level",
     "graph_optimization_level", "0 (disable), 1 (basic), 2 (extended), 99 (all), got 3"),
    ({"onnx_session_options": {"graph_optimization_level": True}}, "onnx_session_options.graph_optimization_level",
     "graph_optimization_level", "got True"),
    ({"onnx_session_options": {"extra_session_config": {"session.x": 1}}},
     "onnx_session_options.extra_session_config", "session_config", "string keys and string values"),
]
CONFIG_VALUES = {"device": "cpu", "intra_op_threads": 1, "inter_op_threads": 1, "execution_mode": "sequential",
                 "graph_optimization_level": "basic"}


@pytest.mark.parametrize(("flavor", "key", "field", "says"), WRONG)
def test_a_wrong_value_the_server_would_use_is_refused_naming_the_key(flavor: dict[str, Any], key: str, field: str,
                                                                      says: str) -> None:
    read = read_flavor(flavor)  # reading refuses nothing: the model's config may set the field itself
    with pytest.raises(ConfigError) as info:
        apply_flavor(toml_config({}), read)
    assert info.value.key == f"MLmodel flavors.onnx.{key}"
    assert says in str(info.value)
    assert (f"set {field} in the model's config" in str(info.value)) == (field != "session_config")


@pytest.mark.parametrize(("flavor", "key", "field", "says"), [w for w in WRONG if w[2] != "session_config"])
def test_a_wrong_value_the_models_config_overrides_is_not_refused(caplog: pytest.LogCaptureFixture,
                                                                  flavor: dict[str, Any], key: str, field: str,
                                                                  says: str) -> None:
    caplog.set_level(logging.INFO, logger="inference_server.lifecycle.onnx_flavor")
    config = toml_config({field: CONFIG_VALUES[field]})
    assert apply_flavor(config, read_flavor(flavor)) == config
    assert f"from its config (MLmodel {key}: " in caplog.text and says in caplog.text


def test_a_wrong_providers_value_gives_way_to_the_servers_device() -> None:
    cfg = apply_flavor(toml_config({}, Defaults(device="cuda")), read_flavor({"providers": {"a": 1}}))
    assert cfg.device == "cuda"


def test_what_is_skipped_is_one_warning_line_per_load(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inference_server.lifecycle.onnx_flavor")
    flavor = read_flavor({"providers": [TRT, [CUDA, {"device_id": 1}], CPU],
                          "onnx_session_options": {"enable_cpu_mem_arena": False, "intra_op_num_threads": 2}})
    cfg = apply_flavor(toml_config({}), flavor)
    assert (cfg.device, cfg.intra_op_threads) == ("auto", 2)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ("model 'm' version 1: MLmodel flavors.onnx: skipped, not applied by this server: providers "
                       "TensorrtExecutionProvider; the options of CUDAExecutionProvider {'device_id': 1}; "
                       "onnx_session_options.enable_cpu_mem_arena")


def toml_config(table: dict[str, Any], defaults: Defaults | None = None) -> ModelConfig:
    """As a config.toml beside the .onnx is read (lifecycle/repository.py read_config)."""
    return parse_model(table, "config.toml:", defaults or Defaults(), name="m", path=Path("m"), version="1")


def test_the_mlmodel_fills_in_what_the_config_does_not_set(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inference_server.lifecycle.onnx_flavor")
    cfg = apply_flavor(toml_config({"intra_op_threads": 1, "graph_optimization_level": "disable"}),
                       read_flavor(FLAVOR))
    assert (cfg.device, cfg.intra_op_threads, cfg.inter_op_threads) == ("cpu", 1, 3)
    assert (cfg.graph_optimization_level, cfg.execution_mode) == ("disable", "parallel")
    assert cfg.session_config == (("session.intra_op.allow_spinning", "0"),)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("model 'm' version 1: session settings: device=cpu from MLmodel providers; intra_op_threads=1 "
                    "from its config (MLmodel onnx_session_options.intra_op_num_threads: 2); inter_op_threads=3 from "
                    "MLmodel onnx_session_options.inter_op_num_threads; execution_mode=parallel from MLmodel "
                    "onnx_session_options.execution_mode; graph_optimization_level=disable from its config (MLmodel "
                    "onnx_session_options.graph_optimization_level: basic); "
                    "session_config={session.intra_op.allow_spinning=0} from MLmodel "
                    "onnx_session_options.extra_session_config")


def test_a_config_that_sets_a_default_value_still_wins() -> None:
    cfg = apply_flavor(toml_config({"device": "auto", "execution_mode": "sequential"}), read_flavor(FLAVOR))
    assert (cfg.device, cfg.execution_mode) == ("auto", "sequential")


def test_the_servers_own_device_wins_over_the_providers(caplog: pytest.LogCaptureFixture) -> None:
    """--device / [server] device: a model without a device of its own takes the server's (not 'auto')."""
    caplog.set_level(logging.INFO, logger="inference_server.lifecycle.onnx_flavor")
    cfg = apply_flavor(toml_config({}, Defaults(device="cuda")), read_flavor({"providers": [CPU]}))
    assert cfg.device == "cuda"
    assert "device=cuda from the server's device (MLmodel providers: cpu)" in caplog.text
    assert apply_flavor(toml_config({}, Defaults(device="auto")), read_flavor({"providers": [CPU]})).device == "cpu"


def test_a_triton_config_wins_for_the_fields_it_sets() -> None:
    doc = pbtxt_to_dict('instance_group [{ kind: KIND_GPU }]\noptimization { graph { level: -1 } }\n'
                        'parameters { key: "intra_op_thread_count" value: { string_value: "4" } }')
    cfg = apply_flavor(model_config_from_triton(doc, name="m", defaults=Defaults(), where="config.pbtxt: "),
                       read_flavor(FLAVOR))
    assert (cfg.device, cfg.graph_optimization_level, cfg.intra_op_threads) == ("cuda", "basic", 4)  # the config's
    assert (cfg.inter_op_threads, cfg.execution_mode) == (3, "parallel")  # the MLmodel's
    auto = model_config_from_triton(pbtxt_to_dict("instance_group [{ kind: KIND_AUTO }]"), name="m",
                                    defaults=Defaults(), where="config.pbtxt: ")
    assert apply_flavor(auto, read_flavor(FLAVOR)).device == "cpu"  # KIND_AUTO sets no device


def test_no_settings_leave_the_config_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = toml_config({"intra_op_threads": 2})
    assert apply_flavor(cfg, Flavor()) is cfg
    assert not caplog.records
