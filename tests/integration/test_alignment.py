"""The same tensor gets the same answer over every protocol, wherever it sat in the request: through a real server
(both gRPC engines), a ReduceSum model's answers to HTTP binary tensors behind JSON headers of every length mod 64,
to gRPC raw contents behind request ids of every length, and to HTTP JSON data equal, bit for bit, what ONNX
Runtime gives in process for the same values in an aligned array. The response cache answers one protocol with
what the other computed. (Each path's alignment at every offset: tests/unit/test_alignment.py.)"""

from __future__ import annotations

import http.client
import json

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient

from inference_server.protocol.tensors import ALIGNMENT, encode_raw
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.unit.test_alignment import FIXED, SUMMED, reference

pytestmark = pytest.mark.integration

MODEL, CACHED = "row_sum", "row_sum_cached"
OUTPUTS = [f"row_sum_{name}" for name in SUMMED]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignment")
    path = onnx_models.write_model(root, MODEL, onnx_models.row_sum(SUMMED), "cache = false\n")
    onnx_models.write_model(root, CACHED, onnx_models.row_sum(SUMMED))
    return path


@pytest.fixture(scope="module")
def server(model_path, grpc_engine):
    """One server per gRPC engine, with the in-process response cache (`row_sum` opts out of it)."""
    thread = ServerThread(server_config(model_path.parents[2], http_port=free_port(), cache="memory",
                                        grpc_engine=grpc_engine)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http_conn(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=30)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def grpc(server):
    with grpcclient.InferenceServerClient(server.url) as client:
        yield client


def sample(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"x_{name}": (rng.standard_normal((3, 16)) * 100).astype(FIXED[name].dtype) for name in SUMMED}


def by_http(conn: http.client.HTTPConnection, model: str, feeds: dict[str, np.ndarray], padding: int | None,
            request_id: str = "") -> dict[str, bytes]:
    """Binary tensors behind a JSON header `padding` spaces longer than it needs to be; None: JSON data. Outputs
    come back binary, so they are compared bit for bit."""
    inputs, blobs = [], []
    for name, array in feeds.items():
        tensor = {"name": name, "datatype": name[2:], "shape": list(array.shape)}
        if padding is None:
            tensor["data"] = array.astype(np.float64 if array.dtype == np.float16 else array.dtype).ravel().tolist()
        else:
            blobs.append(encode_raw(array, name[2:]))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        inputs.append(tensor)
    header = orjson.dumps({"id": request_id, "inputs": inputs, "parameters": {"binary_data_output": True}})
    headers = {"Content-Type": "application/octet-stream"}
    if padding is not None:
        header += b" " * padding
        headers["Inference-Header-Content-Length"] = str(len(header))
    conn.request("POST", f"/v2/models/{model}/infer", body=header + b"".join(blobs), headers=headers)
    response = conn.getresponse()
    content = response.read()
    assert response.status == 200, content
    length = int(response.getheader("Inference-Header-Content-Length"))
    outputs, offset = {}, length
    for output in json.loads(content[:length])["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = content[offset:offset + size]
        offset += size
    return outputs


def by_grpc(client: grpcclient.InferenceServerClient, model: str, feeds: dict[str, np.ndarray],
            request_id: str = "") -> dict[str, bytes]:
    inputs = []
    for name, array in feeds.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), name[2:]))
        inputs[-1].set_data_from_numpy(array)
    result = client.infer(model, inputs, request_id=request_id)
    return {name: result.as_numpy(name).tobytes() for name in OUTPUTS}


def test_http_binary_tensors_behind_headers_of_every_length_answer_as_onnx_runtime_does(http_conn, model_path):
    for padding in range(ALIGNMENT):
        feeds = sample(padding)
        assert by_http(http_conn, MODEL, feeds, padding) == reference(model_path, feeds), padding


def test_grpc_raw_contents_behind_ids_of_every_length_answer_as_onnx_runtime_does(grpc, model_path):
    for length in range(ALIGNMENT):
        feeds = sample(100 + length)
        assert by_grpc(grpc, MODEL, feeds, request_id="i" * length) == reference(model_path, feeds), length


def test_http_json_data_answers_as_onnx_runtime_does(http_conn, model_path):
    for seed in range(8):
        feeds = sample(200 + seed)
        assert by_http(http_conn, MODEL, feeds, None) == reference(model_path, feeds), seed


def test_the_cache_answers_each_protocol_with_what_the_other_computed(server, http_conn, grpc, model_path):
    stats = server.app.registry.find(CACHED).stats
    for seed, first in ((300, "http"), (301, "grpc")):
        feeds = sample(seed)
        want = reference(model_path, feeds)
        executions, hits = stats.execution_count, stats.cache_hit.count
        computed = by_http(http_conn, CACHED, feeds, 5) if first == "http" else by_grpc(grpc, CACHED, feeds, "a")
        assert computed == want
        assert (stats.execution_count, stats.cache_hit.count) == (executions + 1, hits)  # a miss: the model ran
        answers = [by_grpc(grpc, CACHED, feeds, "b" * 7)] + [by_http(http_conn, CACHED, feeds, padding)
                                                             for padding in (0, 1, 17, 38)]
        answers.append(by_http(http_conn, CACHED, feeds, None))
        assert answers == [want] * len(answers), first
        assert (stats.execution_count, stats.cache_hit.count) == (executions + 1, hits + len(answers))  # all hits
