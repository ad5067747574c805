"""Many models on one server (issue 27) through tritonclient against a real server: models loaded on their first
request, the least recently used idle model evicted under a budget (a count, or MiB with model_size_bytes), pinned
and --load-model models kept, a model in flight never evicted, a failing model backed off, an unload racing an
on-demand load, and ensemble members and route variants loaded on demand like any model; the composing models of an
ensemble the server serves kept, a load waiting for room woken whenever a model may have turned idle, an explicit
load not taken for an on-demand one, a failed load's reserved room given back, and no repository listing on the
request path."""

from __future__ import annotations

import asyncio
import logging
import dataclasses
import random
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from inference_server.config.routes import parse_route
from inference_server.errors import ModelLoadError
from inference_server.lifecycle import manager as manager_module
from inference_server.lifecycle.repository import Repository
from tests.conftest import ServerThread, server_config
from tests.integration.test_ensemble import CHAIN, X as CHAIN_X, chained, write_composing
from tests.support import onnx_models
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

X = np.arange(8, dtype=np.float32).reshape(2, 4)
MIB = 1 << 20
BATCHING = "[batching]\nmax_batch_size = 8\n"


def write_models(repo: Path, count: int, config: str = BATCHING) -> list[str]:
    """`count` models m00, m01, ...: model i answers x + i, so every answer says which model gave it."""
    names = [f"m{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        onnx_models.write_model(repo, name, onnx_models.affine(4, scale=1.0, shift=float(i)), config)
    return names


def start(repo: Path, **server: object) -> ServerThread:
    cfg = server_config(repo, model_control_mode="explicit", load_on_demand=True, **server)
    return ServerThread(dataclasses.replace(cfg, models=())).start()


def infer(client: grpcclient.InferenceServerClient, model: str, timeout_s: float | None = 60) -> np.ndarray:
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return client.infer(model, [x], client_timeout=timeout_s).as_numpy("y")


def shift(name: str) -> float:
    return float(int(name[1:]))


def index(client: grpcclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    """name -> (state, reason); a model with a version READY is READY."""
    rows: dict[str, tuple[str, str]] = {}
    for m in client.get_model_repository_index(as_json=True)["models"]:
        if rows.get(m["name"], ("",))[0] != "READY":
            rows[m["name"]] = (m["state"], m.get("reason", ""))
    return rows


def metrics(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def evictions(server: ServerThread, model: str) -> float:
    return metrics(server).get(("inference_model_evictions_total", (("model", model),)), 0.0)


def on_loop(server: ServerThread, coroutine) -> object:
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coroutine, server.loop).result(30)


@contextmanager
def in_flight(server: ServerThread, model: str) -> Iterator[None]:
    """What a request in flight holds, a lease on the model's serving version: taken on the server's loop, and given
    back there when the block ends."""

    async def take() -> object:
        return server.app.registry.lease(model)

    lease = on_loop(server, take())

    async def give_back() -> None:
        lease.__exit__(None, None, None)

    try:
        yield
    finally:
        on_loop(server, give_back())


def test_twelve_models_eight_clients_a_budget_of_four(tmp_path):
    names = write_models(tmp_path, 12)
    server = start(tmp_path, max_loaded_models=4)
    errors: list[BaseException] = []
    answered = [0] * 8
    loaded_seen: list[tuple[int, float]] = []
    done = threading.Event()

    def client_thread(i: int) -> None:
        rng = random.Random(i)
        try:
            with grpcclient.InferenceServerClient(server.url) as client:
                for _ in range(20):
                    name = rng.choice(names)
                    np.testing.assert_allclose(infer(client, name), X + shift(name))
                    answered[i] += 1
        except BaseException as e:  # handed to the test
            errors.append(e)

    def sampler() -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            while not done.is_set():
                ready = sum(state == "READY" for state, _ in index(client).values())
                gauge = metrics(server)[("inference_loaded_models", ())]
                loaded_seen.append((ready, gauge))

    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            assert client.is_server_ready()  # ServerReady does not wait for models loaded on demand
            assert not client.is_model_ready("m00")  # nor is a model ready before its first request
            assert index(client)["m00"] == ("UNAVAILABLE", "not loaded")
        watcher = threading.Thread(target=sampler)
        watcher.start()
        clients = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(240)
        done.set()
        watcher.join(30)
        assert not errors, errors[0]
        assert answered == [20] * 8
        assert len(loaded_seen) > 5
        assert max(max(ready, gauge) for ready, gauge in loaded_seen) <= 4, loaded_seen
        with grpcclient.InferenceServerClient(server.url) as client:
            rows = index(client)
            assert sum(state == "READY" for state, _ in rows.values()) <= 4
            assert any(reason == "evicted" for _, reason in rows.values())  # Triton's index shape, reason evicted
        scraped = metrics(server)
        assert sum(v for (name, _), v in scraped.items() if name == "inference_model_evictions_total") >= 8
        assert scraped[("inference_max_loaded_models", ())] == 4
        assert scraped[("inference_model_on_demand_load_seconds_count", ())] >= 12
    finally:
        server.stop()


def test_pinned_and_load_model_models_stay_and_evicted_ones_load_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="inference_server.lifecycle.manager")
    names = write_models(tmp_path, 5)
    onnx_models.write_model(tmp_path, "pin", onnx_models.affine(4, 1.0, 50.0), "pinned = true\n" + BATCHING)
    server = start(tmp_path, max_loaded_models=3, load_models=["m00"])
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            np.testing.assert_allclose(infer(client, "pin"), X + 50)
            for name in names[1:] * 2:  # each evicts the one before: the third slot is the only one that turns over
                np.testing.assert_allclose(infer(client, name), X + shift(name))
                rows = index(client)
                assert rows["m00"][0] == "READY" and rows["pin"][0] == "READY"
                assert sum(state == "READY" for state, _ in rows.values()) == 3
            assert client.is_model_ready("m04") and not client.is_model_ready("m01")
            assert index(client)["m01"] == ("UNAVAILABLE", "evicted")
            assert evictions(server, "m00") == 0 and evictions(server, "pin") == 0
            assert evictions(server, "m01") == 2
        assert "model 'm01' evicted to load 'm02' within the model budget (max_loaded_models = 3)" in caplog.text
    finally:
        server.stop()


def test_a_model_in_flight_is_not_evicted(tmp_path):
    write_models(tmp_path, 2)
    server = start(tmp_path, max_loaded_models=1)
    manager = server.app.manager
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            infer(client, "m00")
            answer: list[np.ndarray] = []
            waiting = threading.Thread(target=lambda: answer.append(infer(client, "m01")))
            with in_flight(server, "m00"):
                # m01 cannot load while m00 is in flight: with a short deadline, RESOURCE_EXHAUSTED naming the budget
                with pytest.raises(InferenceServerException) as e:
                    infer(client, "m01", timeout_s=1.0)
                assert "max_loaded_models = 1" in e.value.message() and "in flight" in e.value.message()
                waiting.start()
                wait_until(lambda: "m01" in manager._room_waiters, "m01's load to wait for room")
                assert index(client)["m00"][0] == "READY" and evictions(server, "m00") == 0
            waiting.join(60)
            np.testing.assert_allclose(answer[0], X + 1)
            assert index(client)["m00"] == ("UNAVAILABLE", "evicted") and evictions(server, "m00") == 1
    finally:
        server.stop()


def test_a_memory_budget_with_model_size_bytes(tmp_path):
    for i in range(3):  # 40 MiB each, in config.toml
        onnx_models.write_model(tmp_path, f"m0{i}", onnx_models.affine(4, 1.0, float(i)),
                                f"model_size_bytes = {40 * MIB}\n" + BATCHING)
    onnx_models.write_model(tmp_path, "m03", onnx_models.affine(4, 1.0, 3.0))  # 40 MiB, in config.pbtxt
    (tmp_path / "m03" / "config.pbtxt").write_text(
        f'backend: "onnxruntime"\nmax_batch_size: 8\nparameters {{ key: "model_size_bytes" value {{ '
        f'string_value: "{40 * MIB}" }} }}\n')
    onnx_models.write_model(tmp_path, "huge", onnx_models.affine(4, 1.0, 9.0), f"model_size_bytes = {150 * MIB}\n")
    server = start(tmp_path, model_memory_budget_mb=100)
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for name in ("m00", "m01"):
                infer(client, name)
            assert metrics(server)[("inference_loaded_model_bytes", ())] == 80 * MIB
            np.testing.assert_allclose(infer(client, "m03"), X + 3)  # 120 MiB would not fit: m00 goes
            assert index(client)["m00"] == ("UNAVAILABLE", "evicted")
            scraped = metrics(server)
            assert scraped[("inference_loaded_model_bytes", ())] == 80 * MIB
            assert scraped[("inference_model_memory_budget_bytes", ())] == 100 * MIB
            with pytest.raises(InferenceServerException) as e:
                infer(client, "huge")
            assert "RESOURCE_EXHAUSTED" in str(e.value.status())
            assert "model_memory_budget_mb = 100" in e.value.message()
            assert index(client)["m01"][0] == "READY"  # nothing was evicted for a model that can never fit
    finally:
        server.stop()


def test_a_failing_model_backs_off_then_loads_once_fixed(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    server = start(tmp_path, max_loaded_models=2)

    def failures() -> float:
        return metrics(server).get(("inference_model_loads_total", (("model", "broken"), ("result", "failure"))), 0)

    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            with pytest.raises(InferenceServerException) as first:
                infer(client, "broken")
            assert "UNAVAILABLE" in str(first.value.status()) and "failed to load" in first.value.message()
            for _ in range(5):  # backed off: answered with the reason, not loaded again
                with pytest.raises(InferenceServerException) as again:
                    infer(client, "broken")
                assert "UNAVAILABLE" in str(again.value.status()) and "next try in" in again.value.message()
            assert failures() == 1
            assert metrics(server)[("inference_model_on_demand_load_failures_total", ())] == 1
            onnx_models.write_model(tmp_path, "broken", onnx_models.affine(4, 1.0, 7.0))

            def served() -> bool:
                try:
                    return bool(np.allclose(infer(client, "broken"), X + 7))
                except InferenceServerException as e:
                    assert "next try in" in e.message(), e.message()  # only the back-off refuses it now
                    return False

            wait_until(served, "the fixed model to load once its back-off is over", timeout_s=30)
            assert failures() == 1
    finally:
        server.stop()


def race(server: ServerThread) -> dict[str, object]:
    """A request for m00 and an unload of m00, sent at once."""
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def request() -> None:
        with grpcclient.InferenceServerClient(server.url) as own:
            barrier.wait()
            results["answer"] = infer(own, "m00")

    def unload() -> None:
        with grpcclient.InferenceServerClient(server.url) as own:
            barrier.wait()
            own.unload_model("m00")
            results["unloaded"] = True

    threads = [threading.Thread(target=request), threading.Thread(target=unload)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_an_unload_racing_an_on_demand_load(tmp_path):
    write_models(tmp_path, 1)
    server = start(tmp_path, max_loaded_models=2)
    manager = server.app.manager
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for _ in range(6):
                results = race(server)
                # both answered: the request by the version it leased (drained by the unload) or by a new load
                np.testing.assert_allclose(results["answer"], X)
                assert results["unloaded"] is True
                wait_until(lambda: index(client)["m00"][0] in ("READY", "UNAVAILABLE")
                           and not manager._pending and not manager._loading, "the race to settle")
                state, reason = index(client)["m00"]
                assert (state, reason) in (("READY", ""), ("UNAVAILABLE", "unloaded"))
                assert client.is_model_ready("m00") == (state == "READY")
            assert not manager._waiting
            np.testing.assert_allclose(infer(client, "m00"), X)  # and it loads again on the next request
    finally:
        server.stop()


def test_ensemble_members_and_route_variants_load_on_demand(tmp_path):
    write_composing(tmp_path)
    onnx_models.write_ensemble(tmp_path, "pipeline", CHAIN)
    write_models(tmp_path, 3)
    cfg = server_config(tmp_path, model_control_mode="explicit", load_on_demand=True, max_loaded_models=2)
    route = parse_route("ranked", {"variants": [{"name": "a", "model": "m01", "weight": 50},
                                                {"name": "b", "model": "m02", "weight": 50}]})
    server = ServerThread(dataclasses.replace(cfg, models=(), routes=(route,))).start()
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            x = grpcclient.InferInput("RAW", list(CHAIN_X.shape), "FP32")
            x.set_data_from_numpy(CHAIN_X)
            # three composing models under a budget of two: each step loads its model, evicting an earlier one
            scores = client.infer("pipeline", [x], client_timeout=60).as_numpy("SCORES")
            np.testing.assert_allclose(scores, chained(CHAIN_X), rtol=1e-5)
            assert index(client)["pipeline"][0] == "READY"
            answers = {float(infer(client, "ranked")[0, 0] - X[0, 0]) for _ in range(12)}
            assert answers <= {1.0, 2.0} and answers
            assert sum(state == "READY" for name, (state, _) in index(client).items() if name != "pipeline") <= 2
    finally:
        server.stop()


def gated(monkeypatch, model: str) -> tuple[threading.Event, threading.Event]:
    """Hold `model`'s loads in their worker thread until the test opens the gate: (entered, gate)."""
    entered, gate = threading.Event(), threading.Event()
    prepare = manager_module.prepare

    def slow(cfg, stop):
        if cfg.name == model:
            entered.set()
            gate.wait(60)
        return prepare(cfg, stop)

    monkeypatch.setattr(manager_module, "prepare", slow)
    return entered, gate


def test_a_load_waiting_for_room_is_woken_once_a_load_nobody_waits_for_finishes(tmp_path, monkeypatch):
    """Budget 1: a request for m00 gives up (its deadline) during m00's slow cold load, which goes on; a request for
    m01 with no deadline waits for room meanwhile. Once m00 is loaded, idle and its load over, m01's load evicts
    it: the waiting load is woken when m00's lock is released and its pending load ends, not only by leases."""
    write_models(tmp_path, 2)
    entered, gate = gated(monkeypatch, "m00")
    server = start(tmp_path, max_loaded_models=1)
    manager = server.app.manager
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            with pytest.raises(InferenceServerException):
                infer(client, "m00", timeout_s=0.05)
            assert entered.wait(30)
            answer: list[np.ndarray] = []
            waiting = threading.Thread(target=lambda: answer.append(infer(client, "m01", timeout_s=None)),
                                       daemon=True)
            waiting.start()
            wait_until(lambda: "m01" in manager._room_waiters, "m01's load to wait for room")
            gate.set()
            waiting.join(30)
            assert answer, "the load waiting for room was never woken once m00 was idle"
            np.testing.assert_allclose(answer[0], X + 1)
            assert index(client)["m00"] == ("UNAVAILABLE", "evicted")
    finally:
        gate.set()
        server.stop()


def test_an_ensembles_composing_models_are_never_evicted_while_it_is_served(tmp_path):
    """--load-model pipeline (three composing models) under a budget of 3: a request for another model is refused
    RESOURCE_EXHAUSTED naming the budget, and the server stays ready; under a budget of 2 the start fails saying so
    (rather than each step's load evicting another member, so that the server never becomes ready)."""
    write_composing(tmp_path)
    onnx_models.write_ensemble(tmp_path, "pipeline", CHAIN)
    write_models(tmp_path, 1)
    server = start(tmp_path, max_loaded_models=3, load_models=["pipeline"])
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            assert client.is_server_ready()
            with pytest.raises(InferenceServerException) as e:
                infer(client, "m00")
            assert "RESOURCE_EXHAUSTED" in str(e.value.status()) and "max_loaded_models = 3" in e.value.message()
            assert client.is_server_ready()
            assert all(index(client)[name][0] == "READY" for name in ("pre", "mlp", "post", "pipeline"))
            x = grpcclient.InferInput("RAW", list(CHAIN_X.shape), "FP32")
            x.set_data_from_numpy(CHAIN_X)
            np.testing.assert_allclose(client.infer("pipeline", [x]).as_numpy("SCORES"), chained(CHAIN_X), rtol=1e-5)
        assert sum(v for (name, _), v in metrics(server).items() if name == "inference_model_evictions_total") == 0
    finally:
        server.stop()
    with pytest.raises(ModelLoadError) as failed:
        start(tmp_path, max_loaded_models=2, load_models=["pipeline"], exit_on_error=True).stop()
    assert "does not fit the model budget (max_loaded_models = 2)" in str(failed.value)


def test_a_poll_reload_leaves_an_on_demand_ensemble_out_of_readiness(tmp_path):
    """Poll mode, on demand: an ensemble loaded by a request and then changed in the repository reloads, and stays
    a model ServerReady does not wait for; its composing models stay evictable (budget 3: m00 takes one's place)."""
    write_composing(tmp_path)
    onnx_models.write_ensemble(tmp_path, "pipeline", CHAIN)
    write_models(tmp_path, 1)
    cfg = server_config(tmp_path, model_control_mode="poll", repository_poll_secs=0.1, load_on_demand=True,
                        max_loaded_models=3)
    server = ServerThread(dataclasses.replace(cfg, models=())).start()
    loads = ("inference_model_loads_total", (("model", "pipeline"), ("result", "success")))
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            x = grpcclient.InferInput("RAW", list(CHAIN_X.shape), "FP32")
            x.set_data_from_numpy(CHAIN_X)
            np.testing.assert_allclose(client.infer("pipeline", [x], client_timeout=60).as_numpy("SCORES"),
                                       chained(CHAIN_X), rtol=1e-5)
            assert metrics(server)[loads] == 1
            (tmp_path / "pipeline" / "config.pbtxt").write_text(CHAIN + "\n")  # a change the poll reloads
            wait_until(lambda: metrics(server).get(loads) == 2, "the poll to reload the ensemble", timeout_s=30)
            assert not server.app.manager.wants("pipeline")
            np.testing.assert_allclose(infer(client, "m00"), X)  # evicts one of the ensemble's composing models
            assert client.is_server_ready()
    finally:
        server.stop()


def test_an_explicit_load_waiting_for_room_outlives_an_on_demand_request_for_the_same_model(tmp_path):
    """Budget 1, m00 in flight: RepositoryModelLoad m01 waits for room; a request for m01 meanwhile starts an
    on-demand load and gives up at its deadline. The explicit load keeps waiting (it is not on demand), and loads
    m01 once m00 is idle."""
    write_models(tmp_path, 2)
    server = start(tmp_path, max_loaded_models=1)
    manager = server.app.manager
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            infer(client, "m00")
            outcome: list[object] = []

            def load() -> None:
                try:
                    client.load_model("m01")
                    outcome.append("loaded")
                except InferenceServerException as e:
                    outcome.append(e)

            loading = threading.Thread(target=load)
            with in_flight(server, "m00"):
                loading.start()
                wait_until(lambda: "m01" in manager._room_waiters, "the explicit load to wait for room")
                with pytest.raises(InferenceServerException):
                    infer(client, "m01", timeout_s=1.0)
                wait_until(lambda: not manager._waiting, "the request to leave")
            loading.join(60)
            assert outcome == ["loaded"], outcome
            np.testing.assert_allclose(infer(client, "m01"), X + 1)
            assert index(client)["m00"] == ("UNAVAILABLE", "evicted")
    finally:
        server.stop()


def test_a_load_that_fails_after_reserving_room_gives_it_back(tmp_path, monkeypatch):
    """Budget 1: m01's load evicts m00, and the memory release after the eviction fails: m01's request fails, and
    the room reserved for m01 is given back, so a later load (m00 again) is not left waiting behind it."""
    write_models(tmp_path, 2)
    failing = [True]
    release = manager_module.release_memory

    def release_once() -> None:
        if failing.pop() if failing else False:
            raise RuntimeError("malloc_trim failed")
        release()

    monkeypatch.setattr(manager_module, "release_memory", release_once)
    server = start(tmp_path, max_loaded_models=1)
    manager = server.app.manager
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            infer(client, "m00")
            with pytest.raises(InferenceServerException):
                infer(client, "m01")
            wait_until(lambda: not manager._pending, "m01's load to end")
            assert manager._loading == {}
            np.testing.assert_allclose(infer(client, "m00", timeout_s=5), X)
            np.testing.assert_allclose(infer(client, "m01", timeout_s=5), X + 1)
    finally:
        server.stop()


def test_the_request_path_never_lists_the_repository(tmp_path, monkeypatch):
    """A request for a model not loaded, or for no model at all, looks at that one name (a stat), never at every
    model directory; a repository that cannot be read answers UNAVAILABLE with the reason."""
    write_models(tmp_path / "repo", 2)
    server = start(tmp_path / "repo", max_loaded_models=2)
    listed: list[str] = []
    names = Repository.names
    monkeypatch.setattr(Repository, "names", lambda self: listed.append("names") or names(self))
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            np.testing.assert_allclose(infer(client, "m01"), X + 1)  # loaded on demand
            with pytest.raises(InferenceServerException) as unknown:
                infer(client, "nope")
            assert "NOT_FOUND" in str(unknown.value.status())
            assert listed == []
            (tmp_path / "repo").rename(tmp_path / "gone")
            with pytest.raises(InferenceServerException) as gone:
                infer(client, "nope")
            assert "UNAVAILABLE" in str(gone.value.status()) and "is not a directory" in gone.value.message()
    finally:
        server.stop()
