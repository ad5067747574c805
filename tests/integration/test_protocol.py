"""The KServe v2 / Triton protocol through the real tritonclient.grpc client against a real server."""

from __future__ import annotations

import queue

import grpc
import ml_dtypes
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import ALL_BUT_BF16

pytestmark = pytest.mark.integration

DIGIT_TWO = np.array([  # test sample 0 of scripts/make_default_model.py's split
    0, 0, 7, 16, 14, 3, 0, 0, 0, 0, 9, 14, 11, 15, 0, 0, 0, 0, 1, 5, 0, 15, 5, 0, 0, 0, 0, 0, 0, 16, 5, 0,
    0, 0, 0, 0, 3, 16, 4, 0, 0, 0, 0, 1, 12, 14, 1, 0, 0, 0, 5, 12, 16, 16, 14, 1, 0, 0, 8, 16, 14, 10, 13, 3,
], dtype=np.float32).reshape(1, 64)

def types_model_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One [2, 3] array per datatype the `types` model takes (BYTES with non-ASCII, a NUL and an empty string)."""
    sent = {}
    for datatype in ALL_BUT_BF16:
        if datatype == "BYTES":
            sent[datatype] = np.array([["héllo".encode(), b"a\x00b", b""]] * 2, dtype=np.object_)
        elif datatype == "BOOL":
            sent[datatype] = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            sent[datatype] = rng.integers(0, 100, (2, 3)).astype(NUMPY[datatype])
    return sent


NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.url) as c:
        yield c


def tensor(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype or {np.float32: "FP32"}[array.dtype.type])
    t.set_data_from_numpy(array)
    return t


def reference(repository, model: str, feeds: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(repository / model / "1" / "model.onnx"))
    return session.run(None, feeds)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "inference_server"
    assert meta["extensions"] == ["model_configuration", "statistics", "schedule_policy"]
    model = client.get_model_metadata("mlp", as_json=True)
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert [o["name"] for o in model["outputs"]] == ["y", "h"]


def test_model_config_has_what_perf_analyzer_reads(client):
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["name"] == "mlp" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert [i["name"] for i in config["input"]] == ["x"] and config["input"][0]["dims"] == ["8"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [o["name"] for o in config["output"]] == ["y", "h"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "5000"
    assert "sequence_batching" not in config and "ensemble_scheduling" not in config
    fixed = client.get_model_config("fixed", as_json=True)["config"]
    assert fixed.get("max_batch_size", 0) == 0 and "dynamic_batching" not in fixed
    assert fixed["input"][0]["dims"] == ["2", "3"]


def test_model_without_batching_keeps_its_full_shape(client):
    assert client.get_model_metadata("fixed", as_json=True)["inputs"][0]["shape"] == ["2", "3"]
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(client.infer("fixed", [tensor("a", a)]).as_numpy("doubled"), a * 2)


def test_default_model_classifies_a_digit(client):
    result = client.infer("digits", [tensor("pixels", DIGIT_TWO)])
    assert result.as_numpy("label").tolist() == [2]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 10) and int(probabilities.argmax()) == 2


def test_infer_matches_onnx_runtime_and_echoes_the_id(client, repository):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    result = client.infer("mlp", [tensor("x", x)], request_id="req-42")
    y, h = reference(repository, "mlp", {"x": x})
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    np.testing.assert_array_equal(result.as_numpy("h"), h)
    response = result.get_response()
    assert response.id == "req-42" and response.model_name == "mlp" and response.model_version == "1"
    assert len(response.raw_output_contents) == len(response.outputs) == 2


@pytest.mark.parametrize("wanted", [["h"], ["y"], ["h", "y"]])
def test_requested_output_subsets_come_back_in_request_order(client, repository, wanted):
    x = np.ones((2, 8), np.float32)
    outputs = [grpcclient.InferRequestedOutput(n) for n in wanted]
    response = client.infer("mlp", [tensor("x", x)], outputs=outputs).get_response(as_json=True)
    assert [o["name"] for o in response["outputs"]] == wanted


def test_every_datatype_round_trips_through_the_server(client):
    rng = np.random.default_rng(2)
    sent = types_model_inputs(rng)
    inputs = [tensor(f"in_{datatype}", array, datatype) for datatype, array in sent.items()]
    result = client.infer("types", inputs)
    for datatype, array in sent.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got.tolist() == array.tolist(), datatype
        if datatype != "BYTES":
            assert got.dtype == array.dtype


def test_bf16_round_trips(client):
    values = np.array([[1.0, -2.5, 0.15625]], dtype=np.float32)  # all three are exact in bf16
    bf16 = values.astype(ml_dtypes.bfloat16)
    result = client.infer("bf16", [tensor("in_BF16", bf16, "BF16"), tensor("in_FP32", values)])
    np.testing.assert_array_equal(result.as_numpy("out_BF16").astype(np.float32), values)
    np.testing.assert_array_equal(result.as_numpy("out_FP32"), values)


def test_bytes_reach_a_string_model_as_exact_text_and_come_back_byte_identical(client):
    words = np.array(["naïve".encode(), b"", b"tab\tnul\x00end", "日本".encode(), b"b'not a repr'"], dtype=np.object_)
    echo = client.infer("text", [tensor("text", words, "BYTES")]).as_numpy("echo")
    assert echo.tolist() == words.tolist()


def test_non_utf8_bytes_for_a_string_input_are_invalid_argument(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("text", [tensor("text", np.array([b"ok", b"\xff\xfe"], dtype=np.object_), "BYTES")])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "input 'text'" in e.value.message()


def test_priority_and_unknown_parameters_are_accepted(client):
    x = np.ones((1, 8), np.float32)
    result = client.infer("mlp", [tensor("x", x)], priority=1, parameters={"my_knob": "on", "n": 3})
    assert result.as_numpy("y").shape == (1, 4)


def test_unsupported_rpcs_answer_unimplemented(client):
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status()
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"


def test_repository_changes_in_mode_none_answer_which_mode_allows_them(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in index
    for call in (lambda: client.load_model("mlp"), lambda: client.unload_model("mlp")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "model control mode 'none'" in e.value.message() and "--model-control-mode explicit" in e.value.message()
    assert client.is_model_ready("mlp")


def test_sync_stream_answers_in_any_order_with_per_request_errors(server):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, width in enumerate([8, 3, 8]):
            client.async_stream_infer("mlp", [tensor("x", np.ones((1, width), np.float32))], request_id=f"q{i}")
        got = [answers.get(timeout=10) for _ in range(3)]
        client.stop_stream()
    assert sorted(r.get_response().id for r, e in got if e is None) == ["q0", "q2"]
    (error,) = [e for r, e in got if e is not None]
    assert "shape [1, 3] does not match" in error.message()


def test_grpc_health_service_reports_serving(server):
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_messages_larger_than_grpcs_4_mib_default_go_both_ways(client):
    big = np.array([b"x" * (6 * 2**20)], dtype=np.object_)  # 6 MiB in, 6 MiB out
    echo = client.infer("text", [tensor("text", big, "BYTES")]).as_numpy("echo")
    assert echo.tolist() == big.tolist()


def test_unexpected_exception_is_internal_without_internals_and_logged_with_the_request_id(
        server, client, monkeypatch, caplog):
    async def broken(request, deadline=None):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server.app.service, "infer", broken)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [tensor("x", np.ones((1, 8), np.float32))], request_id="trace-me")
    assert e.value.status() == "StatusCode.INTERNAL" and e.value.message() == "internal error"
    record = next(r for r in caplog.records if "trace-me" in r.getMessage())
    assert record.exc_info and "secret detail" in str(record.exc_info[1])
