"""Configuration: frozen dataclasses, a TOML file and command-line flags (flags win over the file).

Every bad value raises ConfigError naming its dotted key, at start-up. The flags are in cli.py.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
EXECUTIONS = ("auto", "inline", "thread")  # where a batch runs: measured at load, the event loop, a thread
DEFAULT_REPOSITORY = Path(__file__).parent / "default_repository"
CONFIG_ENV = "INFERENCE_SERVER_CONFIG"
REDIS_URL_ENV, REDIS_PASSWORD_ENV = "REDIS_URL", "REDIS_PASSWORD"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingConfig:
    max_batch_size: int | None = None  # rows (dim 0); None: 32 when the model can batch, else 0
    max_queue_delay_us: int = 0  # measured from the oldest queued request's arrival
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 0  # queued requests; 0 = unbounded
    instance_count: int = 1  # model instances = batches that may run at once


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    name: str
    path: Path  # the .onnx file
    version: str = "1"
    device: str = "auto"
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    execution: str = "auto"
    cache: bool = True  # use the server's response cache, when it has one
    cache_ttl_s: float | None = None  # None: [cache] ttl_s; 0: entries live until evicted
    batching: BatchingConfig = field(default_factory=BatchingConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringConfig:
    prediction_log_sample_rate: float = 0.0  # fraction of requests written; 0 = off
    prediction_log_path: Path | None = None  # JSON lines
    prediction_log_queue_size: int = 1024  # records waiting to be written; more are dropped and counted
    drift: bool = False  # PSI of each model output against a reference, as a gauge
    drift_reference_size: int = 1000  # predictions (rows) captured as the reference...
    drift_reference_path: Path | None = None  # ...or read from this file (written once captured, if absent)
    drift_window_size: int = 1000  # recent predictions compared with the reference


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """Tuning for the response cache that `[server] cache` switches on."""
    ttl_s: float = 3600.0  # default entry lifetime; a model's cache_ttl_s overrides it; 0 = no expiry
    max_entry_bytes: int = 1 << 20  # answers larger than this are not cached
    timeout_s: float = 0.1  # Redis: connect and socket timeout (no retries); a lookup is bounded by twice it
    breaker_failures: int = 5  # Redis: failures in a row that open the circuit
    breaker_cooldown_s: float = 5.0  # Redis: how long an open circuit waits before probing again
    write_queue_size: int = 1024  # Redis: writes waiting to be sent; more are dropped and counted
    near_cache_mib: int = 0  # Redis: an in-process LRU of this size in front of it for hot entries; 0 = none


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    max_message_bytes: int = 2**31 - 1
    drain_grace_s: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"  # text | json
    access_log: bool = False  # one line per answered request (logger inference_server.access)
    model_repository: Path | None = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)  # defaults for every model
    device: str = "auto"
    execution: str = "auto"  # default for every model
    # The response cache for every model: "" (none), "memory" / "memory:<MiB>", or a redis:// or rediss:// URL.
    # Not in repr: a Redis URL may hold a password.
    cache: str = field(default="", repr=False)
    redis_password: str | None = field(default=None, repr=False)  # from REDIS_PASSWORD when the URL has none
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT)
    reuse_port: bool = False  # bind with SO_REUSEPORT (set for workers; otherwise a used port is an error)
    metrics: bool = True  # the Prometheus endpoint
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8002  # 0 picks a free one
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    models: tuple[ModelConfig, ...] = ()


def _get(table: Mapping[str, Any], key: str, prefix: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"{prefix}{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _count(table: Mapping[str, Any], key: str, prefix: str, default: Any, minimum: int = 0,
           maximum: int | None = None) -> Any:
    value = _get(table, key, prefix, int, default)
    if value is not None and (value < minimum or maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{prefix}{key}", f"must be {bounds}, got {value}")
    return value


def _choice(table: Mapping[str, Any], key: str, prefix: str, choices: Sequence[str], default: str) -> str:
    value = _get(table, key, prefix, str, default)
    if value not in choices:
        raise ConfigError(f"{prefix}{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _reject_unknown(table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(allowed)})")


def parse_batching(table: Mapping[str, Any], prefix: str, base: BatchingConfig) -> BatchingConfig:
    names = [f.name for f in dataclasses.fields(BatchingConfig)]
    _reject_unknown(table, names, prefix)
    preferred = _get(table, "preferred_batch_size", prefix, list, list(base.preferred_batch_size))
    if not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in preferred):
        raise ConfigError(f"{prefix}preferred_batch_size", f"must be positive integers, got {preferred}")
    cfg = BatchingConfig(
        max_batch_size=_count(table, "max_batch_size", prefix, base.max_batch_size),
        max_queue_delay_us=_count(table, "max_queue_delay_us", prefix, base.max_queue_delay_us),
        preferred_batch_size=tuple(sorted(set(preferred))),
        max_queue_size=_count(table, "max_queue_size", prefix, base.max_queue_size),
        instance_count=_count(table, "instance_count", prefix, base.instance_count, minimum=1),
    )
    limit = cfg.max_batch_size
    if limit is not None and any(p > limit for p in cfg.preferred_batch_size):
        raise ConfigError(f"{prefix}preferred_batch_size", f"sizes must be <= max_batch_size ({limit})")
    return cfg


def parse_model(table: Mapping[str, Any], prefix: str, server: ServerConfig, *, name: str | None = None,
                path: Path | None = None, version: str | None = None) -> ModelConfig:
    """One model's table: `[[models]]` in the server file, or a repository's `<model>/config.toml`."""
    allowed = ["device", "intra_op_threads", "execution", "cache", "cache_ttl_s", "batching"]
    if name is None:
        allowed += ["name", "path", "version"]
    _reject_unknown(table, allowed, prefix)
    name = name or _get(table, "name", prefix, str, None)
    if not name:
        raise ConfigError(f"{prefix}name", "is required")
    raw_path = path or _get(table, "path", prefix, str, None)
    if raw_path is None:
        raise ConfigError(f"{prefix}path", "is required")
    version = version or str(_count(table, "version", prefix, 1, minimum=1))
    return ModelConfig(
        name=name,
        path=Path(raw_path),
        version=version,
        device=_choice(table, "device", prefix, DEVICES, server.device),
        intra_op_threads=_count(table, "intra_op_threads", prefix, 0),
        execution=_choice(table, "execution", prefix, EXECUTIONS, server.execution),
        cache=_get(table, "cache", prefix, bool, True),
        cache_ttl_s=_seconds(table, "cache_ttl_s", prefix, None),
        batching=parse_batching(_get(table, "batching", prefix, dict, {}), f"{prefix}batching.", server.batching),
    )


def _seconds(table: Mapping[str, Any], key: str, prefix: str, default: float | None = 0.0,
             minimum: float = 0.0) -> Any:
    value = _get(table, key, prefix, (int, float), default)
    if value is not None and value < minimum:
        raise ConfigError(f"{prefix}{key}", f"must be >= {minimum}, got {value}")
    return None if value is None else float(value)


def cache_size_bytes(spec: str, key: str = "server.cache") -> int:
    """The size of a "memory" (256 MiB) or "memory:<MiB>" cache."""
    _, _, size = spec.partition(":")
    if not size:
        return 256 << 20
    if not size.isdigit() or int(size) < 1:
        raise ConfigError(key, f"the size after 'memory:' is a whole number of MiB, got {size!r}")
    return int(size) << 20


def check_cache(spec: str, key: str = "server.cache") -> str:
    """"memory" or "redis" (the kind), or ConfigError. Errors never repeat a URL's password."""
    if spec == "memory" or spec.startswith("memory:"):
        cache_size_bytes(spec, key)
        return "memory"
    scheme, sep, _ = spec.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ConfigError(key, "must be 'memory', 'memory:<MiB>', 'redis' (the URL from $REDIS_URL) or a "
                               "redis:// or rediss:// URL")
    parts = urlsplit(spec)
    try:
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise ConfigError(key, f"the Redis URL's port is not a number in {redact_url(spec)}") from None
    if not parts.hostname:
        raise ConfigError(key, f"the Redis URL names no host: {redact_url(spec)}")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigError(key, f"the Redis URL's path is a database number, got {redact_url(spec)}")
    return "redis"


def redact_url(url: str) -> str:
    """A URL without its user name and password, for logs and errors."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def parse_cache(table: Mapping[str, Any], prefix: str = "cache.") -> CacheConfig:
    _reject_unknown(table, [f.name for f in dataclasses.fields(CacheConfig)], prefix)
    return CacheConfig(
        ttl_s=_seconds(table, "ttl_s", prefix, 3600.0),
        max_entry_bytes=_count(table, "max_entry_bytes", prefix, 1 << 20, minimum=1),
        timeout_s=_seconds(table, "timeout_s", prefix, 0.1, minimum=0.001),
        breaker_failures=_count(table, "breaker_failures", prefix, 5, minimum=1),
        breaker_cooldown_s=_seconds(table, "breaker_cooldown_s", prefix, 5.0),
        write_queue_size=_count(table, "write_queue_size", prefix, 1024, minimum=1),
        near_cache_mib=_count(table, "near_cache_mib", prefix, 0),
    )


def parse_monitoring(table: Mapping[str, Any], prefix: str = "monitoring.") -> MonitoringConfig:
    _reject_unknown(table, [f.name for f in dataclasses.fields(MonitoringConfig)], prefix)
    rate = _get(table, "prediction_log_sample_rate", prefix, (int, float), 0.0)
    if not 0 <= rate <= 1:
        raise ConfigError(f"{prefix}prediction_log_sample_rate", f"must be between 0 and 1, got {rate}")
    log_path = _get(table, "prediction_log_path", prefix, str, None)
    if rate and not log_path:
        raise ConfigError(f"{prefix}prediction_log_path", "is required when prediction_log_sample_rate > 0")
    reference_path = _get(table, "drift_reference_path", prefix, str, None)
    return MonitoringConfig(
        prediction_log_sample_rate=float(rate),
        prediction_log_path=Path(log_path) if log_path else None,
        prediction_log_queue_size=_count(table, "prediction_log_queue_size", prefix, 1024, minimum=1),
        drift=_get(table, "drift", prefix, bool, False),
        drift_reference_size=_count(table, "drift_reference_size", prefix, 1000, minimum=1),
        drift_reference_path=Path(reference_path) if reference_path else None,
        drift_window_size=_count(table, "drift_window_size", prefix, 1000, minimum=1),
    )


def parse_server(doc: Mapping[str, Any]) -> ServerConfig:
    _reject_unknown(doc, ["server", "batching", "monitoring", "cache", "models"], "")
    s = _get(doc, "server", "", dict, {})
    _reject_unknown(s, ["host", "port", "max_message_bytes", "drain_grace_s", "log_level", "log_format",
                        "access_log", "model_repository", "device", "execution", "cache", "workers", "reuse_port",
                        "metrics", "metrics_host", "metrics_port"], "server.")
    repo = _get(s, "model_repository", "server.", str, None)
    drain = _get(s, "drain_grace_s", "server.", (int, float), 30.0)
    if drain < 0:
        raise ConfigError("server.drain_grace_s", f"must be >= 0, got {drain}")
    cfg = ServerConfig(
        host=_get(s, "host", "server.", str, "127.0.0.1"),
        port=_count(s, "port", "server.", 8001, maximum=65535),
        max_message_bytes=_count(s, "max_message_bytes", "server.", 2**31 - 1, minimum=1),
        drain_grace_s=float(drain),
        log_level=_choice(s, "log_level", "server.", LOG_LEVELS, "INFO"),
        log_format=_choice(s, "log_format", "server.", LOG_FORMATS, "text"),
        access_log=_get(s, "access_log", "server.", bool, False),
        model_repository=Path(repo) if repo else None,
        device=_choice(s, "device", "server.", DEVICES, "auto"),
        execution=_choice(s, "execution", "server.", EXECUTIONS, "auto"),
        cache=_get(s, "cache", "server.", str, ""),
        cache_config=parse_cache(_get(doc, "cache", "", dict, {})),
        workers=_count(s, "workers", "server.", 1, minimum=1, maximum=64),
        reuse_port=_get(s, "reuse_port", "server.", bool, False),
        metrics=_get(s, "metrics", "server.", bool, True),
        metrics_host=_get(s, "metrics_host", "server.", str, "127.0.0.1"),
        metrics_port=_count(s, "metrics_port", "server.", 8002, maximum=65535),
        batching=parse_batching(_get(doc, "batching", "", dict, {}), "batching.", BatchingConfig()),
        monitoring=parse_monitoring(_get(doc, "monitoring", "", dict, {})),
    )
    if cfg.cache:
        check_cache(cfg.cache)
    if cfg.workers > 1 and cfg.port == 0:
        raise ConfigError("server.workers", "several workers need a fixed port (port 0 picks one per process)")
    models = _get(doc, "models", "", list, [])
    parsed = tuple(parse_model(m, f"models[{i}].", cfg) for i, m in enumerate(models))
    return dataclasses.replace(cfg, models=parsed)


def read_toml(path: Path, key: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(key, f"{path} is not valid TOML: {e}") from None
