#!/usr/bin/env python3
"""Draw README's picture of a trace, docs/images/trace.svg, from a real one:

    .venv/bin/python scripts/trace_waterfall.py                 # capture a trace and draw it
    .venv/bin/python scripts/trace_waterfall.py --spans t.json  # draw spans saved before (--save-spans)

The capture runs everything for real, on 127.0.0.1 and ports the kernel picks: the tests' OTLP receiver
(tests/support/otlp_receiver.py, gRPC), our server as a process (`python -m inference_server`) configured only by
the OTEL_* environment, and a backend traced with the OpenTelemetry SDK, which exports to the same receiver. The
backend's span `score users` makes one client span per user, all at once over gRPC, each carrying its traceparent;
the server batches the four requests of the benchmarks' cheap MLP into one execution. The picture is that trace
and the batch span its compute spans link to, drawn by tests/support/waterfall.py. Timings differ from run to run;
the shape does not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repository's packages (tests.support, benchmarks)

import numpy as np  # noqa: E402
import tritonclient.grpc.aio as aioclient  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: E402

from benchmarks.models import MODELS  # noqa: E402
from tests.support import onnx_models  # noqa: E402
from tests.support.otlp_receiver import Span, grpc_receiver  # noqa: E402
from tests.support.server_process import ServerProcess  # noqa: E402
from tests.support.waterfall import dump, load, render  # noqa: E402

OUT = ROOT / "docs" / "images" / "trace.svg"
USERS = 4
MODEL = "cheap"
# Four rows make a full batch; the delay only has to outlast the four requests' arrival.
CONFIG = f"[batching]\nmax_batch_size = {USERS}\nmax_queue_delay_us = 20000\n"


async def call_server(url: str, tracer: trace.Tracer) -> str:
    """The backend's trace: `score users` > a CLIENT span per user, each an infer call over gRPC. Its trace id."""
    rng = np.random.default_rng(0)
    propagator = TraceContextTextMapPropagator()

    async def infer(client: aioclient.InferenceServerClient, user: int) -> None:
        with tracer.start_as_current_span(f"infer {MODEL} (user {user})", kind=SpanKind.CLIENT):
            headers: dict[str, str] = {}
            propagator.inject(headers)
            x = aioclient.InferInput("x", [1, 64], "FP32")
            x.set_data_from_numpy(MODELS[MODEL].sample(rng, 1)["x"])
            await client.infer(MODEL, [x], request_id=f"user-{user}", headers=headers)

    async with aioclient.InferenceServerClient(url) as client:
        await infer(client, 0)  # a first call warms the connection, outside the picture
        with tracer.start_as_current_span("score users", kind=SpanKind.SERVER) as root:
            await asyncio.gather(*(infer(client, user) for user in range(1, USERS + 1)))
    return format(root.get_span_context().trace_id, "032x")


def capture(work: Path) -> list[Span]:
    """The backend's trace, through a real server, as the receiver got it, with the batch spans it links to."""
    onnx_models.write_model(work / "repo", MODEL, MODELS[MODEL].build(), CONFIG)
    with grpc_receiver() as receiver:
        server = ServerProcess(["--model-repository", str(work / "repo")], work / "server.log", env=receiver.env())
        backend = TracerProvider(resource=Resource.create({"service.name": "backend"}))
        backend.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)))
        try:
            server.wait_serving()
            trace_id = asyncio.run(call_server(server.url, backend.get_tracer("backend")))
            # the backend's root and client spans, and per user the server's InferRequest, model and compute spans
            receiver.wait_for(lambda spans: sum(s.trace_id == trace_id for s in spans) >= 1 + 4 * USERS,
                              what="the backend's and the server's spans")
            in_trace = receiver.by_trace(trace_id)
            linked = {link.span_id for s in in_trace for link in s.links}
            spans = receiver.wait_for(lambda spans: linked <= {s.span_id for s in spans}, what="the batch spans")
            return in_trace + [s for s in spans if s.span_id in linked]
        finally:
            server.kill()
            backend.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=Path, help="draw these spans (JSON, from --save-spans) instead of capturing")
    parser.add_argument("--save-spans", type=Path, help="also write the captured spans here as JSON")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the SVG to write (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()
    if args.spans:
        spans = load(args.spans.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="trace-waterfall-") as work:
            spans = capture(Path(work))
        if args.save_spans:
            args.save_spans.write_text(dump(spans))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"A backend's trace through inference_server: {USERS} concurrent gRPC calls, one batch "
             f"(trace {spans[0].trace_id[:8]}…)")
    args.out.write_text(render(spans, title))
    print(f"wrote {args.out} ({len(spans)} spans)")


if __name__ == "__main__":
    main()
