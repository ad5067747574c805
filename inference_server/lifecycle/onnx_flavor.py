"""An MLflow onnx flavour's session settings, mapped onto a model's config: the one place that decides them.

`mlflow.onnx.log_model` records in the MLmodel file's `flavors.onnx` table the execution `providers` (by default
[CUDAExecutionProvider, CPUExecutionProvider]) and `onnx_session_options` (intra_op_num_threads,
inter_op_num_threads, execution_mode, graph_optimization_level, extra_session_config), which MLflow's own loader
passes to ONNX Runtime. This server reads them the same way, never running anything from the artifact:

- `providers`: the first of them decides. CPUExecutionProvider first: device "cpu" (the model runs on CPU even
  on a GPU node). CUDAExecutionProvider first: device "auto", the server's usual choice (CUDA when this ONNX
  Runtime has it, else CPU). No other provider is run by this server, so a list that puts one first is refused,
  as is a provider given with options.
- `onnx_session_options`: intra_op_num_threads -> intra_op_threads and inter_op_num_threads -> inter_op_threads
  (0: ONNX Runtime's default); execution_mode "sequential" | "parallel" (any case); graph_optimization_level
  0 | 1 | 2 | 99 (ONNX Runtime's GraphOptimizationLevel: disable, basic, extended, all; MLflow's own loader skips
  0, this server honours it); extra_session_config (string keys and values) -> ONNX Runtime's session config
  entries. Any other key, or a value of the wrong kind, refuses the version with the key named.

Precedence, per setting: what the model's config gives wins (ModelConfig.explicit: a key of its `[[models]]`
entry or of the config.toml beside the .onnx, a field a config.pbtxt or a load request's config sets); then, for
the device only, the server's own device (`--device` or `[server] device`, when not "auto"); then the MLmodel;
then the defaults. The load's log line says where each setting the MLmodel gives came from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from inference_server.config.model import ModelConfig
from inference_server.errors import ConfigError

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_DEVICES = {CPU: "cpu", CUDA: "auto"}  # the first provider -> the model's device
# MLflow's graph_optimization_level (onnxruntime.GraphOptimizationLevel's values) -> the config's names
GRAPH_LEVELS = {0: "disable", 1: "basic", 2: "extended", 99: "all"}
EXECUTION_MODES = ("sequential", "parallel")
THREADS = {"intra_op_num_threads": "intra_op_threads", "inter_op_num_threads": "inter_op_threads"}
SESSION_OPTIONS = (*THREADS, "execution_mode", "graph_optimization_level", "extra_session_config")
KEY = "MLmodel flavors.onnx."


class Setting(NamedTuple):
    field: str  # the ModelConfig field
    value: Any
    key: str  # where the MLmodel gives it, e.g. "onnx_session_options.execution_mode"


def read_flavor(flavor: Mapping[str, Any]) -> tuple[Setting, ...]:
    """The settings an MLmodel's `flavors.onnx` table gives, in ModelConfig's terms; ConfigError naming the key
    (`MLmodel flavors.onnx.<key>`) for one this server cannot honour. Keys that only describe the artifact
    (onnx_version, data, code, ...) are not settings and are left alone."""
    settings: list[Setting] = []
    providers = flavor.get("providers")
    if providers:  # MLflow's loader: absent or empty is its default, [CUDA, CPU]
        settings.append(Setting("device", _device(providers), "providers"))
    options = flavor.get("onnx_session_options")
    if options is None:
        return tuple(settings)
    if not isinstance(options, Mapping):
        raise ConfigError(f"{KEY}onnx_session_options", f"expected a table of session options, got {options!r}")
    for name, value in options.items():
        key = f"onnx_session_options.{name}"
        where = f"{KEY}{key}"
        if name in THREADS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(where, f"expected a number of threads >= 0, got {value!r}")
            if value:  # 0: ONNX Runtime's default, as MLflow's loader leaves it
                settings.append(Setting(THREADS[name], value, key))
        elif name == "execution_mode":
            if not isinstance(value, str) or value.lower() not in EXECUTION_MODES:
                raise ConfigError(where, f"expected 'sequential' or 'parallel', got {value!r}")
            settings.append(Setting("execution_mode", value.lower(), key))
        elif name == "graph_optimization_level":
            if isinstance(value, bool) or value not in GRAPH_LEVELS:
                levels = ", ".join(f"{n} ({level})" for n, level in GRAPH_LEVELS.items())
                raise ConfigError(where, f"expected one of {levels}, got {value!r}")
            settings.append(Setting("graph_optimization_level", GRAPH_LEVELS[value], key))
        elif name == "extra_session_config":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in value.items()):
                raise ConfigError(where, f"expected a table of string keys and string values, got {value!r}")
            if value:
                settings.append(Setting("session_config", tuple(sorted(value.items())), key))
        else:
            raise ConfigError(where, f"is not a session option this server honours (it honours "
                                     f"{', '.join(SESSION_OPTIONS)})")
    return tuple(settings)


def _device(providers: Any) -> str:
    if isinstance(providers, str):  # MLflow's loader takes a lone name too
        providers = [providers]
    if not isinstance(providers, list):
        raise ConfigError(f"{KEY}providers", f"expected a list of execution providers, got {providers!r}")
    first = providers[0]
    if not isinstance(first, str):
        raise ConfigError(f"{KEY}providers[0]", f"provider options are not supported by this server: give the "
                                                f"provider's name only, got {first!r}")
    if first not in PROVIDER_DEVICES:
        raise ConfigError(f"{KEY}providers[0]", f"{first} is not run by this server (it runs "
                                                f"{' or '.join(PROVIDER_DEVICES)})")
    return PROVIDER_DEVICES[first]


def apply_flavor(cfg: ModelConfig, settings: tuple[Setting, ...]) -> ModelConfig:
    """`cfg` with the MLmodel's settings filled in where the config does not give its own (the precedence above);
    logs, in one line, where each of them came from."""
    if not settings:
        return cfg
    taken: dict[str, Any] = {}
    notes: list[str] = []
    for setting in settings:
        field = setting.field
        if field in cfg.explicit:
            notes.append(f"{field}={_show(getattr(cfg, field))} from its config (MLmodel {setting.key}: "
                         f"{_show(setting.value)})")
        elif field == "device" and cfg.device != "auto":
            notes.append(f"device={cfg.device} from the server's device (MLmodel providers: {setting.value})")
        else:
            taken[field] = setting.value
            notes.append(f"{field}={_show(setting.value)} from MLmodel {setting.key}")
    log.info("model '%s' version %s: session settings: %s", cfg.name, cfg.version, "; ".join(notes))
    return dataclasses.replace(cfg, **taken)


def _show(value: Any) -> str:
    if isinstance(value, tuple):  # session config entries
        return "{" + ", ".join(f"{k}={v}" for k, v in value) + "}"
    return str(value)
