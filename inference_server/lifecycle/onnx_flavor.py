"""An MLflow onnx flavour's session settings, mapped onto a model's config: the one place that decides them.

`mlflow.onnx.log_model` records in the MLmodel file's `flavors.onnx` table the execution `providers` (by default
[CUDAExecutionProvider, CPUExecutionProvider]) and `onnx_session_options` (any ONNX Runtime SessionOptions
attribute, and extra_session_config), which MLflow's own loader passes to ONNX Runtime, skipping the providers
this ONNX Runtime lacks and the options it does not apply. This server reads them the same way, never running
anything from the artifact:

- `providers`: the first one this server runs decides. CPUExecutionProvider: device "cpu" (the model runs on CPU
  even on a GPU node). CUDAExecutionProvider: device "auto", the server's usual choice (CUDA when this ONNX
  Runtime has it, else CPU). Other providers (TensorRT, ROCm, OpenVINO, ...) and provider options are skipped;
  a list without CPU or CUDA sets no device (the server's choice; MLflow's loader falls back to CPU when it
  has none of them).
- `onnx_session_options`: intra_op_num_threads -> intra_op_threads and inter_op_num_threads -> inter_op_threads
  (0: ONNX Runtime's default); execution_mode "sequential" | "parallel" (any case); graph_optimization_level
  0 | 1 | 2 | 99 (ONNX Runtime's GraphOptimizationLevel: disable, basic, extended, all; MLflow's own loader skips
  0, this server honours it); extra_session_config (string keys and values) -> ONNX Runtime's session config
  entries. An empty value (None) is not a setting, as for MLflow's loader. Any other option is skipped.

What is skipped is named in one WARNING line per load. A value of the wrong kind for one of the settings above
refuses the version naming the key, unless the model's config sets that setting itself (or, for the device, the
server's device does): then the MLmodel's value is not used. No config sets session config entries, so a wrong
extra_session_config refuses the version always, as does an `onnx_session_options` that is not a table (MLflow's
loader fails on both too).

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

from inference_server.config.model import MODEL_KEYS, ModelConfig
from inference_server.errors import ConfigError

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDER_DEVICES = {CPU: "cpu", CUDA: "auto"}  # the first of these in the list -> the model's device
# MLflow's graph_optimization_level (onnxruntime.GraphOptimizationLevel's values) -> the config's names
GRAPH_LEVELS = {0: "disable", 1: "basic", 2: "extended", 99: "all"}
EXECUTION_MODES = ("sequential", "parallel")
THREADS = {"intra_op_num_threads": "intra_op_threads", "inter_op_num_threads": "inter_op_threads"}
SESSION_OPTIONS = (*THREADS, "execution_mode", "graph_optimization_level", "extra_session_config")
KEY = "MLmodel flavors.onnx."


class Setting(NamedTuple):
    field: str  # the ModelConfig field
    value: Any  # in ModelConfig's terms; None when `problem` says why the MLmodel's value cannot be honoured
    key: str  # where the MLmodel gives it, e.g. "onnx_session_options.execution_mode"
    problem: str | None = None  # refuses the version unless the model's config sets `field` itself


class Flavor(NamedTuple):
    """What an MLmodel's onnx flavour asks of the session, for apply_flavor to resolve against the config."""

    settings: tuple[Setting, ...] = ()
    skipped: tuple[str, ...] = ()  # what this server does not apply (providers, provider options, other options)


def read_flavor(flavor: Mapping[str, Any]) -> Flavor:
    """The settings an MLmodel's `flavors.onnx` table gives, in ModelConfig's terms, and what is skipped. Raises
    ConfigError only for an `onnx_session_options` that is not a table. Keys that only describe the artifact
    (onnx_version, data, code, ...) are not settings and are left alone."""
    settings: list[Setting] = []
    skipped: list[str] = []
    providers = flavor.get("providers")
    if providers:  # MLflow's loader: absent or empty is its default, [CUDA, CPU]
        device = _device(providers, skipped)
        if device is not None:
            settings.append(device)
    options = flavor.get("onnx_session_options")
    if options is None:
        return Flavor(tuple(settings), tuple(skipped))
    if not isinstance(options, Mapping):
        raise ConfigError(f"{KEY}onnx_session_options", f"expected a table of session options, got {options!r}")
    for name, value in options.items():
        key = f"onnx_session_options.{name}"
        if name not in SESSION_OPTIONS:
            skipped.append(key)
        elif value is not None:
            setting = _option(name, value, key)
            if setting is not None:
                settings.append(setting)
    return Flavor(tuple(settings), tuple(skipped))


def _option(name: str, value: Any, key: str) -> Setting | None:
    """One of SESSION_OPTIONS as a Setting (None: ONNX Runtime's default), or one with the problem of its value."""
    if name in THREADS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return Setting(THREADS[name], None, key, f"expected a number of threads >= 0, got {value!r}")
        return Setting(THREADS[name], value, key) if value else None  # 0: ONNX Runtime's default, as MLflow's
    if name == "execution_mode":
        if not isinstance(value, str) or value.lower() not in EXECUTION_MODES:
            return Setting("execution_mode", None, key, f"expected 'sequential' or 'parallel', got {value!r}")
        return Setting("execution_mode", value.lower(), key)
    if name == "graph_optimization_level":
        if isinstance(value, bool) or value not in GRAPH_LEVELS:
            levels = ", ".join(f"{n} ({level})" for n, level in GRAPH_LEVELS.items())
            return Setting("graph_optimization_level", None, key, f"expected one of {levels}, got {value!r}")
        return Setting("graph_optimization_level", GRAPH_LEVELS[value], key)
    assert name == "extra_session_config"
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return Setting("session_config", None, key, f"expected a table of string keys and string values, got "
                                                    f"{value!r}")
    return Setting("session_config", tuple(sorted(value.items())), key) if value else None


def _device(providers: Any, skipped: list[str]) -> Setting | None:
    """The device of the first provider this server runs; the others, and provider options, go to `skipped`."""
    if isinstance(providers, str):  # MLflow's loader takes a lone name too
        providers = [providers]
    if not isinstance(providers, list):
        return Setting("device", None, "providers", f"expected a list of execution providers, got {providers!r}")
    device: str | None = None
    for i, entry in enumerate(providers):
        name, options = entry, None
        if isinstance(entry, list | tuple):  # (name, options), which the MLmodel's YAML keeps as a list
            name, options = (entry[0] if entry else None), entry[1:]
        if not isinstance(name, str):
            skipped.append(f"providers[{i}] {entry!r}")
        elif name not in PROVIDER_DEVICES:
            skipped.append(f"providers {name}")
        else:
            if any(options or ()):
                skipped.append(f"the options of {name} {_flat(options)}")
            if device is None:
                device = PROVIDER_DEVICES[name]
    if device is None:
        skipped.append(f"providers: none of them is one this server runs ({', '.join(PROVIDER_DEVICES)}), so the "
                       "server chooses the device")
        return None
    return Setting("device", device, "providers")


def _flat(options: Any) -> str:
    return ", ".join(repr(o) for o in options) if isinstance(options, list | tuple) else repr(options)


def apply_flavor(cfg: ModelConfig, flavor: Flavor) -> ModelConfig:
    """`cfg` with the MLmodel's settings filled in where the config does not give its own (the precedence above);
    ConfigError naming the key (`MLmodel flavors.onnx.<key>`) for a value that cannot be honoured and would be
    used. Logs, in one line, where each of them came from, and in one WARNING line what it skips."""
    taken: dict[str, Any] = {}
    notes: list[str] = []
    for setting in flavor.settings:
        field = setting.field
        given = setting.value if setting.problem is None else f"{setting.problem}, not used"
        if field in cfg.explicit:
            notes.append(f"{field}={_show(getattr(cfg, field))} from its config (MLmodel {setting.key}: "
                         f"{_show(given)})")
        elif field == "device" and cfg.device != "auto":
            notes.append(f"device={cfg.device} from the server's device (MLmodel providers: {given})")
        elif setting.problem is not None:  # session_config: no config sets it, as MLflow's loader fails on it too
            hint = f" (or set {field} in the model's config, which then wins)" if field in MODEL_KEYS else ""
            raise ConfigError(f"{KEY}{setting.key}", f"model '{cfg.name}' version {cfg.version}: {setting.problem}"
                                                     f"{hint}")
        else:
            taken[field] = setting.value
            notes.append(f"{field}={_show(setting.value)} from MLmodel {setting.key}")
    if flavor.skipped:
        log.warning("model '%s' version %s: MLmodel flavors.onnx: skipped, not applied by this server: %s",
                    cfg.name, cfg.version, "; ".join(flavor.skipped))
    if notes:
        log.info("model '%s' version %s: session settings: %s", cfg.name, cfg.version, "; ".join(notes))
    return dataclasses.replace(cfg, **taken) if taken else cfg


def _show(value: Any) -> str:
    if isinstance(value, tuple):  # session config entries
        return "{" + ", ".join(f"{k}={v}" for k, v in value) + "}"
    return str(value)
