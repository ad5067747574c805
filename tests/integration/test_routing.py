"""Routes over a real server: sticky weighted variants through gRPC and HTTP, explicit versions bypass the
route, and a variant that is not loaded gets no traffic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from inference_server.config.routes import parse_route
from inference_server.errors import ConfigError
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.routing.split import Split
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

ROUTE = {"variants": [{"name": "stable", "version": 1, "weight": 90},
                      {"name": "candidate", "version": 2, "weight": 10}]}


@pytest.fixture(scope="module")
def routed(tmp_path_factory, grpc_engine):
    repo = tmp_path_factory.mktemp("routed")
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([8, 16, 4], seed=1),
                            "version_policy = { all = true }\n[batching]\nmax_batch_size = 8\n", version=1)
    onnx_models.write_model(repo, "ranker", onnx_models.mlp([8, 16, 4], seed=2), version=2)
    cfg = server_config(repo, http_port=free_port(), model_control_mode="explicit", load_models=["ranker"],
                        grpc_engine=grpc_engine)  # the routing-key metadata is read from either engine's context
    cfg = dataclasses.replace(cfg, models=(), routes=(parse_route("ranker", ROUTE),))
    server = ServerThread(cfg).start()
    yield server
    server.stop()


def x_input(module=grpcclient):
    x = module.InferInput("x", [1, 8], "FP32")
    x.set_data_from_numpy(np.ones((1, 8), np.float32))
    return x


def expected_variants(keys: list[str]) -> list[str]:
    split = Split.of([("stable", 90), ("candidate", 10)])
    return [split.choose(k) for k in keys]


def test_routing_keys_pick_their_variant_every_time_through_grpc(routed):
    keys = [f"user-{i}" for i in range(200)]
    with grpcclient.InferenceServerClient(routed.url) as client:
        got = []
        for key in keys + keys[:20]:  # the first 20 again: the same answers
            response = client.infer("ranker", [x_input()], parameters={"routing_key": key}).get_response()
            variant = response.parameters["variant"].string_param
            assert response.model_version == {"stable": "1", "candidate": "2"}[variant]
            got.append(variant)
    assert got[:200] == expected_variants(keys) and got[200:] == got[:20]
    assert 0 < got.count("candidate") < 60  # about 10 % of 200


def test_the_routing_key_header_and_metadata_are_used_when_the_request_names_none(routed):
    keys = [f"session-{i}" for i in range(60)]
    with httpclient.InferenceServerClient(f"127.0.0.1:{routed.app.http_port}") as client:
        over_http = [client.infer("ranker", [x_input(httpclient)], headers={"routing-key": k}).get_response()
                     ["parameters"]["variant"] for k in keys]
    with grpcclient.InferenceServerClient(routed.url) as client:
        over_grpc = [client.infer("ranker", [x_input()], headers={"routing-key": k}).get_response()
                     .parameters["variant"].string_param for k in keys]
    assert over_http == over_grpc == expected_variants(keys)


def test_an_explicit_version_bypasses_the_route(routed):
    with grpcclient.InferenceServerClient(routed.url) as client:
        for version in ("1", "2"):
            response = client.infer("ranker", [x_input()], model_version=version,
                                    parameters={"routing_key": "user-1"}).get_response()
            assert response.model_version == version and "variant" not in response.parameters


def test_a_variant_that_is_not_loaded_gets_no_traffic(routed):
    keys = [f"user-{i}" for i in range(100)]
    assert "candidate" in expected_variants(keys)

    def variants(client: grpcclient.InferenceServerClient) -> list[str]:
        return [client.infer("ranker", [x_input()], parameters={"routing_key": k}).get_response()
                .parameters["variant"].string_param for k in keys]

    with grpcclient.InferenceServerClient(routed.url) as client:
        client._client_stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(
            model_name="ranker", parameters={"version": pb.ModelRepositoryParameter(string_param="2")}))
        assert set(variants(client)) == {"stable"}  # the candidate's weight went to the stable variant
        client.load_model("ranker")  # the version policy (all) brings version 2 back: its keys return to it
        assert variants(client) == expected_variants(keys)


@pytest.mark.parametrize("table, key", [
    ({**ROUTE, "canary": {"candidate": "nobody"}}, "routes.r.canary.candidate"),
    ({**ROUTE, "canary": {"candidate": "candidate", "steps_percent": [10, 50]}}, "routes.r.canary.steps_percent"),
    ({**ROUTE, "canary": {"candidate": "candidate", "steps_percent": [50, 20, 100]}},
     "routes.r.canary.steps_percent"),
    ({**ROUTE, "canary": {"candidate": "candidate", "max_error_ratio": 2}}, "routes.r.canary.max_error_ratio"),
    ({**ROUTE, "shadow": {"version": "5", "percent": 0}}, "routes.r.shadow.percent"),
    ({**ROUTE, "shadow": {"version": "5", "queue": 3}}, "routes.r.shadow.queue"),
    ({**ROUTE, "fallback": {"model": "m", "outputs": {"y": 0}}}, "routes.r.fallback"),
    ({**ROUTE, "fallback": {"outputs": {"y": {"nested": 1}}}}, "routes.r.fallback.outputs.y"),
    ({"variants": [{"name": "a", "version": "@", "weight": 1}]}, "routes.r.variants[0].version"),
    ({"variants": [{"name": "a", "version": 1, "weight": 0}]}, "routes.r.variants"),
    ({"variants": [{"name": "a", "version": "x", "weight": 1}]}, "routes.r.variants[0].version"),
    ({"variants": [{"name": "a", "version": 1, "weight": 1}, {"name": "a", "version": 2, "weight": 1}]},
     "routes.r.variants"),
])
def test_route_tables_that_cannot_be_served_are_refused_by_key(table, key):
    with pytest.raises(ConfigError) as e:
        parse_route("r", table)
    assert e.value.key == key


def test_routed_requests_are_counted_per_variant_in_the_metrics(routed):
    import urllib.request

    keys = [f"metrics-{i}" for i in range(50)]
    with grpcclient.InferenceServerClient(routed.url) as client:
        for key in keys:
            client.infer("ranker", [x_input()], parameters={"routing_key": key})
    text = urllib.request.urlopen(f"http://127.0.0.1:{routed.app.metrics.port}/metrics", timeout=10).read().decode()
    counts = {v: 0.0 for v in ("stable", "candidate")}
    for line in text.splitlines():
        for v in counts:
            if line.startswith(f'inference_route_requests_total{{code="OK",route="ranker",variant="{v}"}}'):
                counts[v] = float(line.rsplit(" ", 1)[1])
    expected = expected_variants(keys)
    assert counts["stable"] >= expected.count("stable") and counts["candidate"] >= expected.count("candidate")
    assert 'inference_route_request_duration_seconds_count{route="ranker",variant="stable"}' in text
