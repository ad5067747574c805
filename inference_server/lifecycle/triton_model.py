"""A Triton model configuration -> ModelConfig. `doc` is protobuf's JSON mapping of Triton's ModelConfig with
proto field names (protocol/triton_config.py): defaults absent, 64-bit integers as strings. What this server honours
is mapped; any other field that is set raises ConfigError naming it, so no setting is silently dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inference_server.config import toml
from inference_server.config.ensemble import EnsembleStep, check_graph
from inference_server.config.model import (
    ARENA_EXTEND_STRATEGIES,
    DEFAULT_MAX_QUEUE_SIZE,
    MODEL_DEFAULTS,
    MODEL_FILE,
    QUEUE_POLICY_KEYS,
    TIMEOUT_ACTIONS,
    BatchingConfig,
    ModelConfig,
    ModelDefaults,
    QueueConfig,
    QueuePolicy,
    TensorDecl,
    VersionPolicy,
    WarmupConfig,
    check_priorities,
    preferred_sizes_fit,
    rows_fit,
)
from inference_server.errors import ConfigError
from inference_server.protocol.tensors import TRITON_DATATYPES

PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"
INSTANCE_DEVICES = {"KIND_AUTO": None, "KIND_CPU": "cpu", "KIND_GPU": "cuda"}  # None: the server's device
# onnxruntime_backend (src/onnxruntime.cc): optimization.graph.level -1 basic, 1 extended, 2 none, else all
GRAPH_LEVELS = {-1: "basic", 0: "all", 1: "extended", 2: "disable"}
EXECUTION_MODES = {"0": "sequential", "1": "parallel"}
THREAD_PARAMETERS = {"intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads"}
# onnxruntime_backend's CUDA memory settings -> ModelConfig fields. Two spellings: the "cuda"
# gpu_execution_accelerator's parameters (ONNX Runtime's own option values: bytes, kNextPowerOfTwo | kSameAsRequested),
# and the older model parameters, which Triton still reads (bytes, and "0" | "1" for the strategy).
# docs/deployment.md, "Sharing a GPU".
CUDA_PARAMETERS = {"gpu_mem_limit": "gpu_mem_limit_bytes", "arena_extend_strategy": "arena_extend_strategy"}
ARENA_STRATEGY_NUMBERS = dict(zip(("0", "1"), ARENA_EXTEND_STRATEGIES, strict=True))
ARENA_STRATEGY_NAMES = {name: name for name in ARENA_EXTEND_STRATEGIES}
SIZE_MAX = (1 << 64) - 1  # Triton's "no limit" for gpu_mem_limit
BUDGET_PARAMETERS = ("model_size_bytes", "pinned")  # [server] max_loaded_models / model_memory_budget_mb

MAPPED = ("name", "platform", "backend", "max_batch_size", "dynamic_batching", "instance_group", "version_policy",
          "model_warmup", "parameters", "optimization", "default_model_filename", "response_cache", "input", "output")
# Accepted while they hold only defaults. Not here, so refused whenever present: sequence_batching and
# ensemble_scheduling (an empty one still picks that scheduler) and unknown keys.
INERT_WHEN_DEFAULT = ("batch_input", "batch_output", "model_transaction_policy", "model_repository_agents",
                      "model_operations", "cc_model_filenames", "runtime", "metric_tags", "model_metrics")
UNSUPPORTED = "is not supported by this server"
ENSEMBLE = "ensemble"
# An ensemble's config: what Triton takes for one. Batching, instances and warmup belong to its composing models.
ENSEMBLE_MAPPED = ("name", "platform", "max_batch_size", "version_policy", "response_cache", "input", "output",
                   "ensemble_scheduling")
ENSEMBLE_UNSUPPORTED = "is not supported for an ensemble (set it on the composing models)"


def _is_set(value: Any) -> bool:
    """Whether a value differs from protobuf's default (a message holding only defaults does not)."""
    if isinstance(value, Mapping):
        return any(_is_set(v) for v in value.values())
    if isinstance(value, list):
        return bool(value)
    return value not in (None, False, 0, "")


def _check(table: Any, prefix: str, mapped: tuple[str, ...], inert: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """`table`, once every key is known: mapped, or inert and unset; else ConfigError naming the key."""
    if not isinstance(table, Mapping):
        raise ConfigError(prefix.rstrip("."), f"expected a message, got {table!r}")
    for key, value in table.items():
        if key not in mapped and (key not in inert or _is_set(value)):
            raise ConfigError(f"{prefix}{key}", UNSUPPORTED)
    return table


def _integer(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, str) and value.removeprefix("-").isdecimal():  # 64-bit integers arrive as strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def model_config_from_triton(doc: Mapping[str, Any], *, name: str, defaults: ModelDefaults,
                             where: str) -> ModelConfig:
    """Translate one Triton config; errors are ConfigError keyed `{where}{field}`. path and version are left
    for the caller (one ModelConfig per version directory)."""
    if doc.get("platform") == ENSEMBLE:
        return _ensemble_config(doc, name=name, defaults=defaults, where=where)
    doc = _check(doc, where, MAPPED, INERT_WHEN_DEFAULT)
    _check_name(doc, name, where)
    for key, wanted in (("platform", PLATFORM), ("backend", BACKEND)):
        value = toml.get(doc, key, where, str, "") or wanted
        if value != wanted:
            raise ConfigError(f"{where}{key}", f"{value!r} {UNSUPPORTED}: only ONNX Runtime models are served "
                                               f"({key} {wanted!r})")
    filename = toml.get(doc, "default_model_filename", where, str, "") or MODEL_FILE
    if filename in (".", "..") or "/" in filename or "\\" in filename:
        raise ConfigError(f"{where}default_model_filename", f"must be a file name, got {filename!r}")
    absent = {"enable": MODEL_DEFAULTS["cache"]}  # no response_cache: as any other model
    cache = _check(toml.get(doc, "response_cache", where, dict, absent),
                   f"{where}response_cache.", ("enable",))
    device, instance_count = _instances(doc, where)
    batching, queue = _batching(doc, where, instance_count)
    level = _graph_level(doc, where)
    parameters = _parameters(doc, where)
    accelerator = _cuda_accelerator(doc, where)
    for triton_key, key in CUDA_PARAMETERS.items():  # in this order, whatever order protobuf's maps come in
        if key in accelerator and key in parameters:
            raise ConfigError(f"{where}parameters.{triton_key}", "is also given in optimization's \"cuda\" "
                                                           "gpu_execution_accelerator: give it once")
    parameters |= accelerator
    explicit = {*parameters, *(["device"] if device else []), *(["graph_optimization_level"] if level else [])}
    return ModelConfig(
        name=name, device=device or defaults.device, execution=defaults.execution,
        graph_optimization_level=level or MODEL_DEFAULTS["graph_optimization_level"],
        cache=toml.get(cache, "enable", f"{where}response_cache.", bool, False),
        batching=batching, queue=queue, version_policy=_version_policy(doc, where),
        warmup=_warmup(doc, where, batching.max_batch_size or 0), filename=filename,
        declared=_tensors(doc, where), explicit=frozenset(explicit), **parameters)


def _check_name(doc: Mapping[str, Any], name: str, where: str) -> None:
    given = toml.get(doc, "name", where, str, "") or name
    if given != name:
        raise ConfigError(f"{where}name", f"must be the model's name {name!r}, got {given!r}")


def _ensemble_config(doc: Mapping[str, Any], *, name: str, defaults: ModelDefaults, where: str) -> ModelConfig:
    """`platform: "ensemble"`: its tensors, max_batch_size and steps, checked as far as the config alone decides
    (config/ensemble.py `check_graph`); the composing models are checked when it loads."""
    for key, value in doc.items():
        if key in ENSEMBLE_MAPPED or key in ("backend", *INERT_WHEN_DEFAULT) and not _is_set(value):
            continue
        raise ConfigError(f"{where}{key}", ENSEMBLE_UNSUPPORTED if key in MAPPED else UNSUPPORTED)
    _check_name(doc, name, where)
    max_batch = _integer(doc.get("max_batch_size", 0), f"{where}max_batch_size")
    declared = _tensors(doc, where)
    prefix = f"{where}ensemble_scheduling."
    scheduling = _check(toml.get(doc, "ensemble_scheduling", where, dict, {}), prefix, ("step",))
    steps = []
    for i, raw in enumerate(toml.get(scheduling, "step", prefix, list, [])):
        step_prefix = f"{prefix}step[{i}]."
        raw = _check(raw, step_prefix, ("model_name", "model_version", "input_map", "output_map"), ("model_namespace",))
        # -1, or left out (protobuf's 0): the version the model serves when the step runs
        version = _integer(raw.get("model_version", -1), f"{step_prefix}model_version", minimum=-1)
        maps = [tuple((str(k), str(v)) for k, v in toml.get(raw, key, step_prefix, dict, {}).items())
                for key in ("input_map", "output_map")]
        steps.append(EnsembleStep(i, toml.get(raw, "model_name", step_prefix, str, ""),
                                  str(version) if version > 0 else "", maps[0], maps[1]))
    graph = check_graph(name, [d.name for d in declared if d.kind == "input"],
                        [d.name for d in declared if d.kind == "output"], steps, key=f"{where}ensemble_scheduling")
    absent = {"enable": MODEL_DEFAULTS["cache"]}
    cache = _check(toml.get(doc, "response_cache", where, dict, absent), f"{where}response_cache.", ("enable",))
    return ModelConfig(name=name, device=defaults.device, execution=defaults.execution,
                       cache=toml.get(cache, "enable", f"{where}response_cache.", bool, False),
                       batching=BatchingConfig(max_batch_size=max_batch, instance_count=0),
                       version_policy=_version_policy(doc, where), warmup=WarmupConfig(batch_sizes=()),
                       declared=declared, ensemble=graph)


def _instances(doc: Mapping[str, Any], where: str) -> tuple[str | None, int]:
    """The device the instance groups ask (None: KIND_AUTO or none, the server's device) and their count."""
    groups = toml.get(doc, "instance_group", where, list, [])
    if not groups:
        return None, BatchingConfig().instance_count
    kinds: list[str] = []
    count = 0
    for i, group in enumerate(groups):
        prefix = f"{where}instance_group[{i}]."
        group = _check(group, prefix, ("name", "kind", "count"),
                       ("gpus", "secondary_devices", "profile", "passive", "host_policy", "rate_limiter"))
        kind = toml.get(group, "kind", prefix, str, "KIND_AUTO")
        if kind not in INSTANCE_DEVICES:
            raise ConfigError(f"{prefix}kind", f"{kind} {UNSUPPORTED} (KIND_CPU, KIND_GPU or KIND_AUTO)")
        if kinds and kind != kinds[0]:
            raise ConfigError(f"{prefix}kind", f"{kind} differs from instance_group[0]'s {kinds[0]}: this server "
                                               "runs every instance of a model on one kind of device")
        kinds.append(kind)
        count += _integer(group.get("count", 1), f"{prefix}count", minimum=1)
    return INSTANCE_DEVICES[kinds[0]], count


def _batching(doc: Mapping[str, Any], where: str, instance_count: int) -> tuple[BatchingConfig, QueueConfig]:
    base = BatchingConfig()
    max_batch = _integer(doc.get("max_batch_size", 0), f"{where}max_batch_size")  # absent: 0, as in Triton
    prefix = f"{where}dynamic_batching."
    table = _check(toml.get(doc, "dynamic_batching", where, dict, {}), prefix,
                   ("preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                    "default_queue_policy", "priority_levels", "default_priority_level", "priority_queue_policy"))
    # preserve_ordering: responses always keep request order here
    ordered = toml.get(table, "preserve_ordering", prefix, bool, False)
    preferred = {_integer(p, f"{prefix}preferred_batch_size", minimum=1)
                 for p in toml.get(table, "preferred_batch_size", prefix, list, [])}
    if not preferred_sizes_fit(preferred, max_batch):
        raise ConfigError(f"{prefix}preferred_batch_size", f"sizes must be <= max_batch_size ({max_batch}), got "
                                                           f"{sorted(preferred)}")
    default = _queue_policy(toml.get(table, "default_queue_policy", prefix, dict, {}),
                            f"{prefix}default_queue_policy.")
    policies = tuple(sorted((_integer(level, f"{prefix}priority_queue_policy", minimum=1),
                             _queue_policy(policy, f"{prefix}priority_queue_policy.{level}."))
                            for level, policy in toml.get(table, "priority_queue_policy", prefix, dict, {}).items()))
    batching = BatchingConfig(
        max_batch_size=max_batch,
        max_queue_delay_us=_integer(table.get("max_queue_delay_microseconds", base.max_queue_delay_us),
                                    f"{prefix}max_queue_delay_microseconds"),
        preferred_batch_size=tuple(sorted(preferred)),
        max_queue_size=default.max_queue_size,
        instance_count=instance_count,
    )
    queue = QueueConfig(
        priority_levels=_integer(table.get("priority_levels", 0), f"{prefix}priority_levels"),
        default_priority_level=_integer(table.get("default_priority_level", 0), f"{prefix}default_priority_level"),
        timeout_action=default.timeout_action, default_timeout_us=default.default_timeout_us,
        allow_timeout_override=default.allow_timeout_override, priority_queue_policy=policies)
    check_priorities(queue, prefix)
    if ordered:  # Triton's refusals: both would answer requests out of their order
        if queue.priority_levels > 1:
            raise ConfigError(f"{prefix}priority_levels", "only one priority level is allowed when "
                                                          "'preserve_ordering' is true")
        for key, policy in [("default_queue_policy", default), *((f"priority_queue_policy.{level}", p)
                                                                  for level, p in policies)]:
            if policy.default_timeout_us and policy.timeout_action == "DELAY":
                raise ConfigError(f"{prefix}{key}.timeout_action", "DELAY is not allowed when 'preserve_ordering' "
                                                                   "is true")
    return batching, queue


def _queue_policy(table: Mapping[str, Any], prefix: str) -> QueuePolicy:
    """A ModelQueuePolicy. An absent (or 0) max_queue_size is this server's default bound, as for any model: the
    JSON form cannot tell 0 from absent."""
    table = _check(table, prefix, QUEUE_POLICY_KEYS)
    action = toml.get(table, "timeout_action", prefix, str, "REJECT")
    if action not in TIMEOUT_ACTIONS:
        raise ConfigError(f"{prefix}timeout_action", f"must be REJECT or DELAY, got {action!r}")
    return QueuePolicy(
        timeout_action=action,
        default_timeout_us=_integer(table.get("default_timeout_microseconds", 0),
                                    f"{prefix}default_timeout_microseconds"),
        allow_timeout_override=toml.get(table, "allow_timeout_override", prefix, bool, False),
        max_queue_size=_integer(table.get("max_queue_size", 0), f"{prefix}max_queue_size") or DEFAULT_MAX_QUEUE_SIZE)


def _graph_level(doc: Mapping[str, Any], where: str) -> str | None:
    """optimization.graph.level, None when not set (0, protobuf's default, reads as not set: it is ONNX Runtime's
    default, all)."""
    prefix = f"{where}optimization."
    # Pinned host memory is a transfer hint with nothing to change on CPU sessions (GPU sessions here bind
    # outputs to pinned memory when the build allows); accepted, like Triton's configs usually carry it.
    table = _check(toml.get(doc, "optimization", where, dict, {}), prefix,
                   ("graph", "input_pinned_memory", "output_pinned_memory", "execution_accelerators"),
                   ("priority", "cuda", "gather_kernel_buffer_threshold", "eager_batching"))
    graph = _check(toml.get(table, "graph", prefix, dict, {}), f"{prefix}graph.", ("level",))
    if "level" not in graph:
        return None
    level = _integer(graph["level"], f"{prefix}graph.level", minimum=-1)
    if level not in GRAPH_LEVELS:
        raise ConfigError(f"{prefix}graph.level", f"must be -1 (basic), 0 (all), 1 (extended) or 2 (none), got {level}")
    return GRAPH_LEVELS[level]


def _parameters(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Triton's ONNX Runtime backend parameters -> ModelConfig keyword arguments."""
    found: dict[str, Any] = {}
    for key, value in toml.get(doc, "parameters", where, dict, {}).items():
        prefix = f"{where}parameters.{key}"
        if key not in THREAD_PARAMETERS and key not in CUDA_PARAMETERS and key not in ("execution_mode",
                                                                                       *BUDGET_PARAMETERS):
            raise ConfigError(prefix, f"{UNSUPPORTED} (supported: {', '.join(THREAD_PARAMETERS)}, execution_mode, "
                                      f"{', '.join(CUDA_PARAMETERS)}, {', '.join(BUDGET_PARAMETERS)})")
        text = toml.get(_check(value, f"{prefix}.", ("string_value",)), "string_value", f"{prefix}.", str, "")
        if key in CUDA_PARAMETERS:
            found[CUDA_PARAMETERS[key]] = _cuda_value(key, text, f"{prefix}.string_value", ARENA_STRATEGY_NUMBERS)
        elif key == "model_size_bytes":
            found["model_size_bytes"] = _integer(text, f"{prefix}.string_value")
        elif key == "pinned":
            if text.lower() not in ("true", "false"):
                raise ConfigError(f"{prefix}.string_value", f"must be \"true\" or \"false\", got {text!r}")
            found["pinned"] = text.lower() == "true"
        elif key in THREAD_PARAMETERS:
            found[THREAD_PARAMETERS[key]] = _integer(text, f"{prefix}.string_value")
        elif text not in EXECUTION_MODES:
            raise ConfigError(f"{prefix}.string_value", f"must be \"0\" (sequential) or \"1\" (parallel), got {text!r}")
        else:
            found["execution_mode"] = EXECUTION_MODES[text]
    return found


def _cuda_accelerator(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """optimization.execution_accelerators: a "cuda" gpu_execution_accelerator's gpu_mem_limit and
    arena_extend_strategy (ONNX Runtime's values) -> ModelConfig keyword arguments. Any other accelerator or
    parameter is refused (the config of a TensorRT or OpenVINO model is not served as if it were plain CUDA)."""
    prefix = f"{where}optimization.execution_accelerators."
    optimization = toml.get(doc, "optimization", where, dict, {})
    table = _check(toml.get(optimization, "execution_accelerators", f"{where}optimization.", dict, {}), prefix,
                   ("gpu_execution_accelerator",), ("cpu_execution_accelerator",))
    found: dict[str, Any] = {}
    for i, accelerator in enumerate(toml.get(table, "gpu_execution_accelerator", prefix, list, [])):
        at = f"{prefix}gpu_execution_accelerator[{i}]."
        accelerator = _check(accelerator, at, ("name", "parameters"))
        name = toml.get(accelerator, "name", at, str, "")
        if name != "cuda":
            raise ConfigError(f"{at}name", f"{name!r} {UNSUPPORTED} (only \"cuda\", with "
                                           f"{' and '.join(CUDA_PARAMETERS)})")
        parameters = toml.get(accelerator, "parameters", at, dict, {})
        for key in parameters:
            key_at = f"{at}parameters.{key}"
            if key not in CUDA_PARAMETERS:
                raise ConfigError(key_at, f"{UNSUPPORTED} (supported: {', '.join(CUDA_PARAMETERS)})")
            if CUDA_PARAMETERS[key] in found:
                raise ConfigError(key_at, "is given twice: give it in one \"cuda\" accelerator")
            text = toml.get(parameters, key, f"{at}parameters.", str, "")
            found[CUDA_PARAMETERS[key]] = _cuda_value(key, text, key_at, ARENA_STRATEGY_NAMES)
    return found


def _cuda_value(key: str, text: str, at: str, strategies: Mapping[str, str]) -> int | str:
    """A CUDA_PARAMETERS value -> the ModelConfig field's value; `strategies`: the spelling's arena_extend_strategy
    values."""
    if key == "arena_extend_strategy":
        if text not in strategies:
            raise ConfigError(at, f"must be one of {', '.join(repr(k) for k in strategies)}, got {text!r}")
        return strategies[text]
    limit = _integer(text, at, minimum=1)
    if limit > SIZE_MAX:
        raise ConfigError(at, f"must be at most {SIZE_MAX} bytes (no limit), got {limit}")
    return 0 if limit == SIZE_MAX else limit  # 0: no limit, as ModelConfig says it


def _version_policy(doc: Mapping[str, Any], where: str) -> VersionPolicy:
    prefix = f"{where}version_policy."
    table = _check(toml.get(doc, "version_policy", where, dict, {}), prefix, ("latest", "all", "specific"))
    if len(table) > 1:
        raise ConfigError(prefix.rstrip("."), "give only one of latest, all, specific")
    if "latest" in table:
        latest = _check(table["latest"], f"{prefix}latest.", ("num_versions",))
        return VersionPolicy(kind="latest", latest=_integer(latest.get("num_versions", 0),
                                                            f"{prefix}latest.num_versions", minimum=1))
    if "all" in table:
        _check(table["all"], f"{prefix}all.", ())
        return VersionPolicy(kind="all")
    if "specific" in table:
        key = f"{prefix}specific.versions"
        specific = _check(table["specific"], f"{prefix}specific.", ("versions",))
        given = toml.get(specific, "versions", f"{prefix}specific.", list, [])
        versions = {_integer(v, key, minimum=1) for v in given}
        if not versions:
            raise ConfigError(key, "must name at least one version")
        return VersionPolicy(kind="specific", specific=tuple(str(v) for v in sorted(versions)))
    return VersionPolicy()


def _warmup(doc: Mapping[str, Any], where: str, max_batch: int) -> WarmupConfig:
    entries = toml.get(doc, "model_warmup", where, list, [])
    if not entries:
        return WarmupConfig()
    sizes: list[int] = []
    count, data = WarmupConfig().count, WarmupConfig().data
    for i, entry in enumerate(entries):
        prefix = f"{where}model_warmup[{i}]."
        entry = _check(entry, prefix, ("name", "batch_size", "inputs", "count"))
        size = _integer(entry.get("batch_size", 0), f"{prefix}batch_size") or 1  # 0: one request of 1
        if not rows_fit(size, max(max_batch, 1)):  # a model that does not batch warms up with 1
            raise ConfigError(f"{prefix}batch_size", f"must be <= max_batch_size ({max_batch}), got {size}")
        if size not in sizes:
            sizes.append(size)
        count = max(count, _integer(entry.get("count", 0), f"{prefix}count") or 1)
        for input_name, spec in toml.get(entry, "inputs", prefix, dict, {}).items():
            input_prefix = f"{prefix}inputs.{input_name}."
            spec = _check(spec, input_prefix, ("data_type", "dims", "zero_data", "random_data"), ("input_data_file",))
            if toml.get(spec, "random_data", input_prefix, bool, False):
                data = "random"
    return WarmupConfig(batch_sizes=tuple(sizes), data=data, count=count)


def _tensors(doc: Mapping[str, Any], where: str) -> tuple[TensorDecl, ...]:
    declared: list[TensorDecl] = []
    for kind, inert in (("input", ("is_shape_tensor", "allow_ragged_batch", "optional", "is_non_linear_format_io")),
                        ("output", ("is_shape_tensor", "label_filename", "is_non_linear_format_io"))):
        seen: set[str] = set()
        for i, tensor in enumerate(toml.get(doc, kind, where, list, [])):
            prefix = f"{where}{kind}[{i}]."
            # `format` (FORMAT_NCHW ...) only describes the layout; ONNX Runtime takes the tensor as it comes.
            tensor = _check(tensor, prefix, ("name", "data_type", "dims", "format"), inert)  # reshape: refused
            name = toml.get(tensor, "name", prefix, str, "")
            if not name or name in seen:
                raise ConfigError(f"{prefix}name", f"must be a non-empty name unique among the {kind}s, got {name!r}")
            seen.add(name)
            datatype = toml.get(tensor, "data_type", prefix, str, "TYPE_INVALID")
            if datatype not in TRITON_DATATYPES:
                raise ConfigError(f"{prefix}data_type", f"must be one of {', '.join(TRITON_DATATYPES)}, got {datatype}")
            dims = tuple(_integer(d, f"{prefix}dims", minimum=-1) for d in toml.get(tensor, "dims", prefix, list, []))
            if 0 in dims:
                raise ConfigError(f"{prefix}dims", f"must be positive or -1 (variable), got {list(dims)}")
            declared.append(TensorDecl(kind, name, TRITON_DATATYPES[datatype], dims))
    return tuple(declared)
