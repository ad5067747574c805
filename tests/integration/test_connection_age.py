"""[server] max_connection_age_s: grpc core ends each connection at that age with a GOAWAY, so a client reconnects
(behind kube-proxy, possibly to another replica) and no call fails on the way."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from inference_server.config.server import parse_server
from inference_server.errors import ConfigError
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration


def against_server(client, *args: object, **server: object):
    """client(url, *args) run against a fresh server with these [server] keys, which is stopped afterwards."""
    thread = ServerThread(parse_server({"server": {"port": 0, "metrics": False, "http_port": 0, **server}})).start()
    try:
        return asyncio.run(client(thread.url, *args))
    finally:
        thread.stop()


async def connections_used(url: str, duration_s: float) -> tuple[int, int]:
    """Calls one channel for duration_s; returns (calls that failed, times the channel had to connect again)."""
    failed = reconnects = 0
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            if channel.get_state() != grpc.ChannelConnectivity.READY:
                reconnects += 1
            try:
                await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            except grpc.aio.AioRpcError:
                failed += 1
            await asyncio.sleep(0.02)
    return failed, reconnects


def test_connections_older_than_the_age_are_ended_and_clients_reconnect_without_a_failed_call():
    failed, reconnects = against_server(connections_used, 2.0, max_connection_age_s=0.3, max_connection_age_grace_s=1)
    assert failed == 0
    assert reconnects >= 2  # about one per 0.3 s (+-10 % jitter): the connection did not live on


def test_without_an_age_a_connection_lives_on():
    failed, reconnects = against_server(connections_used, 1.0)
    assert (failed, reconnects) == (0, 0)


async def stream_for(url: str, duration_s: float) -> tuple[int, str | None]:
    """One ModelStreamInfer stream kept open for duration_s, a ServerLive-sized request every 0.1 s; returns the
    answers it got and the error that ended it, if any."""
    async def requests():
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            yield pb.ModelInferRequest(model_name="nothing-here")  # answered on the stream with an error message
            await asyncio.sleep(0.1)

    answers = 0
    async with grpc.aio.insecure_channel(url) as channel:
        try:
            async for _ in pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=30):
                answers += 1
        except grpc.aio.AioRpcError as e:
            return answers, e.code().name
    return answers, None


def test_a_stream_outlives_the_connection_age_when_no_grace_is_set():
    """Without a grace, the GOAWAY only stops new calls on the old connection: a long stream runs to its end."""
    answers, error = against_server(stream_for, 1.5, max_connection_age_s=0.3)
    assert error is None and answers >= 10


def test_a_grace_ends_a_stream_that_outlives_it():
    """What a grace costs: a stream still open at age + grace is cut off (the manifests set no grace)."""
    _, error = against_server(stream_for, 3.0, max_connection_age_s=0.3, max_connection_age_grace_s=0.3)
    assert error == "UNAVAILABLE"


def test_a_grace_without_an_age_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="server.max_connection_age_grace_s"):
        parse_server({"server": {"max_connection_age_grace_s": 5}})
