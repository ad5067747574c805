"""Triton ensembles through tritonclient, on repositories laid out as Triton users write them (config.pbtxt and an
empty version directory): a three-step chain, a fan-out/fan-in graph, statistics, metadata and config, readiness
that follows the composing models, a step's failure naming its model, the response cache, batch dimensions added
and stripped where the ensemble and a composing model batch differently, a route's shadow that is an ensemble,
unload_dependents, and every load check refused with the step and tensor named."""

from __future__ import annotations

import dataclasses
import threading
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from inference_server.config.routes import parse_route
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PRE = onnx_models.affine(4, scale=2.0, shift=1.0)  # x [N, 4] -> y
MLP = onnx_models.mlp([4, 8, 3], seed=3)  # x [N, 4] -> y [N, 3]
POST = onnx_models.affine(3, scale=0.5, shift=0.0)  # x [N, 3] -> y
X = np.arange(12, dtype=np.float32).reshape(3, 4) / 12


def pbtxt(name: str, max_batch: int, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> str:
    def tensors(items: list[tuple[str, int]]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {d} ] }}' for n, d in items)
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
            f"input [ {tensors(inputs)} ]\noutput [ {tensors(outputs)} ]\n")


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


def ensemble(name: str, steps: list[str], inputs: list[tuple[str, int]], outputs: list[tuple[str, int]],
             max_batch: int = 8, extra: str = "") -> str:
    def tensors(items: list[tuple[str, int]]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {d} ] }}' for n, d in items)
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\ninput [ {tensors(inputs)} ]\n'
            f"output [ {tensors(outputs)} ]\n{extra}ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n")


CHAIN = ensemble("pipeline", [step("pre", {"x": "RAW"}, {"y": "clean"}), step("mlp", {"x": "clean"}, {"y": "logits"}),
                              step("post", {"x": "logits"}, {"y": "SCORES"})], [("RAW", 4)], [("SCORES", 3)])
FAN = ensemble("fan", [step("double", {"x": "RAW"}, {"y": "A"}), step("triple", {"x": "RAW"}, {"y": "B"}),
                       step("add", {"a": "A", "b": "B"}, {"sum": "SUM"})], [("RAW", 4)], [("SUM", 4)])
# Batching that differs between the ensemble and a composing model (Triton reshapes at the step's boundary): the chain
# in an ensemble that does not batch, and a batching ensemble over `flat_double`, a model that does not
FLAT = CHAIN.replace('"pipeline"', '"flat"').replace("max_batch_size: 8", "max_batch_size: 0")
OVER_FLAT = ensemble("over_flat", [step("flat_double", {"x": "RAW"}, {"y": "DOUBLED"}),
                                   step("mlp", {"x": "DOUBLED"}, {"y": "SCORES"})], [("RAW", 4)], [("SCORES", 3)])
SHADOWED = {"variants": [{"name": "main", "model": "pipeline", "version": 1, "weight": 1}],
            "shadow": {"model": "pipeline_shadow", "pause_above_in_flight": 0, "pause_above_loop_busy_percent": 100}}


def write_composing(repo: Path) -> None:
    def pbtxt_model(name: str, model: onnx_models.onnx.ModelProto, config: str) -> None:
        onnx_models.write_model(repo, name, model)
        (repo / name / "config.pbtxt").write_text(config)

    pbtxt_model("pre", PRE, pbtxt("pre", 16, [("x", 4)], [("y", 4)]))
    pbtxt_model("mlp", MLP, pbtxt("mlp", 16, [("x", 4)], [("y", 3)]))
    pbtxt_model("post", POST, pbtxt("post", 16, [("x", 3)], [("y", 3)]))
    pbtxt_model("double", onnx_models.affine(4, 2.0, 0.0), pbtxt("double", 16, [("x", 4)], [("y", 4)]))
    pbtxt_model("triple", onnx_models.affine(4, 3.0, 0.0), pbtxt("triple", 16, [("x", 4)], [("y", 4)]))
    pbtxt_model("flat_double", onnx_models.affine(4, 2.0, 0.0, batched=False),
                pbtxt("flat_double", 0, [("x", 4)], [("y", 4)]))
    sums = '{ name: "a" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "b" data_type: TYPE_FP32 dims: [ 4 ] }'
    pbtxt_model("add", onnx_models.add(4), f'backend: "onnxruntime"\nmax_batch_size: 16\ninput [ {sums} ]\n'
                                           'output [ { name: "sum" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')


def run(model: onnx_models.onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def chained(x: np.ndarray) -> np.ndarray:
    return run(POST, x=run(MLP, x=run(PRE, x=x)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every model of the repository loaded at start (mode none), ensembles beside their composing models."""
    repo = tmp_path_factory.mktemp("ensembles")
    write_composing(repo)
    onnx_models.write_ensemble(repo, "pipeline", CHAIN)
    onnx_models.write_ensemble(repo, "fan", FAN)
    onnx_models.write_ensemble(repo, "cached", CHAIN.replace('"pipeline"', '"cached"')
                               .replace("ensemble_scheduling", "response_cache { enable: true }\nensemble_scheduling"))
    onnx_models.write_ensemble(repo, "flat", FLAT)
    onnx_models.write_ensemble(repo, "over_flat", OVER_FLAT)
    onnx_models.write_ensemble(repo, "pipeline_shadow", CHAIN.replace('"pipeline"', '"pipeline_shadow"'))
    cfg = dataclasses.replace(server_config(repo, cache="memory", http_port=free_port()), models=(),
                              routes=(parse_route("scores", SHADOWED),))
    server = ServerThread(cfg).start()
    yield server
    server.stop()


def infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray = X, name: str = "RAW",
          output: str = "SCORES") -> np.ndarray:
    given = grpcclient.InferInput(name, list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    return client.infer(model, [given]).as_numpy(output)


def stats(client: grpcclient.InferenceServerClient, model: str) -> dict:
    (entry,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return entry


def test_a_three_step_chain_answers_as_the_three_models_in_turn(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        before = {m: int(stats(client, m)["inference_stats"]["success"].get("count", 0))
                  for m in ("pre", "mlp", "post")}
        np.testing.assert_allclose(infer(client, "pipeline"), chained(X), rtol=1e-5)
        assert client.is_model_ready("pipeline")
        # each step was a request to its model, counted in its statistics; the ensemble counts its own
        for model, count in before.items():
            assert int(stats(client, model)["inference_stats"]["success"]["count"]) == count + 1
        mine = stats(client, "pipeline")
        assert mine["inference_stats"]["success"]["count"] == "1" and mine["inference_count"] == "3"
        # one execution that waited 0 in a queue of its own (perf_analyzer finds the serving version by it)
        assert mine["execution_count"] == "1" and mine["inference_stats"]["queue"]["count"] == "1"
        metadata = client.get_model_metadata("pipeline", as_json=True)
        assert metadata["platform"] == "ensemble" and metadata["versions"] == ["1"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("RAW", "FP32", ["-1", "4"])]
        assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [("SCORES", ["-1", "3"])]
        config = client.get_model_config("pipeline", as_json=True)["config"]
        assert config["platform"] == "ensemble" and config["max_batch_size"] == 8 and "instance_group" not in config
        assert [(s["model_name"], s["model_version"], s["input_map"], s["output_map"])
                for s in config["ensemble_scheduling"]["step"]] == [
            ("pre", "-1", {"x": "RAW"}, {"y": "clean"}), ("mlp", "-1", {"x": "clean"}, {"y": "logits"}),
            ("post", "-1", {"x": "logits"}, {"y": "SCORES"})]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served.app.http_port}")
    try:
        config = http.get_model_config("pipeline")
        assert config["platform"] == "ensemble" and config["ensemble_scheduling"]["step"][1]["model_name"] == "mlp"
        given = httpclient.InferInput("RAW", list(X.shape), "FP32")
        given.set_data_from_numpy(X)
        np.testing.assert_allclose(http.infer("pipeline", [given]).as_numpy("SCORES"), chained(X), rtol=1e-5)
    finally:
        http.close()


def test_a_fan_out_fan_in_graph_joins_both_branches(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        np.testing.assert_allclose(infer(client, "fan", output="SUM"), 5 * X, rtol=1e-6)


def test_the_response_cache_answers_the_ensemble_as_a_whole(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        x = X + 7
        first = infer(client, "cached", x)
        mlp_before = stats(client, "mlp")["inference_stats"]["success"]["count"]
        np.testing.assert_array_equal(infer(client, "cached", x), first)
        assert stats(client, "mlp")["inference_stats"]["success"]["count"] == mlp_before  # no step ran again
        assert stats(client, "cached")["inference_stats"]["cache_hit"]["count"] == "1"


def test_a_request_the_ensemble_refuses_never_reaches_a_step(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        with pytest.raises(InferenceServerException) as e:
            infer(client, "pipeline", np.ones((9, 4), np.float32))  # the ensemble's max_batch_size is 8
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_an_ensemble_that_does_not_batch_adds_and_strips_a_batch_of_one_around_batching_models(served):
    """`flat` (max_batch_size 0) over the batching chain: a tensor without a batch dimension goes into each step with
    a batch of 1 and comes back without it, as Triton reshapes it."""
    with grpcclient.InferenceServerClient(served.url) as client:
        assert client.get_model_metadata("flat", as_json=True)["inputs"][0]["shape"] == ["4"]
        np.testing.assert_allclose(infer(client, "flat", X[1]), chained(X[1:2])[0], rtol=1e-5)
    with httpclient.InferenceServerClient(f"127.0.0.1:{served.app.http_port}") as http:
        given = httpclient.InferInput("RAW", [4], "FP32")
        given.set_data_from_numpy(X[2])
        scores = http.infer("flat", [given]).as_numpy("SCORES")
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, chained(X[2:3])[0], rtol=1e-5)


def test_a_batching_ensemble_strips_a_batch_of_one_for_a_model_that_does_not_batch_and_refuses_more(served):
    """`over_flat` (max_batch_size 8) over `flat_double` (max_batch_size 0, x [4]) then the batching `mlp`: a batch of
    1 loses its batch dimension into flat_double and gets it back after; a batch of 3 cannot be given to it."""
    with grpcclient.InferenceServerClient(served.url) as client:
        scores = infer(client, "over_flat", X[:1])
        assert scores.shape == (1, 3)
        np.testing.assert_allclose(scores, run(MLP, x=2 * X[:1]), rtol=1e-5)
        with pytest.raises(InferenceServerException) as e:
            infer(client, "over_flat", X)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    for words in ("step 0 (model 'flat_double')", "ensemble tensor 'RAW'", "batch of 3", "does not batch"):
        assert words in e.value.message(), e.value.message()


def shadow_samples(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("inference_shadow_") and s.labels.get("route") == "scores"}


def test_a_routes_shadow_may_be_an_ensemble_whose_copies_run_through_its_steps(served):
    """Route `scores` serves `pipeline` and copies every request to the ensemble `pipeline_shadow` (the same chain):
    each copy runs through its steps and answers what the primary answered."""
    def outcomes() -> dict[str, float]:
        return {labels[0][1]: v for (name, labels), v in shadow_samples(served).items()
                if name == "inference_shadow_requests_total"}

    with grpcclient.InferenceServerClient(served.url) as client:
        shadowed_before = int(stats(client, "pipeline_shadow")["inference_stats"]["success"].get("count", 0))
        for i in range(4):
            np.testing.assert_allclose(infer(client, "scores", X + i), chained(X + i), rtol=1e-5)
        wait_until(lambda: sum(outcomes().values()) >= 4, "the four shadow copies to finish")
        assert outcomes().get("ok") == 4, outcomes()
        assert int(stats(client, "pipeline_shadow")["inference_stats"]["success"]["count"]) == shadowed_before + 4
    difference = shadow_samples(served)
    key = (("output", "SCORES"), ("route", "scores"))
    assert difference[("inference_shadow_output_difference_count", key)] == 4
    assert difference[("inference_shadow_output_difference_sum", key)] == 0.0


@pytest.fixture
def explicit(tmp_path):
    repo = tmp_path / "repo"
    write_composing(repo)
    onnx_models.write_ensemble(repo, "pipeline", CHAIN)
    cfg = dataclasses.replace(server_config(repo, model_control_mode="explicit", load_models=["pipeline"],
                                            http_port=free_port()), models=())
    server = ServerThread(cfg).start()
    yield server, repo
    server.stop()


def test_loading_an_ensemble_loads_its_composing_models_and_readiness_follows_them(explicit):
    server, _ = explicit
    with grpcclient.InferenceServerClient(server.url) as client:
        assert all(client.is_model_ready(m) for m in ("pipeline", "pre", "mlp", "post"))
        np.testing.assert_allclose(infer(client, "pipeline"), chained(X), rtol=1e-5)
        client.unload_model("mlp")
        assert not client.is_model_ready("pipeline")  # a composing model is gone
        with pytest.raises(InferenceServerException) as e:
            infer(client, "pipeline")
        assert "step 1 (model 'mlp')" in e.value.message() and e.value.status() == "StatusCode.NOT_FOUND"
        client.load_model("mlp")
        assert client.is_model_ready("pipeline")
        np.testing.assert_allclose(infer(client, "pipeline"), chained(X), rtol=1e-5)


def test_unload_dependents_unloads_the_composing_models_the_ensemble_brought_in(explicit):
    """As Triton: with unload_dependents, unloading an ensemble also unloads the composing models its load brought
    in, except one that another loaded ensemble uses and one that a load named itself; without it, none."""
    server, repo = explicit
    onnx_models.write_ensemble(repo, "scores_only", ensemble("scores_only", [step("mlp", {"x": "RAW"},
                                                                                   {"y": "SCORES"})],
                                                             [("RAW", 4)], [("SCORES", 3)]))
    composing = ("pre", "mlp", "post")
    with grpcclient.InferenceServerClient(server.url) as client:
        client.load_model("scores_only")  # mlp is its composing model too
        client.load_model("post")  # loaded by its own name: it stays
        client.unload_model("pipeline")  # without unload_dependents: its composing models stay
        assert not client.is_model_ready("pipeline") and all(client.is_model_ready(m) for m in composing)
        client.load_model("pipeline")
        client.unload_model("pipeline", unload_dependents=True)
        assert [client.is_model_ready(m) for m in ("pipeline", *composing)] == [False, False, True, True]
        np.testing.assert_allclose(infer(client, "scores_only"), run(MLP, x=X), rtol=1e-5)
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}") as http:
        http.unload_model("scores_only", unload_dependents=True)  # the last ensemble using mlp
        assert [http.is_model_ready(m) for m in ("scores_only", *composing)] == [False, False, False, True]
        assert {e["name"]: e.get("reason") for e in http.get_model_repository_index()}["mlp"] == "unloaded"


BAD = {
    "no_output_writer": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OTHER"})], [("RAW", 4)], [("OUT", 4)]),
                         ["no step writes ensemble output 'OUT'"]),
    "unused_input": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4), ("SPARE", 4)],
                              [("OUT", 4)]), ["ensemble input 'SPARE' is not used"]),
    "written_twice": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"}), step("double", {"x": "RAW"},
                                                                                      {"y": "OUT"})],
                               [("RAW", 4)], [("OUT", 4)]), ["step 1 (model 'double')", "'OUT'", "written once"]),
    "cycle": (ensemble("bad", [step("add", {"a": "RAW", "b": "T2"}, {"sum": "T1"}), step("pre", {"x": "T1"},
                                                                                          {"y": "T2"}),
                               step("double", {"x": "T1"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)]),
              ["cycle", "'T2'"]),
    "datatype": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)])
                 .replace('{ name: "RAW" data_type: TYPE_FP32', '{ name: "RAW" data_type: TYPE_FP64'),
                 ["step 0 (model 'pre')", "ensemble tensor 'RAW'", "inconsistent datatype"]),
    "shape": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 5)]),
              ["step 0 (model 'pre')", "ensemble tensor 'OUT'", "inconsistent shape"]),
    "max_batch_size": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)],
                                max_batch=32), ["step 0 (model 'pre')", "max_batch_size is 32", "at most 16"]),
    "unknown_input": (ensemble("bad", [step("pre", {"input": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)]),
                      ["step 0 (model 'pre')", "input 'input'", "does not have"]),
    "unmapped_input": (ensemble("bad", [step("add", {"a": "RAW"}, {"sum": "OUT"})], [("RAW", 4)], [("OUT", 4)]),
                       ["step 0 (model 'add')", "input 'b'", "not mapped"]),
    "unknown_output": (ensemble("bad", [step("pre", {"x": "RAW"}, {"z": "OUT"})], [("RAW", 4)], [("OUT", 4)]),
                       ["step 0 (model 'pre')", "output 'z'", "does not have"]),
    "unknown_model": (ensemble("bad", [step("ghost", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)]),
                      ["step 0 (model 'ghost')", "cannot serve"]),
    "unsupported": (ensemble("bad", [step("pre", {"x": "RAW"}, {"y": "OUT"})], [("RAW", 4)], [("OUT", 4)],
                             extra="instance_group [ { count: 2 } ]\n"), ["instance_group", "not supported"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_load_check_refuses_the_ensemble_naming_the_step_and_tensor(explicit, case):
    server, repo = explicit
    config, words = BAD[case]
    onnx_models.write_ensemble(repo, "bad", config)
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.load_model("bad")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        for word in words:
            assert word in e.value.message(), e.value.message()
        assert not client.is_model_ready("bad")
        assert client.is_model_ready("pipeline")


MLP_V2 = onnx_models.mlp([4, 8, 3], seed=4)


def test_reloading_a_composing_model_under_load_fails_no_ensemble_request(explicit):
    """Clients send to the ensemble without pause while its middle model is reloaded from new files: every answer
    is right for one file or the other, and none fails (each step leases the version serving when it runs)."""
    server, repo = explicit
    answers = {"v1": chained(X), "v2": run(POST, x=run(MLP_V2, x=run(PRE, x=X)))}
    stop = threading.Event()
    seen: list[str] = []
    failures: list[str] = []

    def client_loop() -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            while not stop.is_set():
                try:
                    out = infer(client, "pipeline")
                except InferenceServerException as e:
                    failures.append(e.message())
                    continue
                seen.append(next((k for k, v in answers.items() if np.allclose(out, v, rtol=1e-5)), "wrong"))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with grpcclient.InferenceServerClient(server.url) as admin:
            for model in (MLP_V2, MLP, MLP_V2):
                count = len(seen)
                wait_until(lambda count=count: len(seen) > count + 20, "ensemble answers between reloads")
                (repo / "mlp" / "1" / "model.onnx").write_bytes(model.SerializeToString())
                admin.load_model("mlp")
            count = len(seen)
            wait_until(lambda: len(seen) > count + 20, "ensemble answers after the last reload")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    assert "wrong" not in seen and {"v1", "v2"} <= set(seen)
    assert seen[-1] == "v2"  # the last reload serves
