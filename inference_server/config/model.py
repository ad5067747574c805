"""A model's configuration: frozen dataclasses and the TOML table that fills them.

The same table is a `[[models]]` entry in the server file or a repository's `<model>/config.toml`; a
Triton `config.pbtxt` is translated into the same dataclasses (lifecycle/triton_model.py). Every bad value
raises ConfigError naming its dotted key. The readers of TOML values are in toml.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inference_server.config import toml
from inference_server.config.ensemble import Ensemble
from inference_server.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
CPU_PRIORITIES = ("normal", "background")  # background: the model's threads take only CPU nothing else wants
EXECUTIONS = ("auto", "inline", "thread")  # where a batch runs: measured at load, the event loop, a thread
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")  # ONNX Runtime's GraphOptimizationLevel
EXECUTION_MODES = ("sequential", "parallel")  # ONNX Runtime's ExecutionMode (parallel uses inter_op_threads)
WARMUP_DATA = ("zeros", "random")
# ONNX Runtime's CUDA arena growth (its ArenaExtendStrategy names, in the CUDA provider's options): the next power of
# two (its default; fewer allocations, up to twice what a model needs) or exactly what is asked (for GPUs shared by
# several sessions or pods: docs/deployment.md, "Sharing a GPU").
ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
MIB = 1 << 20
MAX_GPU_MEM_LIMIT_MIB = 1 << 24  # 16 TiB, above any GPU: a larger gpu_mem_limit_mib is bytes given as MiB
MODEL_FILE = "model.onnx"
MLFLOW_SCHEME = "models:/"
# Queued requests per model before new ones get UNAVAILABLE. Chosen in the reliability benchmark
# (benchmarks/reliability.md): at twice a model's capacity with no client deadline, an unbounded queue grew the
# server by ~150 MiB in 5 s and its p99 to 4.6 s, both still climbing; 256 held them at ~22 MiB and 0.8 s for the
# same answers per second, refusing the excess (64: 0.23 s; 1024: 79 MiB and 2.9 s). 0 = unbounded, as Triton.
DEFAULT_MAX_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    max_batch_size: int | None = None  # rows (dim 0); None: 32 when the model can batch, else 0
    max_queue_delay_us: int = 0  # measured from the oldest queued request's arrival
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # queued requests (of each priority level); 0 = unbounded
    instance_count: int = 1  # model instances = batches that may run at once


TIMEOUT_ACTIONS = ("REJECT", "DELAY")  # Triton's ModelQueuePolicy.TimeoutAction
QUEUE_POLICY_KEYS = ("timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size")
QUEUE_KEYS = ("priority_levels", "default_priority_level", "default_queue_policy", "priority_queue_policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy: how one priority level's queue treats its requests (docs/architecture.md,
    "The batcher's queue")."""
    timeout_action: str = "REJECT"  # REJECT: answer UNAVAILABLE; DELAY: move it behind its level's other requests
    default_timeout_us: int = 0  # time a request may wait in the queue; 0: no limit
    allow_timeout_override: bool = False  # a request's `timeout` may shorten default_timeout_us (never lengthen it)
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # requests queued at this level; 0 = unbounded

    @property
    def sets_timeouts(self) -> bool:
        """Whether this policy says anything about time in the queue (REJECT with no timeout is the default)."""
        return bool(self.default_timeout_us or self.allow_timeout_override or self.timeout_action != "REJECT")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """Triton's priority levels and queue policies: the keys QUEUE_KEYS of dynamic_batching in config.pbtxt, and of
    a model's [batching] table. The default queue policy is its three flat fields here, and its bound
    BatchingConfig.max_queue_size (default_policy() puts them together)."""
    priority_levels: int = 0  # 0: one queue; N: levels 1 (served first) .. N
    default_priority_level: int = 0  # a request naming no level (or 0, or one above priority_levels) goes here
    timeout_action: str = "REJECT"  # default_queue_policy's
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    priority_queue_policy: tuple[tuple[int, QueuePolicy], ...] = ()  # (level, its whole policy), by level

    def default_policy(self, max_queue_size: int) -> QueuePolicy:
        return QueuePolicy(timeout_action=self.timeout_action, default_timeout_us=self.default_timeout_us,
                           allow_timeout_override=self.allow_timeout_override, max_queue_size=max_queue_size)

    @property
    def timeouts(self) -> bool:
        """Whether Triton's queue timeouts apply: some queue policy sets one. Until then a request's `timeout`
        parameter is its own queue deadline (answered DEADLINE_EXCEEDED), as before queue policies existed."""
        return self.default_policy(0).sets_timeouts or any(p.sets_timeouts for _, p in self.priority_queue_policy)

    @property
    def needed(self) -> bool:
        """Whether the batcher needs Triton's policy queue (levels or timeouts) rather than its one plain queue."""
        return self.priority_levels > 0 or self.timeouts


def check_priorities(cfg: QueueConfig, prefix: str) -> None:
    """Triton's checks of priority levels (core's model_config_utils), with the key named: the default level and
    every level given a policy lie in [1, priority_levels]. Without priority_levels Triton ignores both; here they
    are refused, so that no setting is silently dropped."""
    levels = cfg.priority_levels
    if not levels:
        if cfg.default_priority_level:
            raise ConfigError(f"{prefix}default_priority_level", "needs priority_levels (> 0)")
        if cfg.priority_queue_policy:
            raise ConfigError(f"{prefix}priority_queue_policy", "needs priority_levels (> 0)")
        return
    if not 1 <= cfg.default_priority_level <= levels:
        raise ConfigError(f"{prefix}default_priority_level",
                          f"must be in [1, priority_levels ({levels})], got {cfg.default_priority_level}")
    given = [level for level, _ in cfg.priority_queue_policy]
    for i, level in enumerate(given):
        if level in given[:i]:
            raise ConfigError(f"{prefix}priority_queue_policy.{level}", "the level is given twice")
        if not 1 <= level <= levels:
            raise ConfigError(f"{prefix}priority_queue_policy.{level}",
                              f"the level must be in [1, priority_levels ({levels})]")


def rows_fit(rows: int, max_batch_size: int) -> bool:
    """Whether a request (or a warmup batch) of `rows` rows fits one batch of a model with this max_batch_size. 0 is
    a model that does not batch: it takes each request whole, whatever its first dimension."""
    return not max_batch_size or rows <= max_batch_size


def preferred_sizes_fit(preferred: Iterable[int], max_batch_size: int) -> bool:
    """Whether every preferred batch size is at most max_batch_size (a model that does not batch, 0, has none)."""
    return all(p <= max_batch_size for p in preferred)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionPolicy:
    """Which of a model's available versions serve (Triton's version_policy; default: the newest one)."""
    kind: str = "latest"  # latest | all | specific
    latest: int = 1  # with kind "latest": how many of the numerically greatest versions
    specific: tuple[str, ...] = ()  # with kind "specific"

    def select(self, available: Iterable[str]) -> list[str]:
        """The versions to serve out of those available, oldest first."""
        ordered = sorted(set(available), key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.latest}"
        return "all" if self.kind == "all" else f"specific {list(self.specific)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupConfig:
    """Synthetic batches run on every instance before a version reports ready."""
    batch_sizes: tuple[int, ...] | None = None  # None: 1 row and max_batch_size rows; () turns warmup off
    data: str = "zeros"  # zeros | random
    count: int = 1  # runs of each batch size on each instance


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """An input or output a config declares (config.pbtxt); checked against the model file at load."""
    kind: str  # "input" | "output"
    name: str
    datatype: str  # v2 name: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1 = variable


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    name: str
    path: Path | None = None  # the .onnx file; None while a registry source has not been fetched yet
    version: str = "1"
    source: str | None = None  # an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION or /STAGE)
    poll_interval_s: float = 30.0  # how often an MLflow alias or stage is re-read; 0 = never
    device: str = "auto"
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    inter_op_threads: int = 0  # 0: ONNX Runtime's default (used with execution_mode = "parallel")
    graph_optimization_level: str = "all"
    execution_mode: str = "sequential"
    session_config: tuple[tuple[str, str], ...] = ()  # ONNX Runtime session config entries (an MLflow onnx flavour's)
    # The CUDA provider's gpu_mem_limit: the most its memory arena takes, per session (each instance is one); 0: no
    # limit. Not cuDNN's or cuBLAS's workspaces nor the CUDA context. Ignored on CPU, as arena_extend_strategy is.
    gpu_mem_limit_bytes: int = 0
    arena_extend_strategy: str = "kNextPowerOfTwo"  # one of ARENA_EXTEND_STRATEGIES
    execution: str = "auto"
    cpu_priority: str = "normal"  # background: a thread of lowest priority (Linux nice 19), one intra-op thread
    cache: bool = True  # use the server's response cache, when it has one
    cache_ttl_s: float | None = None  # None: [cache] ttl_s; 0: entries live until evicted
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)  # priority levels and queue policies ([batching] keys)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    filename: str = MODEL_FILE  # the model file's name inside a repository version directory
    declared: tuple[TensorDecl, ...] = ()  # inputs and outputs a config.pbtxt lists (checked at load)
    required: bool = True  # strict readiness waits for it (a route's MLflow alias companion does not)
    # The settings the model's config gives (keys of MODEL_KEYS; for a Triton config, the fields it sets): an MLflow
    # onnx flavour fills in only the others (lifecycle/onnx_flavor.py).
    explicit: frozenset[str] = frozenset()
    ensemble: Ensemble | None = None  # a Triton ensemble (platform "ensemble"): steps, no model file of its own
    pinned: bool = False  # never evicted to keep within [server] max_loaded_models / model_memory_budget_mb
    model_size_bytes: int | None = None  # what a loaded version counts against the memory budget (None: measured)


class ModelDefaults(Protocol):
    """What a model inherits from the server's config (ServerConfig has these). Read-only: the frozen ServerConfig
    satisfies it."""

    @property
    def device(self) -> str: ...

    @property
    def execution(self) -> str: ...

    @property
    def batching(self) -> BatchingConfig: ...


def version_number(raw: object) -> str | None:
    """A positive version number given as an int or as ASCII digits, normalised ("07" -> "7"); None for anything
    else (a bool, "²", "-1", thousands of digits): every place that takes a version from outside uses this."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None
    text = str(raw)
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < 1:
        return None
    return str(int(text))


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def parse_batching(table: Mapping[str, Any], prefix: str, base: BatchingConfig) -> BatchingConfig:
    names = [f.name for f in dataclasses.fields(BatchingConfig)]
    toml.reject_unknown(table, names, prefix)
    preferred = toml.positive_ints(table, "preferred_batch_size", prefix, base.preferred_batch_size)
    cfg = BatchingConfig(
        max_batch_size=toml.count(table, "max_batch_size", prefix, base.max_batch_size),
        max_queue_delay_us=toml.count(table, "max_queue_delay_us", prefix, base.max_queue_delay_us),
        preferred_batch_size=tuple(sorted(set(preferred))),
        max_queue_size=toml.count(table, "max_queue_size", prefix, base.max_queue_size),
        instance_count=toml.count(table, "instance_count", prefix, base.instance_count, minimum=1),
    )
    limit = cfg.max_batch_size
    if limit is not None and not preferred_sizes_fit(cfg.preferred_batch_size, limit):
        raise ConfigError(f"{prefix}preferred_batch_size", f"sizes must be <= max_batch_size ({limit})")
    return cfg


def parse_model_batching(table: Mapping[str, Any], prefix: str,
                         base: BatchingConfig) -> tuple[BatchingConfig, QueueConfig]:
    """A model's [batching] table: the batcher's keys over the server's, and Triton's queue keys (QUEUE_KEYS, with
    their Triton names; a model's own, never the server's). default_queue_policy.max_queue_size is another spelling
    of max_queue_size."""
    queue_table = {k: v for k, v in table.items() if k in QUEUE_KEYS}
    rest = {k: v for k, v in table.items() if k not in QUEUE_KEYS}
    policy_key = f"{prefix}default_queue_policy."
    default = toml.get(queue_table, "default_queue_policy", prefix, dict, {})
    if "max_queue_size" in default:
        if "max_queue_size" in rest:
            raise ConfigError(f"{policy_key}max_queue_size", "give max_queue_size once (it is the default queue "
                                                             "policy's bound)")
        rest["max_queue_size"] = toml.count(default, "max_queue_size", policy_key, 0)
    batching = parse_batching(rest, prefix, base)
    levels_key = f"{prefix}priority_queue_policy."
    levels = toml.get(queue_table, "priority_queue_policy", prefix, dict, {})
    policy = parse_queue_policy(default, policy_key, QueuePolicy())
    queue = QueueConfig(
        priority_levels=toml.count(queue_table, "priority_levels", prefix, 0),
        default_priority_level=toml.count(queue_table, "default_priority_level", prefix, 0),
        timeout_action=policy.timeout_action, default_timeout_us=policy.default_timeout_us,
        allow_timeout_override=policy.allow_timeout_override,
        priority_queue_policy=tuple(sorted(
            (_level(key, levels_key), parse_queue_policy(toml.get(levels, key, levels_key, dict, {}),
                                                         f"{levels_key}{key}.", QueuePolicy()))
            for key in levels)))
    check_priorities(queue, prefix)
    return batching, queue


def parse_queue_policy(table: Mapping[str, Any], prefix: str, base: QueuePolicy) -> QueuePolicy:
    """A queue policy table, with Triton's key names; what it leaves out comes from `base`."""
    toml.reject_unknown(table, QUEUE_POLICY_KEYS, prefix)
    return QueuePolicy(
        timeout_action=toml.choice(table, "timeout_action", prefix, TIMEOUT_ACTIONS, base.timeout_action),
        default_timeout_us=toml.count(table, "default_timeout_microseconds", prefix, base.default_timeout_us),
        allow_timeout_override=toml.get(table, "allow_timeout_override", prefix, bool, base.allow_timeout_override),
        max_queue_size=toml.count(table, "max_queue_size", prefix, base.max_queue_size))


def _level(key: str, prefix: str) -> int:
    """A priority_queue_policy key: a level number (TOML keys are strings: "1")."""
    if not (key.isascii() and key.isdigit()):
        raise ConfigError(f"{prefix}{key}", "must be a priority level (a positive integer)")
    return int(key)


def parse_version_policy(table: Mapping[str, Any], prefix: str) -> VersionPolicy:
    """`{ latest = N }`, `{ all = true }` or `{ specific = [1, 3] }`."""
    toml.reject_unknown(table, ["latest", "all", "specific"], prefix)
    if len(table) != 1:
        raise ConfigError(prefix.rstrip("."), "give exactly one of latest = N, all = true, specific = [...]")
    if "latest" in table:
        return VersionPolicy(kind="latest", latest=toml.count(table, "latest", prefix, VersionPolicy().latest,
                                                              minimum=1))
    if "all" in table:
        if toml.get(table, "all", prefix, bool, True) is not True:
            raise ConfigError(f"{prefix}all", "must be true (or give latest or specific instead)")
        return VersionPolicy(kind="all")
    versions = toml.positive_ints(table, "specific", prefix, [])
    if not versions:
        raise ConfigError(f"{prefix}specific", "must name at least one version")
    return VersionPolicy(kind="specific", specific=tuple(str(v) for v in sorted(set(versions))))


def parse_warmup(table: Mapping[str, Any], prefix: str) -> WarmupConfig:
    toml.reject_unknown(table, ["batch_sizes", "data", "count"], prefix)
    d = WarmupConfig()
    sizes = toml.get(table, "batch_sizes", prefix, list, d.batch_sizes)
    if sizes is not None:
        sizes = tuple(toml.positive_ints(table, "batch_sizes", prefix, []))
    return WarmupConfig(batch_sizes=sizes, data=toml.choice(table, "data", prefix, WARMUP_DATA, d.data),
                        count=toml.count(table, "count", prefix, d.count, minimum=1))


MODEL_DEFAULTS = toml.field_defaults(ModelConfig)  # what parse_model gives a key the table leaves out
MODEL_KEYS = ["device", "intra_op_threads", "inter_op_threads", "graph_optimization_level", "execution_mode",
              "execution", "cpu_priority", "cache", "cache_ttl_s", "batching", "version_policy", "warmup",
              "gpu_mem_limit_mib", "arena_extend_strategy", "pinned", "model_size_bytes"]


def parse_model(table: Mapping[str, Any], prefix: str, defaults: ModelDefaults, *, name: str | None = None,
                path: Path | None = None, version: str | None = None) -> ModelConfig:
    """One model's table: `[[models]]` in the server file (name, and path or source) or a repository's
    `<model>/config.toml` (name, path and version come from the directory)."""
    allowed = list(MODEL_KEYS)
    if name is None:
        allowed += ["name", "path", "version", "source", "poll_interval_s"]
    toml.reject_unknown(table, allowed, prefix)
    name = name or toml.get(table, "name", prefix, str, None)
    if not name:
        raise ConfigError(f"{prefix}name", "is required")
    source = toml.get(table, "source", prefix, str, None)
    raw_path = path or toml.get(table, "path", prefix, str, None)
    if source is not None:
        if raw_path is not None:
            raise ConfigError(f"{prefix}source", "give either path or source, not both")
        check_source(source, f"{prefix}source")
    elif raw_path is None:
        raise ConfigError(f"{prefix}path", "is required (or source = \"models:/NAME@ALIAS\")")
    if source is not None and "version" in table:
        raise ConfigError(f"{prefix}version", "comes from the MLflow registry for a source; do not set it")
    d = MODEL_DEFAULTS
    version = version or str(toml.count(table, "version", prefix, int(d["version"]), minimum=1))
    batching, queue = parse_model_batching(toml.get(table, "batching", prefix, dict, {}), f"{prefix}batching.",
                                           defaults.batching)
    policy = toml.get(table, "version_policy", prefix, dict, None)
    priority = toml.choice(table, "cpu_priority", prefix, CPU_PRIORITIES, d["cpu_priority"])
    if priority == "background" and table.get("execution") == "inline":
        raise ConfigError(f"{prefix}cpu_priority", "a background model runs in its own thread, not inline on the "
                                                   "event loop (execution = \"inline\")")
    return ModelConfig(
        name=name,
        path=Path(raw_path) if raw_path is not None else None,
        version=version,
        source=source,
        poll_interval_s=toml.seconds(table, "poll_interval_s", prefix, d["poll_interval_s"]),
        device=toml.choice(table, "device", prefix, DEVICES, defaults.device),
        intra_op_threads=toml.count(table, "intra_op_threads", prefix, d["intra_op_threads"]),
        inter_op_threads=toml.count(table, "inter_op_threads", prefix, d["inter_op_threads"]),
        graph_optimization_level=toml.choice(table, "graph_optimization_level", prefix, GRAPH_OPTIMIZATION_LEVELS,
                                             d["graph_optimization_level"]),
        execution_mode=toml.choice(table, "execution_mode", prefix, EXECUTION_MODES, d["execution_mode"]),
        gpu_mem_limit_bytes=_gpu_mem_limit_mib(table, prefix) * MIB,
        arena_extend_strategy=toml.choice(table, "arena_extend_strategy", prefix, ARENA_EXTEND_STRATEGIES,
                                          d["arena_extend_strategy"]),
        execution=toml.choice(table, "execution", prefix, EXECUTIONS, defaults.execution),
        cpu_priority=priority,
        cache=toml.get(table, "cache", prefix, bool, d["cache"]),
        cache_ttl_s=toml.seconds(table, "cache_ttl_s", prefix, d["cache_ttl_s"]),
        batching=batching,
        queue=queue,
        version_policy=parse_version_policy(policy, f"{prefix}version_policy.") if policy is not None
        else VersionPolicy(),
        warmup=parse_warmup(toml.get(table, "warmup", prefix, dict, {}), f"{prefix}warmup."),
        pinned=toml.get(table, "pinned", prefix, bool, d["pinned"]),
        model_size_bytes=toml.count(table, "model_size_bytes", prefix, d["model_size_bytes"]),
        explicit=frozenset(key for key in table if key in MODEL_KEYS),
    )


def _gpu_mem_limit_mib(table: Mapping[str, Any], prefix: str) -> int:
    mib: int = toml.count(table, "gpu_mem_limit_mib", prefix, 0)
    if mib > MAX_GPU_MEM_LIMIT_MIB:
        raise ConfigError(f"{prefix}gpu_mem_limit_mib", f"is in MiB (e.g. 4096 for 4 GiB), got {mib}, more than "
                                                       "any GPU has")
    return mib


def check_source(source: str, key: str) -> tuple[str, str]:
    """models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/STAGE -> (NAME, "@ALIAS" | VERSION | STAGE)."""
    rest = source.removeprefix(MLFLOW_SCHEME)
    if rest == source:
        raise ConfigError(key, f"must be an MLflow model URI (models:/NAME@ALIAS or models:/NAME/VERSION), got "
                               f"{source!r}")
    name, at, alias = rest.partition("@")
    if at:
        if not name or not alias or "/" in alias:
            raise ConfigError(key, f"expected models:/NAME@ALIAS, got {source!r}")
        return name, "@" + alias
    name, slash, ref = rest.rpartition("/")
    if not slash or not name or not ref:
        raise ConfigError(key, f"expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/STAGE, got "
                               f"{source!r}")
    return name, ref
