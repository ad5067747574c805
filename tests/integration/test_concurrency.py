"""Concurrent clients (tritonclient.grpc.aio), batching observed on the server, deadlines and queue timeouts."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.support.waiting import until

pytestmark = pytest.mark.integration


def infer_input(name: str, array: np.ndarray) -> aioclient.InferInput:
    t = aioclient.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(array)
    return t


async def test_64_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, repository):
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(64)]
    session = onnxruntime.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    expected = [session.run(["y"], {"x": x})[0] for x in xs]  # unbatched reference, one row at a time
    before = server.batches("mlp")
    async with aioclient.InferenceServerClient(server.url) as client:
        results = await asyncio.gather(*(
            client.infer("mlp", [infer_input("x", x)], request_id=str(i)) for i, x in enumerate(xs)))
    for i, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5, atol=1e-6)
    after = server.batches("mlp")
    formed = {rows: after.get(rows, 0) - before.get(rows, 0) for rows in after}
    formed = {rows: n for rows, n in formed.items() if n}
    assert sum(rows * n for rows, n in formed.items()) == 64  # every row ran exactly once
    assert max(formed) > 1, formed  # the server really put several requests in one batch


def slow_call(client: aioclient.InferenceServerClient, **kw):
    return client.infer("slow", [infer_input("x", np.ones((1, 1), np.float32))], **kw)


def arrived(server, batches_before: int) -> int:
    """Requests the server has taken since then: those in flight and those the slow model (one row a batch) ran."""
    return server.app.gate.in_flight + sum(server.batches("slow").values()) - batches_before


@contextlib.asynccontextmanager
async def slow_model_kept_busy(server, busy_requests: int = 4):
    """A client, while `busy_requests` one-row batches keep the slow model busy; on exit, checks that the
    model ran those batches and nothing else."""
    before = sum(server.batches("slow").values())
    async with aioclient.InferenceServerClient(server.url) as client:
        busy = [asyncio.create_task(slow_call(client)) for _ in range(busy_requests)]
        await until(lambda: arrived(server, before) >= busy_requests, "the busy requests to reach the server")
        yield client
        await asyncio.gather(*busy)
    # What must not happen (a dropped request run after all) can only be watched for: a few slow batches' time.
    await asyncio.sleep(0.1)
    assert sum(server.batches("slow").values()) - before == busy_requests


async def test_queue_timeout_parameter_expires_a_request_waiting_behind_busy_batches(server):
    async with slow_model_kept_busy(server) as client:
        with pytest.raises(InferenceServerException) as e:
            await slow_call(client, timeout=1000)  # Triton's `timeout`, in µs
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "timeout expired" in e.value.message()


async def test_client_deadline_drops_the_request_before_the_model_runs_it(server):
    async with slow_model_kept_busy(server) as client:
        with pytest.raises(InferenceServerException) as e:
            await slow_call(client, client_timeout=0.01)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"


async def test_cancelled_client_call_never_reaches_the_model(server):
    stats = server.app.registry.find("slow").stats
    before = stats.failures["CANCELED"]
    async with slow_model_kept_busy(server) as client:  # checks on exit that the model ran nothing else
        in_flight = server.app.gate.in_flight
        doomed = asyncio.create_task(slow_call(client))
        await until(lambda: server.app.gate.in_flight > in_flight, "the doomed request to reach the server")
        doomed.cancel()
        # Out of the queue, counted (Triton's reason); on exit: the model never ran it.
        await until(lambda: stats.failures["CANCELED"] == before + 1, "the cancelled request to be counted")


async def test_stream_answers_every_request_and_a_bad_one_does_not_end_it(server):
    queue: asyncio.Queue = asyncio.Queue()
    good = np.ones((1, 8), np.float32)
    bad = np.ones((1, 5), np.float32)

    async def requests():
        for i, x in enumerate([good, bad, good, good]):
            yield {"model_name": "mlp", "inputs": [infer_input("x", x)], "request_id": f"s{i}"}

    async with aioclient.InferenceServerClient(server.url) as client:
        async for result, error in client.stream_infer(requests()):
            await queue.put((result, error))
            if queue.qsize() == 4:
                break
    answers = [queue.get_nowait() for _ in range(4)]
    ok = sorted(r.get_response().id for r, e in answers if e is None)
    errors = [e for r, e in answers if e is not None]
    assert ok == ["s0", "s2", "s3"]
    assert len(errors) == 1 and "shape [1, 5] does not match" in errors[0].message()
