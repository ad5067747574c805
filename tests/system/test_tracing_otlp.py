"""OpenTelemetry tracing as a collector sees it: the server runs as a process configured only by the standard OTEL_*
environment (the contract that KServe's injection relies on), and exports to a real OTLP receiver in this test
(tests/support/otlp_receiver.py), once over gRPC and once over HTTP/protobuf. A backend's client span continues
through gRPC (unary and each message of a stream) and HTTP (v2 and v1); a parent that is not sampled yields no
span; 32 concurrent requests share fewer batch executions, each request's compute span linked to its batch; cache
hits, errors, routed requests (with their shadow) and fallback answers have their spans; and a collector that is
down changes no answer and is logged once, not once per request."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import secrets
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.otlp_receiver import Receiver, Span, down_receiver, receiver
from tests.support.server_process import ServerProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system

PROTOCOLS = ("grpc", "http/protobuf")
CONFIG = """
[server]
model_repository = "{repo}"
cache = "memory:16"

[routes.ranker]
variants = [ {{ name = "stable", model = "mlp", weight = 1 }} ]
[routes.ranker.shadow]
model = "shadow_mlp"
pause_above_in_flight = 0
pause_above_loop_busy_percent = 100

[routes.guarded]  # its only variant is never loaded: the fallback answers
variants = [ {{ name = "main", model = "ghost", weight = 1 }} ]
[routes.guarded.fallback]
model = "mlp"
"""
# Per protocol: what else the platform sets (the service's name, resource attributes); one server leaves the name
# to the default.
PLATFORM_ENV = {"grpc": {"OTEL_SERVICE_NAME": "scoring", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"},
                "http/protobuf": {}}
SERVICE_NAMES = {"grpc": "scoring", "http/protobuf": "inference-server"}
EVENTS = ["QUEUE_START", "COMPUTE_START", "COMPUTE_END"]


def write_repository(root: Path) -> Path:
    """`mlp` batches what arrives within 20 ms and is never cached; `cached` is; `shadow_mlp` is the shadow of the
    route `ranker` (whose one variant is `mlp`); `guarded` answers from its fallback, `mlp`."""
    repo = root / "repo"
    onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 4]),
                            "cache = false\n[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 20000\n")
    onnx_models.write_model(repo, "cached", onnx_models.mlp([8, 16, 4], seed=3))
    onnx_models.write_model(repo, "shadow_mlp", onnx_models.mlp([8, 16, 4], seed=2), "cache = false\n")
    config = root / "server.toml"
    config.write_text(CONFIG.format(repo=repo))
    return config


def start_server(root: Path, env: dict[str, str], http_port: int = 0) -> ServerProcess:
    """The server as a process, tracing configured by `env` alone (no [tracing] table, no flag)."""
    config = write_repository(root)
    server = ServerProcess(["--config", str(config), "--access-log", "--http-port", str(http_port)],
                           root / "server.log", env=env)
    try:
        return server.wait_serving()
    except BaseException:
        server.kill()
        raise


class Traced:
    """A traced server, the receiver it exports to, and a backend's tracer that exports there too."""

    def __init__(self, protocol: str, collector: Receiver, server: ServerProcess, http_port: int,
                 backend: TracerProvider) -> None:
        self.protocol = protocol
        self.collector = collector
        self.server = server
        self.http_url = f"127.0.0.1:{http_port}"
        self.backend = backend
        self.tracer = backend.get_tracer("backend.test")

    def spans_of(self, trace_id: str, until: Callable[[list[Span]], object], what: str) -> list[Span]:
        """The trace's spans (in start order) once `until(them)` holds."""
        self.collector.wait_for(lambda spans: until([s for s in spans if s.trace_id == trace_id]), what=what)
        return self.collector.by_trace(trace_id)

    def span(self, span_id: str, what: str) -> Span:
        """A span by its id, once it has arrived (a batch span is a trace of its own)."""
        spans = self.collector.wait_for(lambda spans: any(s.span_id == span_id for s in spans), what=what)
        return next(s for s in spans if s.span_id == span_id)


def backend_exporter(collector: Receiver) -> GrpcExporter | HttpExporter:
    if collector.protocol == "grpc":
        return GrpcExporter(endpoint=collector.endpoint, insecure=True)
    return HttpExporter(endpoint=collector.endpoint + "/v1/traces")


@pytest.fixture(scope="module", params=PROTOCOLS)
def traced(request, tmp_path_factory) -> Iterator[Traced]:
    protocol = request.param
    with receiver(protocol) as collector:
        root = tmp_path_factory.mktemp(protocol.replace("/", "-"))
        port = free_port()
        server = start_server(root, {**collector.env(), **PLATFORM_ENV[protocol]}, port)
        backend = TracerProvider(resource=Resource.create({"service.name": "backend"}))
        backend.add_span_processor(SimpleSpanProcessor(backend_exporter(collector)))
        try:
            yield Traced(protocol, collector, server, port, backend)
        finally:
            server.kill()
            backend.shutdown()


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's span as W3C writes it: (traceparent, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def x(value: float = 1.0, module=grpcclient, name: str = "x"):
    tensor = module.InferInput(name, [1, 8], "FP32")
    tensor.set_data_from_numpy(np.full((1, 8), value, np.float32))
    return tensor


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def names(spans: list[Span]) -> list[str]:
    return [s.name for s in spans]


def has(*wanted: str) -> Callable[[list[Span]], bool]:
    return lambda spans: Counter(wanted) <= Counter(names(spans))


def check_request(traced: Traced, trace_id: str, parent_span_id: str, protocol: str, model: str = "mlp") -> Span:
    """InferRequest (SERVER, the caller's child, Triton's attributes and ours) > the model's span > compute (its
    three events in order, linked to the batch that served it, whose span records the batch's size)."""
    spans = traced.spans_of(trace_id, has("InferRequest", model, "compute"), f"the request's spans ({trace_id})")
    request = one(spans, "InferRequest")
    assert (request.kind, request.parent_span_id, request.status.code) == ("SERVER", parent_span_id, "UNSET")
    attrs = request.attributes
    assert (attrs["triton.model_name"], attrs["triton.model_version"], attrs["inference.protocol"]) == (
        model, "1", protocol)
    assert request.resource["service.name"] == SERVICE_NAMES[traced.protocol]
    assert request.scope == "inference_server"

    model_span = one(spans, model)
    assert model_span.parent_span_id == request.span_id
    compute = one(spans, "compute")
    assert compute.parent_span_id == model_span.span_id
    assert [e.name for e in compute.events] == EVENTS
    times = [e.time_ns for e in compute.events]
    assert compute.start_ns <= times[0] <= times[1] <= times[2] <= compute.end_ns
    assert request.start_ns <= model_span.start_ns <= compute.start_ns <= compute.end_ns <= request.end_ns
    (link,) = compute.links
    batch = traced.span(link.span_id, "the batch span")
    assert (batch.trace_id, batch.parent_span_id) == (link.trace_id, "")
    assert batch.attributes["triton.model_name"] == model and batch.attributes["inference.batch.requests"] >= 1
    return request


def log_line_with(server: ServerProcess, *parts: str) -> str:
    """The first line of the server's log that holds every part, once one does."""
    def line() -> str | None:
        return next((ln for ln in server.log().splitlines() if all(p in ln for p in parts)), None)
    wait_until(lambda: line() is not None, f"a log line with {parts}")
    found = line()
    assert found is not None
    return found


# -- continuity -----------------------------------------------------------------------------------------------------

def test_a_backends_client_span_continues_through_grpc(traced):
    with traced.tracer.start_as_current_span("score user", kind=SpanKind.CLIENT) as client_span:
        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers)  # the current span: traceparent (and tracestate)
        with grpcclient.InferenceServerClient(traced.server.url) as client:
            client.infer("mlp", [x()], request_id="grpc-1", headers=headers)
    trace_id = format(client_span.get_span_context().trace_id, "032x")
    span_id = format(client_span.get_span_context().span_id, "016x")
    request = check_request(traced, trace_id, span_id, "grpc")
    assert request.attributes["triton.request_id"] == "grpc-1"
    assert request.attributes["inference.cache"] == "off" and request.attributes["inference.batch_size"] == 1
    caller = traced.span(span_id, "the backend's own span")  # the caller's span arrived too: one trace, two services
    assert (caller.trace_id, caller.resource["service.name"]) == (trace_id, "backend")
    if traced.protocol == "grpc":
        assert request.resource["deployment.environment"] == "test"  # OTEL_RESOURCE_ATTRIBUTES
    # the request's log line names its trace
    log_line_with(traced.server, "grpc-1", trace_id)


def test_http_v2_and_v1_continue_the_callers_trace(traced):
    parent, trace_id, span_id = traceparent()
    with httpclient.InferenceServerClient(traced.http_url) as client:
        client.infer("mlp", [x(module=httpclient)], request_id="http-1",
                     headers={"traceparent": parent, "tracestate": "vendor=1"})
    request = check_request(traced, trace_id, span_id, "http")
    assert request.attributes["triton.request_id"] == "http-1"

    parent, trace_id, span_id = traceparent()
    body = json.dumps({"instances": [[1.0] * 8]}).encode()
    predict = urllib.request.Request(f"http://{traced.http_url}/v1/models/mlp:predict", body,
                                     {"content-type": "application/json", "traceparent": parent})
    with urllib.request.urlopen(predict, timeout=10) as answer:
        assert answer.status == 200
    check_request(traced, trace_id, span_id, "http")


def test_each_message_of_a_stream_continues_the_streams_trace(traced):
    parent, trace_id, span_id = traceparent()
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error), headers={"traceparent": parent})
        for i in range(2):
            client.async_stream_infer("mlp", [x(float(i))], request_id=f"stream-{i}")
        errors = [answers.get(timeout=10) for _ in range(2)]
        client.stop_stream()
    assert errors == [None, None]
    spans = traced.spans_of(trace_id, has("InferRequest", "InferRequest", "compute", "compute"), "both messages' spans")
    requests = [s for s in spans if s.name == "InferRequest"]
    assert sorted(r.attributes["triton.request_id"] for r in requests) == ["stream-0", "stream-1"]
    assert {(r.parent_span_id, r.attributes["inference.protocol"]) for r in requests} == {(span_id, "grpc")}


def test_a_request_without_a_parent_starts_a_trace_of_its_own(traced):
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        client.infer("mlp", [x()], request_id="no-parent-1")
    spans = traced.collector.wait_for(
        lambda spans: any(s.attributes.get("triton.request_id") == "no-parent-1" for s in spans), what="its span")
    (request,) = [s for s in spans if s.attributes.get("triton.request_id") == "no-parent-1"]
    assert request.parent_span_id == "" and request.name == "InferRequest"
    check_request(traced, request.trace_id, "", "grpc")


# -- sampling -------------------------------------------------------------------------------------------------------

def test_a_parent_that_is_not_sampled_yields_no_span(traced):
    dropped, dropped_id, _ = traceparent(sampled=False)
    kept, kept_id, kept_span = traceparent()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        client.infer("mlp", [x()], request_id="unsampled-1", headers={"traceparent": dropped})
        client.infer("mlp", [x()], headers={"traceparent": kept})
    # The later, sampled request's spans have arrived: the exporter ran after the first request ended.
    check_request(traced, kept_id, kept_span, "grpc")
    assert traced.collector.by_trace(dropped_id) == []
    assert not [s for s in traced.collector.spans() if s.attributes.get("triton.request_id") == "unsampled-1"]
    # Not sampled, but still traced in the log: its line names the caller's trace
    log_line_with(traced.server, "unsampled-1", dropped_id)


# -- batching -------------------------------------------------------------------------------------------------------

def test_concurrent_requests_share_batches_and_each_compute_span_links_to_its_batch(traced):
    callers = [traceparent() for _ in range(32)]

    async def send_all() -> None:
        async with aioclient.InferenceServerClient(traced.server.url) as client:
            await asyncio.gather(*(client.infer("mlp", [x(float(i))], headers={"traceparent": parent})
                                   for i, (parent, _, _) in enumerate(callers)))

    asyncio.run(send_all())
    linked: Counter[str] = Counter()
    for _, trace_id, span_id in callers:
        check_request(traced, trace_id, span_id, "grpc")
        (link,) = one(traced.collector.by_trace(trace_id), "compute").links
        linked[link.span_id] += 1
    batches = {span_id: traced.span(span_id, "a batch span") for span_id in linked}
    assert len(batches) < len(callers)  # batched: fewer executions than requests
    for span_id, batch in batches.items():  # every request of a batch is one of ours, and traced
        assert batch.name == "batch"
        assert batch.attributes["inference.batch.requests"] == linked[span_id] == batch.attributes[
            "inference.batch.rows"]
    assert sum(b.attributes["inference.batch.requests"] for b in batches.values()) == len(callers)


# -- cache, errors, routes ------------------------------------------------------------------------------------------

def test_a_cache_hit_has_its_spans_and_no_compute(traced):
    value = float(secrets.randbelow(1_000_000))  # a miss first, whichever test ran before
    (miss_parent, miss_id, miss_span), (hit_parent, hit_id, hit_span) = traceparent(), traceparent()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        for parent in (miss_parent, hit_parent):
            client.infer("cached", [x(value)], headers={"traceparent": parent})
    miss = check_request(traced, miss_id, miss_span, "grpc", model="cached")
    assert miss.attributes["inference.cache"] == "miss"
    # the hit: its request and model spans, and nothing computed
    spans = traced.spans_of(hit_id, has("InferRequest", "cached"), "the hit's spans")
    hit = one(spans, "InferRequest")
    assert (hit.parent_span_id, hit.attributes["inference.cache"]) == (hit_span, "hit")
    assert one(spans, "cached").parent_span_id == hit.span_id
    # the hit's spans were exported together, after the miss's: no compute span follows
    assert "compute" not in names(traced.collector.by_trace(hit_id))


def test_an_error_sets_the_status_with_its_code_and_message(traced):
    parent, trace_id, span_id = traceparent()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        with pytest.raises(InferenceServerException, match="bogus"):
            client.infer("mlp", [x(name="bogus")], headers={"traceparent": parent})
    spans = traced.spans_of(trace_id, has("InferRequest"), "the failed request's span")
    request = one(spans, "InferRequest")
    assert (request.parent_span_id, request.status.code) == (span_id, "ERROR")
    assert request.status.message.startswith("INVALID_ARGUMENT") and "bogus" in request.status.message
    assert "compute" not in names(spans)  # it never reached the batcher

    parent, trace_id, span_id = traceparent()
    with httpclient.InferenceServerClient(traced.http_url) as client:
        with pytest.raises(InferenceServerException):
            client.infer("no_such_model", [x(module=httpclient)], headers={"traceparent": parent})
    spans = traced.spans_of(trace_id, has("InferRequest"), "the refused request's span")
    request = one(spans, "InferRequest")
    assert (request.status.code, request.attributes["inference.protocol"]) == ("ERROR", "http")
    assert request.status.message.startswith("NOT_FOUND") and "no_such_model" in request.status.message


def test_a_routed_request_names_its_route_and_variant_and_its_shadow_runs_under_it(traced):
    parent, trace_id, span_id = traceparent()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        client.infer("ranker", [x()], headers={"traceparent": parent})
    spans = traced.spans_of(trace_id, lambda spans: any(n.startswith("shadow") for n in names(spans)) and has(
        "InferRequest", "mlp", "compute", "compute")(spans), "the routed request's and its shadow's spans")
    request = one(spans, "InferRequest")
    assert request.parent_span_id == span_id
    assert (request.attributes["triton.model_name"], request.attributes["inference.route"],
            request.attributes["inference.variant"]) == ("ranker", "ranker", "stable")
    assert one(spans, "mlp").parent_span_id == request.span_id
    (shadow,) = [s for s in spans if s.name.startswith("shadow")]
    assert shadow.parent_span_id == request.span_id and "shadow_mlp" in shadow.name
    shadow_compute = [s for s in spans if s.name == "compute" and s.parent_span_id == shadow.span_id]
    assert len(shadow_compute) == 1 and [e.name for e in shadow_compute[0].events] == EVENTS


def test_a_fallback_answer_has_its_span_under_the_request(traced):
    parent, trace_id, span_id = traceparent()
    with grpcclient.InferenceServerClient(traced.server.url) as client:
        client.infer("guarded", [x()], headers={"traceparent": parent})
    spans = traced.spans_of(trace_id, has("InferRequest", "fallback mlp", "mlp", "compute"), "the fallback's spans")
    request, fallback = one(spans, "InferRequest"), one(spans, "fallback mlp")
    assert (request.parent_span_id, request.status.code) == (span_id, "UNSET")  # answered, by the fallback
    assert fallback.parent_span_id == request.span_id
    assert (fallback.attributes["inference.route"], fallback.attributes["inference.fallback.reason"]) == (
        "guarded", "no_variant_ready")
    assert one(spans, "mlp").parent_span_id == fallback.span_id


# -- a collector that is down ---------------------------------------------------------------------------------------

EXPORT_FAILURE = re.compile(r"Failed to export")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_collector_that_is_down_changes_no_answer_and_is_logged_once(protocol, tmp_path):
    with down_receiver(protocol) as down:
        # Exports of at most 4 spans (a request makes 4: InferRequest, mlp, compute, batch), so the 32 requests'
        # spans take at least 32 exports, each of which fails: under the 0.5 s timeout the exporter tries once (its
        # first backoff is longer) and gives up at once, the server's stop flushing what is left.
        server = start_server(tmp_path, {**down.env(), "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
                                         "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"})
        try:
            with grpcclient.InferenceServerClient(server.url) as client:
                def send(count: int, start: int) -> None:
                    for i in range(start, start + count):
                        parent, _, _ = traceparent()
                        result = client.infer("mlp", [x(float(i))], request_id=f"down-{i}",
                                              headers={"traceparent": parent})
                        assert result.as_numpy("y").shape == (1, 4)

                send(16, 0)
                # the first failed export is logged...
                wait_until(lambda: EXPORT_FAILURE.search(server.log()), "the export failure's line", timeout_s=30)
                # ...and the spans of these later requests go out in later exports, which fail too
                send(16, 16)
            assert server.terminate() == 0  # the last spans' export fails within the bound, and the server stops
        finally:
            server.kill()
    # One line about the failed exports (the exporter never retries within 0.5 s: its first backoff is longer),
    # not one per export or per request, and nothing else from OpenTelemetry
    exporter_lines = [ln for ln in server.log().splitlines() if "opentelemetry" in ln]
    assert len(exporter_lines) == 1 and EXPORT_FAILURE.search(exporter_lines[0]), exporter_lines
    assert "Traceback" not in server.log()
