"""The waterfall renderer (tests/support/waterfall.py): valid SVG with one bar per span, in tree order, placed by
time, with event ticks and link lines; spans survive a JSON round trip; README's picture (docs/images/trace.svg,
drawn by scripts/trace_waterfall.py from a real trace) is such an SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.otlp_receiver import Event, Link, Span, Status
from tests.support.waterfall import ERROR_COLOUR, dump, load, render, tick_step, tree_order

SVG = "{http://www.w3.org/2000/svg}"
PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "trace.svg"
TRACE, BATCH_TRACE = "ab" * 16, "cd" * 16
MS = 1_000_000
T0 = 1_700_000_000_000_000_000
UNSET = Status("UNSET", "")


def span(name: str, span_id: str, parent: str, start_ms: float, end_ms: float, *, trace_id: str = TRACE,
         service: str = "inference-server", events: tuple[Event, ...] = (), links: tuple[Link, ...] = (),
         status: Status = UNSET, attributes: dict | None = None) -> Span:
    return Span(name=name, trace_id=trace_id, span_id=span_id, parent_span_id=parent, kind="INTERNAL",
                start_ns=T0 + int(start_ms * MS), end_ns=T0 + int(end_ms * MS), attributes=attributes or {},
                events=events, links=links, status=status, resource={"service.name": service}, scope="test")


def trace() -> list[Span]:
    """A client span, the server's request > model > compute (three events, a link to a batch), a failed
    request, and the batch, a trace of its own; given out of order."""
    events = tuple(Event(n, T0 + int(t * MS), {}) for n, t in
                   (("QUEUE_START", 2.0), ("COMPUTE_START", 3.0), ("COMPUTE_END", 4.0)))
    return [
        span("batch", "b" * 16, "", 3.0, 4.0, trace_id=BATCH_TRACE, attributes={"inference.batch.requests": 2}),
        span("compute", "4" * 16, "3" * 16, 2.0, 4.0, events=events, links=(Link(BATCH_TRACE, "b" * 16, {}),)),
        span("mlp", "3" * 16, "2" * 16, 1.5, 4.5),
        span("InferRequest", "2" * 16, "1" * 16, 1.0, 5.0, attributes={"triton.model_name": "mlp"}),
        span("InferRequest", "5" * 16, "1" * 16, 6.0, 7.0,
             status=Status("ERROR", "INVALID_ARGUMENT: unexpected input 'x<&>'")),
        span("score <users> & more", "1" * 16, "f" * 16, 0.0, 8.0, service="backend"),
    ]


def bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # well-formed XML, or ParseError
    assert root.tag == f"{SVG}svg"
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "span"]


def labels(svg: str) -> list[ET.Element]:
    """The row labels: the texts that start with the row's number."""
    return [e for e in ET.fromstring(svg).iter(f"{SVG}text") if e.find(f"{SVG}tspan") is not None]


def test_one_bar_per_span_in_tree_order_placed_by_time():
    spans = trace()
    svg = render(spans, title="a <test> trace")
    found = bars(svg)
    assert len(found) == len(spans)
    rows = tree_order(spans)
    assert [(s.name, depth) for s, depth in rows] == [
        ("score <users> & more", 0), ("InferRequest", 1), ("mlp", 2), ("compute", 3), ("InferRequest", 1),
        ("batch", 0)]
    # each bar's tooltip starts with its span's name; rows go down the page in that order
    assert [bar.find(f"{SVG}title").text.split(" (")[0] for bar in found] == [s.name for s, _ in rows]
    ys = [float(bar.get("y")) for bar in found]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)
    # x and width follow the times: the client span (0..8 ms) spans the axis, the request (1..5 ms) half of it
    x = {s.span_id: (float(bar.get("x")), float(bar.get("width"))) for (s, _), bar in zip(rows, found, strict=True)}
    client_x, client_w = x["1" * 16]
    request_x, request_w = x["2" * 16]
    assert request_x == pytest.approx(client_x + client_w / 8, abs=0.2)
    assert request_w == pytest.approx(client_w / 2, abs=0.2)
    # labels are indented by depth
    label_x = [float(t.get("x")) for t in labels(svg)]
    assert label_x[0] < label_x[1] < label_x[2] < label_x[3] and label_x[4] == label_x[1] and label_x[5] == label_x[0]


def test_events_are_ticks_links_are_lines_and_errors_are_red():
    spans = trace()
    svg = render(spans)
    root = ET.fromstring(svg)
    ticks = [e for e in root.iter(f"{SVG}line") if e.get("class") == "event"]
    assert [t.find(f"{SVG}title").text for t in ticks] == ["QUEUE_START", "COMPUTE_START", "COMPUTE_END"]
    assert [float(t.get("x1")) for t in ticks] == sorted(float(t.get("x1")) for t in ticks)
    (link,) = [e for e in root.iter(f"{SVG}line") if e.get("class") == "link"]
    rows = [s.name for s, _ in tree_order(spans)]
    bar_ys = [float(b.get("y")) for b in bars(svg)]
    # from the compute row down to the batch's row, at the batch's start
    y1, y2 = float(link.get("y1")), float(link.get("y2"))
    assert y1 - bar_ys[rows.index("compute")] == pytest.approx(y2 - bar_ys[rows.index("batch")]) and y1 < y2
    assert float(link.get("x1")) == float(bars(svg)[rows.index("batch")].get("x"))
    compute_label = "".join(labels(svg)[rows.index("compute")].itertext())
    assert "link #6" in compute_label  # the batch is row 6
    assert "(2 requests)" in "".join(labels(svg)[rows.index("batch")].itertext())
    fills = [b.get("fill") for b in bars(svg)]
    assert fills.count(ERROR_COLOUR) == 1 and fills[4] == ERROR_COLOUR
    assert len({fills[0], fills[1]}) == 2  # one colour per service


def test_spans_survive_json_and_nothing_to_draw_is_an_error():
    spans = trace()
    assert load(dump(spans)) == spans
    assert render(load(dump(spans))) == render(spans)
    with pytest.raises(ValueError, match="no spans"):
        render([])


def test_tick_steps_are_round():
    assert tick_step(8 * MS) == 2 * MS
    assert tick_step(1_000) == 200
    assert tick_step(3 * 1_000_000_000) == 500 * MS


def test_the_readmes_picture_is_a_drawn_trace():
    svg = PICTURE.read_text()
    found = bars(svg)
    names = [bar.find(f"{SVG}title").text.split(" (")[0] for bar in found]
    # scripts/trace_waterfall.py: the backend's root, 4 client spans, each request's three spans, one batch
    assert names[0] == "score users" and names[-1] == "batch" and len(found) == 1 + 4 * 4 + 1
    assert names.count("InferRequest") == names.count("compute") == 4
