"""A real OTLP trace receiver for tests: the collector's gRPC TraceService (opentelemetry-proto's
`TraceService/Export`, served by grpcio) or the HTTP/protobuf endpoint (`POST /v1/traces`), each on 127.0.0.1 and
a port the kernel picks, in a thread of the test process. Every span received becomes a plain `Span` record
(hex ids, kind and status by name, attributes as Python values), so tests assert on what a collector would store.

    with grpc_receiver() as receiver:            # or http_receiver()
        ...  # run something with receiver.env() (OTEL_EXPORTER_OTLP_ENDPOINT and _PROTOCOL)
        spans = receiver.wait_for(lambda spans: any(s.name == "InferRequest" for s in spans))

`down_receiver()` stands for a collector that is down: an endpoint on which nothing listens (its port stays
bound and unlistened while the context lasts, so connections are refused and nothing else can take it)."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"  # what the HTTP exporter appends to OTEL_EXPORTER_OTLP_ENDPOINT
PROTOBUF = "application/x-protobuf"


def otel_env(endpoint: str, protocol: str, schedule_delay_ms: int = 50) -> dict[str, str]:
    """The OTEL_* variables that send a process's traces to `endpoint`. The batch span processor's schedule delay is
    cut from 5 s to `schedule_delay_ms`, so that spans arrive while a test waits, not only at shutdown."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms)}


# -- the records ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Link:
    trace_id: str  # hex
    span_id: str  # hex
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Status:
    code: str  # "UNSET" | "OK" | "ERROR", as opentelemetry.trace.StatusCode names them
    message: str


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, or "" for a root span
    kind: str  # "INTERNAL" | "SERVER" | "CLIENT" | "PRODUCER" | "CONSUMER", as opentelemetry.trace.SpanKind names them
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: tuple[Event, ...]
    links: tuple[Link, ...]
    status: Status
    resource: dict[str, Any]  # the resource's attributes (service.name, ...)
    scope: str  # the instrumentation scope's name (the tracer's name)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def value(any_value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a Python value: str, bool, int, float, bytes, list or dict (None when empty)."""
    which = any_value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if which == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, which)


def attributes(pairs: Sequence[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in pairs}


def enum_name(enum: Any, number: int, prefix: str) -> str:
    return str(enum.Name(number)).removeprefix(prefix)


def records(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """Every span of an export request, in the order sent."""
    found = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(Span(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    kind=enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=attributes(span.attributes),
                    events=tuple(Event(e.name, e.time_unix_nano, attributes(e.attributes)) for e in span.events),
                    links=tuple(Link(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
                                for link in span.links),
                    status=Status(enum_name(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),
                                  span.status.message),
                    resource=resource,
                    scope=scope_spans.scope.name,
                ))
    return found


# -- the collector's store -----------------------------------------------------------------------------------------

class Receiver:
    """The spans received so far, whichever transport brought them; thread-safe. `keep=False` (benchmarks) only
    counts them by name, in `names`, as every receiver does, and keeps no record."""

    protocol: str  # OTEL_EXPORTER_OTLP_PROTOCOL's value for this receiver
    endpoint: str  # OTEL_EXPORTER_OTLP_ENDPOINT's value for this receiver

    def __init__(self, keep: bool = True) -> None:
        self._spans: list[Span] = []
        self._changed = threading.Condition()
        self.keep = keep
        self.exports = 0  # export requests received
        self.names: Counter[str] = Counter()  # spans received, by name

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        names = Counter(span.name for resource_spans in request.resource_spans
                        for scope_spans in resource_spans.scope_spans for span in scope_spans.spans)
        spans = records(request) if self.keep else []
        with self._changed:
            self._spans.extend(spans)
            self.exports += 1
            self.names.update(names)
            self._changed.notify_all()

    def spans(self) -> list[Span]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, predicate: Callable[[list[Span]], object], timeout_s: float = 10.0,
                 what: str = "the spans") -> list[Span]:
        """The spans once `predicate(spans)` holds, woken by each export (no polling); AssertionError naming
        `what` and the spans so far if it still does not hold after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [s.name for s in self._spans]
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; received {names}")
                self._changed.wait(left)
            return list(self._spans)

    def by_trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, in start order."""
        return sorted((s for s in self.spans() if s.trace_id == trace_id), key=lambda s: s.start_ns)

    def children(self, span: Span) -> list[Span]:
        """The spans whose parent is `span`, in start order."""
        return [s for s in self.by_trace(span.trace_id) if s.parent_span_id == span.span_id]

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()
            self.exports = 0
            self.names.clear()

    def env(self, schedule_delay_ms: int = 50) -> dict[str, str]:
        """The OTEL_* variables that send a process's traces here (otel_env)."""
        return otel_env(self.endpoint, self.protocol, schedule_delay_ms)


# -- gRPC: opentelemetry.proto.collector.trace.v1.TraceService ----------------------------------------------------

class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # noqa: N802 (the RPC's name)
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver(Receiver):
    protocol = "grpc"


@contextmanager
def grpc_receiver(keep: bool = True) -> Iterator[GrpcReceiver]:
    """The collector's gRPC TraceService on 127.0.0.1:<port>; `endpoint` is http://127.0.0.1:<port> (the http
    scheme tells the exporter to connect without TLS)."""
    receiver = GrpcReceiver(keep)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    receiver.endpoint = f"http://{HOST}:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None).wait()


# -- HTTP/protobuf: POST /v1/traces -------------------------------------------------------------------------------

class HttpReceiver(Receiver):
    protocol = "http/protobuf"

    @property
    def traces_url(self) -> str:
        """The full URL, as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or the exporter's endpoint argument take it."""
        return self.endpoint + TRACES_PATH


def _handler(receiver: HttpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != TRACES_PATH:
                return self.answer(404, b"")
            if self.headers.get_content_type() != PROTOBUF:
                return self.answer(415, b"")
            encoding = self.headers.get("Content-Encoding", "identity")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except DecodeError:
                return self.answer(400, b"")
            receiver.add(request)
            self.answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # no line on stderr per export

    return Handler


@contextmanager
def http_receiver(keep: bool = True) -> Iterator[HttpReceiver]:
    """The OTLP HTTP/protobuf endpoint: `endpoint` is the base URL http://127.0.0.1:<port> (the exporter appends
    /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT); `traces_url` is the full one."""
    receiver = HttpReceiver(keep)
    server = ThreadingHTTPServer((HOST, 0), _handler(receiver))
    server.daemon_threads = True
    # serve_forever looks for shutdown() every poll_interval (0.5 s by default): a short one ends the context fast.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="otlp-http",
                              daemon=True)
    thread.start()
    receiver.endpoint = f"http://{HOST}:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- a collector that is down --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DownReceiver:
    endpoint: str
    protocol: str

    @property
    def traces_url(self) -> str:
        return self.endpoint + TRACES_PATH

    def env(self, schedule_delay_ms: int = 50) -> dict[str, str]:
        return otel_env(self.endpoint, self.protocol, schedule_delay_ms)


@contextmanager
def down_receiver(protocol: str = "grpc") -> Iterator[DownReceiver]:
    """An endpoint where no collector listens: a port bound but never listened on, so every connection is
    refused, and held for the context so that no other server takes it meanwhile."""
    with socket.socket() as held:
        held.bind((HOST, 0))
        yield DownReceiver(f"http://{HOST}:{held.getsockname()[1]}", protocol)


def receiver(protocol: str, keep: bool = True) -> AbstractContextManager[Receiver]:
    """A receiver for an OTEL_EXPORTER_OTLP_PROTOCOL value: "grpc" or "http/protobuf"."""
    return {"grpc": grpc_receiver, "http/protobuf": http_receiver}[protocol](keep)
