"""Composition root and lifecycle: config -> models -> service -> gRPC and HTTP servers; SIGTERM drains."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import generate_latest

from inference_server.breaker import CircuitBreaker
from inference_server.cache.memory import MemoryCache, ResponseCache
from inference_server.config.cli import load_config
from inference_server.config.listeners import check_free, metrics_listener, server_listeners
from inference_server.config.routes import RouteConfig
from inference_server.config.server import ServerConfig, cache_size_bytes, check_cache, redact_url
from inference_server.errors import ConfigError, ModelLoadError
from inference_server.execution import cpus
from inference_server.grpc.server import GrpcFrontEnd
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.observability.drift import DriftMonitor
from inference_server.observability.logs import configure_logging
from inference_server.observability.metrics import (
    MetricServerThread,
    RejectionCollector,
    build_registry,
    serve_registry,
)
from inference_server.observability.predictions import PredictionLog
from inference_server.pod.peers import PeerServer, PodStatistics, WorkerSlot
from inference_server.pod.workers import supervise
from inference_server.routing.metrics import RouteCollector
from inference_server.routing.router import Router
from inference_server.routing.shadow import Shadow, ShadowStats
from inference_server.routing.stats import RouteStats
from inference_server.security.state import Security
from inference_server.service.health import Gate
from inference_server.service.inference import InferenceService
from inference_server.service.runner import RequestRunner
from inference_server.service.views import own_figures

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from inference_server.observability.tracing import Tracing

log = logging.getLogger(__name__)

SETTLE_QUIET_S = 0.25  # after a drain: no request refused for this long means the clients have noticed...
SETTLE_LIMIT_S = 2.0  # ...or stop waiting for that after this long


def describe_cache(cfg: ServerConfig) -> str:
    """The response cache tier in words, for the start-up log (a Redis URL without its password)."""
    if not cfg.cache:
        return "off"
    if check_cache(cfg.cache) == "memory":
        return f"in-process memory, {cache_size_bytes(cfg.cache) >> 20} MiB"
    near = cfg.cache_config.near_cache_mib
    return f"Redis at {redact_url(cfg.cache)}" + (f" with a {near} MiB in-process near cache" if near else "")


def build_cache(cfg: ServerConfig) -> ResponseCache | None:
    if not cfg.cache:
        return None
    if check_cache(cfg.cache) == "memory":
        return MemoryCache(cache_size_bytes(cfg.cache))
    from inference_server.cache.redis_tier import (
        RedisCache,  # redis.asyncio takes about 0.1 s to import: only when used
    )

    c = cfg.cache_config
    breaker = CircuitBreaker(f"response cache at {redact_url(cfg.cache)}", c.breaker_failures, c.breaker_cooldown_s)
    try:
        return RedisCache(cfg.cache, password=cfg.redis_password, timeout_s=c.timeout_s, breaker=breaker,
                          write_queue_size=c.write_queue_size,
                          near=MemoryCache(c.near_cache_mib << 20) if c.near_cache_mib else None)
    except ValueError as e:  # redis-py's URL parsing (a query option it cannot read)
        raise ConfigError("server.cache", f"{redact_url(cfg.cache)}: {e}") from None


def build_tracing(cfg: ServerConfig, exporter: SpanExporter | None = None) -> Tracing | None:
    """The server's tracer when tracing is on (config/tracing.py), else None. `exporter`: spans go there instead
    of the OTLP exporter (tests)."""
    if not cfg.tracing.enabled:
        return None
    try:
        from inference_server.observability.tracing import (
            Tracing,  # the OpenTelemetry SDK and exporters: imported only when tracing is on
        )

        return Tracing(cfg.tracing, exporter)
    except ImportError as e:
        raise ConfigError("tracing", f"tracing is on but OpenTelemetry cannot be imported ({e}); install the "
                                     "server's `tracing` extra (pip install 'inference_server[tracing]')") from None


class FrontEnd(Protocol):
    """A protocol server over the one InferenceService (gRPC, and HTTP/REST unless http_port is 0)."""
    name: str
    port: int

    async def start(self) -> None: ...
    async def readiness(self, ready: bool) -> None: ...
    # SIGHUP: the re-read certificates and tokens (read once, by the App, for every front end) apply
    def secure(self, security: Security) -> None: ...
    async def begin_drain(self) -> None: ...
    async def stop(self, grace_s: float | None) -> None: ...


class App:
    """The running server. `start()` returns the bound port; `stop()` drains and shuts down."""

    def __init__(self, cfg: ServerConfig, reread: Callable[[], ServerConfig] | None = None,
                 slot: WorkerSlot | None = None, span_exporter: SpanExporter | None = None) -> None:
        self.cfg = cfg
        self.slot = slot  # one worker of several (--workers N): the pod's statistics and metrics need its peers
        if slot is not None:
            cpus.share_with(slot.count)  # before any model loads: ONNX Runtime pools sized to this worker's share
        self._reread = reread  # SIGHUP: the config as the file and flags say now
        self.registry = ModelRegistry()
        m = cfg.monitoring
        self.predictions = None
        if m.prediction_log_sample_rate > 0 and m.prediction_log_path is not None:
            self.predictions = PredictionLog(m.prediction_log_path, m.prediction_log_sample_rate,
                                             queue_size=m.prediction_log_queue_size)
        self.drift = None
        if m.drift:
            self.drift = DriftMonitor(reference_size=m.drift_reference_size, window_size=m.drift_window_size,
                                      reference_path=m.drift_reference_path)
        self._monitors = [m for m in (self.predictions, self.drift) if m is not None]
        self.cache = build_cache(cfg)
        self.tracing = build_tracing(cfg, span_exporter)  # None: off (`span_exporter`: tests' spans go there)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        cache_dir = cfg.model_cache_dir
        if not cache_dir:
            self._scratch = tempfile.TemporaryDirectory(prefix="inference_server-")
            cache_dir = Path(self._scratch.name)
        self.manager = ModelManager(cfg, self.registry, cache_dir=cache_dir, on_change=self._readiness_changed)
        self.gate = Gate(cfg.limits.max_in_flight)
        runner = RequestRunner(cache=self.cache, cache_config=cfg.cache_config, predictions=self.predictions,
                               drift=self.drift, access_log=cfg.access_log, rejected=self.gate.rejected,
                               registry=self.registry, lease=self.manager.lease)
        self.route_stats, self.shadow_stats = RouteStats(), ShadowStats()

        def shadow(route: RouteConfig) -> Shadow:
            assert route.shadow is not None
            return Shadow(route.name, route.shadow, self.registry, self.shadow_stats,
                          in_flight=lambda: self.gate.in_flight, run=runner.run_copy)

        router = Router(cfg.routes, shadows=shadow, stats=self.route_stats)
        self.service = InferenceService(self.registry, self.manager, router=router, runner=runner, gate=self.gate,
                                        pod=None if slot is None else PodStatistics(slot), http=bool(cfg.http_port),
                                        tracing=self.tracing)
        self.port = 0  # the gRPC port, once bound
        self.http_port = 0  # the HTTP port, once bound (0: no HTTP front end)
        self.front_ends: list[FrontEnd] = []  # started in this order, stopped in this order
        self.security: Security | None = None  # tokens and TLS files, read when the front ends are made
        self.metrics: MetricServerThread | None = None  # None as a worker: the supervisor serves the pod's
        self._peer_server: PeerServer | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._canaries: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind every front end and serve health first (NOT_SERVING), then load the models: probes see a live
        server that is not ready while models load and warm up; readiness follows once they are."""
        try:
            # Every port this process binds, checked before any is: one message names each that clashes, with its
            # flag (and gRPC's own bind error would come after a line of its C core's logging).
            check_free(server_listeners(self.cfg, worker=self.slot is not None))
            self.security = Security.load(self.cfg)  # ConfigError: a bad tokens file, certificate or key
            grpc_front_end = GrpcFrontEnd(self.service, self.cfg, self.security)
            self.front_ends.append(grpc_front_end)
            self.port = grpc_front_end.port
            if self.cfg.http_port:
                from inference_server.http.server import (
                    HttpFrontEnd,  # uvicorn and Starlette: imported only when HTTP is on
                )

                http_front_end = HttpFrontEnd(self.service, self.cfg, self.security)
                self.front_ends.append(http_front_end)
                self.http_port = http_front_end.port
            await self._start_metrics()
            for monitor in self._monitors:
                monitor.start()
            if self.cache is not None:
                await self.cache.start()
            for front_end in self.front_ends:
                await front_end.start()
            await self.manager.start()
            self._canaries = asyncio.get_running_loop().create_task(self.service.route_admin.run_canaries(),
                                                                    name="canaries")
        except BaseException as e:
            # Stopped while models loaded (a signal): requests already being answered finish first.
            grace = self.cfg.drain_grace_s if isinstance(e, asyncio.CancelledError) else 0.0
            await self.service.drain(grace)
            for front_end in self.front_ends:
                await front_end.stop(None)
            await self._stop_metrics()
            for monitor in self._monitors:
                await monitor.close()
            if self.cache is not None:
                await self.cache.close()
            if self.tracing is not None:
                await self.tracing.close()
            self._cleanup()
            raise
        await self._update_readiness()
        log.info("response cache: %s", describe_cache(self.cfg))
        log.info("tracing: %s", "off" if self.tracing is None else self.tracing.describe())
        unready = "" if self.service.health.ready else (
            f" (not ready: not loaded: {', '.join(self.manager.unready()) or '?'}; the errors above say why)")
        log.info("serving %d model(s) on %s:%d%s%s", len({m.name for m in self.registry.serving()}), self.cfg.host,
                 self.port, f" (gRPC), HTTP on port {self.http_port}" if self.http_port else "", unready)
        return self.port

    async def _start_metrics(self) -> None:
        """Alone: the metrics endpoint. As one of several workers: the socket the other workers ask for this one's
        statistics and the supervisor for its metrics (it serves the pod's merged metrics itself)."""
        if not self.cfg.metrics and self.slot is None:
            return
        registry = build_registry(self.registry.snapshot, drift=self.drift, predictions=self.predictions,
                                  cache=self.cache, lifecycle=self.manager, collectors=[
                                      RouteCollector(self.service.route_admin.views, self.route_stats,
                                                     self.shadow_stats),
                                      RejectionCollector(self.gate.rejected)])
        if self.slot is None:
            self.metrics = serve_registry(registry, metrics_listener(self.cfg))
            return
        self._peer_server = PeerServer(self.slot.path, lambda: own_figures(self.service.local_statistics()),
                                       lambda: generate_latest(registry))
        await self._peer_server.start()

    def _readiness_changed(self) -> None:
        """The manager changed a model's state: every front end's health follows ServerReady."""
        if not self.front_ends or self.gate.draining:
            return
        task = asyncio.get_running_loop().create_task(self._update_readiness())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _update_readiness(self) -> None:
        ready = self.service.health.ready  # read when it runs: the last update wins
        for front_end in self.front_ends:
            await front_end.readiness(ready)

    def _cleanup(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    def reload(self) -> bool:
        """SIGHUP: re-read the config and apply its [routes], and have each front end re-read its certificates
        and tokens. A bad file (or certificate, or tokens file) is refused and what runs stays. Other settings
        need a restart; a change to them is logged, not applied."""
        if self._reread is None:
            return False
        try:
            new = self._reread()
            companions = {m.name for m in new.models if not m.required} - {m.name for m in self.cfg.models}
            if companions:
                raise ConfigError("routes", f"variants following MLflow aliases the server does not follow yet "
                                            f"({', '.join(sorted(companions))}) need a restart")
            # every file read, once, before anything applies (none yet while the front ends are being made)
            security = None if self.security is None else self.security.reload(new)
        except ConfigError as e:
            log.error("SIGHUP: config refused, the running routes, certificates and tokens stay: %s", e)
            return False
        if security is not None:
            for front_end in self.front_ends:
                front_end.secure(security)
            self.security = security
            security.log_auth("SIGHUP: ")
        self.service.route_admin.reload(new.routes)
        kept = dataclasses.replace(self.cfg, routes=new.routes, tls_cert=new.tls_cert, tls_key=new.tls_key,
                                   tls_client_ca=new.tls_client_ca, auth=new.auth)
        if new != kept:
            log.warning("SIGHUP: only [routes], certificates and tokens apply while running; the other changes "
                        "need a restart")
        self.cfg = kept
        return True

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new requests get UNAVAILABLE, in-flight ones finish, then stop."""
        if self._canaries is not None:
            self._canaries.cancel()
            await asyncio.gather(self._canaries, return_exceptions=True)
        for front_end in self.front_ends:
            await front_end.begin_drain()
        await self.service.drain(self.cfg.drain_grace_s)
        # Clients still sending get UNAVAILABLE until they stop; closing at once would cut off the requests the
        # transports have already received (gRPC: CANCELLED).
        await self.gate.settle(SETTLE_QUIET_S, min(SETTLE_LIMIT_S, self.cfg.drain_grace_s))
        for front_end in self.front_ends:
            await front_end.stop(2.0)  # answers already computed still get sent
        if self.cache is not None:
            await self.cache.close()  # queued Redis writes are sent (briefly) first
        for monitor in self._monitors:
            await monitor.close()
        if self.tracing is not None:
            await self.tracing.close()  # the drained requests' last spans, bounded
        await self._stop_metrics()
        self._cleanup()
        log.info("stopped")

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self._peer_server is not None:
            await self._peer_server.stop()


async def serve(cfg: ServerConfig, reread: Callable[[], ServerConfig] | None = None,
                slot: WorkerSlot | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # also while models load: a stop then ends the start cleanly
        loop.add_signal_handler(sig, stop.set)
    orphaned = loop.create_task(watch_supervisor(stop)) if slot is not None else None
    try:
        app = App(cfg, reread, slot)
        loop.add_signal_handler(signal.SIGHUP, app.reload)
        starting = asyncio.create_task(app.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("shutdown signal received while starting; stopping")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)  # start() closes what it had opened
            return 0
        stopped.cancel()
        starting.result()
    except ConfigError as e:
        log.error("cannot start: %s", e)
        return 2
    except (ModelLoadError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    await stop.wait()
    log.info("shutdown signal received; draining for up to %.1fs", cfg.drain_grace_s)
    await app.stop()
    if orphaned is not None:
        orphaned.cancel()
    return 0


async def watch_supervisor(stop: asyncio.Event, poll_s: float = 1.0) -> None:
    """A worker whose supervisor died (SIGKILL leaves it no time to stop them) drains and exits, rather than
    serving on alone with nobody to stop it or serve the pod's metrics."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(poll_s)
    log.error("the supervisor (pid %d) is gone; this worker stops", parent)
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("INFO")
    try:
        cfg = load_config(argv, os.environ)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    configure_logging(cfg.log_level, cfg.log_format)
    if cfg.workers > 1:
        return supervise(cfg, sys.argv[1:] if argv is None else argv)
    server = serve(cfg, lambda: load_config(argv, os.environ), WorkerSlot.from_environ(os.environ))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(server)
    return uvloop.run(server)
