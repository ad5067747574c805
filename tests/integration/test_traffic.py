"""Traffic management over a real server through tritonclient: canary ramps (promotion, rollback on errors and
on p99, hold without traffic), shadows that are slow or fail without changing an answer, and fallbacks (a
model, constant outputs, an open breaker) that answer instead of errors."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from inference_server.config.routes import parse_route
from inference_server.config.server import parse_server
from tests.conftest import ServerThread
from tests.support import onnx_models
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

BATCHED = "[batching]\nmax_batch_size = 8\n"
X4 = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
X1 = np.array([[0.75]], np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic")
    w = onnx_models.write_model
    w(root, "ranker", onnx_models.mlp([4, 8, 2], seed=1), "version_policy = { all = true }\n" + BATCHED, version=1)
    w(root, "ranker", onnx_models.mlp([4, 8, 2], seed=2), version=2)
    w(root, "simple", onnx_models.mlp([4, 8, 2], seed=3), BATCHED)
    w(root, "broken", onnx_models.drops_a_row(), BATCHED)  # every batch fails with INTERNAL
    w(root, "scorer", onnx_models.mlp([1, 8, 2], seed=4), BATCHED)
    w(root, "slow", onnx_models.slow(768), "[batching]\nmax_batch_size = 1\n")  # FP32 x [N, 1], tens of ms
    return root


def start(repo, routes: dict, tmp_path=None, **server) -> ServerThread:
    doc = {"server": {"port": 0, "metrics_port": 0, "http_port": 0, "model_repository": str(repo),
                      "drain_grace_s": 5, **server}}
    if tmp_path is not None:
        doc["monitoring"] = {"prediction_log_sample_rate": 1.0, "prediction_log_path": str(tmp_path / "log.jsonl")}
    cfg = parse_server(doc)
    return ServerThread(dataclasses.replace(cfg, routes=tuple(parse_route(n, t) for n, t in routes.items()))).start()


def call(client, model: str, x: np.ndarray, key: str, version: str = ""):
    """(output y, response parameters as a dict) for one request with routing key `key`."""
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], model_version=version, parameters={"routing_key": key})
    params = {k: (p.string_param or p.bool_param) for k, p in result.get_response().parameters.items()}
    return result.as_numpy("y"), params, result.get_response()


def canary(server: ServerThread, route: str):
    return server.app.service.route_admin.views(route)[0].canary


def drive_until(server, route: str, model: str, x: np.ndarray, states: set[str], timeout_s: float = 30,
                key_prefix: str = "k"):
    """Send keyed requests one after another until the route's canary reaches one of `states`; returns
    (outcomes per request: (variant or error code), the canary view)."""
    outcomes = []
    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(server.url) as client:
        i = 0
        while canary(server, route).state not in states:
            assert time.monotonic() < deadline, f"canary stuck: {canary(server, route)}"
            try:
                _, params, _ = call(client, model, x, f"{key_prefix}-{i}")
                outcomes.append(params.get("variant"))
            except InferenceServerException as e:
                outcomes.append(e.status())
            i += 1
    return outcomes, canary(server, route)


CANARY = {"candidate": "candidate", "steps_percent": [30, 60, 100], "interval_s": 0.4, "min_requests": 5,
          "max_error_ratio": 0.05}


def test_a_healthy_candidate_ramps_to_100_percent_and_becomes_the_stable_variant(repo):
    server = start(repo, {"ranker": {"variants": [{"name": "stable", "version": 1, "weight": 90},
                                                  {"name": "candidate", "version": 2, "weight": 10}],
                                     "canary": {**CANARY, "max_p99_ratio": 50}}})
    try:
        outcomes, view = drive_until(server, "ranker", "ranker", X4, {"promoted", "rolled_back"})
        assert view.state == "promoted" and view.share_percent == 100
        # 30 -> 60, then 60 -> 100. A window that saw fewer than min_requests candidate requests holds (requests
        # are sent one after another, so how many fit in 0.4 s depends on the machine): holds are not counted.
        moves = {decision: n for decision, n in view.decisions.items() if decision != "hold"}
        assert moves == {"step": 1, "promote": 1}, view
        assert "rollback" not in view.decisions and set(outcomes) <= {"stable", "candidate"}  # no request failed
        with grpcclient.InferenceServerClient(server.url) as client:
            after = [call(client, "ranker", X4, f"after-{i}") for i in range(50)]
        assert {p["variant"] for _, p, _ in after} == {"candidate"}
        assert {r.model_version for _, _, r in after} == {"2"}
        shares = {v.name: v.share_percent for v in server.app.service.route_admin.views("ranker")[0].variants}
        assert shares == {"stable": 0.0, "candidate": 100.0}
    finally:
        server.stop()


@pytest.mark.parametrize("fallback", [False, True], ids=["no-fallback", "with-fallback"])
def test_a_failing_candidate_is_rolled_back_within_one_window(repo, fallback):
    route = {"variants": [{"name": "stable", "model": "ranker", "version": 1, "weight": 90},
                          {"name": "candidate", "model": "broken", "version": 1, "weight": 10}],
             "canary": CANARY}
    if fallback:
        route["fallback"] = {"model": "simple"}
    server = start(repo, {"ranker": route})
    try:
        outcomes, view = drive_until(server, "ranker", "ranker", X4, {"promoted", "rolled_back"})
        assert view.state == "rolled_back" and view.share_percent == 0
        assert view.decisions.get("rollback") == 1 and "step" not in view.decisions  # the first window decided
        assert "error ratio" in view.last_reason
        failures = Counter(o for o in outcomes if o not in ("stable", "candidate"))
        if fallback:
            assert not failures  # clients got the fallback's answers, and the canary still counted the failures
            assert outcomes.count("candidate") >= CANARY["min_requests"]
        else:
            assert set(failures) == {"StatusCode.INTERNAL"}  # the broken candidate's own answers, nothing else
        with grpcclient.InferenceServerClient(server.url) as client:  # after the rollback: nothing fails
            after = [call(client, "ranker", X4, f"after-{i}") for i in range(100)]
        assert {p["variant"] for _, p, _ in after} == {"stable"} and not any("fallback" in p for _, p, _ in after)
    finally:
        server.stop()


def test_a_candidate_past_its_p99_bound_is_rolled_back(repo):
    server = start(repo, {"scorer": {"variants": [{"name": "stable", "version": 1, "weight": 50},
                                                  {"name": "candidate", "model": "slow", "version": 1,
                                                   "weight": 50}],
                                     "canary": {**CANARY, "min_requests": 3, "max_p99_ms": 3}}})
    try:
        outcomes, view = drive_until(server, "scorer", "scorer", X1, {"promoted", "rolled_back"})
        assert view.state == "rolled_back", view
        assert "max_p99_ms" in view.last_reason
        assert set(outcomes) <= {"stable", "candidate"}  # slow is not failed: every request was answered
    finally:
        server.stop()


def test_with_no_traffic_the_canary_holds(repo):
    server = start(repo, {"ranker": {"variants": [{"name": "stable", "version": 1, "weight": 90},
                                                  {"name": "candidate", "version": 2, "weight": 10}],
                                     "canary": {**CANARY, "interval_s": 0.1}}})
    try:
        deadline = time.monotonic() + 10
        while canary(server, "ranker").decisions.get("hold", 0) < 3:
            assert time.monotonic() < deadline, canary(server, "ranker")
            time.sleep(0.05)
        view = canary(server, "ranker")
        assert view.state == "running" and view.step == 0 and view.share_percent == 30
        assert set(view.decisions) == {"hold"} and "too few candidate requests" in view.last_reason
    finally:
        server.stop()


def metric(server: ServerThread, name: str, **labels: str) -> float:
    """One sample of the metrics endpoint (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_shadows_that_are_slow_or_fail_change_no_answer_and_are_recorded(repo, tmp_path):
    routes = {"scorer": {"variants": [{"name": "main", "version": 1, "weight": 1}],
                         "shadow": {"model": "slow", "percent": 100, "queue_size": 2}},
              "ranker": {"variants": [{"name": "main", "version": 1, "weight": 1}],
                         "shadow": {"model": "broken", "percent": 100}}}
    server = start(repo, routes, tmp_path)
    try:
        rng = np.random.default_rng(0)
        xs1 = [rng.normal(size=(1, 1)).astype(np.float32) for _ in range(40)]
        xs4 = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(40)]

        def both(i: int):
            with grpcclient.InferenceServerClient(server.url) as client:
                return (call(client, "scorer", xs1[i], f"s{i}"), call(client, "scorer", xs1[i], "", version="1"),
                        call(client, "ranker", xs4[i], f"r{i}"), call(client, "ranker", xs4[i], "", version="1"))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(both, range(40)))
        for routed1, direct1, routed4, direct4 in results:
            np.testing.assert_array_equal(routed1[0], direct1[0])  # the same answer as the version itself
            np.testing.assert_array_equal(routed4[0], direct4[0])
            assert routed1[1] == {"variant": "main"} and routed4[1] == {"variant": "main"}
            assert routed1[2].model_name == "scorer" and routed4[2].model_name == "ranker"
        deadline = time.monotonic() + 30
        while metric(server, "inference_shadow_requests_total", route="ranker", outcome="error") < 40 \
                or server.app.service.route_admin.views("scorer")[0].shadow_queued:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ok = metric(server, "inference_shadow_requests_total", route="scorer", outcome="ok")
        dropped = metric(server, "inference_shadow_requests_total", route="scorer", outcome="dropped")
        assert ok >= 1 and ok + dropped == 40 and dropped >= 1  # a queue of 2 in front of a slow model
        assert metric(server, "inference_shadow_output_difference_count", route="scorer", output="y") == ok
        assert metric(server, "inference_shadow_requests_total", route="ranker", outcome="ok") == 0
        log = tmp_path / "log.jsonl"
        while len(log.read_text().splitlines()) < 160 + ok:  # the prediction log writes in batches
            assert time.monotonic() < deadline
            time.sleep(0.05)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        shadowed = [r for r in records if r.get("shadow")]
        assert shadowed and {r["model"] for r in shadowed} == {"slow"}
        assert len([r for r in records if not r.get("shadow")]) == 160  # every real answer, unmarked
    finally:
        server.stop()


def test_a_broken_primary_answers_from_its_fallback_and_its_breaker_opens(repo):
    routes = {"ranker": {"variants": [{"name": "main", "model": "broken", "version": 1, "weight": 1}],
                         "fallback": {"model": "simple", "breaker_failures": 3, "breaker_cooldown_s": 60}},
              "scorer": {"variants": [{"name": "main", "model": "ghost", "version": 1, "weight": 1}],
                         "fallback": {"outputs": {"y": [0.25, 0.75]}}}}
    server = start(repo, routes, http_port=free_port())
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            direct = call(client, "simple", X4, "", version="1")[0]
            answers = [call(client, "ranker", X4, f"k{i}") for i in range(10)]
            for y, params, response in answers:
                np.testing.assert_array_equal(y, direct)
                assert params == {"variant": "main", "fallback": True}
                assert (response.model_name, response.model_version) == ("simple", "1")
            x3 = np.ones((3, 1), np.float32)
            y, params, response = call(client, "scorer", x3, "c")  # no variant is ready: constant outputs
            np.testing.assert_array_equal(y, np.array([[0.25, 0.75]] * 3, np.float32))
            assert params == {"fallback": True} and response.model_name == "scorer"
        view = server.app.service.route_admin.views("ranker")[0]
        assert view.variants[0].breaker == "open"
        # Three failures opened it; the next seven went to the fallback without touching the broken model.
        assert metric(server, "inference_route_fallbacks_total", route="ranker", variant="main",
                      reason="internal") == 3
        assert metric(server, "inference_route_fallbacks_total", route="ranker", variant="main",
                      reason="breaker_open") == 7
        assert metric(server, "inference_route_requests_total", route="ranker", variant="main",
                      code="INTERNAL") == 3
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}")
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(X4)
        result = http.infer("ranker", [inp])
        assert result.get_response()["parameters"] == {"variant": "main", "fallback": True}
        np.testing.assert_array_equal(result.as_numpy("y"), direct)
    finally:
        server.stop()


def test_client_mistakes_are_not_hidden_by_the_fallback(repo):
    server = start(repo, {"ranker": {"variants": [{"name": "main", "model": "broken", "version": 1, "weight": 1}],
                                     "fallback": {"model": "simple"}}})
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            with pytest.raises(InferenceServerException) as e:
                call(client, "ranker", np.ones((1, 3), np.float32), "k")  # wrong shape: the client's mistake
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        server.stop()
