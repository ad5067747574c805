"""Which engine serves the gRPC port, and the unstarted grpc.aio-compatible server it gives.

- `grpcio`: grpc.aio's server. HTTP/2 and gRPC framing run in grpc core, and every call crosses into Python
  through grpc's poller thread and the event loop: about 400 us of CPU per unary call here.
- `native`: pygrpc-native's `aio.server()`, the same API with HTTP/2 and gRPC framing (tonic/hyper) on tokio threads
  outside the GIL; calls reach the event loop in batches. Unary and server-streaming methods are served there;
  client-streaming and bidirectional ones (ModelStreamInfer) go to a grpc.aio server behind it on a Unix socket,
  and so do calls to methods it does not know while interceptors are set. It cannot do TLS, close connections
  by age, or refuse a message over max_request_bytes before reading it whole (config.native_engine_conflicts),
  and it is refused for those.
- `auto` (the default): native, unless the configuration asks for what only grpcio does, or pygrpc-native is
  not installed or does not load; the start-up log says which, and why.

How the engines differ as a client sees them is in the README ("gRPC engines") and tested on both
(tests/integration/test_grpc_engines.py)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import grpc

from inference_server.config.server import ServerConfig, native_engine_conflicts, refuse_native_conflicts
from inference_server.errors import ConfigError

GRPCIO, NATIVE = "grpcio", "native"
NATIVE_PACKAGE = "pygrpc_native"


def native_unavailable() -> str | None:
    """None when pygrpc-native imports here, else why not (not installed, or a wheel that cannot load)."""
    try:
        importlib.import_module(f"{NATIVE_PACKAGE}.aio")
    except ImportError as e:
        return "pygrpc-native is not installed" if e.name == NATIVE_PACKAGE else f"pygrpc-native does not load: {e}"
    return None


def choose(cfg: ServerConfig) -> tuple[str, str]:
    """(engine, why) for cfg.grpc_engine. ConfigError when native is asked for and cannot run: not importable, or
    a setting it cannot honour (parse_server refuses those too; this holds for a config built any other way)."""
    if cfg.grpc_engine == GRPCIO:
        return GRPCIO, "grpc_engine = grpcio"
    if cfg.grpc_engine == NATIVE:
        refuse_native_conflicts(cfg)
        if (why := native_unavailable()) is not None:
            raise ConfigError("server.grpc_engine", f"native: {why} (pip install pygrpc-native)")
        return NATIVE, "grpc_engine = native"
    if conflicts := native_engine_conflicts(cfg):
        needs = "; ".join(f"{key} (the native engine: {what})" for key, what in conflicts)
        return GRPCIO, f"auto: {needs}"
    if (why := native_unavailable()) is not None:
        return GRPCIO, f"auto: {why}"
    return NATIVE, "auto: nothing configured needs grpcio"


def new_server(engine: str, interceptors: Sequence[grpc.aio.ServerInterceptor],
               options: Sequence[tuple[str, Any]]) -> grpc.aio.Server:
    """An unstarted server of that engine. Both take the same options; native ignores those it has no use for
    (grpc core's pending-call backlog) and raises ValueError for those it cannot honour (never passed here)."""
    if engine == NATIVE:
        import pygrpc_native.aio  # imported only when it serves

        return pygrpc_native.aio.server(interceptors=list(interceptors), options=list(options))
    return grpc.aio.server(interceptors=list(interceptors), options=list(options))
