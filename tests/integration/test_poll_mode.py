"""Poll mode against a real repository: a version being copied in is loaded only once its files have stopped
changing between two scans; removed models unload, new ones load, a changed config reloads."""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import ServerThread, server_config
from tests.integration.test_repository import MLP_V1, MLP_V2, expected, index, infer
from tests.support import onnx_models

pytestmark = pytest.mark.integration
POLL_S = 0.25


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def polled(tmp_path):
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "a", MLP_V1, "[batching]\nmax_batch_size = 8\n")
    cfg = dataclasses.replace(server_config(repo, model_control_mode="poll", repository_poll_secs=POLL_S),
                              models=())
    server = ServerThread(cfg).start()
    try:
        yield server, repo
    finally:
        server.stop()


def failed_loads(server: ServerThread) -> int:
    return sum(n for (_, result), n in server.app.manager.events.loads.items() if result == "failure")


def test_a_version_still_being_copied_is_not_loaded_until_it_settles(polled):
    server, repo = polled
    data = MLP_V2.SerializeToString()
    target = repo / "a" / "2" / "model.onnx"
    target.parent.mkdir()
    with grpcclient.InferenceServerClient(server.url) as client:
        chunks = 12
        step = len(data) // chunks + 1
        with target.open("wb") as f:
            for i in range(chunks):  # a copy that takes about 6 scans, writing more between every two of them
                f.write(data[i * step:(i + 1) * step])
                f.flush()
                time.sleep(POLL_S / 2)  # the behaviour under test: a copy slower than the scans
                assert ("a", "2", "READY") not in index(client) and failed_loads(server) == 0
                assert infer(client, "a").get_response().model_version == "1"
        wait_for(lambda: index(client) == [("a", "2", "READY")])
        assert failed_loads(server) == 0
        np.testing.assert_allclose(infer(client, "a").as_numpy("y"), expected(MLP_V2), rtol=1e-5)
        assert not client.is_model_ready("a", "1")  # latest 1: the older version left


def test_models_removed_and_added_and_a_changed_config_reloads(polled):
    server, repo = polled
    with grpcclient.InferenceServerClient(server.url) as client:
        onnx_models.write_model(repo.parent / "staging", "b", MLP_V2)
        shutil.move(repo.parent / "staging" / "b", repo / "b")  # arrives whole
        wait_for(lambda: client.is_model_ready("b"))
        np.testing.assert_allclose(infer(client, "b").as_numpy("y"), expected(MLP_V2), rtol=1e-5)
        (repo / "b" / "config.toml").write_text("[batching]\nmax_batch_size = 3\n")
        wait_for(lambda: client.get_model_config("b", as_json=True)["config"].get("max_batch_size") == 3)
        shutil.rmtree(repo / "a")
        wait_for(lambda: not client.is_model_ready("a") and "a" not in {name for name, *_ in index(client)})
        assert client.is_model_ready("b") and client.is_server_ready()
        assert index(client) == [("b", "1", "READY")]
