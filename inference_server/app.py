"""Composition root and lifecycle: config -> models -> service -> gRPC server; SIGTERM drains."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1.health import aio as health_aio

from .breaker import CircuitBreaker
from .cache import MemoryCache, ResponseCache
from .cli import load_config
from .config import DEFAULT_REPOSITORY, ModelConfig, ServerConfig, cache_size_bytes, check_cache, redact_url
from .drift import DriftMonitor
from .errors import ConfigError, ModelLoadError
from .grpc.server import build_server, set_serving
from .logs import configure_logging
from .metrics import MetricsServer
from .predictions import PredictionLog
from .registry import ModelRegistry, load_model
from .repository import scan_repository
from .service import InferenceService
from .stats import ModelStats
from .workers import supervise

log = logging.getLogger(__name__)


def model_configs(cfg: ServerConfig) -> list[ModelConfig]:
    """The models the config names; with none named, the embedded default repository."""
    models = list(cfg.models)
    if cfg.model_repository is not None:
        models += scan_repository(cfg.model_repository, cfg)
    if not models:
        models = scan_repository(DEFAULT_REPOSITORY, cfg)
    names = [(m.name, m.version) for m in models]
    for key in set(names):
        if names.count(key) > 1:
            raise ConfigError("models", f"model '{key[0]}' version {key[1]} is configured more than once")
    return models


def build_cache(cfg: ServerConfig) -> ResponseCache | None:
    if not cfg.cache:
        return None
    if check_cache(cfg.cache) == "memory":
        return MemoryCache(cache_size_bytes(cfg.cache))
    from .redis_cache import RedisCache  # redis.asyncio takes about 0.1 s to import: only when used

    c = cfg.cache_config
    breaker = CircuitBreaker(f"response cache at {redact_url(cfg.cache)}", c.breaker_failures, c.breaker_cooldown_s)
    try:
        return RedisCache(cfg.cache, password=cfg.redis_password, timeout_s=c.timeout_s, breaker=breaker,
                          write_queue_size=c.write_queue_size,
                          near=MemoryCache(c.near_cache_mib << 20) if c.near_cache_mib else None)
    except ValueError as e:  # redis-py's URL parsing (a query option it cannot read)
        raise ConfigError("server.cache", f"{redact_url(cfg.cache)}: {e}") from None


class App:
    """The running server. `start()` returns the bound port; `stop()` drains and shuts down."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
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
        self.service = InferenceService(self.registry, access_log=cfg.access_log, predictions=self.predictions,
                                        drift=self.drift, cache=self.cache, cache_config=cfg.cache_config)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self.metrics: MetricsServer | None = None

    async def start(self) -> int:
        try:
            for model_cfg in model_configs(self.cfg):
                self.registry.add(load_model(model_cfg))
            server, health, self.port = build_server(self.service, self.cfg)
            self._server, self._health = server, health
            if self.cfg.metrics:
                self.metrics = MetricsServer(self._stats, self.cfg.metrics_host, self.cfg.metrics_port,
                                             drift=self.drift, predictions=self.predictions, cache=self.cache)
            for monitor in self._monitors:
                monitor.start()
            if self.cache is not None:
                await self.cache.start()
            await server.start()
        except BaseException:
            if self.metrics is not None:
                self.metrics.stop()
            for monitor in self._monitors:
                await monitor.close()
            if self.cache is not None:
                await self.cache.close()
            await self.registry.close(0)
            raise
        await set_serving(health, True)
        log.info("serving %d model(s) on %s:%d", len(self.registry.models()), self.cfg.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new requests get UNAVAILABLE, in-flight ones finish, then stop."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self.service.drain(self.cfg.drain_grace_s)
        if self._server is not None:
            await self._server.stop(grace=2.0)  # answers already computed still get sent
        if self.cache is not None:
            await self.cache.close()  # queued Redis writes are sent (briefly) first
        for monitor in self._monitors:
            await monitor.close()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopped")

    def _stats(self) -> list[tuple[str, str, ModelStats]]:
        return [(m.name, m.version, m.batcher.stats) for m in self.registry.models()]


async def serve(cfg: ServerConfig) -> int:
    try:
        app = App(cfg)
        await app.start()
    except ConfigError as e:
        log.error("cannot start: %s", e)
        return 2
    except (ModelLoadError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown signal received; draining for up to %.1fs", cfg.drain_grace_s)
    await app.stop()
    return 0


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
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(cfg))
    return uvloop.run(serve(cfg))
