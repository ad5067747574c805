"""Prediction monitoring through a real server: the drift gauge rises for shifted inputs and stays low for
unshifted ones; sampled predictions land in the JSON-lines log."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient

from inference_server.config.server import MonitoringConfig
from tests.conftest import ServerThread, server_config
from tests.integration.test_metrics import mlp, scrape

pytestmark = pytest.mark.integration
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def monitored(repository, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("monitoring") / "predictions.jsonl"
    cfg = replace(server_config(repository), monitoring=MonitoringConfig(
        drift=True, drift_reference_size=300, drift_window_size=300, prediction_log_sample_rate=1.0,
        prediction_log_path=log_path))
    thread = ServerThread(cfg).start()
    yield thread, log_path
    thread.stop()


def send(thread: ServerThread, shift: float, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    async def run() -> None:
        async with aioclient.InferenceServerClient(thread.url) as client:
            for _ in range(count // 10):
                x = aioclient.InferInput("x", [10, 8], "FP32")
                x.set_data_from_numpy((rng.standard_normal((10, 8)) + shift).astype(np.float32))
                await client.infer("mlp", [x], request_id="drift")

    asyncio.run(run())
    for monitor in (thread.app.drift, thread.app.predictions):
        asyncio.run_coroutine_threadsafe(monitor.drained(), thread.loop).result(10)


def psi_of(thread: ServerThread, output: str) -> float:
    return scrape(thread)[("inference_prediction_drift_psi", mlp(output=output))]


def test_drift_gauge_rises_for_shifted_inputs_only(monitored):
    thread, log_path = monitored
    send(thread, 0.0, 300, seed=1)  # the reference
    send(thread, 0.0, 300, seed=2)  # the same distribution, other draws
    unshifted = {output: psi_of(thread, output) for output in ("y", "h")}
    send(thread, 3.0, 300, seed=3)
    shifted = {output: psi_of(thread, output) for output in ("y", "h")}
    assert all(v < 0.1 for v in unshifted.values()), unshifted
    assert all(v > THRESHOLD for v in shifted.values()), shifted
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 90 and lines[0]["model"] == "mlp" and len(lines[0]["inputs"]["x"]) == 10
    assert len(lines[0]["outputs"]["y"][0]) == 4
