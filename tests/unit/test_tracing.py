"""Tracing's settings (the OTEL_* environment over [tracing]), the resource, the samplers, the exporters' rate-limited
logging and a bounded shutdown. The spans of requests are tested through a real server
(tests/integration/test_tracing.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from inference_server.config.cli import load_config
from inference_server.config.server import parse_server
from inference_server.config.tracing import TracingConfig, parse_tracing, with_environment
from inference_server.errors import ConfigError
from inference_server.observability import tracing as tracing_module
from inference_server.observability.logs import RateLimited
from inference_server.observability.trace_marks import BatchMarks, Marks
from inference_server.observability.tracing import (
    BATCH_REQUESTS,
    EXPORT_LOG,
    EXPORT_LOGGERS,
    Tracing,
    remote_parent,
    service_resource,
)
from inference_server.protocol.tensors import InferRequest

ON = TracingConfig(enabled=True)
OFF = TracingConfig()


def resolved(environ: dict[str, str], cfg: TracingConfig = OFF) -> TracingConfig:
    return with_environment(cfg, environ)


def test_tracing_is_off_unless_an_endpoint_variable_or_the_table_turns_it_on():
    assert resolved({}) == TracingConfig()
    assert not resolved({"OTEL_TRACES_SAMPLER": "always_on"}).enabled  # a sampler alone says nothing
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        assert resolved({variable: "http://collector:4318"}).enabled
    assert resolved({}, ON).enabled


def test_otel_sdk_disabled_turns_it_off_whatever_else_says_on():
    environ = {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not resolved(environ, ON).enabled
    assert resolved({**environ, "OTEL_SDK_DISABLED": "false"}).enabled


def test_defaults_are_the_specifications():
    cfg = resolved({}, ON)
    assert (cfg.protocol, cfg.endpoint, cfg.sampler, cfg.sampler_arg) == (
        "http/protobuf", "http://localhost:4318/v1/traces", "parentbased_always_on", None)
    assert resolved({}, TracingConfig(enabled=True, protocol="grpc")).endpoint == "http://localhost:4317"


def test_variables_win_over_the_table_and_per_signal_ones_over_general_ones():
    table = parse_tracing({"enabled": True, "endpoint": "http://from-toml:4318", "protocol": "grpc",
                           "sampler": "traceidratio", "sampler_arg": 0.5})
    assert resolved({}, table) == TracingConfig(enabled=True, endpoint="http://from-toml:4318", protocol="grpc",
                                                sampler="traceidratio", sampler_arg=0.5)
    environ = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318/",
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    assert resolved(environ, table) == TracingConfig(enabled=True, endpoint="http://general:4318/v1/traces",
                                                     protocol="http/protobuf", sampler="parentbased_traceidratio",
                                                     sampler_arg=0.01)
    environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://traces:4318/custom"  # taken as it is
    assert resolved(environ, table).endpoint == "http://traces:4318/custom"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("environ", [
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318/"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"},
])
def test_the_endpoint_is_the_one_the_otlp_exporter_itself_reads_from_the_environment(monkeypatch, environ,
                                                                                      protocol):
    """Where the exporters would send given only the environment: the resolved endpoint passed to them is the same."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    by_environment = OTLPSpanExporter()
    ours = OTLPSpanExporter(endpoint=resolved({**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}).endpoint)
    try:
        assert ours._endpoint == by_environment._endpoint
    finally:
        by_environment.shutdown()
        ours.shutdown()


RATIO = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}


@pytest.mark.parametrize(("environ", "variable"), [
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "parentbased_jaeger_remote", "OTEL_TRACES_SAMPLER_ARG": "endpoint=http://x:14250"},
     "OTEL_TRACES_SAMPLER"),
    ({**RATIO, "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({**RATIO, "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({**RATIO, "OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
])
def test_a_variable_this_server_cannot_use_is_ignored_with_a_warning_naming_it(environ, variable, caplog):
    """The specification's rule for an SDK: a platform that injects a setting into every pod (say a sampler only
    some SDKs have) must not stop them from starting. The rest of the settings still apply."""
    table = TracingConfig(sampler="parentbased_traceidratio", sampler_arg=0.25, protocol="grpc")
    with caplog.at_level(logging.WARNING, logger="inference_server.config.tracing"):
        got = resolved({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", **environ}, table)
    assert got.enabled and got.endpoint == "http://collector:4317"
    kept = dataclasses.replace(table, enabled=True, endpoint="http://collector:4317")
    if environ.get("OTEL_TRACES_SAMPLER") == "parentbased_traceidratio":
        assert got == kept  # the bad argument ignored: the table's 0.25 holds
    else:
        assert (got.sampler, got.sampler_arg, got.protocol) == (table.sampler, table.sampler_arg, table.protocol)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and variable in warnings[0] and "ignored" in warnings[0], warnings


def test_variables_are_read_in_any_case_and_the_per_signal_one_falls_back_to_the_general_one():
    got = resolved({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_SAMPLER": "TraceIdRatio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.5", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "GRPC"})
    assert (got.sampler, got.sampler_arg, got.protocol) == ("traceidratio", 0.5, "grpc")


@pytest.mark.parametrize(("table", "key"), [
    ({"sampler": "sometimes"}, "tracing.sampler"),
    ({"sampler_arg": 2}, "tracing.sampler_arg"),
    ({"protocol": "grpc+tls"}, "tracing.protocol"),
    ({"enabled": "yes"}, "tracing.enabled"),
    ({"service_name": "x"}, "tracing.service_name"),
])
def test_a_bad_table_value_fails_the_start_naming_its_key(table, key):
    with pytest.raises(ConfigError) as raised:
        parse_server({"tracing": table})
    assert raised.value.key == key


def test_the_command_line_reads_the_table_and_the_environment_over_it(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('[tracing]\nenabled = true\nprotocol = "grpc"\nendpoint = "http://toml:4317"\n')
    assert load_config(["--config", str(path)], {}).tracing == TracingConfig(
        enabled=True, protocol="grpc", endpoint="http://toml:4317")
    assert load_config(["--config", str(path)], {"OTEL_SDK_DISABLED": "true"}).tracing.enabled is False
    kserve = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert load_config([], kserve).tracing.endpoint == "http://collector:4318/v1/traces"


def test_the_service_is_named_inference_server_unless_the_environment_names_it(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    attrs = service_resource().attributes
    assert attrs["service.name"] == "inference-server" and attrs["deployment.environment"] == "test"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,service.version=9")
    attrs = service_resource().attributes
    assert (attrs["service.name"], attrs["service.version"]) == ("from-attributes", "9")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-name")
    assert service_resource().attributes["service.name"] == "from-name"


def sdk_sampler(monkeypatch: pytest.MonkeyPatch, name: str, arg: float | None):
    """The sampler the SDK itself builds from OTEL_TRACES_SAMPLER and its argument: the reference for ours."""
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if arg is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", str(arg))
    return TracerProvider().sampler


@pytest.mark.parametrize("header", [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",  # another flag beside sampled
    " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\t",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",  # a later version may add fields
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 may not
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-" + "x" * 600,
    "garbage",
])
def test_the_traceparent_is_read_as_the_sdks_propagator_reads_it(header):
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = get_current_span(TraceContextTextMapPropagator().extract({"traceparent": header})).get_span_context()
    expected = (context.trace_id, context.span_id, context.trace_flags) if context.is_valid else None
    assert remote_parent(header) == expected


@pytest.mark.parametrize("sampler", ["traceidratio", "parentbased_traceidratio", "parentbased_always_off",
                                     "always_on"])
def test_the_decision_is_the_sdk_samplers(sampler, monkeypatch):
    """begin decides without asking the SDK; for every request, traced or not, the decision is the one the SDK's
    sampler of that name makes (asked here directly), and a traced request's span has the trace id the log lines
    were given."""
    import secrets

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(enabled=True, sampler=sampler, sampler_arg=0.5), exporter)
    reference = sdk_sampler(monkeypatch, sampler, 0.5)
    decisions = []
    try:
        for i in range(300):
            header = "" if i % 3 == 0 else f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-0{i % 2}"
            scope, trace_id = tracing.begin(InferRequest("m", [], traceparent=header))
            parent = TraceContextTextMapPropagator().extract({"traceparent": header}) if header else None
            expected = reference.should_sample(parent, trace_id, "InferRequest").decision.is_sampled()
            assert (scope is not None) == expected
            if scope is not None:
                assert scope.context.trace_id == trace_id
                scope.end()
            decisions.append(expected)
    finally:
        asyncio.run(tracing.close(1.0))
    if sampler not in ("always_on", "parentbased_always_off"):
        assert 0 < sum(decisions) < len(decisions)  # both kinds of decision were made
    assert len(exporter.get_finished_spans()) == sum(decisions)


def in_memory(cfg: TracingConfig = ON):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    return Tracing(cfg, exporter), exporter


def served(tracing: Tracing, request: InferRequest, batch: BatchMarks | None = None, error: Exception | None = None):
    """A request's spans as the service makes them: InferRequest, the model span, compute (from its marks)."""
    scope, trace_id = tracing.begin(request)
    if scope is None:
        return None
    model = scope.model("m", "1")
    now = time.time_ns()
    model.computed(Marks(now, now + 1_000, now + 2_000, batch))
    if error is not None:
        model.fail(error)
        scope.fail(error)
    model.end()
    scope.end()
    return trace_id


def test_every_traced_requests_compute_links_to_a_recorded_batch_whatever_the_sampler_says_of_its_trace():
    """A batch span is a trace of its own, kept whenever one of its requests is: a ratio sampler would drop half
    of them by their trace ids."""
    tracing, exporter = in_memory(TracingConfig(enabled=True, sampler="traceidratio", sampler_arg=0.5))
    try:
        now = time.time_ns()
        batches = [BatchMarks("m", 3, 7, now, now + 5_000) for _ in range(60)]
        traced = [served(tracing, InferRequest("m", [], id=str(i)), batches[i // 3]) for i in range(180)]
        assert tracing.flush(5)
    finally:
        asyncio.run(tracing.close(1.0))
    spans = exporter.get_finished_spans()
    batch_spans = {s.context.span_id: s for s in spans if s.name == "batch"}
    computes = [s for s in spans if s.name == "compute"]
    assert len(computes) == sum(t is not None for t in traced) and 0 < len(computes) < 180
    for compute in computes:
        (link,) = compute.links
        batch = batch_spans[link.context.span_id]
        assert batch.attributes[BATCH_REQUESTS] == 3 and batch.context.trace_flags.sampled
    # one span per batch however many of its requests were traced, and none for a batch none of them was
    assert len(batch_spans) == len({id(batches[i // 3]) for i, t in enumerate(traced) if t is not None})


def test_spans_continue_the_callers_trace_and_encode_as_the_sdks_own_spans():
    """The parent chain, the caller's tracestate on every span of its trace, the kinds, and the OTLP encoding the
    exporters send (the receiver tests decode it again)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.trace import SpanKind

    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracing, exporter = in_memory()
    try:
        now = time.time_ns()
        served(tracing, InferRequest("m", [], id="r1", traceparent=caller, tracestate="vendor=a", protocol="grpc"),
               BatchMarks("m", 1, 1, now, now + 1_000))
        assert tracing.flush(5)
    finally:
        asyncio.run(tracing.close(1.0))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request, model, compute = spans["InferRequest"], spans["m"], spans["compute"]
    assert request.parent.span_id == 0xb7ad6b7169203331 and request.parent.is_remote
    assert model.parent.span_id == request.context.span_id and compute.parent.span_id == model.context.span_id
    assert {s.context.trace_id for s in (request, model, compute)} == {0x0af7651916cd43dd8448eb211c80319c}
    assert all(s.context.trace_state.get("vendor") == "a" for s in (request, model, compute))
    assert (request.kind, model.kind) == (SpanKind.SERVER, SpanKind.INTERNAL)
    assert [e.name for e in compute.events] == ["QUEUE_START", "COMPUTE_START", "COMPUTE_END"]
    assert compute.start_time == compute.events[0].timestamp and compute.end_time == compute.events[2].timestamp
    assert dict(request.attributes) == {"triton.model_name": "m", "triton.request_id": "r1",
                                        "inference.protocol": "grpc", "triton.model_version": "1"}
    decoded = ExportTraceServiceRequest.FromString(encode_spans(list(spans.values())).SerializeToString())
    (resource_spans,) = decoded.resource_spans
    names = {span.name: span for scope in resource_spans.scope_spans for span in scope.spans}
    assert set(names) == {"InferRequest", "m", "compute", "batch"}
    assert names["compute"].links[0].span_id == spans["batch"].context.span_id.to_bytes(8, "big")
    assert names["InferRequest"].trace_state == "vendor=a"


def test_a_failure_is_recorded_as_the_sdk_records_it_and_nothing_changes_a_span_once_it_ended():
    tracing, exporter = in_memory()
    try:
        now = time.time_ns()
        batch = BatchMarks("m", 2, 2, now, now + 1_000, error_code="INTERNAL", error="INTERNAL: the model failed")
        served(tracing, InferRequest("m", []), batch, error=ValueError("bad value"))
        scope, _ = tracing.begin(InferRequest("m", []))
        assert scope is not None
        scope.end()
        scope.cache("hit")  # after its end: not on the span that left
        scope.end()  # once only
        assert tracing.flush(5)
    finally:
        asyncio.run(tracing.close(1.0))
    spans = exporter.get_finished_spans()
    failed = [s for s in spans if s.name == "InferRequest" and not s.status.is_ok]
    (request,) = failed
    assert request.status.description == "INTERNAL: ValueError: bad value"
    assert request.attributes["error.type"] == "INTERNAL"
    (event,) = request.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert "bad value" in event.attributes["exception.stacktrace"]
    compute = next(s for s in spans if s.name == "compute")
    assert (compute.status.description, compute.attributes["error.type"]) == ("INTERNAL: the model failed",
                                                                              "INTERNAL")
    batch = next(s for s in spans if s.name == "batch")
    assert batch.status.description == "INTERNAL: the model failed"
    untouched = [s for s in spans if s.name == "InferRequest" and s.status.is_ok]
    assert len(untouched) == 1 and "inference.cache" not in untouched[0].attributes


def test_an_invalid_tracestate_costs_a_request_left_out_nothing_and_a_kept_one_a_rate_limited_line(caplog):
    """The tracestate is read only for a request that is kept: the SDK warns of an invalid one on each reading."""
    tracing, exporter = in_memory()
    caplog.set_level(logging.WARNING)
    try:
        bad = "not a tracestate, at all"
        for _ in range(5):  # a caller's trace that is not sampled: no span, and the tracestate is never parsed
            scope, _ = tracing.begin(InferRequest("m", [], tracestate=bad,
                                                  traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"))
            assert scope is None
        assert not [r for r in caplog.records if r.name == "opentelemetry.trace.span"]
        for _ in range(5):  # sampled: traced, its tracestate dropped as the SDK's propagator drops it, logged once
            scope, _ = tracing.begin(InferRequest("m", [], tracestate=bad,
                                                  traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
            assert scope is not None and len(scope.context.trace_state) == 0
            scope.end()
        assert len([r for r in caplog.records if r.name == "opentelemetry.trace.span"]) == 1
    finally:
        asyncio.run(tracing.close(1.0))


def test_the_sdks_attribute_length_limit_applies(monkeypatch):
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
    tracing, exporter = in_memory()
    try:
        served(tracing, InferRequest("m", [], id="a-very-long-request-id"))
        assert tracing.flush(5)
    finally:
        asyncio.run(tracing.close(1.0))
    request = next(s for s in exporter.get_finished_spans() if s.name == "InferRequest")
    assert request.attributes["triton.request_id"] == "a-very-l"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "lib") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_a_repeating_library_line_passes_once_a_minute_with_the_count_left_out():
    clock = Clock()
    limit = RateLimited(60.0, clock)
    first = record("Transient error %s, retrying in %.2fs", "UNAVAILABLE", 1.0)
    assert limit.filter(first) and first.getMessage() == "Transient error UNAVAILABLE, retrying in 1.00s"
    for seconds in (1, 10, 59):
        clock.now = seconds
        assert not limit.filter(record("Transient error %s, retrying in %.2fs", "UNAVAILABLE", 2.0))
    assert limit.filter(record("Failed to export to %s", "collector"))  # another line has its own minute
    assert limit.filter(record("Transient error %s, retrying in %.2fs", "UNAVAILABLE", 1.0, name="other"))
    clock.now = 60.5
    late = record("Transient error %s, retrying in %.2fs", "UNAVAILABLE", 4.0)
    assert limit.filter(late)
    assert late.getMessage() == ("Transient error UNAVAILABLE, retrying in 4.00s (3 more like it left out of the log "
                                 "since the last)")
    clock.now = 61
    assert not limit.filter(record("Transient error %s, retrying in %.2fs", "UNAVAILABLE", 8.0))


def test_the_exporters_loggers_are_rate_limited_once_tracing_is_built(caplog):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracing = Tracing(TracingConfig(enabled=True), InMemorySpanExporter())
    try:
        for name in EXPORT_LOGGERS:
            assert EXPORT_LOG in logging.getLogger(name).filters
        caplog.set_level(logging.WARNING)
        logger = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
        for _ in range(5):
            logger.warning("Failed to export %s to %s (test line)", "traces", "localhost:4317")
        assert len([r for r in caplog.records if "(test line)" in r.getMessage()]) == 1
    finally:
        asyncio.run(tracing.close(1.0))


class StuckExporter:
    """An exporter whose collector never answers (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = threading.Event()

    def export(self, spans):
        self.exported.set()
        self.release.wait(30)
        return SpanExportResult.FAILURE

    def shutdown(self):
        self.release.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_the_shutdown_gives_up_on_a_collector_that_does_not_answer(caplog):
    from inference_server.protocol.tensors import InferRequest

    exporter = StuckExporter()
    tracing = Tracing(TracingConfig(enabled=True), exporter)  # type: ignore[arg-type]
    scope, _ = tracing.begin(InferRequest("m", []))
    assert scope is not None
    scope.end()
    started = time.monotonic()
    asyncio.run(tracing.close(0.2))
    assert time.monotonic() - started < 5  # bounded: not the exporter's 30 s
    assert "did not reach the collector" in caplog.text
    exporter.release.set()


def test_tracing_module_is_the_only_place_opentelemetry_is_imported():
    """The rest of the core holds Scopes and Marks; the SDK stays an extra (imported when tracing is on)."""
    import ast
    from pathlib import Path

    package = Path(tracing_module.__file__).parents[1]
    importers = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.startswith("opentelemetry") for n in names) and not _under_type_checking(tree, node):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"observability/tracing.py"}


def _under_type_checking(tree, node) -> bool:
    import ast

    return any(isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING" and
               node in ast.walk(n) for n in ast.walk(tree))


def test_a_failed_execution_gives_its_batch_and_compute_spans_the_error():
    """32 requests failing in one execution read as one failed execution, not 32 unrelated failures."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from inference_server.observability.trace_marks import BatchMarks, Marks

    exporter = InMemorySpanExporter()
    tracing = Tracing(ON, exporter)
    batch = BatchMarks("m", 2, 2, 10, 20, error_code="INTERNAL", error="INTERNAL: RuntimeError: boom")
    for i in range(2):
        scope, _ = tracing.begin(InferRequest("m", [], id=str(i), protocol="grpc"))
        assert scope is not None
        model = scope.model("m", "1")
        model.computed(Marks(queue_start_ns=5, compute_start_ns=10, compute_end_ns=20, batch=batch))
        model.end()
        scope.end()
    assert tracing.flush(10)
    spans = exporter.get_finished_spans()
    batches = [s for s in spans if s.name == "batch"]
    computes = [s for s in spans if s.name == "compute"]
    assert len(batches) == 1 and len(computes) == 2
    for span in (*batches, *computes):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "INTERNAL: RuntimeError: boom"
        assert span.attributes is not None and span.attributes["error.type"] == "INTERNAL"
    assert all(c.links[0].context.span_id == batches[0].context.span_id for c in computes)


def test_the_start_up_line_names_the_endpoint_without_its_credentials():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracing = Tracing(ON, InMemorySpanExporter())
    tracing._otlp = True  # as with the OTLP exporter: the line names where spans go
    tracing.cfg = TracingConfig(enabled=True, endpoint="https://user:secret@collector:4318/v1/traces")
    described = tracing.describe()
    assert "https://collector:4318/v1/traces" in described and "secret" not in described and "user" not in described
