"""Route administration over a real server, through gRPC (inference_server.admin.RouteAdmin) and HTTP (/v2/routes):
read the routes, set weights (refused while a canary runs), start, pause and abort a canary, and the errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from inference_server.config.routes import parse_route
from inference_server.protocol._generated import route_admin_pb2 as admin_pb
from inference_server.grpc._generated import route_admin_pb2_grpc as admin_grpc
from inference_server.routing.split import Split
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

INTERVAL_S = 3600  # the canary clock never judges a window by itself during the tests
RANKER = {"variants": [{"name": "stable", "version": 1, "weight": 90},
                       {"name": "candidate", "version": 2, "weight": 10}],
          "canary": {"candidate": "candidate", "steps_percent": [20, 50, 100], "interval_s": INTERVAL_S,
                     "min_requests": 1, "max_error_ratio": 0.5, "failed_windows_to_rollback": 2}}
PLAIN = {"variants": [{"name": "a", "model": "ranker", "version": 1, "weight": 1},  # no canary
                      {"name": "b", "model": "ranker", "version": 2, "weight": 1}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_engine):
    repo = tmp_path_factory.mktemp("admin")
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([8, 16, 4], seed=1),
                            "version_policy = { all = true }\n[batching]\nmax_batch_size = 8\n", version=1)
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([8, 16, 4], seed=2), version=2)
    cfg = server_config(repo, http_port=free_port(), model_control_mode="explicit", load_models=["ranker"],
                        grpc_engine=grpc_engine)
    cfg = dataclasses.replace(cfg, models=(), routes=(parse_route("ranker", RANKER), parse_route("plain", PLAIN)))
    thread = ServerThread(cfg).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.url) as ch:
        yield ch


@pytest.fixture(scope="module")
def admin(channel):
    return admin_grpc.RouteAdminStub(channel)


@pytest.fixture(autouse=True)
def configured_routes(admin):
    """Every test starts from the configured weights with ranker's canary running at its first step."""
    ranker = admin.RouteStatus(admin_pb.RouteStatusRequest(name="ranker")).routes[0]
    if ranker.canary.state in ("running", "paused"):
        admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="abort"))
    admin.RouteWeights(admin_pb.RouteWeightsRequest(name="ranker", weights={"stable": 90, "candidate": 10}))
    admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="start"))
    admin.RouteWeights(admin_pb.RouteWeightsRequest(name="plain", weights={"a": 1, "b": 1}))


# -- helpers ---------------------------------------------------------------------------------------------------

def http(server: ServerThread, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    data = body if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(f"http://127.0.0.1:{server.app.http_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def as_dict(message: Any) -> Any:
    """A RouteAdmin message as the HTTP front end's JSON (unset sub-messages -> None)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = [as_dict(v) for v in value] if field.message_type else list(value)
        elif field.message_type is not None:
            out[field.name] = as_dict(value) if message.HasField(field.name) else None
        else:
            out[field.name] = value
    return out


def shares(route: Any) -> dict[str, float]:
    """Each variant's share, of a Route message or its JSON."""
    if isinstance(route, dict):
        return {v["name"]: v["share_percent"] for v in route["variants"]}
    return {v.name: v.share_percent for v in route.variants}


def grpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def x_input(module: Any = grpcclient) -> Any:
    x = module.InferInput("x", [1, 8], "FP32")
    x.set_data_from_numpy(np.ones((1, 8), np.float32))
    return x


def grpc_variants(server: ServerThread, keys: list[str]) -> list[str]:
    with grpcclient.InferenceServerClient(server.url) as client:
        return [client.infer("ranker", [x_input()], parameters={"routing_key": k}).get_response()
                .parameters["variant"].string_param for k in keys]


def http_variants(server: ServerThread, keys: list[str]) -> list[str]:
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}") as client:
        return [client.infer("ranker", [x_input(httpclient)], headers={"routing-key": k}).get_response()
                ["parameters"]["variant"] for k in keys]


def judge_window(server: ServerThread) -> list[tuple[str, str]]:
    """End the canary's window now (as the canary clock would after interval_s), on the server's loop."""
    async def tick() -> list[tuple[str, str]]:
        return server.app.service.router.tick(time.monotonic() + INTERVAL_S + 1)

    return asyncio.run_coroutine_threadsafe(tick(), server.loop).result(10)


# -- reading routes ---------------------------------------------------------------------------------------------

def test_every_route_reads_the_same_through_grpc_and_http(server, admin):
    over_grpc = [as_dict(r) for r in admin.RouteStatus(admin_pb.RouteStatusRequest()).routes]
    status, over_http = http(server, "GET", "/v2/routes")
    assert status == 200 and over_http == {"routes": over_grpc}
    ranker, plain = over_grpc
    assert ranker == {
        "name": "ranker", "routing_key": "routing_key", "shadow": "", "shadow_queued": 0, "fallback": "",
        "variants": [
            {"name": "stable", "model": "ranker", "version": "1", "alias": "", "configured_weight": 90.0,
             "weight": 90.0, "share_percent": 80.0, "state": "READY", "breaker": ""},
            {"name": "candidate", "model": "ranker", "version": "2", "alias": "", "configured_weight": 10.0,
             "weight": 10.0, "share_percent": 20.0, "state": "READY", "breaker": ""}],  # the canary's first step
        "canary": {"candidate": "candidate", "state": "running", "step": 0, "steps_percent": [20.0, 50.0, 100.0],
                   "share_percent": 20.0, "failed_windows": 0, "last_decision": "start",
                   "last_reason": "started by an administrator", "decisions": ranker["canary"]["decisions"]}}
    assert ranker["canary"]["decisions"]["start"] >= 1
    assert plain["name"] == "plain" and plain["canary"] is None and shares(plain) == {"a": 50.0, "b": 50.0}


def test_one_route_reads_alone(server, admin):
    routes = admin.RouteStatus(admin_pb.RouteStatusRequest(name="plain")).routes
    assert [r.name for r in routes] == ["plain"] and not routes[0].HasField("canary")
    status, route = http(server, "GET", "/v2/routes/plain")
    assert status == 200 and route == as_dict(routes[0])


def test_an_unknown_route_is_not_found(server, admin):
    for call in (lambda: admin.RouteStatus(admin_pb.RouteStatusRequest(name="nope")),
                 lambda: admin.RouteWeights(admin_pb.RouteWeightsRequest(name="nope", weights={"a": 1})),
                 lambda: admin.RouteCanary(admin_pb.RouteCanaryRequest(name="nope", action="pause"))):
        e = grpc_error(call)
        assert e.code() == grpc.StatusCode.NOT_FOUND and "no route named 'nope'" in e.details()
    for method, path, body in (("GET", "/v2/routes/nope", None),
                               ("POST", "/v2/routes/nope/weights", b'{"weights": {"a": 1}}'),
                               ("POST", "/v2/routes/nope/canary/pause", None)):
        status, answer = http(server, method, path, body)
        assert status == 404 and "no route named 'nope' (routes: ranker, plain)" in answer["error"], path


# -- weights ----------------------------------------------------------------------------------------------------

def test_weights_wait_for_the_canary_to_be_aborted_then_decide_where_requests_land(server, admin):
    to_candidate = {"stable": 0, "candidate": 1}
    e = grpc_error(lambda: admin.RouteWeights(admin_pb.RouteWeightsRequest(name="ranker", weights=to_candidate)))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "canary is running" in e.details()
    status, answer = http(server, "POST", "/v2/routes/ranker/weights", json.dumps({"weights": to_candidate}).encode())
    assert status == 409 and "abort it before setting weights" in answer["error"]

    status, route = http(server, "POST", "/v2/routes/ranker/canary/abort")
    assert status == 200 and route["canary"]["state"] == "aborted" and route["canary"]["share_percent"] == 0
    assert shares(route) == {"stable": 100.0, "candidate": 0.0}
    assert set(grpc_variants(server, [f"k{i}" for i in range(20)])) == {"stable"}

    route = admin.RouteWeights(admin_pb.RouteWeightsRequest(name="ranker", weights=to_candidate)).routes[0]
    assert shares(route) == {"stable": 0.0, "candidate": 100.0}
    assert [v.weight for v in route.variants] == [0.0, 1.0] and [v.configured_weight for v in route.variants] == [
        90.0, 10.0]
    assert (route.canary.state, route.canary.last_decision) == ("off", "weights")
    keys = [f"user-{i}" for i in range(30)]
    assert set(grpc_variants(server, keys)) == set(http_variants(server, keys)) == {"candidate"}

    status, route = http(server, "POST", "/v2/routes/ranker/weights", b'{"weights": {"stable": 80, "candidate": 20}}')
    assert status == 200 and shares(route) == {"stable": 80.0, "candidate": 20.0}
    split = Split.of([("stable", 80.0), ("candidate", 20.0)])
    keys = [f"session-{i}" for i in range(100)]
    expected = [split.choose(k) for k in keys]
    assert grpc_variants(server, keys) == http_variants(server, keys) == expected
    assert 0 < expected.count("candidate") < 50


def test_weights_of_a_route_without_a_canary_apply_at_once(server, admin):
    route = admin.RouteWeights(admin_pb.RouteWeightsRequest(name="plain", weights={"a": 3})).routes[0]
    assert shares(route) == {"a": 75.0, "b": 25.0} and not route.HasField("canary")  # b kept its weight


def test_bad_weights_are_invalid_arguments(server, admin):
    for weights, fragment in (({"nobody": 1}, "has no variant 'nobody'"), ({"a": -1}, "a weight is a number from 0 to"),
                              ({"a": 0, "b": 0}, "at least one variant needs a weight > 0")):
        e = grpc_error(lambda w=weights: admin.RouteWeights(admin_pb.RouteWeightsRequest(name="plain", weights=w)))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in e.details()
        status, answer = http(server, "POST", "/v2/routes/plain/weights", json.dumps({"weights": weights}).encode())
        assert status == 400 and fragment in answer["error"]
    # an unknown variant is refused before the canary's conflict
    status, answer = http(server, "POST", "/v2/routes/ranker/weights", b'{"weights": {"nobody": 1}}')
    assert status == 400 and "has no variant 'nobody'" in answer["error"]


@pytest.mark.parametrize("body, fragment", [
    (b"", "needs a JSON body"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", 'is a JSON object {"weights"'),
    (b'{"stable": 80}', 'is a JSON object {"weights"'),
    (b'{"weights": {"a": 1}, "extra": 1}', "unknown key(s) in the weights request: 'extra'"),
    (b'{"weights": [1, 2]}', '"weights" is an object of variant names to numbers, got [1,2]'),
    (b'{"weights": {"a": "80"}}', "the weight of variant 'a' must be a number, got \"80\""),
    (b'{"weights": {"a": true}}', "the weight of variant 'a' must be a number, got true"),
    (b'{"weights": {"a": null}}', "the weight of variant 'a' must be a number, got null"),
])
def test_a_malformed_weights_body_is_400(server, body, fragment):
    status, answer = http(server, "POST", "/v2/routes/plain/weights", body)
    assert status == 400 and fragment in answer["error"]
    assert http(server, "GET", "/v2/routes/plain")[1]["variants"][0]["weight"] == 1.0  # unchanged


def test_a_malformed_grpc_message_is_an_invalid_argument(channel):
    call = channel.unary_unary("/inference_server.admin.RouteAdmin/RouteWeights")  # raw bytes in and out
    e = grpc_error(lambda: call(b"\xff\xff\xff"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid RouteWeightsRequest" in e.details()


# -- the canary -------------------------------------------------------------------------------------------------

def test_pause_then_start_resumes_at_the_same_step(server, admin):
    assert "candidate" in grpc_variants(server, [f"canary-{i}" for i in range(40)])  # 20 %: a window's data
    assert judge_window(server) == [("ranker", "step")]
    route = admin.RouteStatus(admin_pb.RouteStatusRequest(name="ranker")).routes[0]
    assert (route.canary.state, route.canary.step, route.canary.share_percent) == ("running", 1, 50.0)

    route = admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="pause")).routes[0]
    assert (route.canary.state, route.canary.step, route.canary.last_decision) == ("paused", 1, "pause")
    assert shares(route) == {"stable": 50.0, "candidate": 50.0}  # a pause holds the share
    e = grpc_error(lambda: admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="pause")))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "the canary is paused, not running" in e.details()
    status, answer = http(server, "POST", "/v2/routes/ranker/canary/pause")
    assert status == 409 and "the canary is paused, not running" in answer["error"]
    status, answer = http(server, "POST", "/v2/routes/ranker/weights", b'{"weights": {"stable": 1}}')
    assert status == 409 and "a canary is paused" in answer["error"]

    status, route = http(server, "POST", "/v2/routes/ranker/canary/start")
    assert status == 200 and route["canary"]["state"] == "running" and route["canary"]["step"] == 1
    assert route["canary"]["last_reason"] == "resumed by an administrator" and route["canary"]["share_percent"] == 50

    # after an abort, start restarts at the first step
    assert admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="abort")).routes[0].canary.state \
        == "aborted"
    e = grpc_error(lambda: admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="abort")))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    route = admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="start")).routes[0]
    assert (route.canary.state, route.canary.step, route.canary.last_reason) == ("running", 0,
                                                                                 "started by an administrator")
    assert shares(route) == {"stable": 80.0, "candidate": 20.0}
    assert route.canary.decisions["step"] >= 1 and route.canary.decisions["pause"] >= 1


def test_an_unknown_canary_action_is_an_invalid_argument(server, admin):
    e = grpc_error(lambda: admin.RouteCanary(admin_pb.RouteCanaryRequest(name="ranker", action="restart")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown canary action 'restart'" in e.details()
    status, answer = http(server, "POST", "/v2/routes/ranker/canary/restart")
    assert status == 400 and "unknown canary action 'restart' (start, pause or abort)" in answer["error"]


def test_a_canary_command_takes_no_body(server):
    status, answer = http(server, "POST", "/v2/routes/ranker/canary/pause", b'{"step": 2}')
    assert status == 400 and "a canary command takes no request body" in answer["error"]
    status, route = http(server, "POST", "/v2/routes/ranker/canary/pause", b"{}")
    assert status == 200 and route["canary"]["state"] == "paused"


def test_a_route_without_a_canary_has_no_canary_to_command(server, admin):
    e = grpc_error(lambda: admin.RouteCanary(admin_pb.RouteCanaryRequest(name="plain", action="start")))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "has no canary" in e.details()
    status, answer = http(server, "POST", "/v2/routes/plain/canary/start")
    assert status == 404 and "has no canary" in answer["error"]
