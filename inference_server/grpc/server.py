"""Builds the grpc.aio server: every GRPCInferenceService method, RouteAdmin (admin.py), grpc.health.v1, message
limits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..config import ServerConfig
from ..service import InferenceService
from . import admin
from ._generated import grpc_service_pb2 as pb
from .servicer import InferenceServicer, parser

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by this server")

    return handler


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per method of the service descriptor; methods the servicer lacks answer UNIMPLEMENTED."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name, None) or _unimplemented(method.name)
        make = grpc.stream_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(behaviour, request_deserializer=parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    return handlers


def build_server(service: InferenceService,
                 cfg: ServerConfig) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """An unstarted server bound to cfg.host:cfg.port; returns it, its health servicer and the bound port."""
    limit = cfg.max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # A port already in use is an error, not a silent share, unless workers share it on purpose.
        ("grpc.so_reuseport", int(cfg.reuse_port)),
    ])
    # Registered with grpc core: calls are matched in C, not by a Python lookup per call.
    server.add_registered_method_handlers(SERVICE_NAME, method_handlers(InferenceServicer(service)))
    server.add_registered_method_handlers(admin.SERVICE_NAME, admin.method_handlers(service))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, health_servicer, port


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


class GrpcFrontEnd:
    """The gRPC front end as the App drives every front end: bind, start, follow readiness, drain, stop."""

    name = "gRPC"

    def __init__(self, service: InferenceService, cfg: ServerConfig) -> None:
        self._server, self._health, self.port = build_server(service, cfg)

    async def start(self) -> None:
        await set_serving(self._health, False)  # until the models have loaded
        await self._server.start()

    async def readiness(self, ready: bool) -> None:
        await set_serving(self._health, ready)

    def reload(self, cfg: ServerConfig) -> None:
        """SIGHUP: re-read what may change while running (certificates, tokens). Raises ConfigError."""

    async def begin_drain(self) -> None:
        """Health answers NOT_SERVING from now on (later readiness updates are ignored)."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None) -> None:
        """Close the port; answers already computed are still sent for up to grace_s."""
        await self._server.stop(grace=grace_s)
