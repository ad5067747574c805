"""Every counter a running server exports only goes up, whatever changes it while it runs: a SIGHUP whose config
starts a new canary under the same candidate name, route administration (canary commands, weights), and model
reloads (versions reloaded from new files, a new version, a version unloaded and loaded again). /metrics is
scraped before and after each change and every cumulative sample compared (tests/support/counters.py); the
MLflow alias move is in tests/integration/test_mlflow_serving.py."""

from __future__ import annotations

import shutil
import signal

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support import onnx_models
from tests.support.counters import assert_monotonic, sample_value
from tests.support.server_process import ServerProcess, free_port
from tests.support.waiting import wait_until
from tests.system.test_route_reload import admin

CONFIG = """
[server]
model_repository = "{repo}"
model_control_mode = "explicit"
load_models = ["ranker", "mirror"]
cache = "memory"

[routes.ramp]
variants = [ {{ name = "stable", model = "ranker", version = "1", weight = 90 }},
             {{ name = "candidate", model = "ranker", version = "2", weight = 10 }} ]
[routes.ramp.canary]
candidate = "candidate"
steps_percent = {steps}
interval_s = 3600
[routes.ramp.shadow]
model = "mirror"
percent = 100
"""
CANARY = {"route": "ramp", "candidate": "candidate"}


def mlp(seed: int) -> onnx_models.onnx.ModelProto:
    return onnx_models.mlp([4, 8, 2], seed=seed)


def traffic(server: ServerProcess, versions: tuple[str, ...] = ("1", "2")) -> None:
    """Requests through the route (both variants and the shadow) and to each version directly; each input twice,
    so the cache both misses and hits."""
    with grpcclient.InferenceServerClient(server.url) as client:
        for i in range(24):
            x = grpcclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.full((1, 4), i % 12, np.float32))
            client.infer("ramp", [x], parameters={"routing_key": f"user-{i % 12}"})
            for version in versions:
                client.infer("ranker", [x], model_version=version)


def reloads(server: ServerProcess) -> int:
    return server.log().count("routes reloaded")


def test_no_counter_goes_back_across_sighup_route_admin_and_model_reloads(tmp_path, launch):
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "ranker", mlp(1), "version_policy = { all = true }\n[batching]\n"
                            "max_batch_size = 8\n", version=1)
    onnx_models.write_model(repo, "ranker", mlp(2), version=2)
    onnx_models.write_model(repo, "mirror", mlp(1))
    config = tmp_path / "server.toml"
    config.write_text(CONFIG.format(repo=repo, steps="[20, 50, 100]"))
    http_port = free_port()
    server = launch("--config", str(config), "--http-port", str(http_port))
    traffic(server)
    admin(http_port, "ramp/canary/pause", b"")
    wait_until(lambda: sample_value(server.scrape(), "inference_shadow_requests_total", route="ramp", outcome="ok"),
               "a shadow copy answered")
    before = server.scrape()
    assert sample_value(before, "inference_canary_decisions_total", **CANARY, decision="pause") == 1
    assert sample_value(before, "inference_requests_total", model="ranker", version="2", code="OK")
    assert sample_value(before, "inference_cache_requests_total", model="ranker", version="1", result="hit")

    # SIGHUP: other steps make it a new canary, under the same candidate name (the reported reset: 1 -> 0).
    config.write_text(CONFIG.format(repo=repo, steps="[10, 50, 100]"))
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads(server) == 1, "the routes reloaded")
    after = server.scrape()
    assert sample_value(after, "inference_canary_state", **CANARY, state="running") == 1  # a new canary...
    assert sample_value(after, "inference_canary_share_percent", **CANARY) == 10
    assert sample_value(after, "inference_canary_decisions_total", **CANARY, decision="pause") == 1  # ...counting on
    assert_monotonic(before, after, "a SIGHUP starting a new canary under the same candidate name")
    before, after = after, (traffic(server), server.scrape())[1]
    assert_monotonic(before, after, "requests after the SIGHUP")

    # Route administration: canary commands and weights.
    for path, body in (("ramp/canary/pause", b""), ("ramp/canary/start", b""), ("ramp/canary/abort", b""),
                       ("ramp/weights", b'{"weights": {"stable": 50, "candidate": 50}}')):
        admin(http_port, path, body)
    before, after = after, server.scrape()
    assert sample_value(after, "inference_canary_decisions_total", **CANARY, decision="pause") == 2
    assert_monotonic(before, after, "route administration")
    before, after = after, (traffic(server), server.scrape())[1]
    assert_monotonic(before, after, "requests after route administration")

    with grpcclient.InferenceServerClient(server.url) as client:
        # A repository load of a loaded model: both versions reload, version 2 from a new file.
        onnx_models.write_model(repo, "ranker", mlp(3), version=2)
        client.load_model("ranker")
        before, after = after, server.scrape()
        assert_monotonic(before, after, "a model reload")
        before, after = after, (traffic(server), server.scrape())[1]
        assert_monotonic(before, after, "requests after a model reload")

        # A new version, then unloaded (its series go) and loaded again (they come back where they were).
        onnx_models.write_model(repo, "ranker", mlp(4), version=3)
        client.load_model("ranker")
        traffic(server, ("3",))
        with_three = server.scrape()
        assert sample_value(with_three, "inference_requests_total", model="ranker", version="3", code="OK") == 24
        assert_monotonic(after, with_three, "a new version")
        shutil.rmtree(repo / "ranker" / "3")
        client.load_model("ranker")
        without = server.scrape()
        assert sample_value(without, "inference_requests_total", model="ranker", version="3", code="OK") is None
        assert_monotonic(with_three, without, "a version unloaded")
        onnx_models.write_model(repo, "ranker", mlp(4), version=3)
        client.load_model("ranker")
        again = server.scrape()
        assert sample_value(again, "inference_requests_total", model="ranker", version="3", code="OK") == 24
        assert_monotonic(with_three, again, "a version unloaded and loaded again")
        assert_monotonic(without, again, "a version loaded again")
    assert server.terminate() == 0
