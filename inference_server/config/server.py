"""Configuration: frozen dataclasses, a TOML file and command-line flags (flags win over the file).

Every bad value raises ConfigError naming its dotted key, at start-up. The flags are in cli.py.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference_server.config.model import (
    DEVICES,
    EXECUTIONS,
    BatchingConfig,
    ModelConfig,
    _choice,
    _count,
    _get,
    _reject_unknown,
    _seconds,
    parse_batching,
    parse_model,
)
from inference_server.config.routes import RouteConfig, parse_routes, with_aliases
from inference_server.errors import ConfigError

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
DEFAULT_REPOSITORY = Path(__file__).parents[1] / "default_repository"
CONFIG_ENV = "INFERENCE_SERVER_CONFIG"
REDIS_URL_ENV, REDIS_PASSWORD_ENV = "REDIS_URL", "REDIS_PASSWORD"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
GRPC_ENGINES = ("auto", "grpcio", "native")
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # gRPC takes message limits as C ints


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
class AuthConfig:
    """`[server.auth]`: bearer tokens. `tokens_file` holds one `SCOPE[,SCOPE...] TOKEN` per line (scopes `infer`
    and `admin`); it is re-read on SIGHUP. Health stays open; `open_metadata` leaves metadata open too."""
    tokens_file: Path | None = None
    open_metadata: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """`[server.limits]`: sizes a request may have, each checked before memory is allocated for its payload. A tensor
    or request over a tensor limit can never be served as sent: INVALID_ARGUMENT / 400 naming the limit."""
    # A gRPC message or HTTP body, compressed and decompressed (gRPC: RESOURCE_EXHAUSTED; HTTP: 413). Unset, it is
    # [server] max_message_bytes (--max-message-bytes), which also bounds gRPC responses.
    max_request_bytes: int = MAX_GRPC_MESSAGE_BYTES
    max_tensor_elements: int = 1 << 25  # elements of one input tensor (the product of its shape)
    max_tensor_bytes: int = 1 << 28  # one input tensor decoded: elements x item size; BYTES: its elements' bytes
    max_request_elements: int = 1 << 26  # the elements of all a request's inputs together
    max_bytes_element_bytes: int = 1 << 26  # one BYTES element
    max_concurrent_streams: int = 4096  # gRPC calls at once on one HTTP/2 connection; more wait in the client
    max_requests_per_stream: int = 1024  # ModelStreamInfer requests of one stream read and not yet answered
    max_in_flight: int = 0  # inference requests in the server at once; more: RESOURCE_EXHAUSTED / 503. 0 = no cap


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"  # both front ends bind here
    port: int = 8001  # gRPC; 0 picks a free one
    http_port: int = 8000  # HTTP/REST (KServe v2), Triton's port; 0 = no HTTP front end
    max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES  # gRPC responses; the default of limits.max_request_bytes
    drain_grace_s: float = 30.0
    # gRPC connections end after this age (grpc core adds +-10 % jitter) with a GOAWAY: clients reconnect, and
    # behind a connection-balancing Service (kube-proxy) new replicas get their share. 0 = connections live on.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0  # after the GOAWAY, calls still running may finish; 0 = however long
    # What serves the gRPC port: "native" (pygrpc-native: HTTP/2 and gRPC framing in Rust, outside the GIL),
    # "grpcio" (grpc.aio), or "auto": native unless the configuration asks for what only grpcio can do
    # (native_engine_conflicts), then grpcio.
    grpc_engine: str = "auto"
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
    routes: tuple[RouteConfig, ...] = ()
    # Model lifecycle, with Triton's names: none (load what is configured at start; no repository changes),
    # explicit (only --load-model at start; then the repository RPCs), poll (rescan the repository).
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ()  # explicit mode: loaded at start; "*" = every model
    repository_poll_secs: float = 0.0  # poll mode: seconds between scans
    exit_on_error: bool = False  # a model that fails to load at start stops the server (else: UNAVAILABLE)
    strict_readiness: bool = True  # ServerReady only when every configured model is ready
    model_cache_dir: Path | None = None  # MLflow downloads and uploaded model files; None: a temporary dir
    # TLS for gRPC and HTTP from PEM files (re-read on SIGHUP); a client CA turns on mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # clients must present a certificate this CA signed
    auth: AuthConfig = field(default_factory=lambda: AuthConfig())
    limits: LimitsConfig = field(default_factory=LimitsConfig)


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
    _reject_unknown(doc, ["server", "batching", "monitoring", "cache", "models", "routes"], "")
    s = _get(doc, "server", "", dict, {})
    _reject_unknown(s, ["host", "port", "http_port", "max_message_bytes", "drain_grace_s", "max_connection_age_s",
                        "max_connection_age_grace_s", "grpc_engine", "log_level", "log_format", "access_log",
                        "model_repository", "device", "execution", "cache", "workers", "reuse_port",
                        "metrics", "metrics_host", "metrics_port", "model_control_mode", "load_models",
                        "repository_poll_secs", "exit_on_error", "strict_readiness", "model_cache_dir", "tls_cert",
                        "tls_key", "tls_client_ca", "auth", "limits"], "server.")
    repo = _get(s, "model_repository", "server.", str, None)
    drain = _get(s, "drain_grace_s", "server.", (int, float), 30.0)
    if drain < 0:
        raise ConfigError("server.drain_grace_s", f"must be >= 0, got {drain}")
    message_bytes = _count(s, "max_message_bytes", "server.", MAX_GRPC_MESSAGE_BYTES, minimum=1,
                           maximum=MAX_GRPC_MESSAGE_BYTES)
    cfg = ServerConfig(
        host=_get(s, "host", "server.", str, "127.0.0.1"),
        port=_count(s, "port", "server.", 8001, maximum=65535),
        http_port=_count(s, "http_port", "server.", 8000, maximum=65535),
        max_message_bytes=message_bytes,
        drain_grace_s=float(drain),
        max_connection_age_s=_seconds(s, "max_connection_age_s", "server.", 0.0),
        max_connection_age_grace_s=_seconds(s, "max_connection_age_grace_s", "server.", 0.0),
        grpc_engine=_choice(s, "grpc_engine", "server.", GRPC_ENGINES, "auto"),
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
        model_control_mode=_choice(s, "model_control_mode", "server.", MODEL_CONTROL_MODES, "none"),
        load_models=tuple(_names(s, "load_models", "server.")),
        repository_poll_secs=_seconds(s, "repository_poll_secs", "server.", 0.0),
        exit_on_error=_get(s, "exit_on_error", "server.", bool, False),
        strict_readiness=_get(s, "strict_readiness", "server.", bool, True),
        model_cache_dir=Path(cache_dir) if (cache_dir := _get(s, "model_cache_dir", "server.", str, None)) else None,
        tls_cert=_path(s, "tls_cert", "server."),
        tls_key=_path(s, "tls_key", "server."),
        tls_client_ca=_path(s, "tls_client_ca", "server."),
        auth=parse_auth(_get(s, "auth", "server.", dict, {})),
        limits=parse_limits(_get(s, "limits", "server.", dict, {}), message_bytes),
    )
    _check_tls(cfg)
    _check_model_control(cfg)
    if cfg.grpc_engine == "native":
        refuse_native_conflicts(cfg)
    if cfg.cache:
        check_cache(cfg.cache)
    if cfg.max_connection_age_grace_s and not cfg.max_connection_age_s:
        raise ConfigError("server.max_connection_age_grace_s", "needs max_connection_age_s (no age, nothing to "
                          "grant grace to)")
    if cfg.workers > 1 and cfg.port == 0:
        raise ConfigError("server.workers", "several workers need a fixed port (port 0 picks one per process)")
    models = _get(doc, "models", "", list, [])
    parsed = tuple(parse_model(m, f"models[{i}].", cfg) for i, m in enumerate(models))
    routes, companions = with_aliases(parse_routes(_get(doc, "routes", "", dict, {})), parsed)
    return dataclasses.replace(cfg, models=parsed + companions, routes=routes)


def native_engine_conflicts(cfg: ServerConfig) -> list[tuple[str, str]]:
    """The settings the native gRPC engine (pygrpc-native) cannot honour, as (dotted key, why not): where
    `auto` picks grpcio instead, and what `native` refuses. Its README lists the rest of what it cannot do (response
    compression, maximum_concurrent_rpcs, connection idleness and count limits), none of which this server asks.

    A lowered max_request_bytes is among them: the native engine reads a whole message into memory before Python can
    refuse it (measured: three 200 MB calls over a 1 MiB limit raised its peak RSS by 580 MiB, grpcio's by 13 MiB,
    which refuses from the length prefix). The answer is the same RESOURCE_EXHAUSTED; the memory bound is not. At the
    default (2 GiB, gRPC's own ceiling) both engines read what they are sent."""
    conflicts = []
    if cfg.tls_cert is not None:
        conflicts.append(("server.tls_cert", "it has no TLS"))
    if cfg.max_connection_age_s:
        conflicts.append(("server.max_connection_age_s", "it cannot close connections by age"))
    if cfg.limits.max_request_bytes < MAX_GRPC_MESSAGE_BYTES:
        conflicts.append(("server.limits.max_request_bytes", "it reads a whole message into memory before it can "
                                                             "be refused (the limit is server.max_message_bytes "
                                                             "unless set; it also bounds HTTP bodies)"))
    return conflicts


def refuse_native_conflicts(cfg: ServerConfig) -> None:
    """ConfigError naming the first setting the native engine cannot honour, if any (native asked for)."""
    if conflicts := native_engine_conflicts(cfg):
        key, what = conflicts[0]
        raise ConfigError("server.grpc_engine", f"the native gRPC engine cannot honour {key}: {what}; use "
                                                f"grpc_engine = \"grpcio\", or \"auto\", which picks grpcio for it")


def _path(table: Mapping[str, Any], key: str, prefix: str) -> Path | None:
    value = _get(table, key, prefix, str, None)
    if value == "":
        raise ConfigError(f"{prefix}{key}", "must be a file's path, got an empty string")
    return Path(value) if value is not None else None


def parse_auth(table: Mapping[str, Any]) -> AuthConfig:
    _reject_unknown(table, ["tokens_file", "open_metadata"], "server.auth.")
    return AuthConfig(tokens_file=_path(table, "tokens_file", "server.auth."),
                      open_metadata=_get(table, "open_metadata", "server.auth.", bool, False))


def parse_limits(table: Mapping[str, Any], max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES,
                 prefix: str = "server.limits.") -> LimitsConfig:
    _reject_unknown(table, [f.name for f in dataclasses.fields(LimitsConfig)], prefix)
    d = LimitsConfig()
    return LimitsConfig(
        # gRPC takes these as C ints: 2**31 - 1 at most.
        max_request_bytes=_count(table, "max_request_bytes", prefix, max_message_bytes, minimum=1,
                                 maximum=MAX_GRPC_MESSAGE_BYTES),
        max_tensor_elements=_count(table, "max_tensor_elements", prefix, d.max_tensor_elements, minimum=1),
        max_tensor_bytes=_count(table, "max_tensor_bytes", prefix, d.max_tensor_bytes, minimum=1),
        max_request_elements=_count(table, "max_request_elements", prefix, d.max_request_elements, minimum=1),
        max_bytes_element_bytes=_count(table, "max_bytes_element_bytes", prefix, d.max_bytes_element_bytes,
                                       minimum=1),
        max_concurrent_streams=_count(table, "max_concurrent_streams", prefix, d.max_concurrent_streams, minimum=1,
                                      maximum=2**31 - 1),
        max_requests_per_stream=_count(table, "max_requests_per_stream", prefix, d.max_requests_per_stream,
                                       minimum=1),
        max_in_flight=_count(table, "max_in_flight", prefix, d.max_in_flight),
    )


def _check_tls(cfg: ServerConfig) -> None:
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("server.tls_cert", "TLS needs both --tls-cert and --tls-key")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("server.tls_client_ca", "mutual TLS (--tls-client-ca) needs --tls-cert and --tls-key")


def _names(table: Mapping[str, Any], key: str, prefix: str) -> list[str]:
    names = _get(table, key, prefix, list, [])
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{prefix}{key}", f"must be model names, got {names}")
    return names


def _check_model_control(cfg: ServerConfig) -> None:
    mode = cfg.model_control_mode
    if cfg.load_models and mode != "explicit":
        raise ConfigError("server.load_models", f"--load-model needs --model-control-mode explicit (mode is {mode})")
    if "*" in cfg.load_models and len(cfg.load_models) > 1:
        raise ConfigError("server.load_models", "'*' loads every model and must be the only --load-model")
    if mode == "poll":
        if cfg.repository_poll_secs <= 0:
            raise ConfigError("server.repository_poll_secs", "poll mode needs --repository-poll-secs > 0")
        if cfg.model_repository is None:
            raise ConfigError("server.model_repository", "poll mode needs a model repository to poll")
    elif cfg.repository_poll_secs:
        raise ConfigError("server.repository_poll_secs", f"needs --model-control-mode poll (mode is {mode})")
    if mode == "explicit" and cfg.workers > 1:
        raise ConfigError("server.model_control_mode", "explicit mode changes models in the process a repository "
                          "request reaches; with several workers the others would differ. Use one worker, or "
                          "poll mode or MLflow sources, which every worker follows")


def read_toml(path: Path, key: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(key, f"{path} is not valid TOML: {e}") from None
