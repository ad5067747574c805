"""Where the two gRPC engines differ as a client sees them (README, "gRPC engines"), on a real server of each: the
start-up log, request metadata over the 16 KiB limit, and that the native engine's fallback server (ModelStreamInfer
goes through it) leaves nothing behind. Everything else the gRPC front end promises is tested on both engines by
the suites that take the `grpc_engine` fixture."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from inference_server.grpc._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, server_config

pytestmark = pytest.mark.integration

REQUEST = pb.ModelInferRequest(
    model_name="mlp", inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 8])],
    raw_input_contents=[np.ones((1, 8), np.float32).tobytes()])


def call(stub: pb_grpc.GRPCInferenceServiceStub, metadata: list[tuple[str, str]] | None = None) -> str:
    try:
        stub.ModelInfer(REQUEST, metadata=metadata, timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"


def test_the_start_up_log_names_the_engine_and_why(repository, grpc_engine, caplog):
    caplog.set_level(logging.INFO, logger="inference_server.grpc.server")
    thread = ServerThread(server_config(repository, grpc_engine=grpc_engine)).start()
    thread.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gRPC engine:")]
    assert lines == [f"gRPC engine: {grpc_engine} (grpc_engine = {grpc_engine})"]


@pytest.mark.parametrize("size", [20_000, 100_000])
def test_metadata_over_16_kib_fails_that_call_and_the_channel_serves_on(server, size):
    """grpcio refuses the call with RESOURCE_EXHAUSTED. The native engine (hyper) answers HTTP 431, which the client
    reports as UNKNOWN; past its abuse limit (4x) it ends the whole connection with GOAWAY
    (header_list_way_too_large): every call on that connection fails UNAVAILABLE, and the channel reconnects."""
    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert call(stub) == "OK"
        refused = call(stub, [("x-padding", "a" * size)])
        if server.cfg.grpc_engine == "grpcio":
            assert refused.startswith("RESOURCE_EXHAUSTED: received metadata size exceeds hard limit"), refused
        elif size < 4 * 16384:
            assert refused == "UNKNOWN: Received http2 header with status: 431", refused
        else:
            assert refused.startswith("UNAVAILABLE: ") and "header_list_way_too_large" in refused, refused
        assert call(stub) == "OK"  # the next call on the same channel is served


def test_metadata_within_the_limit_is_served(server):
    with grpc.insecure_channel(server.url) as channel:
        assert call(pb_grpc.GRPCInferenceServiceStub(channel), [("x-padding", "a" * 8000)]) == "OK"


def test_the_native_fallback_serves_streams_and_leaves_no_socket_behind(repository, monkeypatch, tmp_path):
    """ModelStreamInfer (bidirectional) reaches a grpc.aio server behind the native engine on a Unix socket in a
    temporary directory; the server's stop removes it."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    thread = ServerThread(server_config(repository, grpc_engine="native")).start()
    try:
        assert len(fallback_directories(tmp_path)) == 1
        with grpc.insecure_channel(thread.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = list(stub.ModelStreamInfer(iter([REQUEST, REQUEST]), timeout=10))
        assert [a.error_message for a in answers] == ["", ""]
        assert all(a.infer_response.model_name == "mlp" for a in answers)
    finally:
        thread.stop()
    assert fallback_directories(tmp_path) == []


def fallback_directories(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith("pygrpc-native-")]
