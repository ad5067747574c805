"""Builds the gRPC server on the chosen engine (engine.py: grpcio or native): every GRPCInferenceService method,
RouteAdmin (admin.py), grpc.health.v1, message and stream limits ([server.limits])."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_server.config import listeners
from inference_server.config.listeners import Listener, grpc_listener
from inference_server.config.server import ServerConfig
from inference_server.grpc import admin
from inference_server.grpc import engine as engines
from inference_server.grpc.auth import AuthInterceptor
from inference_server.grpc.limits import requests_in_flight
from inference_server.grpc.servicer import InferenceServicer, parser
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.security.state import Security
from inference_server.security.tls import ServerTls, plaintext_warning
from inference_server.service.inference import InferenceService

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
PENDING_CALLS_UNLIMITED = 2**31 - 1  # grpc core's backlog of calls not yet taken by the application


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by this server")

    return handler


def method_handlers(servicer: InferenceServicer,
                    max_requests_per_stream: int | None = None) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per method of the service descriptor; methods the servicer lacks answer UNIMPLEMENTED. A stream
    reads its next request only while fewer than max_requests_per_stream of its requests are unanswered."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name, None) or _unimplemented(method.name)
        if method.name == "ModelStreamInfer" and max_requests_per_stream is not None:
            behaviour = requests_in_flight(behaviour, max_requests_per_stream)
        make = grpc.stream_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(behaviour, request_deserializer=parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    return handlers


def connection_age(cfg: ServerConfig) -> list[tuple[str, int]]:
    """grpc core's max connection age and its grace, in ms; none when the age is 0 (connections live on)."""
    if not cfg.max_connection_age_s:
        return []
    options = [("grpc.max_connection_age_ms", max(1, round(cfg.max_connection_age_s * 1e3)))]
    if cfg.max_connection_age_grace_s:
        options.append(("grpc.max_connection_age_grace_ms", max(1, round(cfg.max_connection_age_grace_s * 1e3))))
    return options


def build_server(service: InferenceService, cfg: ServerConfig, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 credentials: grpc.ServerCredentials | None = None, engine: str = engines.GRPCIO,
                 ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """An unstarted server of `engine` bound to cfg.host:cfg.port (with TLS when given credentials: grpcio only);
    returns it, its health servicer and the bound port."""
    limits = cfg.limits
    server = engines.new_server(engine, interceptors, options=[*connection_age(cfg),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_request_bytes),  # over it: grpc's own RESOURCE_EXHAUSTED
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),  # per connection; clients queue the rest
        # A port already in use is an error, not a silent share, unless workers share it on purpose.
        ("grpc.so_reuseport", int(cfg.reuse_port)),
        # grpc core kills calls it has read but we have not yet taken once more than 1,000 wait (at random; all
        # past 3,000) with CANCELLED and no message. Overload is answered by our own limits instead (the streams
        # per connection above, max_in_flight, each model's queue bound, the deadline), each with its status.
        ("grpc.server.max_pending_requests", PENDING_CALLS_UNLIMITED),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_UNLIMITED),
    ])
    # Registered with grpc core: calls are matched in C, not by a Python lookup per call.
    server.add_registered_method_handlers(SERVICE_NAME, method_handlers(InferenceServicer(service, limits),
                                                                        limits.max_requests_per_stream))
    server.add_registered_method_handlers(admin.SERVICE_NAME, admin.method_handlers(service))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    listener = grpc_listener(cfg)
    address = f"{cfg.host}:{cfg.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:  # the ports were checked free before: another process took this one since
        raise _bind_failure(listener, e) from None
    if port == 0:
        raise _bind_failure(listener, RuntimeError(f"cannot bind {address}"))
    return server, health_servicer, port


def _bind_failure(listener: Listener, error: Exception) -> OSError:
    """grpc's bind error says no more than that it failed: the port checked again says why (in use, say)."""
    try:
        listeners.check_free([listener])
    except listeners.ListenError as e:
        return e
    return listeners.cannot_listen(listener, error)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


def certificate_configuration(files: ServerTls) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(files.private_key, files.certificate_chain)],
                                                     root_certificates=files.client_ca)


class CertificateRotation:
    """gRPC's certificate fetcher (grpc.dynamic_ssl_server_credentials): grpc core calls it from its own threads
    before every TLS handshake. It hands over the configuration a reload prepared, once, and otherwise None (keep
    the current one); connections already open keep the certificate they were made with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def replace(self, files: ServerTls) -> None:
        config = certificate_configuration(files)
        with self._lock:
            self._pending = config

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            config, self._pending = self._pending, None
        return config


class GrpcFrontEnd:
    """The gRPC front end as the App drives every front end: bind, start, follow readiness, drain, stop."""

    name = "gRPC"

    def __init__(self, service: InferenceService, cfg: ServerConfig, security: Security) -> None:
        self.engine, why = engines.choose(cfg)  # ConfigError: native asked for and not installed
        self._auth = None if security.auth is None else AuthInterceptor(security.auth)  # bearer tokens (grpc/auth.py)
        # TLS from PEM files (security/tls.py); the fetcher hands grpc core the certificates each SIGHUP re-read.
        self._tls = security.tls
        self._rotation = CertificateRotation()
        # The fetcher returns None to keep the current certificates, as grpc documents; types-grpcio's Callable
        # leaves None out.
        credentials = None if self._tls is None else grpc.dynamic_ssl_server_credentials(
            certificate_configuration(self._tls), self._rotation,  # type: ignore[arg-type]
            require_client_authentication=self._tls.mutual)
        self._server, self._health, self.port = build_server(service, cfg, [self._auth] if self._auth else [],
                                                             credentials, self.engine)
        log.info("gRPC engine: %s (%s)", self.engine, why)
        if self._tls is not None:
            log.info("gRPC port %d: %s", self.port, self._tls.describe())
        elif (warning := plaintext_warning(self.name, cfg.host, self.port)) is not None:
            log.warning("%s", warning)

    async def start(self) -> None:
        await set_serving(self._health, False)  # until the models have loaded
        await self._server.start()

    async def readiness(self, ready: bool) -> None:
        await set_serving(self._health, ready)

    def secure(self, security: Security) -> None:
        """SIGHUP: the security state the App re-read (for every front end at once) applies from now on: new
        tokens to the next call, new certificates to new connections."""
        if self._auth is not None and security.auth is not None:
            self._auth.auth = security.auth
        if security.tls is not None and security.tls is not self._tls:
            self._rotation.replace(security.tls)
            self._tls = security.tls
            log.info("SIGHUP: gRPC certificates re-read: %s", security.tls.describe())

    async def begin_drain(self) -> None:
        """Health answers NOT_SERVING from now on (later readiness updates are ignored)."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None) -> None:
        """Close the port; answers already computed are still sent for up to grace_s."""
        await self._server.stop(grace=grace_s)
