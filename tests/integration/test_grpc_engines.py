"""Where the two gRPC engines differ as a client sees them (README, "gRPC engines"), on a real server of each: the
start-up log, request metadata over the 16 KiB limit, and that the native engine's fallback server (ModelStreamInfer
goes through it) leaves nothing behind. Everything else the gRPC front end promises is tested on both engines by
the suites that take the `grpc_engine` fixture."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from inference_server.protocol._generated import grpc_service_pb2 as pb
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


def test_calls_cancelled_in_bulk_may_end_their_connection_on_native_and_the_channel_serves_on(server):
    """A client that starts calls and cancels them at once, 100 at a time (a hedging client, or a deadline storm on
    a starved server), resets HTTP/2 streams before the server has taken them. The native engine (h2's rapid-reset
    guard, CVE-2023-44487) then ends the connection with GOAWAY ENHANCE_YOUR_CALM `too_many_resets`, and calls in
    flight on it fail UNAVAILABLE, which is safe to retry; grpcio lets them finish. Either way the channel
    reconnects and serves on."""

    async def flood() -> Counter:
        async with grpc.aio.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            bystanders: Counter = Counter()

            async def bystander() -> None:
                for _ in range(10):
                    try:
                        await stub.ModelInfer(REQUEST, timeout=30)
                        bystanders["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        bystanders[f"{e.code().name} {'too_many_resets' in e.details()}"] += 1

            others = [asyncio.create_task(bystander()) for _ in range(4)]
            for _ in range(20):
                calls = [stub.ModelInfer(REQUEST, timeout=30) for _ in range(100)]
                await asyncio.sleep(0)
                for cancelled in calls:
                    cancelled.cancel()
                await asyncio.gather(*calls, return_exceptions=True)
            await asyncio.gather(*others)
            await stub.ModelInfer(REQUEST, timeout=10)  # served afterwards on the same channel
            return bystanders

    bystanders = asyncio.run(flood())
    assert sum(bystanders.values()) == 40
    allowed = {"OK"} if server.cfg.grpc_engine == "grpcio" else {"OK", "UNAVAILABLE True"}
    assert set(bystanders) <= allowed, bystanders


def test_metadata_within_the_limit_is_served(server):
    """7,000 bytes of padding, about 7.6 KB of metadata in all: under grpcio's soft limit (8 KiB), above which it
    refuses a growing share of calls at random until its hard limit (16 KiB) refuses them all."""
    with grpc.insecure_channel(server.url) as channel:
        assert call(pb_grpc.GRPCInferenceServiceStub(channel), [("x-padding", "a" * 7000)]) == "OK"


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
