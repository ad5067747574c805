"""The repository RPCs through tritonclient against a real server in explicit mode: index, load, reload,
unload, a broken model, the `config` override, `file:` uploads, the `version` parameter, and reloads while
requests flow."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

X = np.arange(8, dtype=np.float32).reshape(1, 8) / 8


def expected(model: onnx_models.onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": X})[0]


MLP_V1 = onnx_models.mlp([8, 16, 4], seed=1)
MLP_V2 = onnx_models.mlp([8, 16, 4], seed=2)


@pytest.fixture
def explicit(tmp_path, grpc_engine):
    """A server in explicit mode over its own repository: `mlp` loaded at start; `two` (versions 1 and 2) and
    `broken` (not an ONNX file) known but not loaded."""
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "mlp", MLP_V1, "[batching]\nmax_batch_size = 8\n")
    onnx_models.write_model(repo, "two", MLP_V1, "[batching]\nmax_batch_size = 8\n", version=1)
    onnx_models.write_model(repo, "two", MLP_V2, version=2)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    cfg = dataclasses.replace(server_config(repo, model_control_mode="explicit", load_models=["mlp"],
                                            cache="memory", grpc_engine=grpc_engine), models=())  # the repository only
    server = ServerThread(cfg).start()
    try:
        yield server, repo
    finally:
        server.stop()


def infer(client: grpcclient.InferenceServerClient, model: str, version: str = "") -> grpcclient.InferResult:
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return client.infer(model, [x], model_version=version)


def index(client: grpcclient.InferenceServerClient) -> list[tuple[str, str, str]]:
    return [(m["name"], m.get("version", ""), m["state"]) for m in client.get_model_repository_index(as_json=True)
            ["models"]]


def raw_stub(server: ServerThread) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.url)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_index_load_unload_and_the_extension_advertised(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
        assert index(client) == [("broken", "", "UNAVAILABLE"), ("mlp", "1", "READY"), ("two", "", "UNAVAILABLE")]
        assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]
                if m.get("state") == "READY"] == ["mlp"]
        ready_only = client._client_stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert [(m.name, m.state) for m in ready_only.models] == [("mlp", "READY")]
        assert not client.is_model_ready("two")
        client.load_model("two")
        assert client.is_model_ready("two") and client.is_model_ready("two", "2")
        assert not client.is_model_ready("two", "1")  # default version_policy: the newest version only
        assert infer(client, "two").get_response().model_version == "2"
        np.testing.assert_allclose(infer(client, "two").as_numpy("y"), expected(MLP_V2), rtol=1e-5)
        client.unload_model("two")
        assert ("two", "", "UNAVAILABLE") in index(client) and not client.is_model_ready("two")
        with pytest.raises(InferenceServerException) as e:
            infer(client, "two")
        assert e.value.status() == "StatusCode.NOT_FOUND" and "unloaded" in e.value.message()
        assert client.is_server_ready()  # what the server means to serve is ready
        with pytest.raises(InferenceServerException) as e:
            client.load_model("ghost")
        assert e.value.status() == "StatusCode.NOT_FOUND" and "'ghost'" in e.value.message()


def test_a_broken_model_fails_its_load_with_the_reason_and_the_others_keep_serving(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("broken")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to load 'broken'" in e.value.message() and "ONNX Runtime cannot load" in e.value.message()
        (entry,) = [m for m in client.get_model_repository_index(as_json=True)["models"] if m["name"] == "broken"]
        assert entry["state"] == "UNAVAILABLE" and "ONNX Runtime cannot load" in entry["reason"]
        assert not client.is_model_ready("broken")
        np.testing.assert_allclose(infer(client, "mlp").as_numpy("y"), expected(MLP_V1), rtol=1e-5)
        assert client.is_server_ready()  # a failed load request does not take the server out of service


def test_reload_swaps_in_the_new_file_and_the_cache_never_answers_from_the_old_one(explicit):
    server, repo = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        before = infer(client, "mlp").as_numpy("y")
        np.testing.assert_allclose(before, expected(MLP_V1), rtol=1e-5)
        assert np.array_equal(infer(client, "mlp").as_numpy("y"), before)  # a cache hit now
        (repo / "mlp" / "1" / "model.onnx").write_bytes(MLP_V2.SerializeToString())
        client.load_model("mlp")  # reload: same version number, new file
        after = infer(client, "mlp").as_numpy("y")
        np.testing.assert_allclose(after, expected(MLP_V2), rtol=1e-5)
        # The version's figures go on across its loads: the miss before the reload, the hit, and a miss after it
        # (the cache answered nothing from the old file).
        stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"]
        assert [(s["version"], s["inference_stats"]["cache_miss"].get("count"),
                 s["inference_stats"]["cache_hit"].get("count")) for s in stats] == [("1", "2", "1")]


def test_a_failed_reload_leaves_the_loaded_version_serving(explicit):
    server, repo = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        (repo / "mlp" / "1" / "model.onnx").write_bytes(b"half a file")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("mlp")
        assert "failed to load 'mlp'" in e.value.message()
        assert client.is_model_ready("mlp") and ("mlp", "1", "READY") in index(client)
        np.testing.assert_allclose(infer(client, "mlp").as_numpy("y"), expected(MLP_V1), rtol=1e-5)


def test_config_parameter_overrides_the_models_config(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("two", config=json.dumps({"backend": "onnxruntime", "max_batch_size": 2,
                                                     "version_policy": {"all": {}}}))
        assert client.is_model_ready("two", "1") and client.is_model_ready("two", "2")
        assert client.get_model_config("two", as_json=True)["config"]["max_batch_size"] == 2
        x = grpcclient.InferInput("x", [3, 8], "FP32")
        x.set_data_from_numpy(np.ones((3, 8), np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("two", [x])
        assert "exceeds the maximum batch size 2" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.load_model("two", config=json.dumps({"sequence_batching": {}}))
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "sequence_batching" in e.value.message()
        assert client.is_model_ready("two", "1")  # the refused config changed nothing
        with pytest.raises(InferenceServerException) as e:
            client.load_model("two", config="{not json")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "config" in e.value.message()


def test_file_parameters_upload_a_model_that_then_serves(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        files = {"file:1/model.onnx": MLP_V2.SerializeToString()}
        with pytest.raises(InferenceServerException) as e:
            client.load_model("uploaded", files=files)
        assert "config parameter is required" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.load_model("uploaded", config="{}", files={"file:../1/model.onnx": b"x"})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "'..'" in e.value.message()
        client.load_model("uploaded", config=json.dumps({"max_batch_size": 8}), files=files)
        assert client.is_model_ready("uploaded")
        np.testing.assert_allclose(infer(client, "uploaded").as_numpy("y"), expected(MLP_V2), rtol=1e-5)
        assert ("uploaded", "1", "READY") in index(client)


def test_version_parameter_loads_and_unloads_one_version(explicit):
    server, _ = explicit
    channel, stub = raw_stub(server)
    with channel, grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("two")  # version 2, the policy's newest
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(
            model_name="two", parameters={"version": pb.ModelRepositoryParameter(int64_param=1)}), timeout=30)
        assert client.is_model_ready("two", "1") and client.is_model_ready("two", "2")
        assert infer(client, "two").get_response().model_version == "2"  # an empty version: the newest
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(
            model_name="two", parameters={"version": pb.ModelRepositoryParameter(string_param="2"),
                                          "unload_dependents": pb.ModelRepositoryParameter(bool_param=False)}),
            timeout=30)
        assert not client.is_model_ready("two", "2") and client.is_model_ready("two")
        assert infer(client, "two").get_response().model_version == "1"
        np.testing.assert_allclose(infer(client, "two").as_numpy("y"), expected(MLP_V1), rtol=1e-5)
        for parameters, message in (({"version": pb.ModelRepositoryParameter(int64_param=7)}, "no version 7"),
                                    ({"version": pb.ModelRepositoryParameter(string_param="x")}, "version number")):
            with pytest.raises(grpc.RpcError) as e:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="two", parameters=parameters))
            assert message in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(
                model_name="two", parameters={"version": pb.ModelRepositoryParameter(int64_param=2)}))
        assert e.value.code() is grpc.StatusCode.NOT_FOUND


def test_reloads_while_requests_flow_fail_no_request(explicit):
    server, repo = explicit
    failures: list[Exception] = []
    answers: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            while not stop.is_set():
                try:
                    answers.append(infer(client, "mlp").get_response().model_version)
                except InferenceServerException as e:
                    failures.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for i in range(4):
                model = MLP_V2 if i % 2 == 0 else MLP_V1
                (repo / "mlp" / "1" / "model.onnx").write_bytes(model.SerializeToString())
                started = len(answers)
                client.load_model("mlp")
                deadline = time.monotonic() + 10
                while len(answers) < started + 20 and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [] and len(answers) > 80


def test_a_slow_warmup_keeps_the_model_not_ready_and_does_not_stall_other_models(explicit):
    """The load (sessions and warmup) runs off the event loop: while a model warms up for about a second it
    is LOADING and not ready, and requests to another model keep being answered promptly."""
    server, repo = explicit
    onnx_models.write_model(repo, "warm", onnx_models.slow(1024),
                            "[batching]\nmax_batch_size = 1\n[warmup]\nbatch_sizes = [1]\ncount = 80\n")
    loaded = threading.Event()
    load_s: list[float] = []

    def load() -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            start = time.monotonic()
            client.load_model("warm")
            load_s.append(time.monotonic() - start)
            loaded.set()

    seen_loading, ready_while_loading, latencies = False, [], []
    with grpcclient.InferenceServerClient(server.url) as client:
        infer(client, "mlp")
        loader = threading.Thread(target=load)
        loader.start()
        while not loaded.is_set():
            start = time.monotonic()
            infer(client, "mlp")
            latencies.append(time.monotonic() - start)
            if not loaded.is_set():
                ready_while_loading.append(client.is_model_ready("warm"))
                seen_loading |= ("warm", "1", "LOADING") in index(client)
            time.sleep(0.005)
        loader.join(30)
        assert client.is_model_ready("warm") and ("warm", "1", "READY") in index(client)
    (took_s,) = load_s
    assert took_s > 0.5, "the warmup was meant to take about a second"
    # Not ready while it warms up; ready from the moment it is (which may be just before load_model returns).
    flips = sum(1 for a, b in zip(ready_while_loading, ready_while_loading[1:], strict=False) if a != b)
    assert seen_loading and ready_while_loading.count(False) >= 3 and not ready_while_loading[0] and flips <= 1
    # A load on the event loop would hold every request for the whole warmup; off the loop they see only
    # CPU contention.
    assert len(latencies) > 10 and max(latencies) < took_s / 3, (max(latencies), took_s)


def odd_rows_fail() -> onnx_models.onnx.ModelProto:
    """x [N, 3] reshaped to [-1, 2]: runs for an even N, fails for an odd one."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "shape")
    return onnx_models._model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 2])], [shape])


def test_a_failing_warmup_is_a_load_failure_with_its_reason(explicit):
    server, repo = explicit
    onnx_models.write_model(repo, "oddwarm", odd_rows_fail(),
                            "[batching]\nmax_batch_size = 0\n[warmup]\nbatch_sizes = [1]\n")
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("oddwarm")
        assert "warmup failed on instance 0 with a batch of 1 (zeros)" in e.value.message()
        (entry,) = [m for m in client.get_model_repository_index(as_json=True)["models"] if m["name"] == "oddwarm"]
        assert entry["state"] == "UNAVAILABLE" and "warmup failed" in entry["reason"]


PBTXT = """
name: "triton_style"
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [ 2, 4 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
version_policy: { all { } }
model_warmup [ { name: "w" batch_size: 4
                 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 8 ] zero_data: true } } } ]
"""


def test_a_triton_repository_model_with_config_pbtxt_is_read(explicit):
    server, repo = explicit
    onnx_models.write_model(repo, "triton_style", MLP_V1, version=1)
    onnx_models.write_model(repo, "triton_style", MLP_V2, version=3)
    (repo / "triton_style" / "config.pbtxt").write_text(PBTXT)
    with grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("triton_style")
        assert client.is_model_ready("triton_style", "1") and client.is_model_ready("triton_style", "3")
        config = client.get_model_config("triton_style", as_json=True)["config"]
        assert config["max_batch_size"] == 4 and config["instance_group"][0]["count"] == 2
        assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "100"
        assert "all" in config["version_policy"]
        np.testing.assert_allclose(infer(client, "triton_style", "1").as_numpy("y"), expected(MLP_V1), rtol=1e-5)


@pytest.mark.parametrize("extra, field", [
    ("sequence_batching { }", "sequence_batching"),
    ('platform: "tensorflow_savedmodel"', "platform"),
    ("input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 8 ] reshape: { shape: [ 2, 4 ] } } ]", "reshape"),
])
def test_an_unsupported_config_pbtxt_field_is_refused_by_name(explicit, extra, field):
    server, repo = explicit
    onnx_models.write_model(repo, "unsupported", MLP_V1)
    (repo / "unsupported" / "config.pbtxt").write_text(f"max_batch_size: 4\n{extra}\n")
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("unsupported")
        assert field in e.value.message() and "config.pbtxt" in e.value.message()
        assert not client.is_model_ready("unsupported")


def test_unload_finishes_every_request_it_accepted_including_those_waiting_on_the_cache(explicit):
    """Unloading waits for the requests that hold a lease on the version (here: executing, queued behind one
    another, and identical ones waiting on another's execution through the cache) before closing it."""
    server, repo = explicit
    onnx_models.write_model(repo, "slow", onnx_models.slow(2048), "[batching]\nmax_batch_size = 1\n"
                                                                  "[warmup]\nbatch_sizes = []\n")
    results: list[object] = []
    barrier = threading.Barrier(7)

    def call(value: float) -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            x = grpcclient.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.full((1, 1), value, np.float32))
            barrier.wait()
            try:
                results.append(client.infer("slow", [x], client_timeout=60).as_numpy("y"))
            except InferenceServerException as e:
                results.append(e)

    with grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("slow")
        threads = [threading.Thread(target=call, args=(v,)) for v in (1, 1, 1, 2, 3, 4)]
        for t in threads:
            t.start()
        barrier.wait()
        # All six are in: one executing, the others queued or sharing its execution.
        wait_until(lambda: server.app.gate.in_flight == 6, "the six calls to reach the server")
        start = time.monotonic()
        client.unload_model("slow")
        unload_s = time.monotonic() - start
        for t in threads:
            t.join(60)
        assert len(results) == 6 and all(isinstance(r, np.ndarray) for r in results), results
        assert unload_s > 0.1  # it waited for them
        with pytest.raises(InferenceServerException) as e:
            infer(client, "slow")
        assert e.value.status() == "StatusCode.NOT_FOUND"


def test_lifecycle_metrics_show_states_loads_and_unloads(explicit):
    import urllib.request

    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("two")
        client.unload_model("two")
        with pytest.raises(InferenceServerException):
            client.load_model("broken")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10).read().decode()
    assert 'inference_model_state{model="mlp",state="READY",version="1"} 1.0' in text
    assert 'inference_model_state{model="mlp",state="LOADING",version="1"} 0.0' in text
    assert 'inference_model_state{model="broken",state="UNAVAILABLE",version="1"} 1.0' in text
    assert 'inference_model_state{model="two",state="UNAVAILABLE",version=""} 1.0' in text
    assert 'inference_model_loads_total{model="two",result="success"} 1.0' in text
    assert 'inference_model_loads_total{model="broken",result="failure"} 1.0' in text
    assert 'inference_model_unloads_total{model="two"} 1.0' in text
    assert 'inference_model_load_duration_seconds_count{model="mlp"} 1.0' in text
    assert 'inference_model_unload_duration_seconds_count{model="two"} 1.0' in text


def test_a_load_request_whose_client_gives_up_still_completes_and_leaves_nothing_half_loaded(explicit):
    server, repo = explicit
    onnx_models.write_model(repo, "warm", onnx_models.slow(1024),
                            "[batching]\nmax_batch_size = 1\n[warmup]\nbatch_sizes = [1]\ncount = 40\n")
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("warm", client_timeout=0.2)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        deadline = time.monotonic() + 30
        while not client.is_model_ready("warm"):  # the load went on without its caller
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ("warm", "1", "READY") in index(client) and ("warm", "1", "LOADING") not in index(client)
        infer_x = grpcclient.InferInput("x", [1, 1], "FP32")
        infer_x.set_data_from_numpy(np.ones((1, 1), np.float32))
        assert client.infer("warm", [infer_x]).as_numpy("y").shape == (1, 1)


def test_a_version_policy_that_selects_nothing_is_refused_and_what_serves_keeps_serving(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("mlp", config=json.dumps({"max_batch_size": 8,
                                                         "version_policy": {"specific": {"versions": [7]}}}))
        assert "no version matches its version_policy (specific ['7']); available: 1" in e.value.message()
        assert client.is_model_ready("mlp") and client.is_server_ready()
        np.testing.assert_allclose(infer(client, "mlp").as_numpy("y"), expected(MLP_V1), rtol=1e-5)
