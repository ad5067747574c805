"""SIGHUP re-reads the config file's [routes] in a running server process: new weights apply without a restart,
a canary paused by an administrator stays paused, and a bad file is refused while the running routes stay."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support import onnx_models
from tests.support.server_process import free_port

X = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)

CONFIG = """
[server]
model_repository = "{repo}"

[routes.ranker]
variants = [ {{ name = "stable", version = "1", weight = {stable} }},
             {{ name = "candidate", version = "2", weight = {candidate} }} ]

[routes.ramp]
variants = [ {{ name = "stable", model = "ranker", version = "1", weight = 90 }},
             {{ name = "candidate", model = "ranker", version = "2", weight = 10 }} ]
[routes.ramp.canary]
candidate = "candidate"
steps_percent = [20, 50, 100]
interval_s = 3600
"""


def variants(url: str, model: str = "ranker") -> set[str]:
    with grpcclient.InferenceServerClient(url) as client:
        seen = set()
        for i in range(30):
            x = grpcclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(X)
            result = client.infer(model, [x], parameters={"routing_key": f"user-{i}"})
            seen.add(result.get_response().parameters["variant"].string_param)
        return seen


def admin(http_port: int, path: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/routes/{path}", data=body,
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate, what: str, server, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{server.log()}"
        time.sleep(0.1)


def test_sighup_applies_new_routes_keeps_canary_state_and_refuses_a_bad_file(tmp_path, launch):
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([4, 8, 2], seed=1),
                            "version_policy = { all = true }\n[batching]\nmax_batch_size = 8\n", version=1)
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([4, 8, 2], seed=2), version=2)
    config = tmp_path / "server.toml"
    config.write_text(CONFIG.format(repo=repo, stable=1, candidate=0))
    http_port = free_port()
    server = launch("--config", str(config), "--http-port", str(http_port))
    assert variants(server.url) == {"stable"}
    admin(http_port, "ramp/canary/pause", b"")
    assert admin(http_port, "ramp")["canary"]["state"] == "paused"

    config.write_text(CONFIG.format(repo=repo, stable=0, candidate=1))
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: variants(server.url) == {"candidate"}, "the new weights", server)
    ramp = admin(http_port, "ramp")["canary"]
    assert (ramp["state"], ramp["share_percent"]) == ("paused", 20)  # the reload kept the canary's state

    config.write_text("[routes.ranker]\nvariants = 3\n")  # not a list of variants
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config refused" in server.log(), "the refusal", server)
    assert "routes.ranker.variants" in server.log()
    assert variants(server.url) == {"candidate"}  # the running routes stayed
    assert server.proc.poll() is None
    assert server.terminate() == 0
