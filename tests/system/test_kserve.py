"""The KServe serving runtime run as KServe runs it: the container's args from k8s/kserve (templated, with a
temporary directory for /mnt/models and free ports for 8080, 9000 and 8002), the server as a subprocess, inferred
over HTTP and gRPC with tritonclient and with KServe's own client; and the sequence of KServe's multi-model agent
(load over HTTP, requests served, the model directory deleted, unload) with requests in flight when the unload
comes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support import kserve, onnx_models
from tests.support.server_process import ServerProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system

MLP = onnx_models.mlp([8, 16, 4], seed=3)
X = np.arange(16, dtype=np.float32).reshape(2, 8) / 16


def expected() -> np.ndarray:
    session = ort.InferenceSession(MLP.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": X})[0]


class Pod:
    """The runtime's container started as KServe starts it, the isvc's args appended, on free ports."""

    def __init__(self, tmp_path: Path, name: str, models: Path, extra: tuple[str, ...] = ()) -> None:
        self.http_port, grpc_port = free_port(), free_port()
        args = kserve.container_args(name, extra, {"--model-repository": str(models),
                                                   "--http-port": str(self.http_port), "--port": str(grpc_port),
                                                   "--metrics-port": "0"})
        command = [sys.executable if part == "python" else part for part in kserve.server_container()["command"]]
        self.server = ServerProcess(args, tmp_path / f"{name}.log", command=command[:3], port=grpc_port)
        assert command[3:] == [], "the runtime's command is `python -m inference_server`, its flags are args"
        self.http = f"127.0.0.1:{self.http_port}"

    def post(self, path: str, body: bytes = b"{}") -> tuple[int, str]:
        """A POST as KServe's agent sends it (a JSON body of "{}")."""
        request = urllib.request.Request(f"http://{self.http}{path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self, model: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http}/v2/models/{model}/ready", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def errors(self) -> list[dict]:
        """The log's ERROR lines and tracebacks (the runtime logs JSON lines)."""
        lines = [json.loads(line) for line in self.server.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line["level"] in ("ERROR", "CRITICAL") or "exception" in line]


@pytest.fixture
def pods(tmp_path):
    started: list[Pod] = []

    def start(name: str, models: Path, extra: tuple[str, ...] = ()) -> Pod:
        pod = Pod(tmp_path, name, models, extra)
        started.append(pod)
        pod.server.wait_serving()
        return pod

    yield start
    for pod in started:
        pod.server.kill()


def infer_both(pod: Pod, model: str) -> None:
    """The model answers like ONNX Runtime over HTTP and over gRPC (tritonclient, as a KServe v2 client)."""
    with httpclient.InferenceServerClient(pod.http) as client:
        x = httpclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        np.testing.assert_allclose(client.infer(model, [x]).as_numpy("y"), expected(), rtol=1e-5)
    with grpcclient.InferenceServerClient(pod.server.url) as client:
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        np.testing.assert_allclose(client.infer(model, [x]).as_numpy("y"), expected(), rtol=1e-5)


# KServe's own Python client, run in a process of its own: its generated protos register the v2 `inference` package
# in protobuf's default pool, as tritonclient's (imported here) do, and one process cannot hold both.
KSERVE_CLIENT = """
import asyncio, json, sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
from kserve.inference_client import RESTConfig

http, grpc_url, model, x = sys.argv[1], sys.argv[2], sys.argv[3], np.array(json.loads(sys.argv[4]), np.float32)


def request():
    tensor = InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    return InferRequest(model, [tensor], request_id="kserve-client")


async def main():
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        over_rest = await rest.infer(f"http://{http}", request(), model_name=model)
    finally:
        await rest.close()
    grpc = InferenceGRPCClient(grpc_url, retries=0, timeout=30)
    try:
        ready = await grpc.is_model_ready(model)
        over_grpc = await grpc.infer(request())
    finally:
        await grpc.close()
    print(json.dumps({"rest": over_rest.get_output_by_name("y").as_numpy().tolist(), "rest_id": over_rest.id,
                      "ready": ready, "grpc": over_grpc.get_output_by_name("y").as_numpy().tolist()}))


asyncio.run(main())
"""


def test_kserves_own_client_infers_over_http_and_grpc(pods, tmp_path):
    """KServe's Python client (the `kserve` package: InferenceRESTClient with the v2 protocol, and
    InferenceGRPCClient), as an InferenceService's callers use it."""
    models = tmp_path / "mnt-models"
    models.mkdir()
    (models / "model.onnx").write_bytes(MLP.SerializeToString())
    pod = pods("iris", models)
    done = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, pod.http, pod.server.url, "iris",
                           json.dumps(X.tolist())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["ready"] is True and got["rest_id"] == "kserve-client"
    np.testing.assert_allclose(np.array(got["rest"], np.float32), expected(), rtol=1e-5)
    np.testing.assert_allclose(np.array(got["grpc"], np.float32), expected(), rtol=1e-5)


def test_the_runtime_serves_one_model_onnx_under_the_inference_service_name(pods, tmp_path):
    """/mnt/models as the storage initializer leaves a storageUri naming one model: model.onnx, its config beside it."""
    models = tmp_path / "mnt-models"
    models.mkdir()
    (models / "model.onnx").write_bytes(MLP.SerializeToString())
    (models / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    pod = pods("iris", models)
    assert pod.ready("iris") == 200  # KServe's e2e readiness check: /v2/models/<isvc>/ready
    infer_both(pod, "iris")
    with httpclient.InferenceServerClient(pod.http) as client:
        assert client.get_model_config("iris")["max_batch_size"] == 8  # config.toml beside model.onnx applies
        assert [m["name"] for m in client.get_model_repository_index()] == ["iris"]
    assert f"model repository {models} is one model, 'iris'" in pod.server.log()
    assert pod.errors() == []


def test_the_runtime_serves_a_triton_repository_under_the_models_names(pods, tmp_path):
    models = tmp_path / "mnt-models"
    onnx_models.write_model(models, "mlp", MLP, "[batching]\nmax_batch_size = 8\n", version=2)
    pod = pods("triton-models", models)
    infer_both(pod, "mlp")
    assert pod.ready("triton-models") != 200  # the InferenceService's name names no model here
    assert "--model-name 'triton-models' is not used" in pod.server.log()


def in_flight(pod: Pod, model: str, count: int) -> tuple[list[threading.Thread], list[object]]:
    """`count` requests for the slow model sent at once, request i with x = 2**i; their answers (or errors) land in
    the list, in order."""
    answers: list[object] = [None] * count
    started = threading.Barrier(count)

    def call(i: int) -> None:
        with httpclient.InferenceServerClient(pod.http, network_timeout=120) as client:
            x = httpclient.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.full((1, 1), 2 ** i, np.float32))
            started.wait()
            try:
                answers[i] = float(client.infer(model, [x]).as_numpy("y")[0, 0])
            except InferenceServerException as e:
                answers[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, answers


# The slow model: y = SIDE**3 * x**2, exact in FP32 for x a power of 2 (every partial sum is a power of 2 times
# at most SIDE**2). A row takes about 80 ms here (eight times SIDE 1024's 10 ms, with which the four requests
# sent at once were sometimes answered before three of them were ever seen queued), so all four are admitted,
# one executing and the others queued, well before the first is answered.
SIDE = 2048


def test_the_kserve_agent_sequence_load_serve_delete_unload(pods, tmp_path):
    """KServe's multi-model agent: /mnt/models starts empty; per TrainedModel it writes /mnt/models/<name>/ and
    POSTs .../load with "{}"; on deletion it deletes the directory first, then POSTs .../unload. The unload succeeds,
    every request admitted before it answers correctly, and the model then stops serving."""
    (isvc,) = [d for d in kserve.examples() if d["kind"] == "InferenceService" and d["metadata"]["name"]
               == "shared-models"]
    models = tmp_path / "mnt-models"
    models.mkdir()
    pod = pods("shared-models", models, tuple(isvc["spec"]["predictor"]["model"]["args"]))
    assert pod.ready("shared-models") != 200  # an empty repository: --model-name names nothing

    # Batches in a thread (not inline, which `auto` may pick): the event loop keeps admitting while one computes.
    onnx_models.write_model(models, "fraud", onnx_models.slow(SIDE),
                            "execution = \"thread\"\n[batching]\nmax_batch_size = 1\n")
    (models / "fraud" / "SUCCESS.0123abcd").write_text("{}")  # the agent's marker beside the model's files
    assert pod.post("/v2/repository/models/fraud/load") == (200, "")
    assert pod.ready("fraud") == 200

    count = 4
    threads, answers = in_flight(pod, "fraud", count)
    # All admitted: one executing, the others queued behind it (one row per batch), so the unload below comes
    # while they are in flight (each queued row takes far longer than the delete and the POST).
    wait_until(lambda: pod.server.metric("inference_pending_requests", model="fraud") >= count - 1,
               "the requests to be admitted and queued")
    shutil.rmtree(models / "fraud")
    assert pod.post("/v2/repository/models/fraud/unload") == (200, "")
    for t in threads:
        t.join(120)
    assert answers == [SIDE**3 * 4**i for i in range(count)]  # every admitted request answered, correctly

    assert pod.ready("fraud") != 200
    with httpclient.InferenceServerClient(pod.http) as client:
        x = httpclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        with pytest.raises(InferenceServerException, match="fraud"):
            client.infer("fraud", [x])
    assert pod.errors() == []


def test_one_model_loads_and_unloads_by_request_in_explicit_mode(pods, tmp_path):
    """The single-model layout under the repository API, over HTTP (as KServe's agent calls it) and gRPC."""
    models = tmp_path / "mnt-models"
    (models / "1").mkdir(parents=True)
    (models / "1" / "model.onnx").write_bytes(MLP.SerializeToString())
    pod = pods("iris", models, ("--model-control-mode=explicit",))
    assert pod.ready("iris") != 200  # explicit mode: nothing loads at start
    assert pod.post("/v2/repository/models/iris/load") == (200, "")
    infer_both(pod, "iris")
    status, body = pod.post("/v2/repository/models/other/load")
    assert status == 404 and "'other' is not in the model repository" in body, body
    assert pod.post("/v2/repository/models/iris/unload") == (200, "")
    assert pod.ready("iris") != 200
    with grpcclient.InferenceServerClient(pod.server.url) as client:  # the same over gRPC (RepositoryModelLoad)
        client.load_model("iris")
        assert client.is_model_ready("iris")
        client.unload_model("iris")
        assert not client.is_model_ready("iris")
