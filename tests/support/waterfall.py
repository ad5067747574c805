"""A trace as a waterfall picture: the OTLP receiver's `Span` records (tests/support/otlp_receiver.py) rendered into
one self-contained SVG, written as text (no plotting library). Beside the receiver because it draws its records;
scripts/trace_waterfall.py captures a real trace and writes docs/images/trace.svg with it.

One row per span, in tree order (a parent, then its children by start time; each root, such as a batch span, which
starts a trace of its own, in start order): the name indented by depth on the left, a bar from the span's start to
its end on a time axis that starts at the earliest span, the duration beside the bar, each event a tick on the bar
(coloured by name, with a legend), and each link a dashed line to the linked span's row with a note in the label.
Bars are coloured by service (`service.name`); errors are red. Hovering a bar shows its attributes.

`dump` and `load` keep spans as JSON, so a captured trace can be drawn again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape

from tests.support.otlp_receiver import Event, Link, Span, Status

WIDTH = 1100
LABEL_W = 360  # the names' column
RIGHT_PAD = 90  # room for a duration right of a bar that ends at the axis's end
ROW_H = 22
BAR_H = 12
TOP = 64  # title and axis
INDENT = 14
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""
SERVICE_COLOURS = ("#4e79a7", "#59a14f", "#b07aa1", "#f28e2b", "#76b7b2", "#edc948")
ERROR_COLOUR = "#e15759"
EVENT_COLOURS = {"QUEUE_START": "#222222", "COMPUTE_START": "#ff7f0e", "COMPUTE_END": "#9467bd"}
# Attributes worth a note beside a span's name (the rest are in its tooltip)
NOTES = {"inference.batch.requests": "{} requests", "inference.route": "route {}",
         "inference.shadow.outcome": "{}"}
OTHER_EVENT = "#555555"


# -- spans as JSON -------------------------------------------------------------------------------------------------

def dump(spans: Iterable[Span]) -> str:
    """Spans as a JSON array of their fields (events, links and status as objects)."""
    return json.dumps([dataclasses.asdict(s) for s in spans], indent=1, sort_keys=True)


def load(text: str) -> list[Span]:
    """The spans that `dump` wrote."""
    spans = []
    for item in json.loads(text):
        item["events"] = tuple(Event(**e) for e in item["events"])
        item["links"] = tuple(Link(**link) for link in item["links"])
        item["status"] = Status(**item["status"])
        spans.append(Span(**item))
    return spans


# -- layout --------------------------------------------------------------------------------------------------------

def tree_order(spans: Sequence[Span]) -> list[tuple[Span, int]]:
    """(span, depth) in the order of the rows: each root by start time, then its subtree depth first. A span whose
    parent is not among `spans` is a root (a caller's span outside the picture, or a trace of its own)."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        if span.parent_span_id and span.parent_span_id in ids:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    rows: list[tuple[Span, int]] = []

    def visit(span: Span, depth: int) -> None:
        rows.append((span, depth))
        for child in children.get(span.span_id, []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    return rows


def tick_step(total_ns: int, wanted: int = 6) -> int:
    """A round step (1, 2 or 5 times a power of ten, in ns) that cuts `total_ns` into about `wanted` parts."""
    raw = max(total_ns / wanted, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def duration(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.0f} µs"


def axis_label(ns: int, step: int) -> str:
    """A tick's label, in the unit of the axis's step (0 ms, 2 ms, 4 ms...)."""
    for unit, size in (("s", 1_000_000_000), ("ms", 1_000_000), ("µs", 1_000)):
        if step >= size:
            return f"{ns / size:g} {unit}"
    return f"{ns} ns"


def describe(span: Span) -> str:
    """A bar's tooltip: its name, service, kind, duration, status and attributes."""
    lines = [f"{span.name} ({span.resource.get('service.name', '?')}, {span.kind}) {duration(span.duration_ns)}"]
    if span.status.code != "UNSET":
        lines.append(f"status {span.status.code}: {span.status.message}")
    lines += [f"{key} = {value}" for key, value in sorted(span.attributes.items())]
    lines += [f"event {e.name} at +{duration(e.time_ns - span.start_ns)}" for e in span.events]
    return "\n".join(lines)


# -- the picture ---------------------------------------------------------------------------------------------------

def render(spans: Sequence[Span], title: str = "") -> str:
    """The waterfall of `spans` as SVG text: one `<rect class="span">` per span."""
    if not spans:
        raise ValueError("no spans to draw")
    rows = tree_order(spans)
    row_of = {span.span_id: i for i, (span, _) in enumerate(rows)}
    t0 = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - t0, 1)
    axis_w = WIDTH - LABEL_W - RIGHT_PAD
    services = list(dict.fromkeys(str(s.resource.get("service.name", "?")) for s, _ in rows))
    colour = {name: SERVICE_COLOURS[i % len(SERVICE_COLOURS)] for i, name in enumerate(services)}
    event_names = list(dict.fromkeys(e.name for s, _ in rows for e in s.events))
    legend_rows = 1 + (1 if event_names else 0)
    height = TOP + len(rows) * ROW_H + 16 + legend_rows * 18 + 8

    def x(ns: int) -> float:
        return LABEL_W + (ns - t0) / total * axis_w

    def y(row: int) -> float:
        return TOP + row * ROW_H

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>']
    heading = title or f"trace {rows[0][0].trace_id}"
    out.append(f'<text x="8" y="20" font-size="14" font-weight="bold">{escape(heading)}</text>')

    # the time axis: a grid line and a label per round step
    step = tick_step(total)
    for i in range(int(total // step) + 1):
        tx = x(t0 + i * step)
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 8}" x2="{tx:.1f}" y2="{y(len(rows)):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{tx:.1f}" y="{TOP - 12}" text-anchor="middle" fill="#666666">'
                   f'{escape(axis_label(i * step, step))}</text>')

    for i, (span, depth) in enumerate(rows):
        top = y(i)
        if i % 2:
            out.append(f'<rect x="0" y="{top:.1f}" width="{WIDTH}" height="{ROW_H}" fill="#f7f7f7"/>')
        label = span.name
        notes = [note.format(span.attributes[key]) for key, note in NOTES.items() if key in span.attributes]
        if notes:
            label += f" ({', '.join(notes)})"
        if span.links:
            label += "  → " + ", ".join(f"link #{row_of[link.span_id] + 1}" if link.span_id in row_of
                                        else "link" for link in span.links)
        out.append(f'<text x="{8 + depth * INDENT}" y="{top + 15:.1f}">'
                   f'<tspan fill="#999999">{i + 1}</tspan> {escape(label)}</text>')
        left, right = x(span.start_ns), x(span.end_ns)
        fill = ERROR_COLOUR if span.status.code == "ERROR" else colour[str(span.resource.get("service.name", "?"))]
        bar_top = top + (ROW_H - BAR_H) / 2
        out.append(f'<rect class="span" x="{left:.1f}" y="{bar_top:.1f}" width="{max(right - left, 1.0):.1f}" '
                   f'height="{BAR_H}" rx="2" fill="{fill}"><title>{escape(describe(span))}</title></rect>')
        for event in span.events:
            ex = x(event.time_ns)
            out.append(f'<line class="event" x1="{ex:.1f}" y1="{bar_top - 3:.1f}" x2="{ex:.1f}" '
                       f'y2="{bar_top + BAR_H + 3:.1f}" stroke="{EVENT_COLOURS.get(event.name, OTHER_EVENT)}" '
                       f'stroke-width="2"><title>{escape(event.name)}</title></line>')
        for link in span.links:
            if link.span_id in row_of:
                target = rows[row_of[link.span_id]][0]
                lx = x(target.start_ns)
                out.append(f'<line class="link" x1="{lx:.1f}" y1="{top + ROW_H / 2:.1f}" x2="{lx:.1f}" '
                           f'y2="{y(row_of[link.span_id]) + ROW_H / 2:.1f}" stroke="#888888" '
                           f'stroke-dasharray="3,3"/>')
        text = escape(duration(span.duration_ns))
        if right + 70 < WIDTH:
            out.append(f'<text x="{right + 4:.1f}" y="{top + 15:.1f}" fill="#333333">{text}</text>')
        else:
            out.append(f'<text x="{left - 4:.1f}" y="{top + 15:.1f}" text-anchor="end" fill="#333333">{text}</text>')

    # legends: services, then events and links
    ly = y(len(rows)) + 20
    lx = 8.0
    for name in services:
        out.append(f'<rect x="{lx:.1f}" y="{ly - 10:.1f}" width="12" height="12" fill="{colour[name]}"/>')
        out.append(f'<text x="{lx + 16:.1f}" y="{ly:.1f}">service {escape(name)}</text>')
        lx += 30 + 7 * len(f"service {name}")
    out.append(f'<rect x="{lx:.1f}" y="{ly - 10:.1f}" width="12" height="12" fill="{ERROR_COLOUR}"/>')
    out.append(f'<text x="{lx + 16:.1f}" y="{ly:.1f}">error</text>')
    if event_names:
        ly += 18
        lx = 8.0
        for name in event_names:
            out.append(f'<line x1="{lx + 6:.1f}" y1="{ly - 11:.1f}" x2="{lx + 6:.1f}" y2="{ly + 2:.1f}" '
                       f'stroke="{EVENT_COLOURS.get(name, OTHER_EVENT)}" stroke-width="2"/>')
            out.append(f'<text x="{lx + 14:.1f}" y="{ly:.1f}">{escape(name)}</text>')
            lx += 28 + 8 * len(name)
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 18:.1f}" y2="{ly - 4:.1f}" stroke="#888888" '
                   f'stroke-dasharray="3,3"/>')
        out.append(f'<text x="{lx + 24:.1f}" y="{ly:.1f}">span link (→ #row)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

