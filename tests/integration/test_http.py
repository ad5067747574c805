"""The KServe v2 HTTP/REST front end through the real tritonclient.http (sync and aio) and plain HTTP, against a
real server that also serves gRPC: the same service answers both, so their answers are compared field by field
and byte by byte, batches mix both protocols and the response cache answers one with what the other computed."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import http.client
import json
import socket
import zlib
from collections import Counter

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from inference_server.config.model import BatchingConfig
from inference_server.config.server import ModelConfig
from tests.conftest import ServerThread, server_config
from tests.integration.test_protocol import DIGIT_TWO, NUMPY, types_model_inputs
from tests.support import onnx_models
from tests.support.onnx_models import ALL_BUT_BF16
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

GATHER_ROWS = 8  # the `gather` model runs a batch as soon as it holds this many rows (and waits up to 5 s for them)


@pytest.fixture(scope="module")
def server(repository):
    """Both front ends over one service, plus `gather`: mlp's file with a long queue delay and a preferred batch
    size, so requests sent together land in one batch whichever protocol they came by."""
    cfg = server_config(repository, http_port=free_port())
    gather = ModelConfig(name="gather", path=repository / "mlp" / "1" / "model.onnx",
                         batching=BatchingConfig(max_batch_size=64, max_queue_delay_us=5_000_000,
                                                 preferred_batch_size=(GATHER_ROWS,)))
    thread = ServerThread(dataclasses.replace(cfg, models=cfg.models + (gather,))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http_url(server) -> str:
    assert server.app.http_port and server.app.http_port != server.port
    return f"127.0.0.1:{server.app.http_port}"


@pytest.fixture(scope="module")
def client(http_url):
    c = httpclient.InferenceServerClient(http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server):
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


def request(port: int, method: str, path: str, body: bytes | str = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 exchange: (status, lower-cased headers, body as sent, still compressed if it was)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def http_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def grpc_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def reference(repository, model: str, feeds: dict) -> list[np.ndarray]:
    return onnxruntime.InferenceSession(str(repository / model / "1" / "model.onnx")).run(None, feeds)


def normal(value):
    """A JSON document with gRPC's int64-as-string and HTTP's explicit defaults both taken out: proto3 JSON writes
    64-bit integers as strings and leaves out zero, empty and false fields; Triton's REST JSON writes them."""
    if isinstance(value, dict):
        value = {k: normal(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in (0, "", [], {}, False, None)}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def test_health_and_server_metadata_agree_with_grpc(client, grpc, http_url):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("ghost") and not client.is_model_ready("mlp", "9")
    meta = client.get_server_metadata()
    assert meta == grpc.get_server_metadata(as_json=True)
    assert meta["name"] == "inference_server"
    assert meta["extensions"] == ["model_configuration", "statistics", "schedule_policy", "binary_tensor_data"]
    port = int(http_url.rpartition(":")[2])
    status, headers, body = request(port, "GET", "/v2/health/ready")
    assert (status, body) == (200, b"")
    status, headers, body = request(port, "GET", "/v2/models/ghost/ready")
    assert (status, body) == (400, b"")  # not ready, as Triton answers it: 400 with an empty body


@pytest.mark.parametrize("model", ["mlp", "fixed", "text", "types", "bf16", "digits"])
def test_model_metadata_and_config_match_grpc_field_by_field(client, grpc, model):
    metadata = client.get_model_metadata(model)
    assert normal(metadata) == normal(grpc.get_model_metadata(model, as_json=True))
    assert client.get_model_metadata(model, "1") == metadata
    config = client.get_model_config(model)
    assert normal(config) == normal(grpc.get_model_config(model, as_json=True)["config"])
    assert client.get_model_config(model, "1") == config
    assert config["name"] == model and all(isinstance(d, int) for t in config["input"] for d in t["dims"])


def test_mlp_config_has_what_perf_analyzer_reads(client):
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64 and config["input"] == [{"name": "x", "data_type": "TYPE_FP32",
                                                                   "dims": [8]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert client.get_model_metadata("mlp")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_with_binary_and_json_tensors_matches_onnx_runtime(client, repository, binary_in, binary_out):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("y", "h")]
    result = client.infer("mlp", [http_input("x", x, "FP32", binary_in)], outputs=outputs, request_id="req-7")
    y, h = reference(repository, "mlp", {"x": x})
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    np.testing.assert_array_equal(result.as_numpy("h"), h)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("req-7", "mlp", "1")
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) is binary_out
        assert ("data" in output) is not binary_out
        assert output["shape"] == list({"y": y, "h": h}[output["name"]].shape)


def test_every_datatype_round_trips_binary_and_json(client):
    rng = np.random.default_rng(2)
    sent = types_model_inputs(rng)
    for binary in (True, False):
        inputs = [http_input(f"in_{d}", a, d, binary) for d, a in sent.items()]
        outputs = [httpclient.InferRequestedOutput(f"out_{d}", binary_data=binary) for d in sent]
        result = client.infer("types", inputs, outputs=outputs)
        for datatype, array in sent.items():
            got = result.as_numpy(f"out_{datatype}")
            if datatype == "BYTES" and not binary:  # JSON strings: tritonclient hands back str
                got = np.array([[e.encode() for e in row] for row in got.tolist()], dtype=np.object_)
            assert got.tolist() == array.tolist(), (datatype, binary)
            if datatype != "BYTES":
                assert got.dtype == array.dtype, (datatype, binary)


def test_bf16_round_trips_binary(client):
    values = np.array([[1.0, -2.5, 0.15625]], dtype=np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    inputs = [http_input("in_BF16", bf16, "BF16"), http_input("in_FP32", values, "FP32")]
    # A JSON output is asked for: BF16 cannot travel as JSON, so it comes back binary all the same.
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("out_BF16", "out_FP32")]
    result = client.infer("bf16", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("out_BF16").astype(np.float32), values)
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), values)


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_reach_a_string_model_as_exact_text(client, binary):
    words = np.array(["naïve".encode(), b"", b"tab\tnul\x00end", "日本".encode(), b"b'not a repr'"], dtype=np.object_)
    outputs = [httpclient.InferRequestedOutput("echo", binary_data=binary)]
    result = client.infer("text", [http_input("text", words, "BYTES", binary)], outputs=outputs)
    echo = [e if binary else e.encode() for e in result.as_numpy("echo").tolist()]  # JSON strings come back str
    assert echo == words.tolist()
    assert ("data" in result.get_response()["outputs"][0]) is not binary


def test_a_message_larger_than_one_read_goes_both_ways(client):
    big = np.array([b"x" * (6 * 2**20)], dtype=np.object_)  # arrives in many chunks; 6 MiB back
    assert client.infer("text", [http_input("text", big, "BYTES")]).as_numpy("echo").tolist() == big.tolist()


@pytest.mark.parametrize("wanted", [["h"], ["y"], ["h", "y"]])
def test_requested_output_subsets_come_back_in_request_order(client, wanted):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=n == "y") for n in wanted]
    result = client.infer("mlp", [http_input("x", np.ones((2, 8), np.float32), "FP32")], outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == wanted
    for name in wanted:
        assert result.as_numpy(name).shape == (2, {"y": 4, "h": 16}[name])


@pytest.mark.parametrize("request_algorithm", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_algorithm", [None, "gzip", "deflate"])
def test_compressed_requests_and_responses(client, repository, request_algorithm, response_algorithm):
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    result = client.infer("mlp", [http_input("x", x, "FP32")], request_compression_algorithm=request_algorithm,
                          response_compression_algorithm=response_algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), reference(repository, "mlp", {"x": x})[0])


@pytest.mark.parametrize("encoding, decompress", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_the_response_is_compressed_as_accepted_and_the_binary_header_counts_uncompressed_json(
        http_url, encoding, decompress):
    port = int(http_url.rpartition(":")[2])
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [http_input("x", np.ones((1, 8), np.float32), "FP32")])
    headers = {"Inference-Header-Content-Length": str(json_size), "Accept-Encoding": f"{encoding}, br;q=0.5",
               "Content-Encoding": encoding}
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    status, got, content = request(port, "POST", "/v2/models/mlp/infer", compressed, headers)
    assert status == 200 and got["content-encoding"] == encoding
    assert got["content-type"] == "application/octet-stream"
    plain = decompress(content)
    length = int(got["inference-header-content-length"])
    header = json.loads(plain[:length])
    assert sum(o["parameters"]["binary_data_size"] for o in header["outputs"]) == len(plain) - length
    # No Accept-Encoding, or one that refuses both: the body is not compressed.
    for accept in (None, "br", "gzip;q=0, deflate;q=0"):
        status, got, content = request(port, "POST", "/v2/models/mlp/infer", body,
                                       {"Inference-Header-Content-Length": str(json_size),
                                        **({"Accept-Encoding": accept} if accept else {})})
        assert status == 200 and "content-encoding" not in got and json.loads(content[:length]) == header


def test_the_aio_client(http_url, repository):
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)

    async def run() -> None:
        async with http_aio.InferenceServerClient(http_url) as c:
            assert await c.is_server_live() and await c.is_server_ready() and await c.is_model_ready("mlp")
            assert not await c.is_model_ready("ghost")
            assert (await c.get_server_metadata())["name"] == "inference_server"
            assert (await c.get_model_metadata("mlp"))["name"] == "mlp"
            assert (await c.get_model_config("mlp"))["max_batch_size"] == 64
            t = http_aio.InferInput("x", [2, 8], "FP32")
            t.set_data_from_numpy(x)
            results = await asyncio.gather(*(
                c.infer("mlp", [t], request_id=f"a{i}", request_compression_algorithm=alg,
                        response_compression_algorithm=alg) for i, alg in enumerate([None, "gzip", "deflate"] * 3)))
            y = reference(repository, "mlp", {"x": x})[0]
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("y"), y)
                assert result.get_response()["id"] == f"a{i}"
            with pytest.raises(InferenceServerException) as e:
                await c.get_model_metadata("ghost")
            assert e.value.status() == "404" and "ghost" in e.value.message()

    asyncio.run(run())


def test_statistics_count_http_requests_and_match_grpc(client, grpc):
    (before,) = client.get_inference_statistics("mlp")["model_stats"]
    for rows in (1, 2, 3):
        client.infer("mlp", [http_input("x", np.ones((rows, 8), np.float32), "FP32")])
    with pytest.raises(InferenceServerException):
        client.infer("mlp", [http_input("x", np.ones((1, 3), np.float32), "FP32")])  # a failure, counted
    (after,) = client.get_inference_statistics("mlp", "1")["model_stats"]
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 6
    everything = client.get_inference_statistics()["model_stats"]
    assert {"mlp", "types", "text", "gather"} <= {s["name"] for s in everything}
    # Nothing runs in between: both protocols render the same numbers.
    assert normal(after) == normal(grpc.get_inference_statistics("mlp", as_json=True)["model_stats"][0])
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("no_such_model")
    assert e.value.status() == "404"


def test_plain_json_with_nested_or_flat_data_and_request_ids(http_url, repository):
    port = int(http_url.rpartition(":")[2])
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 16
    expected_y = reference(repository, "mlp", {"x": x})[0]
    for data in (x.tolist(), x.reshape(-1).tolist()):
        doc = {"id": "json-id", "inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": data}],
               "outputs": [{"name": "y"}]}
        status, headers, body = request(port, "POST", "/v2/models/mlp/infer", json.dumps(doc),
                                        {"Content-Type": "application/json", "X-Request-ID": "header-id"})
        assert status == 200 and headers["content-type"] == "application/json"
        assert "inference-header-content-length" not in headers
        answer = json.loads(body)
        assert answer["id"] == "json-id"  # the JSON id wins over the header
        assert headers["x-request-id"] == "header-id"  # the header is echoed as it came
        (y,) = answer["outputs"]
        assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 4])
        np.testing.assert_array_equal(np.array(y["data"], np.float32).reshape(2, 4), expected_y)
    doc = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [[0.5] * 8]}]}
    status, headers, body = request(port, "POST", "/v2/models/mlp/versions/1/infer", json.dumps(doc),
                                    {"X-Request-ID": "only-header"})
    answer = json.loads(body)
    assert status == 200 and answer["id"] == "only-header" and [o["name"] for o in answer["outputs"]] == ["y", "h"]
    status, headers, body = request(port, "GET", "/v2/models/mlp")
    assert status == 200 and json.loads(body)["name"] == "mlp" and "x-request-id" not in headers


def test_kserve_v1_predict(http_url):
    port = int(http_url.rpartition(":")[2])
    status, headers, body = request(port, "POST", "/v1/models/digits:predict",
                                    json.dumps({"instances": DIGIT_TWO.tolist()}))
    assert status == 200 and headers["content-type"] == "application/json"
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == 1 and predictions[0]["label"] == 2
    assert int(np.argmax(predictions[0]["probabilities"])) == 2
    status, _, body = request(port, "POST", "/v1/models/text:predict", json.dumps({"instances": ["a", "日本"]}))
    assert status == 200 and json.loads(body) == {"predictions": ["a", "日本"]}
    status, _, body = request(port, "POST", "/v1/models/ghost:predict", json.dumps({"instances": [[1.0]]}))
    assert status == 404 and "ghost" in json.loads(body)["error"]


def test_the_same_request_through_grpc_and_http_gives_byte_identical_outputs(server, http_url, grpc):
    port = int(http_url.rpartition(":")[2])
    rng = np.random.default_rng(5)
    cases = {"mlp": [("x", rng.standard_normal((3, 8)).astype(np.float32), "FP32")],
             "text": [("text", np.array([b"one", "twö".encode(), b""], dtype=np.object_), "BYTES")],
             "types": [(f"in_{d}", rng.integers(0, 2, (2, 3)).astype(NUMPY[d]), d) for d in ALL_BUT_BF16
                       if d != "BYTES"] + [("in_BYTES", np.array([[b"a", b"bc", b""]] * 2, np.object_), "BYTES")]}
    for model, tensors in cases.items():
        by_grpc = grpc.infer(model, [grpc_input(*t) for t in tensors]).get_response()
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            [http_input(*t) for t in tensors])
        status, headers, content = request(port, "POST", f"/v2/models/{model}/infer", body,
                                           {"Inference-Header-Content-Length": str(json_size)})
        assert status == 200, content
        length = int(headers["inference-header-content-length"])
        header = json.loads(content[:length])
        blobs, offset = [], length
        for output in header["outputs"]:
            size = output["parameters"]["binary_data_size"]
            blobs.append(content[offset:offset + size])
            offset += size
        assert offset == len(content)
        assert [o["name"] for o in header["outputs"]] == [o.name for o in by_grpc.outputs]
        assert [o["shape"] for o in header["outputs"]] == [list(o.shape) for o in by_grpc.outputs]
        assert [o["datatype"] for o in header["outputs"]] == [o.datatype for o in by_grpc.outputs]
        assert blobs == list(by_grpc.raw_output_contents), model


def test_http_and_grpc_requests_share_batches(server, http_url, repository):
    before = Counter(server.batches("gather"))
    x = np.random.default_rng(6).standard_normal((GATHER_ROWS, 8)).astype(np.float32)

    async def run() -> list[np.ndarray]:
        async with http_aio.InferenceServerClient(http_url) as h, grpc_aio.InferenceServerClient(server.url) as g:
            async def by_http(i: int) -> np.ndarray:
                t = http_aio.InferInput("x", [1, 8], "FP32")
                t.set_data_from_numpy(x[i:i + 1])
                return (await h.infer("gather", [t])).as_numpy("y")

            async def by_grpc(i: int) -> np.ndarray:
                t = grpc_aio.InferInput("x", [1, 8], "FP32")
                t.set_data_from_numpy(x[i:i + 1])
                return (await g.infer("gather", [t])).as_numpy("y")

            half = GATHER_ROWS // 2
            return await asyncio.gather(*(by_http(i) for i in range(half)),
                                        *(by_grpc(i) for i in range(half, GATHER_ROWS)))

    answers = asyncio.run(run())
    assert dict(Counter(server.batches("gather")) - before) == {GATHER_ROWS: 1}  # one batch held them all
    # `gather` runs mlp's file: each row's answer is mlp's, whichever protocol brought it.
    np.testing.assert_allclose(np.concatenate(answers), reference(repository, "mlp", {"x": x})[0], rtol=1e-6,
                               atol=1e-6)


@pytest.fixture(scope="module")
def cached(repository):
    thread = ServerThread(server_config(repository, http_port=free_port(), cache="memory")).start()
    yield thread
    thread.stop()


def test_the_response_cache_answers_http_with_what_grpc_computed(cached):
    x = np.random.default_rng(7).standard_normal((2, 8)).astype(np.float32)
    model = cached.app.registry.find("mlp")
    with grpcclient.InferenceServerClient(cached.url) as g:
        by_grpc = g.infer("mlp", [grpc_input("x", x, "FP32")])
    executions, hits = model.stats.execution_count, model.stats.cache_hit.count
    with httpclient.InferenceServerClient(f"127.0.0.1:{cached.app.http_port}") as h:
        by_http = h.infer("mlp", [http_input("x", x, "FP32")])
        (stats,) = h.get_inference_statistics("mlp")["model_stats"]
        assert h.get_model_config("mlp")["response_cache"] == {"enable": True}
    assert model.stats.execution_count == executions  # never reached the model
    assert stats["inference_stats"]["cache_hit"]["count"] == hits + 1
    for name in ("y", "h"):
        assert by_http.as_numpy(name).tobytes() == by_grpc.as_numpy(name).tobytes()


@pytest.fixture
def explicit(tmp_path):
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 4], seed=1), "[batching]\nmax_batch_size = 8\n")
    onnx_models.write_model(repo, "two", onnx_models.mlp([8, 16, 4], seed=2), "[batching]\nmax_batch_size = 8\n")
    cfg = dataclasses.replace(server_config(repo, http_port=free_port(), model_control_mode="explicit",
                                            load_models=["mlp"]), models=())
    thread = ServerThread(cfg).start()
    yield thread
    thread.stop()


def test_repository_endpoints_in_explicit_mode(explicit):
    x = np.ones((1, 8), np.float32)
    with httpclient.InferenceServerClient(f"127.0.0.1:{explicit.app.http_port}") as c:
        assert "model_repository" in c.get_server_metadata()["extensions"]
        assert c.get_model_repository_index() == [{"name": "mlp", "version": "1", "state": "READY"},
                                                  {"name": "two", "state": "UNAVAILABLE", "reason": "not loaded"}]
        c.load_model("two")
        assert c.is_model_ready("two") and c.infer("two", [http_input("x", x, "FP32")]).as_numpy("y").shape == (1, 4)
        port = explicit.app.http_port
        status, _, body = request(port, "POST", "/v2/repository/index", json.dumps({"ready": True}))
        assert status == 200 and [m["name"] for m in json.loads(body)] == ["mlp", "two"]
        c.unload_model("two", unload_dependents=True)
        assert not c.is_model_ready("two")
        assert c.get_model_repository_index()[1] == {"name": "two", "state": "UNAVAILABLE", "reason": "unloaded"}
        # A model uploaded with the request: its config as JSON and its file, base64 in the body.
        new = onnx_models.mlp([8, 3], seed=9)
        c.load_model("uploaded", config=json.dumps({"backend": "onnxruntime", "max_batch_size": 4}),
                     files={"file:1/model.onnx": new.SerializeToString()})
        got = c.infer("uploaded", [http_input("x", x, "FP32")]).as_numpy("y")
        want = onnxruntime.InferenceSession(new.SerializeToString()).run(["y"], {"x": x})[0]
        np.testing.assert_array_equal(got, want)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("nowhere")
        assert (e.value.status(), e.value.message()) == ("404", "model 'nowhere' is not in the model repository")
        assert c.is_model_ready("mlp")


def test_repository_changes_in_mode_none_are_refused_with_the_reason(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("mlp")
    assert e.value.status() == "400" and "model control mode 'none'" in e.value.message()
    assert client.is_model_ready("mlp")


def test_unexpected_exception_is_a_500_without_internals_logged_with_the_request_id(server, client, monkeypatch,
                                                                                    caplog):
    async def broken(request, deadline=None):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server.app.service, "infer", broken)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [http_input("x", np.ones((1, 8), np.float32), "FP32")], request_id="trace-me")
    assert e.value.status() == "500" and e.value.message() == "internal error"
    record = next(r for r in caplog.records if "trace-me" in r.getMessage())
    assert record.exc_info and "secret detail" in str(record.exc_info[1])


def test_an_http_port_in_use_fails_the_start(repository):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen: 127.0.0.1:{port} \(--http-port\) is in use"):
            ServerThread(server_config(repository, http_port=port)).start()


def test_workers_share_the_http_port_with_reuse_port(repository):
    """--workers N binds every worker with SO_REUSEPORT: the HTTP port is shared too."""
    port = free_port()
    first = ServerThread(server_config(repository, http_port=port, reuse_port=True, metrics=False)).start()
    try:
        second = ServerThread(server_config(repository, http_port=port, reuse_port=True, metrics=False)).start()
        try:
            assert first.app.http_port == second.app.http_port == port
            with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
                assert c.is_server_ready()
        finally:
            second.stop()
    finally:
        first.stop()
