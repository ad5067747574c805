"""A real server serving models:/NAME@ALIAS from a real local MLflow registry (sqlite:/// + file:// artifacts).

What is checked is what a client sees: answers (each compared with ONNX Runtime's output for that version),
RepositoryIndex rows, readiness, statistics, the metrics endpoint and the manager's log, while the alias moves,
is missing, names a version that is not ONNX, or cannot be read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import onnx_models
from tests.support.mlflow_registry import Registry, mlflow_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not mlflow_available(), reason="needs the mlflow extra: pip install -e '.[mlflow]'"),
]

import onnxruntime as ort  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from inference_server.config.server import parse_server  # noqa: E402
from tests.conftest import ServerThread  # noqa: E402
from tests.support.counters import assert_monotonic, sample_value  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

ONNX = {"1": onnx_models.mlp([4, 8, 2], seed=1).SerializeToString(),
        "2": onnx_models.mlp([4, 8, 2], seed=2).SerializeToString()}
X = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
# An MLmodel as mlflow.sklearn writes it, and bytes that are only ever written to disk (never unpickled).
PICKLE_ONLY = {"MLmodel": b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n",
               "model.pkl": b"not a real pickle"}
POLL_S = 0.2
LIFECYCLE_LOG = "inference_server.lifecycle"  # the manager and its following of sources


def expected(version: str) -> np.ndarray:
    session = ort.InferenceSession(ONNX[version], providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": X})[0]


EXPECTED = {v: expected(v) for v in ONNX}
assert not np.allclose(EXPECTED["1"], EXPECTED["2"])  # the two versions are told apart by their answers


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(autouse=True)
def registry_env(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """MlflowSource reads the environment when the server starts."""
    for key, value in registry.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@contextlib.contextmanager
def serving(tmp_path: Path, *sources: tuple[str, str]) -> Iterator[ServerThread]:
    """A server with one [[models]] entry per (name, source), each polled every POLL_S."""
    cfg = parse_server({
        "server": {"port": 0, "metrics_port": 0, "http_port": 0, "drain_grace_s": 5,
                   "model_cache_dir": str(tmp_path / "cache")},
        "models": [{"name": name, "source": source, "poll_interval_s": POLL_S} for name, source in sources]})
    server = ServerThread(cfg).start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def index(client: grpcclient.InferenceServerClient, name: str) -> list[tuple[str, str, str]]:
    """The model's RepositoryIndex rows as (version, state, reason)."""
    rows = client.get_model_repository_index(as_json=True).get("models", [])
    return [(r.get("version", ""), r.get("state", ""), r.get("reason", "")) for r in rows if r["name"] == name]


def infer(client: grpcclient.InferenceServerClient, name: str) -> tuple[str, np.ndarray]:
    """The answering version and its output for X."""
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer(name, [x])
    return result.get_response().model_version, result.as_numpy("y")


def answered_by(client: grpcclient.InferenceServerClient, name: str) -> str:
    """The version that answered, after checking the answer is that version's output."""
    version, y = infer(client, name)
    np.testing.assert_allclose(y, EXPECTED[version], rtol=1e-5, atol=1e-6)
    return version


def scrape(server: ServerThread) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric(server: ServerThread, sample: str) -> float:
    for line in scrape(server).splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_an_alias_move_swaps_versions_under_load_with_no_failed_request(registry: Registry, tmp_path: Path) -> None:
    name = "swap"
    assert registry.register(name, ONNX["1"], alias="production") == "1"
    assert registry.register(name, ONNX["2"]) == "2"
    with serving(tmp_path, (name, f"models:/{name}@production")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        assert index(client, name) == [("1", "READY", "")]
        stop = threading.Event()
        lock = threading.Lock()
        records: list[tuple[int, float, float, str]] = []  # (worker, started, finished, version)
        failures: list[str] = []

        def worker(number: int) -> None:
            with grpcclient.InferenceServerClient(server.url) as own:
                while not stop.is_set() and len(records) + len(failures) < 600:  # hard cap on the load
                    started = time.monotonic()
                    try:
                        version = answered_by(own, name)
                    except Exception as e:  # noqa: BLE001 - every failure is a finding
                        with lock:
                            failures.append(f"{type(e).__name__}: {e}")
                        continue
                    with lock:
                        records.append((number, started, time.monotonic(), version))
                    time.sleep(0.01)  # about 4 x 80 requests a second at most on 2 shared cores

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(records) >= 80, "80 answers from version 1")
            registry.set_alias(name, "production", "2")
            wait_for(lambda: index(client, name) == [("2", "READY", "")], "only version 2 in the index")
            served_when_swapped = len(records)
            wait_for(lambda: len(records) >= served_when_swapped + 80, "80 answers after the swap")
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        assert failures == []
        versions = [r[3] for r in records]
        assert set(versions) == {"1", "2"} and versions.count("1") >= 80 and versions.count("2") >= 80
        for number in range(4):
            mine = [int(v) for w, _, _, v in sorted(records, key=lambda r: r[1]) if w == number]
            assert mine == sorted(mine), f"worker {number} got version 1 after version 2"
        first_v2_answer = min(finished for _, _, finished, v in records if v == "2")
        late_v1 = [(started, finished) for _, started, finished, v in records if v == "1" and started > first_v2_answer]
        assert late_v1 == [], "requests started after a version 2 answer were answered by version 1"

        assert index(client, name) == [("2", "READY", "")]
        assert not client.is_model_ready(name, "1")
        assert client.is_model_ready(name, "2") and client.is_model_ready(name)
        assert client.is_server_ready()
        stats = client.get_inference_statistics(name, as_json=True).get("model_stats", [])
        assert [(s["name"], s["version"]) for s in stats] == [(name, "2")]
        assert int(stats[0]["inference_stats"]["success"]["count"]) == versions.count("2")
        with pytest.raises(InferenceServerException) as gone:
            client.infer(name, [], model_version="1")
        assert gone.value.status() == "StatusCode.NOT_FOUND"


def test_no_counter_goes_back_when_the_alias_moves_away_and_back(registry: Registry, tmp_path: Path) -> None:
    """Version 1 leaves and comes back: its series disappear, then continue from where they were (a series that
    came back lower would read as a reset in Prometheus)."""
    name = "away_and_back"
    assert registry.register(name, ONNX["1"], alias="production") == "1"
    assert registry.register(name, ONNX["2"]) == "2"
    with serving(tmp_path, (name, f"models:/{name}@production")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        assert [answered_by(client, name) for _ in range(5)] == ["1"] * 5
        first = scrape(server)
        assert sample_value(first, "inference_requests_total", model=name, version="1", code="OK") == 5
        registry.set_alias(name, "production", "2")
        wait_until(lambda: index(client, name) == [("2", "READY", "")], "only version 2 in the index")
        assert [answered_by(client, name) for _ in range(3)] == ["2"] * 3
        second = scrape(server)
        assert sample_value(second, "inference_requests_total", model=name, version="1", code="OK") is None
        assert_monotonic(first, second, "the alias moving to version 2")
        registry.set_alias(name, "production", "1")
        wait_until(lambda: index(client, name) == [("1", "READY", "")], "version 1 back in the index")
        assert answered_by(client, name) == "1"
        third = scrape(server)
        assert sample_value(third, "inference_requests_total", model=name, version="1", code="OK") == 6
        assert_monotonic(second, third, "the alias moving back to version 1")
        assert_monotonic(first, third, "the alias moving away and back")


def test_a_missing_alias_leaves_the_model_unavailable_until_it_is_set(registry: Registry, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Also: the model's failure is one ERROR naming it and the reason, at start, and not again at each poll that
    finds the same reason."""
    caplog.set_level(logging.INFO, logger=LIFECYCLE_LOG)
    name = "later"
    failed_polls = f'inference_model_source_polls_total{{model="{name}",result="failure"}}'
    version = registry.register(name, ONNX["1"])  # no alias yet
    with serving(tmp_path, (name, f"models:/{name}@staging")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        ((row_version, state, reason),) = index(client, name)
        assert (row_version, state) == ("", "UNAVAILABLE")
        assert "alias 'staging'" in reason and f"'{name}'" in reason
        assert client.is_server_live()
        assert not client.is_server_ready()  # strict readiness: a configured model is not ready
        assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException) as refused:
            infer(client, name)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "alias 'staging'" in refused.value.message()

        wait_for(lambda: metric(server, failed_polls) >= 3, "three failed polls")  # they change nothing
        assert index(client, name)[0][1] == "UNAVAILABLE" and not client.is_server_ready()
        errors = [r.getMessage() for r in caplog.records
                  if r.name.startswith(LIFECYCLE_LOG) and r.levelno >= logging.ERROR and f"'{name}'" in r.getMessage()]
        assert len(errors) == 1 and "alias 'staging'" in errors[0], errors

        registry.set_alias(name, "staging", version)
        wait_for(lambda: index(client, name) == [("1", "READY", "")], "version 1 READY", timeout=10 * POLL_S + 5)
        assert client.is_model_ready(name) and client.is_server_ready()
        assert answered_by(client, name) == "1"


def test_a_version_without_onnx_is_refused_and_the_other_model_keeps_serving(registry: Registry,
                                                                             tmp_path: Path) -> None:
    registry.register("pickled", None, extra_files=PICKLE_ONLY, alias="production")
    registry.register("good", ONNX["2"], alias="production")
    with serving(tmp_path, ("pickled", "models:/pickled@production"), ("good", "models:/good@production")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        ((version, state, reason),) = index(client, "pickled")
        assert (version, state) == ("", "UNAVAILABLE")
        assert "only ONNX" in reason and "mlflow.sklearn" not in reason
        assert "python_function" in reason  # names the flavour it found
        assert index(client, "good") == [("1", "READY", "")]
        assert not client.is_server_ready()
        with pytest.raises(InferenceServerException) as refused:
            infer(client, "pickled")
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and "only ONNX" in refused.value.message()

        time.sleep(3 * POLL_S)  # polls that find the same refused version change nothing
        assert index(client, "pickled")[0][1] == "UNAVAILABLE"
        version, y = infer(client, "good")  # its version 1 is the seed-2 network
        assert version == "1"
        np.testing.assert_allclose(y, EXPECTED["2"], rtol=1e-5, atol=1e-6)


def test_a_version_refused_at_start_is_not_fetched_and_logged_again_at_the_next_poll(
        registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LIFECYCLE_LOG)
    registry.register("refused", None, extra_files=PICKLE_ONLY, alias="production")
    failed_loads = 'inference_model_loads_total{model="refused",result="failure"}'
    with serving(tmp_path, ("refused", "models:/refused@production")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        assert metric(server, failed_loads) == 1
        time.sleep(6 * POLL_S)  # six polls, each finding the alias on the same refused version
        assert index(client, "refused")[0][1] == "UNAVAILABLE"
        loads = metric(server, failed_loads)
    errors = [r.getMessage() for r in caplog.records
              if r.name.startswith(LIFECYCLE_LOG) and r.levelno >= logging.ERROR and "'refused'" in r.getMessage()]
    assert len(errors) == 1, errors
    assert loads == 1


def test_a_registry_outage_keeps_the_current_version_serving(registry: Registry, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LIFECYCLE_LOG)
    name = "outage"
    registry.register(name, ONNX["1"], alias="production")
    second = registry.register(name, ONNX["2"])
    failures = f'inference_model_source_polls_total{{model="{name}",result="failure"}}'
    successes = f'inference_model_source_polls_total{{model="{name}",result="success"}}'
    with serving(tmp_path, (name, f"models:/{name}@production")) as server, \
            grpcclient.InferenceServerClient(server.url) as client:
        assert answered_by(client, name) == "1"
        wait_for(lambda: metric(server, successes) > 0, "a successful poll")
        assert metric(server, failures) == 0

        registry.delete_alias(name, "production")
        wait_for(lambda: metric(server, failures) >= 5, "five failed polls")
        for _ in range(20):
            assert answered_by(client, name) == "1"
        assert index(client, name) == [("1", "READY", "")] and client.is_server_ready()
        outage = [r for r in caplog.records if r.name.startswith(LIFECYCLE_LOG) and "cannot read" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in outage]
        assert outage[0].levelno == logging.ERROR
        assert "the current version keeps serving" in outage[0].getMessage()
        assert "alias 'production'" in outage[0].getMessage()

        registry.set_alias(name, "production", second)
        wait_for(lambda: index(client, name) == [("2", "READY", "")], "the swap to version 2")
        assert answered_by(client, name) == "2"
        assert not client.is_model_ready(name, "1")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith(LIFECYCLE_LOG)]
    assert sum("cannot read" in m for m in messages) == 1
    assert sum("the registry answers again" in m for m in messages) == 1


def test_a_route_variant_follows_an_mlflow_alias(registry: Registry, tmp_path: Path) -> None:
    """`version = "@challenger"`: the server follows that alias too, as the companion model routed@challenger,
    and the variant's answers come from the version the alias names, moving with it."""
    name = "routed"
    champion = registry.register(name, ONNX["1"], alias="champion")
    challenger = registry.register(name, ONNX["2"], alias="challenger")
    cfg = parse_server({
        "server": {"port": 0, "metrics_port": 0, "http_port": 0, "drain_grace_s": 5,
                   "model_cache_dir": str(tmp_path / "cache")},
        "models": [{"name": name, "source": f"models:/{name}@champion", "poll_interval_s": POLL_S}],
        "routes": {name: {"variants": [{"name": "stable", "weight": 50},
                                       {"name": "candidate", "version": "@challenger", "weight": 50}]}}})
    server = ServerThread(cfg).start()
    try:
        def answers(client: grpcclient.InferenceServerClient) -> dict[str, set[tuple[str, str]]]:
            seen: dict[str, set[tuple[str, str]]] = {}
            for i in range(40):
                x = grpcclient.InferInput("x", list(X.shape), "FP32")
                x.set_data_from_numpy(X)
                result = client.infer(name, [x], parameters={"routing_key": f"user-{i}"})
                response = result.get_response()
                version = response.model_version
                np.testing.assert_allclose(result.as_numpy("y"), EXPECTED[{champion: "1", challenger: "2"}.get(
                    version, "1")], rtol=1e-5, atol=1e-6)
                seen.setdefault(response.parameters["variant"].string_param, set()).add(
                    (response.model_name, version))
            return seen

        with grpcclient.InferenceServerClient(server.url) as client:
            assert answers(client) == {"stable": {(name, champion)}, "candidate": {(f"{name}@challenger", challenger)}}
            view = server.app.service.route_admin.views(name)[0]
            assert [(v.name, v.alias, v.state) for v in view.variants] == [("stable", "", "READY"),
                                                                            ("candidate", "@challenger", "READY")]
            moved = registry.register(name, ONNX["1"], alias="challenger")  # the alias moves to a new version
            wait_for(lambda: answers(client)["candidate"] == {(f"{name}@challenger", moved)}, "the alias move")
            assert answers(client)["stable"] == {(name, champion)}
    finally:
        server.stop()
