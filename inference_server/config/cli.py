"""The command line: flags over the TOML file (`--config` or $INFERENCE_SERVER_CONFIG) over the defaults,
and the environment variables the server reads ($REDIS_URL, $REDIS_PASSWORD, and OpenTelemetry's OTEL_* over
[tracing]: config/tracing.py)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from inference_server import __version__
from inference_server.config import toml
from inference_server.config.model import BatchingConfig
from inference_server.config.server import (
    CONFIG_ENV,
    DEVICES,
    EXECUTIONS,
    GRPC_ENGINES,
    LOG_FORMATS,
    MODEL_CONTROL_MODES,
    REDIS_PASSWORD_ENV,
    REDIS_URL_ENV,
    SERVER_KEYS,
    ServerConfig,
    parse_server,
)
from inference_server.config.tracing import with_environment
from inference_server.errors import ConfigError

# The [server] and [batching] keys that have a flag of their name (--auth-tokens sets server.auth.tokens_file).
FLAG_SERVER_KEYS = tuple(key for key in SERVER_KEYS if key not in ("auth", "limits"))
FLAG_BATCHING_KEYS = tuple(f.name for f in dataclasses.fields(BatchingConfig) if f.name != "preferred_batch_size")
DEFAULTS = ServerConfig()  # for the help texts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference_server",
                                description="KServe v2 / Triton gRPC inference server with dynamic batching.")
    p.add_argument("--config", type=Path, help=f"TOML config file (also ${CONFIG_ENV})")
    p.add_argument("--host", help=f"address to bind (default {DEFAULTS.host})")
    p.add_argument("--port", type=int, help=f"gRPC port (default {DEFAULTS.port}; 0 picks a free one)")
    p.add_argument("--http-port", type=int,
                   help=f"HTTP/REST (KServe v2) port (default {DEFAULTS.http_port}; 0: no HTTP)")
    p.add_argument("--model-repository", type=Path,
                   help="DIR/<model>/<version>/model.onnx layout, or one model: DIR/model.onnx or "
                        "DIR/<version>/model.onnx (named by --model-name)")
    p.add_argument("--model-name", help="the name of the model when --model-repository is one model (required "
                                        "then; unused with a repository of model directories)")
    p.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES,
                   help="none (default): load what is configured at start, no changes; explicit: --load-model "
                        "at start, then the repository load/unload RPCs; poll: rescan the repository")
    p.add_argument("--load-model", dest="load_models", action="append",
                   help="explicit mode: a model to load at start (repeatable; '*' loads every model)")
    p.add_argument("--repository-poll-secs", type=float,
                   help="poll mode: seconds between repository scans (a changed version loads once its files "
                        "have stopped changing between two scans)")
    p.add_argument("--load-on-demand", type=_boolean, nargs="?", const=True,
                   help="explicit or poll mode: a request for a repository model that is not loaded loads it "
                        "(default false)")
    p.add_argument("--max-loaded-models", type=int,
                   help="at most this many models loaded (per worker); the least recently used idle one is "
                        "evicted before a load (default 0: no limit)")
    p.add_argument("--model-memory-budget-mb", type=int,
                   help="MiB the loaded models may take (per worker): a model's model_size_bytes, else the memory "
                        "its load took; the least recently used idle one is evicted before a load (default 0: none)")
    p.add_argument("--exit-on-error", type=_boolean, nargs="?", const=True,
                   help="exit when a model fails to load at start (default false: it is UNAVAILABLE, the rest serve)")
    p.add_argument("--strict-readiness", type=_boolean, nargs="?", const=True,
                   help="ServerReady only when every configured model is ready (default true)")
    p.add_argument("--model-cache-dir", help="where MLflow artifacts and uploaded model files are kept "
                                             "(default: a temporary directory)")
    p.add_argument("--device", choices=DEVICES, help="default device for every model")
    p.add_argument("--execution", choices=EXECUTIONS,
                   help="where batches run: auto (measured per model at load), inline (event loop), thread")
    p.add_argument("--cache", help="response cache for every model: memory, memory:<MiB>, redis:// or rediss:// "
                                   "URL, or redis (the URL from $REDIS_URL; the password may come from "
                                   "$REDIS_PASSWORD)")
    p.add_argument("--workers", type=int,
                   help=f"server processes sharing the port via SO_REUSEPORT (default {DEFAULTS.workers})")
    p.add_argument("--reuse-port", action="store_true", default=None,
                   help="bind with SO_REUSEPORT, sharing the port with other server processes")
    p.add_argument("--metrics-port", type=int,
                   help=f"Prometheus endpoint port (default {DEFAULTS.metrics_port}; 0 picks a free one)")
    p.add_argument("--metrics-host", help=f"Prometheus endpoint address (default {DEFAULTS.metrics_host})")
    p.add_argument("--no-metrics", dest="metrics", action="store_false", default=None,
                   help="serve no Prometheus endpoint")
    p.add_argument("--max-batch-size", type=int, help="default max rows per batch (0: no batching)")
    p.add_argument("--max-queue-delay-us", type=int, help="default batching delay in microseconds")
    p.add_argument("--max-queue-size", type=int, help="default queued-request bound (0: unbounded)")
    p.add_argument("--instance-count", type=int, help="default model instances per model")
    p.add_argument("--max-message-bytes", type=int, help="gRPC send/receive limit")
    p.add_argument("--drain-grace-s", type=float, help="how long SIGTERM waits for in-flight requests")
    p.add_argument("--max-connection-age-s", type=float,
                   help="end gRPC connections after this many seconds (GOAWAY; clients reconnect, spreading over "
                        "replicas behind a Service); default 0: never")
    p.add_argument("--max-connection-age-grace-s", type=float,
                   help="after that GOAWAY, cut off calls (long streams too) still running after this long "
                        "(default 0: never)")
    p.add_argument("--grpc-engine", choices=GRPC_ENGINES,
                   help="what serves the gRPC port: native (pygrpc-native, HTTP/2 in Rust; no TLS, connection age or "
                        "lowered max_request_bytes), grpcio, or auto (default): native unless one of those asks for "
                        "grpcio")
    p.add_argument("--log-level", type=str.upper, help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json: one object per line")
    p.add_argument("--access-log", action="store_true", default=None, help="log one line per answered request")
    p.add_argument("--tls-cert", help="PEM certificate (chain) for gRPC and HTTP TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA certificate(s): clients must present a certificate it signed "
                                           "(mutual TLS)")
    p.add_argument("--auth-tokens", help="file of bearer tokens, one 'SCOPE[,SCOPE...] TOKEN' per line (scopes: "
                                         "infer, admin); re-read on SIGHUP")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ServerConfig:
    args = build_parser().parse_args(argv)
    path = args.config or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    doc = toml.read_toml(path, "--config") if path else {}
    server = dict(toml.get(doc, "server", "", dict, {}))
    batching = dict(toml.get(doc, "batching", "", dict, {}))
    for key in FLAG_SERVER_KEYS:  # each flag sets the [server] key of its name
        if (value := getattr(args, key)) is not None:
            server[key] = str(value) if isinstance(value, Path) else value
    if args.auth_tokens is not None:
        server["auth"] = {**toml.get(server, "auth", "server.", dict, {}), "tokens_file": args.auth_tokens}
    for key in FLAG_BATCHING_KEYS:
        if getattr(args, key) is not None:
            batching[key] = getattr(args, key)
    if server.get("cache") == "redis":  # the URL (and any password in it) stays out of argv and the file
        if not environ.get(REDIS_URL_ENV):
            raise ConfigError("server.cache", f"'redis' takes its URL from ${REDIS_URL_ENV}, which is not set")
        server["cache"] = environ[REDIS_URL_ENV]
    merged = {**doc, "server": server, "batching": batching}
    cfg = parse_server(merged)
    return dataclasses.replace(cfg, redis_password=environ.get(REDIS_PASSWORD_ENV) or None,
                               tracing=with_environment(cfg.tracing, environ))
