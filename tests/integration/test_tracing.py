"""OpenTelemetry tracing through a real server, its spans caught by the SDK's in-memory exporter (the spans the
OTLP exporter would send): a caller's trace continues through gRPC (unary and streaming) and HTTP (v2 and v1), a
parent that is not sampled yields no span, concurrent requests share batch spans that their compute spans link to,
cache hits, errors, routes and shadows have their spans, log lines carry the trace id, and tracing off makes
nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import secrets
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import InferenceServerException

from inference_server.config.routes import parse_route
from inference_server.config.tracing import TracingConfig
from inference_server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from inference_server.observability.logs import JsonFormatter, TextFormatter
from inference_server.protocol._generated import grpc_service_pb2 as pb
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROUTE = {"variants": [{"name": "stable", "model": "mlp", "weight": 1}],
         "shadow": {"model": "shadow_mlp", "pause_above_in_flight": 0, "pause_above_loop_busy_percent": 100}}
# routes whose only variant is never loaded: a fallback model answers, or constant outputs
GUARDED = {"variants": [{"name": "main", "model": "ghost", "weight": 1}], "fallback": {"model": "mlp"}}
CONSTANT = {"variants": [{"name": "main", "model": "ghost", "weight": 1}], "fallback": {"outputs": {"y": [0.5] * 4}}}


@pytest.fixture(scope="module")
def traced(tmp_path_factory, grpc_engine):
    """Tracing on (always sampled unless the caller's parent says otherwise), spans kept in memory; `mlp` batches
    what arrives within 20 ms, `cached` answers from the response cache, `ranker` is a route to `mlp` with a
    shadow, `guarded` and `constant` answer from their fallbacks."""
    repo = tmp_path_factory.mktemp("traced")
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 4]),
                            "cache = false\n[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 20000\n")
    onnx_models.write_model(repo, "cached", onnx_models.mlp([8, 16, 4], seed=3))
    onnx_models.write_model(repo, "shadow_mlp", onnx_models.mlp([8, 16, 4], seed=2), "cache = false\n")
    cfg = server_config(repo, http_port=free_port(), cache="memory:16", access_log=True, grpc_engine=grpc_engine)
    routes = (parse_route("ranker", ROUTE), parse_route("guarded", GUARDED), parse_route("constant", CONSTANT))
    cfg = dataclasses.replace(cfg, models=(), routes=routes,
                              tracing=TracingConfig(enabled=True))
    exporter = InMemorySpanExporter()
    server = ServerThread(cfg, span_exporter=exporter).start()
    server.exporter = exporter
    yield server
    server.stop()


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's span: (traceparent, trace id, span id), hex as W3C writes them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def spans_of(server: ServerThread, trace_id: str) -> list[ReadableSpan]:
    server.app.tracing.flush()
    return [s for s in server.exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def batch_spans(server: ServerThread) -> dict[int, ReadableSpan]:
    server.app.tracing.flush()
    return {s.context.span_id: s for s in server.exporter.get_finished_spans() if s.name == "batch"}


def x(value: float = 1.0, rows: int = 1, module=grpcclient, name: str = "x"):
    tensor = module.InferInput(name, [rows, 8], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 8), value, np.float32))
    return tensor


def check_request_tree(server: ServerThread, trace_id: str, parent_span_id: str, protocol: str) -> ReadableSpan:
    """InferRequest (SERVER, the caller's child) > mlp > compute (three events in order, linked to its batch)."""
    spans = spans_of(server, trace_id)
    request = one(spans, "InferRequest")
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == int(parent_span_id, 16)
    assert request.parent.is_remote
    attrs = request.attributes
    assert (attrs["triton.model_name"], attrs["triton.model_version"], attrs["inference.protocol"],
            attrs["inference.cache"], attrs["inference.batch_size"]) == ("mlp", "1", protocol, "off", 1)
    model = one(spans, "mlp")
    assert model.parent.span_id == request.context.span_id
    assert (model.attributes["triton.model_name"], model.attributes["triton.model_version"]) == ("mlp", "1")
    compute = one(spans, "compute")
    assert compute.parent.span_id == model.context.span_id
    events = {e.name: e.timestamp for e in compute.events}
    assert list(events) == ["QUEUE_START", "COMPUTE_START", "COMPUTE_END"]
    assert compute.start_time == events["QUEUE_START"] <= events["COMPUTE_START"] <= events["COMPUTE_END"]
    assert compute.end_time == events["COMPUTE_END"]
    assert request.start_time <= model.start_time <= compute.start_time and compute.end_time <= request.end_time
    [link] = compute.links
    batch = batch_spans(server)[link.context.span_id]
    assert batch.attributes["triton.model_name"] == "mlp" and batch.attributes["inference.batch.requests"] >= 1
    assert batch.start_time == events["COMPUTE_START"] and batch.end_time == events["COMPUTE_END"]
    assert request.status.status_code is StatusCode.UNSET
    return request


def test_a_grpc_request_continues_the_callers_trace(traced):
    parent, trace_id, span_id = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.infer("mlp", [x()], request_id="grpc-1", headers={"traceparent": parent, "tracestate": "vendor=1"})
    request = check_request_tree(traced, trace_id, span_id, "grpc")
    assert request.attributes["triton.request_id"] == "grpc-1"
    assert request.parent.trace_state.get("vendor") == "1"  # tracestate was read with the parent


def test_every_message_of_a_stream_continues_the_streams_trace(traced):
    parent, trace_id, span_id = traceparent()
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)),
                            headers={"traceparent": parent})
        for i in range(2):
            client.async_stream_infer("mlp", [x(float(i))], request_id=f"stream-{i}")
        got = [answers.get(timeout=10) for _ in range(2)]
        client.stop_stream()
    assert all(error is None for _, error in got)
    requests = named(spans_of(traced, trace_id), "InferRequest")
    assert sorted(r.attributes["triton.request_id"] for r in requests) == ["stream-0", "stream-1"]
    assert {(r.parent.span_id, r.attributes["inference.protocol"]) for r in requests} == {(int(span_id, 16), "grpc")}


def test_http_v2_and_v1_requests_continue_the_callers_trace(traced):
    parent, trace_id, span_id = traceparent()
    with httpclient.InferenceServerClient(f"127.0.0.1:{traced.app.http_port}") as client:
        client.infer("mlp", [x(module=httpclient)], headers={"traceparent": parent})
    check_request_tree(traced, trace_id, span_id, "http")

    parent, trace_id, span_id = traceparent()
    body = json.dumps({"instances": [[1.0] * 8]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{traced.app.http_port}/v1/models/mlp:predict", body,
                                     {"content-type": "application/json", "traceparent": parent})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    check_request_tree(traced, trace_id, span_id, "http")


def test_a_parent_that_is_not_sampled_yields_no_span(traced):
    dropped, dropped_id, _ = traceparent(sampled=False)
    kept, kept_id, _ = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.infer("mlp", [x()], headers={"traceparent": dropped})
        client.infer("mlp", [x()], headers={"traceparent": kept})  # after it: its spans show the flush went through
    assert named(spans_of(traced, kept_id), "InferRequest")
    assert spans_of(traced, dropped_id) == []


def test_concurrent_requests_share_batches_and_every_compute_span_links_to_its_batch(traced):
    callers = [traceparent() for _ in range(32)]
    before = set(batch_spans(traced))

    async def send_all() -> None:
        async with aioclient.InferenceServerClient(traced.url) as client:
            await asyncio.gather(*(client.infer("mlp", [x(float(i))], headers={"traceparent": parent})
                                   for i, (parent, _, _) in enumerate(callers)))

    asyncio.run(send_all())
    batches = {sid: s for sid, s in batch_spans(traced).items() if sid not in before}
    linked: dict[int, int] = {}
    for _, trace_id, span_id in callers:
        check_request_tree(traced, trace_id, span_id, "grpc")
        [link] = one(spans_of(traced, trace_id), "compute").links
        linked[link.context.span_id] = linked.get(link.context.span_id, 0) + 1
    assert set(linked) == set(batches)
    assert len(batches) < 32  # batched: fewer executions than requests
    for span_id, batch in batches.items():  # each batch's size is the requests that link to it (all are traced)
        assert batch.attributes["inference.batch.requests"] == linked[span_id] == batch.attributes[
            "inference.batch.rows"]
        assert batch.parent is None  # an execution is a trace of its own
    assert sum(linked.values()) == 32


def test_a_cache_hit_has_the_model_span_and_no_compute(traced):
    first, first_id, _ = traceparent()
    second, second_id, _ = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        for parent in (first, second):
            client.infer("cached", [x(42.0)], headers={"traceparent": parent})
    miss, hit = spans_of(traced, first_id), spans_of(traced, second_id)
    assert one(miss, "InferRequest").attributes["inference.cache"] == "miss" and named(miss, "compute")
    assert one(hit, "InferRequest").attributes["inference.cache"] == "hit"
    assert one(hit, "cached").parent.span_id == one(hit, "InferRequest").context.span_id
    assert named(hit, "compute") == []


def test_errors_set_the_status_of_the_request_and_of_the_span_where_they_happened(traced):
    parent, trace_id, _ = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        with pytest.raises(InferenceServerException, match="bogus"):
            client.infer("mlp", [x(name="bogus")], headers={"traceparent": parent})
    spans = spans_of(traced, trace_id)
    for span in (one(spans, "InferRequest"), one(spans, "mlp")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description.startswith("INVALID_ARGUMENT: ") and "bogus" in span.status.description
        assert span.attributes["error.type"] == "INVALID_ARGUMENT"
    assert named(spans, "compute") == []  # it never reached the batcher

    parent, trace_id, _ = traceparent()
    with httpclient.InferenceServerClient(f"127.0.0.1:{traced.app.http_port}") as client:
        with pytest.raises(InferenceServerException):
            client.infer("no_such_model", [x(module=httpclient)], headers={"traceparent": parent})
    [request] = spans_of(traced, trace_id)  # refused before any model: the request's span only
    assert request.status.description.startswith("NOT_FOUND: ")


def test_a_request_that_expires_in_the_queue_still_ends_its_spans_with_its_error(traced):
    parent, trace_id, _ = traceparent()
    with httpclient.InferenceServerClient(f"127.0.0.1:{traced.app.http_port}") as client:
        with pytest.raises(InferenceServerException, match="timeout"):  # 5 ms: mlp waits 20 ms for a batch
            client.infer("mlp", [x(module=httpclient)], headers={"traceparent": parent, "request-timeout-ms": "5"})
    spans = spans_of(traced, trace_id)
    for span in (one(spans, "InferRequest"), one(spans, "mlp")):
        assert span.status.description.startswith("DEADLINE_EXCEEDED: ")
    compute = one(spans, "compute")  # its wait in the queue, and nothing after
    assert [e.name for e in compute.events] == ["QUEUE_START"] and compute.links == ()
    assert compute.end_time <= one(spans, "mlp").end_time


def test_a_routed_request_records_its_variant_and_its_shadow_copy_runs_under_it(traced):
    parent, trace_id, _ = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.infer("ranker", [x()], headers={"traceparent": parent})
    wait_until(lambda: named(spans_of(traced, trace_id), "shadow shadow_mlp"), "the shadow copy's span")
    spans = spans_of(traced, trace_id)
    request = one(spans, "InferRequest")
    assert (request.attributes["triton.model_name"], request.attributes["inference.route"],
            request.attributes["inference.variant"], request.attributes["triton.model_version"]) == (
        "ranker", "ranker", "stable", "1")
    assert one(spans, "mlp").parent.span_id == request.context.span_id
    shadow = one(spans, "shadow shadow_mlp")
    assert shadow.parent.span_id == request.context.span_id
    assert (shadow.attributes["inference.shadow.outcome"], shadow.attributes["triton.model_version"]) == ("ok", "1")
    shadow_compute = [s for s in named(spans, "compute") if s.parent.span_id == shadow.context.span_id]
    assert len(shadow_compute) == 1 and shadow_compute[0].links


def test_log_lines_of_a_request_carry_its_trace_id(traced, caplog):
    caplog.set_level(logging.INFO, logger="inference_server.access")
    sampled, sampled_id, _ = traceparent()
    unsampled, unsampled_id, _ = traceparent(sampled=False)
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.infer("mlp", [x()], request_id="logged-1", headers={"traceparent": sampled})
        client.infer("mlp", [x()], request_id="logged-2", headers={"traceparent": unsampled})
    wait_until(lambda: {"logged-1", "logged-2"} <= {r.request_id for r in caplog.records}, "both access lines")
    lines = {r.request_id: r for r in caplog.records if r.name == "inference_server.access"}
    for request_id, trace_id in (("logged-1", sampled_id), ("logged-2", unsampled_id)):  # sampled or not
        record = lines[request_id]
        assert f"[{request_id} trace={trace_id}]" in TextFormatter().format(record)
        assert json.loads(JsonFormatter().format(record))["trace_id"] == trace_id


def test_tracing_off_makes_no_tracer_and_no_span(repository):
    exporter = InMemorySpanExporter()
    server = ServerThread(server_config(repository), span_exporter=exporter).start()
    try:
        parent, _, _ = traceparent()
        with grpcclient.InferenceServerClient(server.url) as client:
            client.infer("mlp", [x()], headers={"traceparent": parent})
        assert server.app.tracing is None and server.app.service.tracing is None
    finally:
        server.stop()
    assert exporter.get_finished_spans() == ()


def test_a_fallback_answer_has_its_span_under_the_request(traced):
    model_parent, model_trace, _ = traceparent()
    constant_parent, constant_trace, _ = traceparent()
    with grpcclient.InferenceServerClient(traced.url) as client:
        client.infer("guarded", [x()], headers={"traceparent": model_parent})
        client.infer("constant", [x()], headers={"traceparent": constant_parent})
    spans = spans_of(traced, model_trace)
    request, fallback = one(spans, "InferRequest"), one(spans, "fallback mlp")
    assert request.status.status_code is StatusCode.UNSET  # answered
    assert (request.attributes["triton.model_version"], "inference.variant" in request.attributes) == ("1", False)
    assert request.attributes["inference.route"] == "guarded"  # no variant was ready: the route is still named
    assert fallback.parent.span_id == request.context.span_id
    assert (fallback.attributes["inference.route"], fallback.attributes["inference.fallback.reason"]) == (
        "guarded", "no_variant_ready")
    assert one(spans, "mlp").parent.span_id == fallback.context.span_id and one(spans, "compute")
    spans = spans_of(traced, constant_trace)
    assert sorted(s.name for s in spans) == ["InferRequest", "fallback constant"]


def check_refused(server: ServerThread, trace_id: str, parent_span_id: str, model: str, protocol: str,
                  code: str) -> ReadableSpan:
    """A request refused before the service ran it: its `InferRequest` span alone, the caller's child, with the
    error as its status."""
    [request] = spans_of(server, trace_id)
    assert request.name == "InferRequest" and request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == int(parent_span_id, 16)
    assert (request.attributes["triton.model_name"], request.attributes["inference.protocol"]) == (model, protocol)
    assert request.status.status_code is StatusCode.ERROR and request.status.description.startswith(f"{code}: ")
    assert request.attributes["error.type"] == code
    return request


def bad_tensor(request_id: str) -> pb.ModelInferRequest:
    """Raw contents of 4 bytes for a [1, 8] FP32 input: refused while the request is decoded."""
    request = pb.ModelInferRequest(model_name="mlp", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def test_a_grpc_request_refused_while_decoding_continues_the_callers_trace(traced):
    parent, trace_id, span_id = traceparent()
    dropped, dropped_id, _ = traceparent(sampled=False)
    with grpc.insecure_channel(traced.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for caller in (dropped, parent):  # the sampled one after: its span shows the flush went through
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(bad_tensor("bad-1"), metadata=(("traceparent", caller),), timeout=10)
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:  # not a message at all: a span too, with no model name
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                b"\xff" * 11, metadata=(("traceparent", (garbage := traceparent())[0]),), timeout=10)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    request = check_refused(traced, trace_id, span_id, "mlp", "grpc", "INVALID_ARGUMENT")
    assert request.attributes["triton.request_id"] == "bad-1"
    assert "raw" in request.status.description or "bytes" in request.status.description
    check_refused(traced, garbage[1], garbage[2], "", "grpc", "INVALID_ARGUMENT")
    assert spans_of(traced, dropped_id) == []


def test_a_stream_message_refused_while_decoding_continues_the_streams_trace(traced):
    parent, trace_id, span_id = traceparent()
    with grpc.insecure_channel(traced.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        [answer] = list(stub.ModelStreamInfer(iter([bad_tensor("stream-bad")]), metadata=(("traceparent", parent),),
                                              timeout=10))
    assert answer.error_message and answer.infer_response.id == "stream-bad"
    request = check_refused(traced, trace_id, span_id, "mlp", "grpc", "INVALID_ARGUMENT")
    assert request.attributes["triton.request_id"] == "stream-bad"


def post(server: ServerThread, path: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{server.app.http_port}{path}", body,
                                     {"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def test_http_requests_refused_before_the_service_continue_the_callers_trace(traced):
    parent, trace_id, span_id = traceparent()
    assert post(traced, "/v2/models/mlp/infer", b'{"inputs": [', {"traceparent": parent,
                                                                   "x-request-id": "json-1"}) == 400
    request = check_refused(traced, trace_id, span_id, "mlp", "http", "INVALID_ARGUMENT")
    assert request.attributes["triton.request_id"] == "json-1"

    parent, trace_id, span_id = traceparent()
    body = json.dumps({"instances": [[1.0] * 8]}).encode()
    assert post(traced, "/v1/models/no_such_model:predict", body, {"traceparent": parent}) == 404
    check_refused(traced, trace_id, span_id, "no_such_model", "http", "NOT_FOUND")

    dropped, dropped_id, _ = traceparent(sampled=False)
    kept, kept_id, kept_span = traceparent()
    for caller in (dropped, kept):  # the sampled one after: its span shows the flush went through
        assert post(traced, "/v1/models/no_such_model:predict", body, {"traceparent": caller}) == 404
    check_refused(traced, kept_id, kept_span, "no_such_model", "http", "NOT_FOUND")
    assert spans_of(traced, dropped_id) == []
