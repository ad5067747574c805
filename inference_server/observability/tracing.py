"""OpenTelemetry tracing: the OTLP exporter, the sampler's decision and the spans of a request (docs/architecture.md,
"Tracing"). Imported only when tracing is on (the `tracing` extra installs the SDK and the exporters); the rest of
the core sees a `Scope`, or None.

- The SDK's `BatchSpanProcessor` and OTLP exporter, with the resource (`OTEL_SERVICE_NAME` and
  `OTEL_RESOURCE_ATTRIBUTES` honoured; `inference-server` when neither names the service): spans are exported in
  batches from the processor's own thread, off the event loop, and a full queue drops spans rather than waiting.
  A collector that cannot be reached never slows or fails a request; the exporter's complaints are logged once,
  then once a minute (`RateLimited`). Nothing global is set (several servers may run in one process).
- W3C Trace Context only: the front ends copy `traceparent` and `tracestate` into the `InferRequest`, and `begin`
  continues the caller's trace from them, read as the SDK's propagator reads them. The configured sampler's rule
  decides there, once per request: the traceparent's sampled flag (a parent-based sampler) or the root sampler's
  bound on the trace id (`TraceIdRatioBased`'s own). A request it leaves out gets no `Scope`, so it costs the
  decision (0.2 us) and nothing more.
- A kept request's spans are recorded as plain data (`Scope`) and handed to the processor as the SDK's
  `ReadableSpan` when they end, the form its exporters read: the SDK's tracer would cost 30-50 us a span on the
  event loop (a sampler call, locks, attribute cleaning and copying), this 6-10.
- Spans, with Triton's names: `InferRequest` (SERVER), inside it the model span (named after the model), inside
  that `compute`, with the events QUEUE_START, COMPUTE_START and COMPUTE_END, made afterwards from the batcher's
  marks (observability/trace_marks.py). A batch is one span of its own, `batch`, in a trace of its own, made by the
  first of its traced requests; each request's `compute` links to it. Routed requests add `shadow <model>` and
  `fallback <model>` spans; errors set the status `CODE: message` on the span where they happened and on
  `InferRequest`, with the code in `error.type`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import traceback
from collections.abc import Sequence
from random import getrandbits
from time import time_ns
from typing import cast

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from inference_server import __version__
from inference_server.config.server import redact_url
from inference_server.config.tracing import GRPC, TracingConfig
from inference_server.errors import InferenceError
from inference_server.observability.logs import RateLimited
from inference_server.observability.trace_marks import BatchMarks, Marks
from inference_server.protocol.tensors import InferRequest

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "inference-server"
# Span names (Triton's, but `batch`, `shadow <model>` and `fallback <model>`) and events
INFER_REQUEST, COMPUTE, BATCH = "InferRequest", "compute", "batch"
QUEUE_START, COMPUTE_START, COMPUTE_END = "QUEUE_START", "COMPUTE_START", "COMPUTE_END"
# Attributes: Triton's, then ours
MODEL_NAME, MODEL_VERSION, REQUEST_ID = "triton.model_name", "triton.model_version", "triton.request_id"
PROTOCOL, ROUTE, VARIANT = "inference.protocol", "inference.route", "inference.variant"
CACHE, BATCH_SIZE = "inference.cache", "inference.batch_size"  # hit | miss | off; the request's rows
BATCH_REQUESTS, BATCH_ROWS = "inference.batch.requests", "inference.batch.rows"
FALLBACK_REASON, SHADOW_OUTCOME = "inference.fallback.reason", "inference.shadow.outcome"
ERROR_TYPE = "error.type"  # the ErrorCode's name (OpenTelemetry's semantic convention for a failure's kind)

# The loggers that repeat a line per export attempt or dropped span while a collector is down, or per request
EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                  "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                  "opentelemetry.exporter.otlp.common.http",
                  "opentelemetry.sdk._shared_internal",
                  "opentelemetry.trace.span")  # an invalid tracestate, once per traced request that sends it
EXPORT_LOG = RateLimited(60.0)
SHUTDOWN_TIMEOUT_S = 5.0  # at stop, how long the last spans may take to reach the collector
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)  # every span made is one the sampler kept
_UNSET = Status(StatusCode.UNSET)
_LOW_64 = (1 << 64) - 1  # a ratio sampler decides on the trace id's low 64 bits
_ID_SPACE = 1 << 64  # a bound above every such value: always sampled
# W3C Trace Context's traceparent (version, trace id, parent id, flags), as the SDK's propagator reads it
TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")
MAX_TRACEPARENT = 512  # longer is ignored, as the SDK's propagator ignores it


def quiet_export_logs() -> None:
    """The exporters' and the span processor's lines: each once, then once a minute with a count."""
    for name in EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(EXPORT_LOG)  # once per logger however many servers run


def root_sampler(name: str, arg: float | None) -> Sampler:
    """The sampler that decides on a trace's first span: of `OTEL_TRACES_SAMPLER`'s name (config/tracing.py
    SAMPLERS), without its `parentbased_` prefix, and argument."""
    root = name.removeprefix("parentbased_")
    return {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(root) or TraceIdRatioBased(
        1.0 if arg is None else arg)


def remote_parent(traceparent: str) -> tuple[int, int, int] | None:
    """The caller's span as its traceparent names it: trace id, span id and flags; None for a traceparent the SDK's
    propagator ignores (a new trace starts)."""
    if len(traceparent) > MAX_TRACEPARENT or not (match := TRACEPARENT.match(traceparent)):
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def service_resource() -> Resource:
    """The resource: the environment's attributes (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME) win; ours fill in
    the service's name and version where the environment names none."""
    given = OTELResourceDetector().detect().attributes
    ours = {SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: __version__}
    return Resource.create({key: value for key, value in ours.items() if key not in given})


def otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    """The OTLP exporter of the protocol, to the resolved endpoint; the rest (headers, certificates, compression,
    timeout) it reads from its OTEL_EXPORTER_OTLP_* variables itself."""
    exporter: SpanExporter
    if cfg.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=cfg.endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter(endpoint=cfg.endpoint)
    return exporter


def failure(error: BaseException) -> tuple[str, str]:
    """A failure as a span records it: the code's name, and the status description `CODE: message`."""
    if isinstance(error, InferenceError):
        return error.code.name, f"{error.code.name}: {error.message}"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED", "CANCELLED: the request was cancelled before its answer"
    return "INTERNAL", f"INTERNAL: {type(error).__name__}: {error}"


def _span_id() -> int:
    return getrandbits(64) or 1  # as RandomIdGenerator draws them (0 is not a valid id)


class Scope:
    """A span being recorded, as plain data until it ends (then one `ReadableSpan` goes to the span processor); the
    parent of what runs inside it. `request` is the scope of its `InferRequest` span."""

    __slots__ = ("_tracing", "_name", "_kind", "_parent", "_start_ns", "_events", "_status", "_ended", "context",
                 "attributes", "request")

    def __init__(self, tracing: Tracing, name: str, parent: SpanContext | None, trace_id: int,
                 attributes: dict[str, AttributeValue], kind: SpanKind = SpanKind.INTERNAL,
                 request: Scope | None = None) -> None:
        self._tracing = tracing
        self._name, self._kind, self._parent = name, kind, parent
        self._start_ns = time_ns()
        self._events: list[Event] = []
        self._status = _UNSET
        self._ended = False
        # a child carries its trace's tracestate (as the SDK's parent-based samplers hand it on)
        self.context = SpanContext(trace_id, _span_id(), False, _SAMPLED,
                                   None if parent is None else parent.trace_state)
        self.attributes = attributes
        self.request = request if request is not None else self

    def _child(self, name: str, attributes: dict[str, AttributeValue]) -> Scope:
        return Scope(self._tracing, name, self.context, self.context.trace_id, attributes, request=self.request)

    def model(self, name: str, version: str) -> Scope:
        """The span of a run on a model version, named after the model; the request was served by this version (a
        fallback's run, later, replaces it)."""
        self.request.attributes[MODEL_VERSION] = version
        return self._child(name, {MODEL_NAME: name, MODEL_VERSION: version})

    def fallback(self, route: str, model: str | None, reason: str) -> Scope:
        """The span of a route's fallback answer (`fallback <model>`, or `fallback constant`)."""
        return self._child(f"fallback {model or 'constant'}", {ROUTE: route, FALLBACK_REASON: reason})

    def shadow(self, route: str, model: str) -> Scope:
        """The span of a shadow copy of the request (it runs after the request's answer, under its span)."""
        return self._child(f"shadow {model}", {ROUTE: route, MODEL_NAME: model})

    def routed(self, route: str, variant: str) -> None:
        """The request's route, and the variant chosen ("" when none was ready: the fallback answers)."""
        self.request.attributes[ROUTE] = route
        if variant:
            self.request.attributes[VARIANT] = variant

    def rows(self, rows: int) -> None:
        self.request.attributes[BATCH_SIZE] = rows

    def cache(self, state: str) -> None:
        """hit, miss or off."""
        self.request.attributes[CACHE] = state

    def served_by(self, version: str) -> None:
        """The version a shadow copy ran on."""
        self.attributes[MODEL_VERSION] = version

    def outcome(self, outcome: str, error: BaseException | None = None) -> None:
        """A shadow copy's outcome (routing/shadow.py OUTCOMES); a failure sets the status too."""
        self.attributes[SHADOW_OUTCOME] = outcome
        if error is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        """The status `CODE: message` and `error.type`; an unexpected exception is recorded as the SDK records one
        (an `exception` event with its type, message and stack trace)."""
        code, description = failure(error)
        self._status = Status(StatusCode.ERROR, description)
        self.attributes[ERROR_TYPE] = code
        if not isinstance(error, (InferenceError, asyncio.CancelledError)):
            kind = type(error)
            self._events.append(Event("exception", {
                EXCEPTION_TYPE: kind.__qualname__ if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__qualname__}",
                EXCEPTION_MESSAGE: str(error),
                EXCEPTION_STACKTRACE: "".join(traceback.format_exception(error)),
                EXCEPTION_ESCAPED: "False"}))

    def computed(self, marks: Marks) -> None:
        """The `compute` span of a request the batcher took (nothing when it never reached the queue), from its
        marks, linked to the batch that served it. A request that left the queue unserved (its deadline, a
        cancellation) gets the span of its wait."""
        if not marks.queue_start_ns:
            return
        compute = self._child(COMPUTE, {})
        compute._start_ns = marks.queue_start_ns
        compute._events.append(Event(QUEUE_START, timestamp=marks.queue_start_ns))
        if marks.compute_start_ns:
            compute._events.append(Event(COMPUTE_START, timestamp=marks.compute_start_ns))
        if marks.compute_end_ns:
            compute._events.append(Event(COMPUTE_END, timestamp=marks.compute_end_ns))
        links: tuple[Link, ...] = ()
        if marks.batch is not None:
            links = (Link(self._tracing.batch_context(marks.batch)),)
            if marks.batch.error:
                compute._status = Status(StatusCode.ERROR, marks.batch.error)
                compute.attributes[ERROR_TYPE] = marks.batch.error_code
        compute.end(marks.compute_end_ns or None, links)

    def end(self, end_ns: int | None = None, links: Sequence[Link] = ()) -> None:
        """The span is done: handed to the span processor once (the exporter's thread reads it from then on)."""
        if self._ended:
            return
        self._ended = True
        attributes, self.attributes = self.attributes, {}  # nothing set later reaches the exported span
        self._tracing.emit(self._name, self.context, self._parent, self._kind, attributes, self._events, links,
                           self._status, self._start_ns, end_ns or time_ns())


class Tracing:
    """The server's tracer: made by the App when tracing is on, closed after the drain. `exporter`: where spans go
    instead of the OTLP exporter (tests pass an in-memory one)."""

    def __init__(self, cfg: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.cfg = cfg
        self._otlp = exporter is None
        self.exporter = exporter if exporter is not None else otlp_exporter(cfg)
        # The root sampler's rule as a bound on the trace id's low 64 bits (TraceIdRatioBased's own; always_on:
        # every id, always_off: none): a comparison instead of a call into the SDK for every request.
        root = root_sampler(cfg.sampler, cfg.sampler_arg)
        self._root_bound = (_ID_SPACE if root is ALWAYS_ON else 0 if root is ALWAYS_OFF
                            else cast(TraceIdRatioBased, root).bound)
        self._parent_based = cfg.sampler.startswith("parentbased_")
        self.resource = service_resource()
        self._scope = InstrumentationScope("inference_server", __version__)
        limits = SpanLimits()  # OTEL_SPAN_ATTRIBUTE_*_LIMIT and OTEL_ATTRIBUTE_*_LIMIT, as the SDK's spans take them
        self._limits = limits if (limits.max_span_attribute_length or limits.max_attribute_length) else None
        self._processor = BatchSpanProcessor(self.exporter)
        quiet_export_logs()

    def describe(self) -> str:
        """For the start-up log."""
        where = (f"OTLP {self.cfg.protocol} to {redact_url(self.cfg.endpoint)}" if self._otlp
                 else type(self.exporter).__name__)
        arg = "" if self.cfg.sampler_arg is None else f" ({self.cfg.sampler_arg:g})"
        return f"{where}, service {self.resource.attributes.get(SERVICE_NAME)}, sampler {self.cfg.sampler}{arg}"

    def begin(self, request: InferRequest) -> tuple[Scope | None, int]:
        """The request's `InferRequest` span, the child of the caller's span when its traceparent names one: a
        Scope when the sampler keeps it, else None; and its trace id (for the log lines), sampled or not."""
        remote = remote_parent(request.traceparent) if request.traceparent else None
        parent = None
        if remote is None:  # a new trace
            trace_id = getrandbits(128) or 1  # as RandomIdGenerator draws them (0 is not a valid id)
            if trace_id & _LOW_64 >= self._root_bound:
                return None, trace_id
        else:
            trace_id, span_id, flags = remote
            if not (flags & TraceFlags.SAMPLED if self._parent_based else trace_id & _LOW_64 < self._root_bound):
                return None, trace_id
            # the tracestate is read only for a request that is kept (an invalid one costs a warning)
            parent = SpanContext(trace_id, span_id, True, TraceFlags(flags),
                                 TraceState.from_header([request.tracestate]) if request.tracestate else None)
        return Scope(self, INFER_REQUEST, parent, trace_id, {
            MODEL_NAME: request.model_name, REQUEST_ID: request.id, PROTOCOL: request.protocol},
            SpanKind.SERVER), trace_id

    def batch_context(self, batch: BatchMarks) -> SpanContext:
        """The batch's span (a trace of its own: it serves requests of several traces), made once, by the first of
        its traced requests to ask. Always recorded: it exists only when one of its requests was sampled."""
        if batch.context is None:
            context = SpanContext(getrandbits(128) or 1, _span_id(), False, _SAMPLED)
            status = _UNSET if not batch.error else Status(StatusCode.ERROR, batch.error)
            attributes: dict[str, AttributeValue] = {
                MODEL_NAME: batch.model, BATCH_REQUESTS: batch.requests, BATCH_ROWS: batch.rows}
            if batch.error:  # the execution failed: every request in it did
                attributes[ERROR_TYPE] = batch.error_code
            self.emit(BATCH, context, None, SpanKind.INTERNAL, attributes, (), (), status, batch.start_ns,
                      batch.end_ns)
            batch.context = context
        made: SpanContext = batch.context
        return made

    def emit(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
             attributes: dict[str, AttributeValue], events: Sequence[Event], links: Sequence[Link], status: Status,
             start_ns: int, end_ns: int) -> None:
        """An ended span, to the batch span processor (a queue its thread exports from; a full one drops it)."""
        if self._limits is not None:  # value length limits: truncated as the SDK's own spans would be
            attributes = BoundedAttributes(self._limits.max_span_attributes, attributes, immutable=True,  # type: ignore[assignment]
                                           max_value_len=self._limits.max_span_attribute_length)
            events = [Event(e.name, BoundedAttributes(self._limits.max_event_attributes, e.attributes,
                                                      max_value_len=self._limits.max_attribute_length), e.timestamp)
                      for e in events]
        self._processor.on_end(ReadableSpan(
            name, context, parent, self.resource, attributes, tuple(events), tuple(links), kind, status=status,
            start_time=start_ns, end_time=end_ns, instrumentation_scope=self._scope))

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every span ended so far (blocks: tests and tools, not the event loop)."""
        return self._processor.force_flush(int(timeout_s * 1000))

    async def close(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export what is left and stop. In a thread of its own (the exporter waits on its collector), waited for at
        most `timeout_s`: after that the spans still queued are lost, and the thread (a daemon) never holds up the
        process's exit."""
        finished = threading.Event()

        def shut_down() -> None:
            try:
                self._processor.shutdown()
            except Exception:  # an exporter's failure must not stop the server's own shutdown
                log.exception("tracing: the exporter failed to shut down")
            finally:
                finished.set()

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        if not await asyncio.to_thread(finished.wait, timeout_s):
            log.warning("tracing: the last spans did not reach the collector within %.0f s (%s); they are dropped",
                        timeout_s, redact_url(self.cfg.endpoint) if self.cfg.endpoint else "no endpoint")
