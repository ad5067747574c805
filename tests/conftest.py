"""Shared fixtures: a model repository of small real ONNX models, and a real server in its own thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest
from hypothesis import settings

from inference_server.app import App
from inference_server.config.server import DEFAULT_REPOSITORY, ModelConfig, ServerConfig, parse_server
from inference_server.grpc.engine import native_unavailable
from tests.support import onnx_models
from tests.support import redis_server as redis_process

# Property tests judge what comes out, never how long an example took: no per-example deadline (a shared,
# loaded machine made a 200 ms deadline fail examples that were merely slow).
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

MODELS = {
    # name: (builder, config.toml)
    "mlp": (lambda: onnx_models.mlp([8, 16, 4], second_output=True),
            "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 5000\n"),
    "types": (lambda: onnx_models.identity(onnx_models.ALL_BUT_BF16), ""),
    "bf16": (lambda: onnx_models.identity(["BF16", "FP32"]), ""),
    "text": (onnx_models.text_identity, ""),
    "fixed": (onnx_models.fixed_shape, ""),
    "drops_row": (onnx_models.drops_a_row, "[batching]\nmax_batch_size = 8\n"),
    "slow": (lambda: onnx_models.slow(1536), "[batching]\nmax_batch_size = 1\n"),
}


class ServerThread:
    """A real App on 127.0.0.1 in a thread with its own event loop, so blocking clients cannot stall it."""

    def __init__(self, cfg: ServerConfig, span_exporter: object = None) -> None:
        self.cfg = cfg
        self.span_exporter = span_exporter  # with cfg.tracing on: spans go there (an InMemorySpanExporter)
        self.app: App | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("server did not start in 60 s")
        if self._error is not None:
            raise self._error
        return self

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app = App(self.cfg, span_exporter=self.span_exporter)
        try:
            self.port = await self.app.start()
        except BaseException as e:  # handed to the test thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.app.stop()

    def batches(self, model: str) -> dict[int, int]:
        """Batches the model has executed, by row count: observed on the server, not assumed."""
        return dict(self.app.registry.find(model).batcher.executed_batches)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, (build, config) in MODELS.items():
        onnx_models.write_model(root, name, build(), config)
    return root


def server_config(repository: Path, **server: object) -> ServerConfig:
    cfg = parse_server({"server": {"port": 0, "metrics_port": 0, "http_port": 0, "model_repository": str(repository),
                                   "drain_grace_s": 5, **server}})
    digits = ModelConfig(name="digits", path=DEFAULT_REPOSITORY / "digits" / "1" / "model.onnx")
    return dataclasses.replace(cfg, models=(digits,))


NATIVE_UNAVAILABLE = native_unavailable()  # None where pygrpc-native loads (every platform with its wheels)


@pytest.fixture(scope="session", params=["grpcio", pytest.param("native", marks=pytest.mark.skipif(
    NATIVE_UNAVAILABLE is not None, reason=f"the native gRPC engine cannot run here: {NATIVE_UNAVAILABLE}"))])
def grpc_engine(request) -> str:
    """The engine serving gRPC (grpc/engine.py): a server fixture that takes it, and every test using that server,
    runs on both. Servers of tests that do not take it run on the default (auto: native)."""
    return request.param


@pytest.fixture(scope="session")
def server(repository, grpc_engine):
    thread = ServerThread(server_config(repository, grpc_engine=grpc_engine)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1 (scripts/test installs it when run as root), stopped by PID."""
    if not redis_process.available():
        pytest.skip("redis-server is not installed (scripts/test installs it with apt when run as root)")
    server = redis_process.RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
