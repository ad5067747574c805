"""OpenTelemetry tracing: the server's own tracer provider, the OTLP exporter, and the spans of a request
(docs/architecture.md, "Tracing"). Imported only when tracing is on (the `tracing` extra installs the SDK and the
exporters); the rest of the core sees a `Scope`, or None.

- Its own `TracerProvider`, never the global one (several servers may run in one process), with the configured
  sampler, the resource (`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` honoured; `inference-server` when
  neither names the service) and a `BatchSpanProcessor`: spans are exported in batches from the processor's own
  thread, off the event loop, and a full queue drops spans rather than waiting. A collector that cannot be reached
  never slows or fails a request; the exporter's complaints are logged once, then once a minute (`RateLimited`).
- W3C Trace Context only: the front ends copy `traceparent` and `tracestate` into the `InferRequest`, and `begin`
  continues the caller's trace from them. The sampler decides there; a request it leaves out gets no `Scope`, so
  it costs the decision and nothing more: `begin` makes the decision itself, from the traceparent's flags (a
  parent-based sampler) or the root sampler's bound on the trace id, before the SDK is asked for anything (its
  extraction and non-recording span cost 20 us a request here, its sampler 2.5 us, the comparison 0.2 us), and the
  SDK's own sampler, the same rules, agrees on the requests it is then asked to start.
- Spans, with Triton's names: `InferRequest` (SERVER), inside it the model span (named after the model), inside
  that `compute`, with the events QUEUE_START, COMPUTE_START and COMPUTE_END, made afterwards from the batcher's
  marks (observability/trace_marks.py). A batch is one span of its own, `batch`, made by the first of its traced
  requests; each request's `compute` links to it. Batch spans are always sampled (`BatchesSampled`): a ratio
  sampler would otherwise drop the batch of a request it kept. Routed requests add `shadow <model>` and
  `fallback <model>` spans; errors set the status `CODE: message` on the span where they happened and on
  `InferRequest`, with the code in `error.type`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Sequence
from random import getrandbits
from typing import cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

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

# The loggers that repeat a line per export attempt or dropped span while a collector is down
EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                  "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                  "opentelemetry.exporter.otlp.common.http",
                  "opentelemetry.sdk._shared_internal")
EXPORT_LOG = RateLimited(60.0)
SHUTDOWN_TIMEOUT_S = 5.0  # at stop, how long the last spans may take to reach the collector
_ROOT = Context()  # no parent: a batch span starts a trace of its own
_LOW_64 = (1 << 64) - 1  # a ratio sampler decides on the trace id's low 64 bits
_ID_SPACE = 1 << 64  # a bound above every such value: always sampled
# W3C Trace Context's traceparent (version, trace id, parent id, flags), as the SDK's propagator reads it
TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$")
MAX_TRACEPARENT = 512  # longer is ignored, as the SDK's propagator ignores it


def quiet_export_logs() -> None:
    """The exporters' and the span processor's lines: each once, then once a minute with a count."""
    for name in EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(EXPORT_LOG)  # once per logger however many servers run


class BatchesSampled(Sampler):
    """The configured sampler, but a batch span is always sampled: it starts a trace of its own, so a ratio
    sampler would drop it by its trace id while keeping the requests that link to it. A batch span exists only when
    one of its requests was sampled, so this adds no span to a trace that was left out."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: Attributes = None, links: Sequence[Link] | None = None,
                      trace_state: trace.TraceState | None = None) -> SamplingResult:
        if attributes is not None and BATCH_REQUESTS in attributes:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"BatchesSampled{{{self.delegate.get_description()}}}"


def root_sampler(name: str, arg: float | None) -> Sampler:
    """The sampler that decides on a trace's first span: of `OTEL_TRACES_SAMPLER`'s name (config/tracing.py
    SAMPLERS), without its `parentbased_` prefix, and argument."""
    root = name.removeprefix("parentbased_")
    return {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(root) or TraceIdRatioBased(
        1.0 if arg is None else arg)


def configured_sampler(name: str, arg: float | None) -> Sampler:
    """The OpenTelemetry sampler of `OTEL_TRACES_SAMPLER`'s name and argument."""
    root = root_sampler(name, arg)
    return ParentBased(root) if name.startswith("parentbased_") else root


def remote_parent(traceparent: str) -> tuple[int, bool] | None:
    """A traceparent's trace id and sampled flag; None for one the propagator ignores (a new trace starts)."""
    if len(traceparent) > MAX_TRACEPARENT or not (match := TRACEPARENT.match(traceparent)):
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return None
    return int(trace_id, 16), bool(int(flags, 16) & 1)


class _TraceIds(RandomIdGenerator):
    """Random ids; the next trace id may be given: the one `Tracing.begin` drew to decide on a root span before
    the SDK starts it (on the event loop's thread, at once)."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        trace_id, self.next_trace_id = self.next_trace_id, 0
        return trace_id or super().generate_trace_id()


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


def _failed(span: trace.Span, code: str, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute(ERROR_TYPE, code)


class Scope:
    """A recording span, the parent of what runs inside it; `request` is the scope of its `InferRequest` span."""

    __slots__ = ("_tracer", "span", "request", "_context")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, request: Scope | None = None) -> None:
        self._tracer = tracer
        self.span = span
        self.request = request if request is not None else self
        self._context: Context | None = None

    @property
    def context(self) -> Context:
        if self._context is None:
            self._context = trace.set_span_in_context(self.span, _ROOT)
        return self._context

    def _child(self, name: str, attributes: Attributes) -> Scope:
        return Scope(self._tracer, self._tracer.start_span(name, self.context, attributes=attributes), self.request)

    def model(self, name: str, version: str) -> Scope:
        """The span of a run on a model version, named after the model; the request was served by this version (a
        fallback's run, later, replaces it)."""
        self.request.span.set_attribute(MODEL_VERSION, version)
        return self._child(name, {MODEL_NAME: name, MODEL_VERSION: version})

    def fallback(self, route: str, model: str | None, reason: str) -> Scope:
        """The span of a route's fallback answer (`fallback <model>`, or `fallback constant`)."""
        return self._child(f"fallback {model or 'constant'}", {ROUTE: route, FALLBACK_REASON: reason})

    def shadow(self, route: str, model: str) -> Scope:
        """The span of a shadow copy of the request (it runs after the request's answer, under its span)."""
        return self._child(f"shadow {model}", {ROUTE: route, MODEL_NAME: model})

    def routed(self, route: str, variant: str) -> None:
        """The request's route, and the variant chosen ("" when none was ready: the fallback answers)."""
        self.request.span.set_attributes({ROUTE: route, VARIANT: variant} if variant else {ROUTE: route})

    def rows(self, rows: int) -> None:
        self.request.span.set_attribute(BATCH_SIZE, rows)

    def cache(self, state: str) -> None:
        """hit, miss or off."""
        self.request.span.set_attribute(CACHE, state)

    def served_by(self, version: str) -> None:
        """The version a shadow copy ran on."""
        self.span.set_attribute(MODEL_VERSION, version)

    def outcome(self, outcome: str, error: BaseException | None = None) -> None:
        """A shadow copy's outcome (routing/shadow.py OUTCOMES); a failure sets the status too."""
        self.span.set_attribute(SHADOW_OUTCOME, outcome)
        if error is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        code, description = failure(error)
        _failed(self.span, code, description)
        if not isinstance(error, (InferenceError, asyncio.CancelledError)):
            self.span.record_exception(error)

    def computed(self, marks: Marks) -> None:
        """The `compute` span of a request the batcher took (nothing when it never reached the queue), from its
        marks, linked to the batch that served it. A request that left the queue unserved (its deadline, a
        cancellation) gets the span of its wait."""
        if not marks.queue_start_ns:
            return
        links: Sequence[Link] = ()
        if marks.batch is not None:
            links = (Link(self._batch_context(marks.batch)),)
        span = self._tracer.start_span(COMPUTE, self.context, links=links, start_time=marks.queue_start_ns)
        span.add_event(QUEUE_START, timestamp=marks.queue_start_ns)
        if marks.compute_start_ns:
            span.add_event(COMPUTE_START, timestamp=marks.compute_start_ns)
        if marks.compute_end_ns:
            span.add_event(COMPUTE_END, timestamp=marks.compute_end_ns)
        if marks.batch is not None and marks.batch.error:
            _failed(span, marks.batch.error_code, marks.batch.error)
        span.end(end_time=marks.compute_end_ns or None)

    def _batch_context(self, batch: BatchMarks) -> SpanContext:
        """The batch's span, made once, by the first of its traced requests to ask."""
        if batch.context is None:
            span = self._tracer.start_span(BATCH, _ROOT, attributes={
                MODEL_NAME: batch.model, BATCH_REQUESTS: batch.requests, BATCH_ROWS: batch.rows},
                start_time=batch.start_ns)
            if batch.error:  # the execution failed: every request in it did
                _failed(span, batch.error_code, batch.error)
            span.end(end_time=batch.end_ns)
            batch.context = span.get_span_context()
        context: SpanContext = batch.context
        return context

    def end(self) -> None:
        self.span.end()


class Tracing:
    """The server's tracer: made by the App when tracing is on, closed after the drain. `exporter`: where spans go
    instead of the OTLP exporter (tests pass an in-memory one)."""

    def __init__(self, cfg: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.cfg = cfg
        self._otlp = exporter is None
        self.exporter = exporter if exporter is not None else otlp_exporter(cfg)
        self.sampler = BatchesSampled(configured_sampler(cfg.sampler, cfg.sampler_arg))
        # The root sampler's rule as a bound on the trace id's low 64 bits (TraceIdRatioBased's own; always_on:
        # every id, always_off: none): a comparison instead of a call into the SDK for every request.
        root = root_sampler(cfg.sampler, cfg.sampler_arg)
        self._root_bound = (_ID_SPACE if root is ALWAYS_ON else 0 if root is ALWAYS_OFF
                            else cast(TraceIdRatioBased, root).bound)
        self._parent_based = cfg.sampler.startswith("parentbased_")
        self._ids = _TraceIds()
        self.resource = service_resource()
        self._provider = TracerProvider(sampler=self.sampler, resource=self.resource, shutdown_on_exit=False,
                                        id_generator=self._ids)
        self._provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self._tracer = self._provider.get_tracer("inference_server", __version__)
        self._propagator = TraceContextTextMapPropagator()
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
        if remote is None:  # a new trace
            trace_id = getrandbits(128) or 1  # as RandomIdGenerator draws them (0 is not a valid id)
            if trace_id & _LOW_64 >= self._root_bound:
                return None, trace_id
            self._ids.next_trace_id = trace_id  # the SDK starts the span with the id decided on
            parent = _ROOT
        else:
            trace_id, sampled = remote
            if not (sampled if self._parent_based else trace_id & _LOW_64 < self._root_bound):
                return None, trace_id
            parent = self._propagator.extract({"traceparent": request.traceparent,
                                               "tracestate": request.tracestate}, _ROOT)
        span = self._tracer.start_span(INFER_REQUEST, parent, SpanKind.SERVER, {
            MODEL_NAME: request.model_name, REQUEST_ID: request.id, PROTOCOL: request.protocol})
        if not span.is_recording():  # the SDK's sampler has the same rules: never, unless OTEL_SDK_DISABLED
            return None, trace_id
        return Scope(self._tracer, span), trace_id

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every span ended so far (blocks: tests and tools, not the event loop)."""
        return self._provider.force_flush(int(timeout_s * 1000))

    async def close(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export what is left and stop. In a thread of its own (the exporter waits on its collector), waited for at
        most `timeout_s`: after that the spans still queued are lost, and the thread (a daemon) never holds up the
        process's exit."""
        finished = threading.Event()

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            except Exception:  # an exporter's failure must not stop the server's own shutdown
                log.exception("tracing: the exporter failed to shut down")
            finally:
                finished.set()

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        if not await asyncio.to_thread(finished.wait, timeout_s):
            log.warning("tracing: the last spans did not reach the collector within %.0f s (%s); they are dropped",
                        timeout_s, redact_url(self.cfg.endpoint) if self.cfg.endpoint else "no endpoint")

