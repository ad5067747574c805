"""Priority levels and queue policies through tritonclient, on a repository of config.pbtxt files written the way
Triton users write them (the dynamic batcher's priority_levels, default_queue_policy and priority_queue_policy).

Every model is `batch_sum` (tests/support/onnx_models.py): each request sends a bit of its own and gets back the sum
of its batch, so a test reads which requests shared a batch from the answers. The model's one instance is held at
its next batch (`Held`) so that requests queue behind it for as long as a test needs, without a clock."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerThread, server_config
from tests.integration.test_metrics import scrape
from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.support.waiting import wait_until

HEAD = """platform: "onnxruntime_onnx"
max_batch_size: {rows}
input [ {{ name: "x" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_INT64 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
MODELS = {
    "prio": (4, """dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy { key: 2 value { max_queue_size: 8 } }
}"""),
    "reject": (4, """dynamic_batching {
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 50000 }
}"""),
    "delay": (2, """dynamic_batching {
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 60000000 allow_timeout_override: true }
}"""),
    "override": (4, """dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { default_timeout_microseconds: 60000000 allow_timeout_override: true }
  priority_queue_policy { key: 1 value { default_timeout_microseconds: 60000000 } }
}"""),
}

ENSEMBLE = """name: "prio_pipeline"
platform: "ensemble"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_INT64 dims: [ 1 ] } ]
ensemble_scheduling { step [ { model_name: "prio" model_version: -1 input_map { key: "x" value: "x" }
                               output_map { key: "y" value: "y" } } ] }
"""
ENSEMBLES = {"prio_pipeline": ENSEMBLE,
             "override_pipeline": ENSEMBLE.replace('"prio_pipeline"', '"override_pipeline"')
                                          .replace('model_name: "prio"', 'model_name: "override"')}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("priority_models")
    for name, (rows, batching) in MODELS.items():
        onnx_models.write_model(root, name, onnx_models.batch_sum())
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n' + HEAD.format(rows=rows) + batching)
    # execution "thread": a batch holds its instance while it runs (an inline run of a request that finds the queue
    # empty takes no slot, since nothing else can run while it does; Held makes a run wait, which inline never does)
    for name, config in ENSEMBLES.items():
        onnx_models.write_ensemble(root, name, config)
    thread = ServerThread(server_config(root, http_port=free_port(), execution="thread")).start()
    yield thread
    thread.stop()


class Held:
    """A model's one instance made to wait in its next batch until released: a batch that runs as long as the test
    needs. It reaches into the in-process server: nothing in the protocol holds a model busy."""

    def __init__(self, server: ServerThread, model: str) -> None:
        assert server.loop is not None and server.app is not None
        self.loop = server.loop
        batcher = server.app.registry.find(model).batcher
        self.instance = batcher._instances[0]
        self.running = threading.Event()
        self.gate = asyncio.run_coroutine_threadsafe(self._event(), self.loop).result(5)
        original = self.instance.run
        gate, running = self.gate, self.running

        async def run(inputs):
            running.set()
            await gate.wait()
            return await original(inputs)

        self.instance.run = run

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    def release(self) -> None:
        def open_gate() -> None:
            del self.instance.run  # the instance's own method again
            self.gate.set()
        self.loop.call_soon_threadsafe(open_gate)


class Calls:
    """Requests sent with tritonclient's async_infer; each answer (the sum of its batch) or error kept by key."""

    def __init__(self, client: grpcclient.InferenceServerClient, model: str) -> None:
        self.client, self.model = client, model
        self.answers: dict[str, Any] = {}
        self.done = threading.Condition()

    def send(self, key: str, bit: int, **kw: Any) -> None:
        x = grpcclient.InferInput("x", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([[1 << bit]], dtype=np.int64))

        def callback(result, error) -> None:
            with self.done:
                self.answers[key] = error if error is not None else int(result.as_numpy("y")[0, 0])
                self.done.notify_all()

        self.client.async_infer(self.model, [x], callback, **kw)

    def wait(self, *keys: str) -> dict[str, Any]:
        with self.done:
            assert self.done.wait_for(lambda: all(k in self.answers for k in keys), 30), (keys, self.answers)
        return {k: self.answers[k] for k in keys}


def pending(server: ServerThread, model: str, level: int | None = None) -> float:
    if level is None:
        return scrape(server).get(("inference_pending_requests", (("model", model), ("version", "1"))), 0)
    key = ("inference_priority_pending_requests", (("model", model), ("priority_level", str(level)), ("version", "1")))
    return scrape(server).get(key, 0)


@contextmanager
def held(server: ServerThread, model: str, calls: Calls) -> Iterator[Held]:
    """The model busy with a first request (bit 0, key "first"), released however the block ends."""
    hold = Held(server, model)
    try:
        calls.send("first", 0)
        assert hold.running.wait(30), "the first batch never started"
        yield hold
    finally:
        hold.release()


def members(total: int) -> set[int]:
    return {bit for bit in range(63) if total >> bit & 1}


def test_a_flood_of_low_priority_requests_delays_a_high_priority_one_by_one_batch_at_most(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        calls = Calls(client, "prio")
        with held(served, "prio", calls):
            for bit in range(1, 9):  # eight low-priority requests, queued in this order (two batches' worth)
                calls.send(f"low{bit}", bit, priority=2)
                wait_until(lambda n=bit: pending(served, "prio", 2) == n, f"{bit} low-priority requests queued")
            # level 2's own max_queue_size (8) refuses a ninth; level 1 has its own queue
            x = grpcclient.InferInput("x", [1, 1], "INT64")
            x.set_data_from_numpy(np.array([[1]], dtype=np.int64))
            with pytest.raises(InferenceServerException) as refused:
                client.infer("prio", [x], priority=2)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            assert "Exceeds maximum queue size (8) of priority level 2" in refused.value.message()
            calls.send("high", 20, priority=1)
            wait_until(lambda: pending(served, "prio", 1) == 1, "the high-priority request queued")
            assert pending(served, "prio") == 9
        answers = calls.wait("first", "high", *(f"low{b}" for b in range(1, 9)))
    assert members(answers["first"]) == {0}
    # the next batch formed is the high-priority request's, filled with the oldest low-priority ones
    assert members(answers["high"]) == {20, 1, 2, 3}
    assert [members(answers[f"low{b}"]) for b in (4, 8)] == [{4, 5, 6, 7}, {8}]


def test_a_request_whose_queue_timeout_passes_is_rejected_with_503_and_unavailable(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        calls = Calls(client, "reject")
        with held(served, "reject", calls):
            x = httpclient.InferInput("x", [1, 1], "INT64")
            x.set_data_from_numpy(np.array([[2]], dtype=np.int64))
            with httpclient.InferenceServerClient(f"127.0.0.1:{served.app.http_port}") as http:
                with pytest.raises(InferenceServerException) as over_http:
                    http.infer("reject", [x])  # 50 ms in the queue behind a batch that does not end
            assert over_http.value.status() == "503" and "Request timeout expired" in over_http.value.message()
            calls.send("grpc", 3)
            rejected = calls.wait("grpc")["grpc"]
            assert isinstance(rejected, InferenceServerException)
            assert rejected.status() == "StatusCode.UNAVAILABLE" and "Request timeout expired" in rejected.message()
            assert not calls.answers.get("first")  # rejected while the batch before them still ran
        assert members(calls.wait("first")["first"]) == {0}


def test_delay_moves_a_timed_out_request_behind_the_others(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        calls = Calls(client, "delay")
        with held(served, "delay", calls):
            calls.send("late", 1, timeout=1)  # its own 1 µs (the policy allows shortening): timed out at once
            wait_until(lambda: pending(served, "delay") == 1, "the late request queued")
            calls.send("second", 2)
            calls.send("third", 3)
            wait_until(lambda: pending(served, "delay") == 3, "three requests queued")
        answers = calls.wait("first", "late", "second", "third")
    assert members(answers["second"]) == members(answers["third"]) == {2, 3}  # served ahead of it
    assert members(answers["late"]) == {1}  # still served, behind them


def test_a_timeout_override_is_honoured_where_the_policy_allows_it_and_ignored_where_it_does_not(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        calls = Calls(client, "override")
        with held(served, "override", calls):
            calls.send("allowed", 1, priority=2, timeout=1000)  # level 2 allows a shorter timeout: 1 ms
            rejected = calls.wait("allowed")["allowed"]
            assert isinstance(rejected, InferenceServerException) and "Request timeout expired" in rejected.message()
            calls.send("refused", 2, priority=1, timeout=1000)  # level 1 does not: its 60 s apply
            calls.send("longer", 3, priority=2, timeout=120_000_000)  # longer than level 2's 60 s: not taken
            wait_until(lambda: pending(served, "override") == 2, "two requests queued")
        answers = calls.wait("first", "refused", "longer")
    assert members(answers["refused"]) == members(answers["longer"]) == {2, 3}


def test_a_priority_that_is_not_a_non_negative_integer_is_refused_as_triton_refuses_it(served):
    x = httpclient.InferInput("x", [1, 1], "INT64")
    x.set_data_from_numpy(np.array([[1]], dtype=np.int64))
    with httpclient.InferenceServerClient(f"127.0.0.1:{served.app.http_port}") as http:
        with pytest.raises(InferenceServerException) as e:
            http.infer("prio", [x], priority=-1)
    assert e.value.status() == "400" and "parameter 'priority' must be a non-negative integer" in e.value.message()
    with grpcclient.InferenceServerClient(served.url) as client:  # above priority_levels: the default level
        answer = client.infer("prio", [grpcclient.InferInput("x", [1, 1], "INT64").set_data_from_numpy(
            np.array([[4]], dtype=np.int64))], priority=7)
    assert int(answer.as_numpy("y")[0, 0]) == 4


def test_the_model_config_answers_the_priority_levels_and_queue_policies_it_was_given(served):
    with grpcclient.InferenceServerClient(served.url) as client:
        grpc_config = client.get_model_config("override", as_json=True)["config"]["dynamic_batching"]
    with httpclient.InferenceServerClient(f"127.0.0.1:{served.app.http_port}") as http:
        http_config = http.get_model_config("override")["dynamic_batching"]
    for batching in (grpc_config, http_config):
        assert int(batching["priority_levels"]) == 2 and int(batching["default_priority_level"]) == 2
        default, level1 = batching["default_queue_policy"], batching["priority_queue_policy"]["1"]
        assert int(default["default_timeout_microseconds"]) == 60000000 and default["allow_timeout_override"]
        assert int(level1["default_timeout_microseconds"]) == 60000000 and not level1.get("allow_timeout_override")


def test_an_ensemble_requests_steps_run_at_its_priority(served):
    """A high-priority request to an ensemble is a high-priority request to each composing model: its step passes
    the low-priority requests queued there."""
    with grpcclient.InferenceServerClient(served.url) as client:
        direct, pipeline = Calls(client, "prio"), Calls(client, "prio_pipeline")
        with held(served, "prio", direct):
            for bit in range(1, 6):
                direct.send(f"low{bit}", bit, priority=2)
                wait_until(lambda n=bit: pending(served, "prio", 2) == n, f"{bit} low-priority requests queued")
            pipeline.send("high", 20, priority=1)
            wait_until(lambda: pending(served, "prio", 1) == 1, "the ensemble's step queued at level 1")
        answers = {**direct.wait("first", *(f"low{b}" for b in range(1, 6))), **pipeline.wait("high")}
    assert members(answers["high"]) == {20, 1, 2, 3}
    assert [members(answers[f"low{b}"]) for b in (4, 5)] == [{4, 5}, {4, 5}]


def test_an_ensemble_requests_queue_timeout_applies_to_its_steps(served):
    """`timeout` on an ensemble request is its steps' queue timeout (Triton sets it on every step's request): over a
    busy composing model whose policy allows the override, it is rejected as a direct request would be."""
    with grpcclient.InferenceServerClient(served.url) as client:
        direct, pipeline = Calls(client, "override"), Calls(client, "override_pipeline")
        with held(served, "override", direct):
            direct.send("direct", 1, priority=2, timeout=1000)
            pipeline.send("ensemble", 2, priority=2, timeout=1000)  # 1 ms, as the direct request
            answers = {**direct.wait("direct"), **pipeline.wait("ensemble")}  # both while the batch still runs
            assert not direct.answers.get("first")
        assert members(direct.wait("first")["first"]) == {0}
    for key, answer in answers.items():
        assert isinstance(answer, InferenceServerException), (key, answer)
        assert answer.status() == "StatusCode.UNAVAILABLE" and "Request timeout expired" in answer.message()
    assert "step 0 (model 'override')" in answers["ensemble"].message()


def post(server: ServerThread, model: str, body: dict[str, Any]) -> tuple[int, str | None, str]:
    """(status, its Retry-After header, its body) of an HTTP infer request."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.app.http_port}/v2/models/{model}/infer",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("retry-after"), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("retry-after"), e.read().decode()


def test_an_ensemble_request_whose_step_finds_a_full_queue_gets_retry_after_as_a_direct_one(served):
    """A full queue in a composing model is a full queue for the ensemble request too: 503 with Retry-After over
    HTTP (the step's error keeps its retry hint), counted once as queue_full."""
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [1 << 30]}],
            "parameters": {"priority": 2}}
    full = ("inference_rejected_requests_total", (("reason", "queue_full"),))
    with grpcclient.InferenceServerClient(served.url) as client:
        calls = Calls(client, "prio")
        with held(served, "prio", calls):
            for bit in range(1, 9):  # level 2's max_queue_size (8) reached
                calls.send(f"low{bit}", bit, priority=2)
                wait_until(lambda n=bit: pending(served, "prio", 2) == n, f"{bit} low-priority requests queued")
            before = scrape(served).get(full, 0)
            answers = {model: post(served, model, body) for model in ("prio", "prio_pipeline")}
            assert scrape(served).get(full, 0) - before == 2  # one each: the ensemble's is its step's
        calls.wait("first", *(f"low{b}" for b in range(1, 9)))
    for model, (status, retry_after, text) in answers.items():
        assert (status, retry_after) == (503, "1"), (model, status, retry_after, text)
        assert "Exceeds maximum queue size (8) of priority level 2" in json.loads(text)["error"]
    assert "step 0 (model 'prio')" in json.loads(answers["prio_pipeline"][2])["error"]
