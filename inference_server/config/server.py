"""Configuration: frozen dataclasses, a TOML file and command-line flags (flags win over the file).

Every bad value raises ConfigError naming its dotted key, at start-up. The flags are in cli.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference_server.config import toml
from inference_server.config.model import (
    DEVICES,
    EXECUTIONS,
    BatchingConfig,
    ModelConfig,
    parse_batching,
    parse_model,
)
from inference_server.config.routes import RouteConfig, parse_routes, with_aliases
from inference_server.config.tracing import TracingConfig, parse_tracing
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
    # The model's name when model_repository is one model (DIR/model.onnx, or DIR/<version>/model.onnx: what KServe
    # puts in /mnt/models for a storageUri naming one model); required then. With a repository of model
    # directories it names nothing (each model is named by its directory) and the start-up log says it is unused:
    # one KServe runtime passes it whatever the storageUri holds (lifecycle/repository.py single_model).
    model_name: str | None = None
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
    # Many models (explicit and poll modes): a request for a repository model that is not loaded loads it; and a
    # budget (0: none) over which the least recently used idle model is evicted before a load (lifecycle/budget.py).
    # With --workers N each worker process keeps its own budget.
    load_on_demand: bool = False
    max_loaded_models: int = 0  # models loaded at once (an ensemble, which has no session, does not count)
    model_memory_budget_mb: int = 0  # MiB the loaded models may take: model_size_bytes, else measured at load
    strict_readiness: bool = True  # ServerReady only when every configured model is ready
    model_cache_dir: Path | None = None  # MLflow downloads and uploaded model files; None: a temporary dir
    # TLS for gRPC and HTTP from PEM files (re-read on SIGHUP); a client CA turns on mutual TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # clients must present a certificate this CA signed
    auth: AuthConfig = field(default_factory=lambda: AuthConfig())
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # [tracing]: OpenTelemetry, with the OTEL_* environment over the table (config/tracing.py, cli.load_config)
    tracing: TracingConfig = field(default_factory=TracingConfig)


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
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(CacheConfig)], prefix)
    d = CacheConfig()
    return CacheConfig(
        ttl_s=toml.seconds(table, "ttl_s", prefix, d.ttl_s),
        max_entry_bytes=toml.count(table, "max_entry_bytes", prefix, d.max_entry_bytes, minimum=1),
        timeout_s=toml.seconds(table, "timeout_s", prefix, d.timeout_s, minimum=0.001),
        breaker_failures=toml.count(table, "breaker_failures", prefix, d.breaker_failures, minimum=1),
        breaker_cooldown_s=toml.seconds(table, "breaker_cooldown_s", prefix, d.breaker_cooldown_s),
        write_queue_size=toml.count(table, "write_queue_size", prefix, d.write_queue_size, minimum=1),
        near_cache_mib=toml.count(table, "near_cache_mib", prefix, d.near_cache_mib),
    )


def parse_monitoring(table: Mapping[str, Any], prefix: str = "monitoring.") -> MonitoringConfig:
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(MonitoringConfig)], prefix)
    d = MonitoringConfig()
    rate = toml.get(table, "prediction_log_sample_rate", prefix, (int, float), d.prediction_log_sample_rate)
    if not 0 <= rate <= 1:
        raise ConfigError(f"{prefix}prediction_log_sample_rate", f"must be between 0 and 1, got {rate}")
    log_path = toml.get(table, "prediction_log_path", prefix, str, None)
    if rate and not log_path:
        raise ConfigError(f"{prefix}prediction_log_path", "is required when prediction_log_sample_rate > 0")
    reference_path = toml.get(table, "drift_reference_path", prefix, str, None)
    return MonitoringConfig(
        prediction_log_sample_rate=float(rate),
        prediction_log_path=Path(log_path) if log_path else d.prediction_log_path,
        prediction_log_queue_size=toml.count(table, "prediction_log_queue_size", prefix, d.prediction_log_queue_size,
                                             minimum=1),
        drift=toml.get(table, "drift", prefix, bool, d.drift),
        drift_reference_size=toml.count(table, "drift_reference_size", prefix, d.drift_reference_size, minimum=1),
        drift_reference_path=Path(reference_path) if reference_path else d.drift_reference_path,
        drift_window_size=toml.count(table, "drift_window_size", prefix, d.drift_window_size, minimum=1),
    )


# ServerConfig's fields that are not keys of [server]: other tables of the file, and the environment.
NOT_SERVER_KEYS = frozenset({"batching", "redis_password", "cache_config", "monitoring", "models", "routes",
                             "tracing"})
# The keys of [server], in ServerConfig's order: the parser's, and the command line's (cli.py: one flag for each
# but auth and limits).
SERVER_KEYS = tuple(f.name for f in dataclasses.fields(ServerConfig) if f.name not in NOT_SERVER_KEYS)


def parse_server(doc: Mapping[str, Any]) -> ServerConfig:
    toml.reject_unknown(doc, ["server", "batching", "monitoring", "cache", "tracing", "models", "routes"], "")
    s = toml.get(doc, "server", "", dict, {})
    toml.reject_unknown(s, SERVER_KEYS, "server.")
    d, p = ServerConfig(), "server."
    repo = toml.get(s, "model_repository", p, str, None)
    model_name = toml.get(s, "model_name", p, str, None)
    if model_name is not None and (not model_name or model_name.startswith(".") or "/" in model_name
                                   or "\\" in model_name):
        raise ConfigError("server.model_name", f"must be a model name (not empty, no '/', not starting with '.'), "
                                               f"got {model_name!r}")
    drain = toml.get(s, "drain_grace_s", p, (int, float), d.drain_grace_s)
    if drain < 0:
        raise ConfigError("server.drain_grace_s", f"must be >= 0, got {drain}")
    message_bytes = toml.count(s, "max_message_bytes", p, d.max_message_bytes, minimum=1,
                               maximum=MAX_GRPC_MESSAGE_BYTES)
    cache_dir = toml.get(s, "model_cache_dir", p, str, None)
    cfg = ServerConfig(
        host=toml.get(s, "host", p, str, d.host),
        port=toml.count(s, "port", p, d.port, maximum=65535),
        http_port=toml.count(s, "http_port", p, d.http_port, maximum=65535),
        max_message_bytes=message_bytes,
        drain_grace_s=float(drain),
        max_connection_age_s=toml.seconds(s, "max_connection_age_s", p, d.max_connection_age_s),
        max_connection_age_grace_s=toml.seconds(s, "max_connection_age_grace_s", p, d.max_connection_age_grace_s),
        grpc_engine=toml.choice(s, "grpc_engine", p, GRPC_ENGINES, d.grpc_engine),
        log_level=toml.choice(s, "log_level", p, LOG_LEVELS, d.log_level),
        log_format=toml.choice(s, "log_format", p, LOG_FORMATS, d.log_format),
        access_log=toml.get(s, "access_log", p, bool, d.access_log),
        model_repository=Path(repo) if repo else d.model_repository,
        model_name=model_name,
        device=toml.choice(s, "device", p, DEVICES, d.device),
        execution=toml.choice(s, "execution", p, EXECUTIONS, d.execution),
        cache=toml.get(s, "cache", p, str, d.cache),
        cache_config=parse_cache(toml.get(doc, "cache", "", dict, {})),
        workers=toml.count(s, "workers", p, d.workers, minimum=1, maximum=64),
        reuse_port=toml.get(s, "reuse_port", p, bool, d.reuse_port),
        metrics=toml.get(s, "metrics", p, bool, d.metrics),
        metrics_host=toml.get(s, "metrics_host", p, str, d.metrics_host),
        metrics_port=toml.count(s, "metrics_port", p, d.metrics_port, maximum=65535),
        batching=parse_batching(toml.get(doc, "batching", "", dict, {}), "batching.", d.batching),
        monitoring=parse_monitoring(toml.get(doc, "monitoring", "", dict, {})),
        tracing=parse_tracing(toml.get(doc, "tracing", "", dict, {})),
        model_control_mode=toml.choice(s, "model_control_mode", p, MODEL_CONTROL_MODES, d.model_control_mode),
        load_models=tuple(toml.names(s, "load_models", p)),
        repository_poll_secs=toml.seconds(s, "repository_poll_secs", p, d.repository_poll_secs),
        exit_on_error=toml.get(s, "exit_on_error", p, bool, d.exit_on_error),
        load_on_demand=toml.get(s, "load_on_demand", p, bool, d.load_on_demand),
        max_loaded_models=toml.count(s, "max_loaded_models", p, d.max_loaded_models),
        model_memory_budget_mb=toml.count(s, "model_memory_budget_mb", p, d.model_memory_budget_mb),
        strict_readiness=toml.get(s, "strict_readiness", p, bool, d.strict_readiness),
        model_cache_dir=Path(cache_dir) if cache_dir else d.model_cache_dir,
        tls_cert=toml.path(s, "tls_cert", p),
        tls_key=toml.path(s, "tls_key", p),
        tls_client_ca=toml.path(s, "tls_client_ca", p),
        auth=parse_auth(toml.get(s, "auth", p, dict, {})),
        limits=parse_limits(toml.get(s, "limits", p, dict, {}), message_bytes),
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
    models = toml.get(doc, "models", "", list, [])
    parsed = tuple(parse_model(m, f"models[{i}].", cfg) for i, m in enumerate(models))
    routes, companions = with_aliases(parse_routes(toml.get(doc, "routes", "", dict, {})), parsed)
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


def parse_auth(table: Mapping[str, Any]) -> AuthConfig:
    prefix = "server.auth."
    toml.reject_unknown(table, ["tokens_file", "open_metadata"], prefix)
    return AuthConfig(tokens_file=toml.path(table, "tokens_file", prefix),
                      open_metadata=toml.get(table, "open_metadata", prefix, bool, AuthConfig().open_metadata))


def parse_limits(table: Mapping[str, Any], max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES,
                 prefix: str = "server.limits.") -> LimitsConfig:
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(LimitsConfig)], prefix)
    d = LimitsConfig()
    return LimitsConfig(
        # gRPC takes these as C ints: 2**31 - 1 at most.
        max_request_bytes=toml.count(table, "max_request_bytes", prefix, max_message_bytes, minimum=1,
                                     maximum=MAX_GRPC_MESSAGE_BYTES),
        max_tensor_elements=toml.count(table, "max_tensor_elements", prefix, d.max_tensor_elements, minimum=1),
        max_tensor_bytes=toml.count(table, "max_tensor_bytes", prefix, d.max_tensor_bytes, minimum=1),
        max_request_elements=toml.count(table, "max_request_elements", prefix, d.max_request_elements, minimum=1),
        max_bytes_element_bytes=toml.count(table, "max_bytes_element_bytes", prefix, d.max_bytes_element_bytes,
                                           minimum=1),
        max_concurrent_streams=toml.count(table, "max_concurrent_streams", prefix, d.max_concurrent_streams,
                                          minimum=1, maximum=2**31 - 1),
        max_requests_per_stream=toml.count(table, "max_requests_per_stream", prefix, d.max_requests_per_stream,
                                           minimum=1),
        max_in_flight=toml.count(table, "max_in_flight", prefix, d.max_in_flight),
    )


def _check_tls(cfg: ServerConfig) -> None:
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("server.tls_cert", "TLS needs both --tls-cert and --tls-key")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("server.tls_client_ca", "mutual TLS (--tls-client-ca) needs --tls-cert and --tls-key")


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
    for key, value in (("load_on_demand", cfg.load_on_demand), ("max_loaded_models", cfg.max_loaded_models),
                       ("model_memory_budget_mb", cfg.model_memory_budget_mb)):
        if value and mode not in ("explicit", "poll"):
            raise ConfigError(f"server.{key}", f"needs --model-control-mode explicit or poll (mode is {mode}): in "
                              "mode none every model loads at start and stays")
    if mode == "explicit" and cfg.workers > 1:
        raise ConfigError("server.model_control_mode", "explicit mode changes models in the process a repository "
                          "request reaches; with several workers the others would differ. Use one worker, or "
                          "poll mode or MLflow sources, which every worker follows")
