"""The tests' OTLP receiver (tests/support/otlp_receiver.py) against the real OpenTelemetry SDK and its OTLP
exporters, configured as the server configures them (the OTEL_* environment): a small trace with a remote parent,
a child, an event, a link, attributes of every kind and an error status comes back span for span, over gRPC and
HTTP/protobuf, plain and gzip-compressed. A receiver that is down refuses connections."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.support.otlp_receiver import TRACES_PATH, Receiver, down_receiver, http_receiver, receiver

pytestmark = pytest.mark.integration

PROTOCOLS = ("grpc", "http/protobuf")
EXPORTERS = {"grpc": GrpcExporter, "http/protobuf": HttpExporter}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ATTRIBUTES: dict[str, Any] = {"triton.model_name": "mlp", "inference.batch_size": 4, "ratio": 0.25, "cached": False,
              "shape": [1, 8], "names": ["a", "b"]}


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


def provider_to(protocol: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> TracerProvider:
    """A TracerProvider whose OTLP exporter reads its endpoint and options from the environment, as the server's."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test", "deployment.id": 7}))
    provider.add_span_processor(BatchSpanProcessor(EXPORTERS[protocol]()))
    return provider


def send_trace(provider: TracerProvider) -> dict[str, str]:
    """A request span under a caller's remote span, with a child that has an event, a link and an error. Returns
    the hex ids the records must carry."""
    tracer = provider.get_tracer("receiver.test")
    caller = TraceContextTextMapPropagator().extract({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    batch = tracer.start_span("batch", attributes={"inference.batch_size": 4})
    batch.end()
    with tracer.start_as_current_span("InferRequest", context=caller, kind=SpanKind.SERVER,
                                      attributes=ATTRIBUTES) as request:
        with tracer.start_as_current_span("compute", links=[Link(batch.get_span_context(), {"batch.index": 2})],
                                          record_exception=False, set_status_on_exception=False) as compute:
            compute.add_event("QUEUE_START", {"queue.depth": 3})
            compute.set_status(Status(StatusCode.ERROR, "model failed: boom"))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return {"request": format(request.get_span_context().span_id, "016x"),
            "compute": format(compute.get_span_context().span_id, "016x"),
            "batch": format(batch.get_span_context().span_id, "016x"),
            "batch_trace": format(batch.get_span_context().trace_id, "032x")}


def check_trace(receiver: Receiver, ids: dict[str, str]) -> None:
    spans = receiver.wait_for(lambda spans: len(spans) == 3, what="three spans")
    assert sorted(s.name for s in spans) == ["InferRequest", "batch", "compute"]
    (request,) = [s for s in receiver.by_trace(CALLER_TRACE) if s.name == "InferRequest"]
    assert (request.span_id, request.parent_span_id, request.kind) == (ids["request"], CALLER_SPAN, "SERVER")
    assert request.attributes == ATTRIBUTES
    assert request.status.code == "UNSET" and request.scope == "receiver.test"
    assert request.resource["service.name"] == "receiver-test" and request.resource["deployment.id"] == 7
    assert request.resource["telemetry.sdk.language"] == "python"
    assert 0 < request.start_ns <= request.end_ns

    (compute,) = receiver.children(request)
    assert (compute.name, compute.span_id, compute.kind) == ("compute", ids["compute"], "INTERNAL")
    assert compute.trace_id == CALLER_TRACE
    assert request.start_ns <= compute.start_ns <= compute.end_ns <= request.end_ns
    assert compute.status.code == "ERROR" and compute.status.message == "model failed: boom"
    (event,) = compute.events
    assert (event.name, event.attributes) == ("QUEUE_START", {"queue.depth": 3})
    assert compute.start_ns <= event.time_ns <= compute.end_ns
    (link,) = compute.links
    assert (link.trace_id, link.span_id, link.attributes) == (ids["batch_trace"], ids["batch"], {"batch.index": 2})

    (batch,) = [s for s in spans if s.name == "batch"]
    assert (batch.trace_id, batch.parent_span_id) == (ids["batch_trace"], "")  # a root of its own trace
    assert receiver.by_trace(batch.trace_id) == [batch] and not receiver.children(batch)
    assert receiver.by_trace(CALLER_TRACE) == sorted([request, compute], key=lambda s: s.start_ns)


# Unset or gzip: the gRPC exporter refuses "none" (InvalidCompressionValueException), the HTTP one takes it.
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_the_otlp_exporters_trace_comes_back_span_for_span(protocol, compression, monkeypatch):
    with receiver(protocol) as collector:
        env = collector.env() | ({"OTEL_EXPORTER_OTLP_COMPRESSION": compression} if compression else {})
        ids = send_trace(provider_to(protocol, monkeypatch, env))
        check_trace(collector, ids)
        assert collector.exports >= 1
        assert collector.names == {"InferRequest": 1, "compute": 1, "batch": 1}
        collector.clear()
        assert collector.spans() == [] and collector.exports == 0 and not collector.names


def test_a_receiver_that_keeps_nothing_counts_the_spans_by_name(protocol, monkeypatch):
    with receiver(protocol, keep=False) as collector:
        send_trace(provider_to(protocol, monkeypatch, collector.env()))
        assert collector.exports >= 1  # force_flush returned: the export was answered
        assert collector.names == {"InferRequest": 1, "compute": 1, "batch": 1} and collector.spans() == []


def test_the_http_endpoint_takes_the_traces_specific_url(monkeypatch):
    with http_receiver() as collector:
        assert collector.traces_url == collector.endpoint + TRACES_PATH == collector.endpoint + "/v1/traces"
        ids = send_trace(provider_to("http/protobuf", monkeypatch,
                                     {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.traces_url}))
        check_trace(collector, ids)


def test_the_http_endpoint_refuses_other_paths_and_types():
    with http_receiver() as collector:
        cases = {(collector.endpoint + "/v1/metrics", "application/x-protobuf"): 404,
                 (collector.traces_url, "application/json"): 415}
        for (url, content_type), code in cases.items():
            post = urllib.request.Request(url, data=b"", method="POST", headers={"Content-Type": content_type})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(post, timeout=5)
            assert refused.value.code == code, url
        assert collector.spans() == [] and collector.exports == 0


def test_wait_for_names_what_never_came():
    with http_receiver() as collector:
        with pytest.raises(AssertionError, match="waiting for a span named never; received"):
            collector.wait_for(lambda spans: any(s.name == "never" for s in spans), timeout_s=0.05,
                               what="a span named never")


def test_a_receiver_that_is_down_refuses_connections_and_the_exporter_fails(protocol):
    with down_receiver(protocol) as down:
        assert down.protocol == protocol and down.env()["OTEL_EXPORTER_OTLP_ENDPOINT"] == down.endpoint
        host, port = down.endpoint.removeprefix("http://").split(":")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=5).close()
        endpoint = down.endpoint if protocol == "grpc" else down.traces_url
        exporter = EXPORTERS[protocol](endpoint=endpoint, timeout=0.5)
        provider = TracerProvider()
        with provider.get_tracer("down").start_as_current_span("lost") as span:
            pass
        assert exporter.export([span]) == SpanExportResult.FAILURE
        exporter.shutdown()
        provider.shutdown()
