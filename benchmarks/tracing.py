"""The tracing scenario: what OpenTelemetry tracing costs in throughput, the cheap and the compute-bound MLP at
concurrency 32, tracing off, sampled at 1 % and at 100 %, side by side in one run.

Each configuration is a server of ours configured the way a platform configures it, by the environment alone:
off (no OTEL_* variable); 1 % (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`);
100 % (`OTEL_TRACES_SAMPLER=parentbased_always_on`, the default). Both traced ones export with the
specification's default protocol (OTLP HTTP/protobuf) and the SDK's default batching (a 5 s schedule) to a real
receiver in this process (tests/support/otlp_receiver.py, counting the spans by name: InferRequest, the model's
span, compute and batch). The load generator's requests carry no traceparent: each is a root, sampled by its
trace id. A fresh server per point (its spans flushed when it stops, so no export work spills into the next
point), and the configurations take turns, ABC then CBA, so that a drift of the shared machine's speed falls on
all of them alike. The helpers come from points.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

from benchmarks.models import write
from benchmarks.points import AIO, BATCHING, OURS, REPO, batch_summary, drive, make_point, our_server, samples
from tests.support.otlp_receiver import Receiver, receiver

MODELS = ("cheap", "large")
CONCURRENCY = 32
PROTOCOL = "http/protobuf"  # the specification's default, what OTEL_EXPORTER_OTLP_ENDPOINT alone gives
SCHEDULE_DELAY_MS = 5000  # the SDK's default OTEL_BSP_SCHEDULE_DELAY
OFF, ONE, ALL = "off", "1 %", "100 %"
SAMPLING = {OFF: None,
            ONE: {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            ALL: {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}}
TARGET_AT_ONE = 0.97  # the issue: throughput cost <= 3 % sampled at 1 %
ROUNDS = 2  # each round: off, 1 %, 100 %, then 100 %, 1 %, off
TRACING_LINE = re.compile(r"tracing: (.*)$", re.MULTILINE)
COLUMNS = [("model", "model", "s"), ("tracing", "config", "s"), ("turn", "turn", "d"),
           ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"),
           ("mean batch", "mean_batch_rows", ".1f"), ("requests", "server_rows", "d"),
           ("traced", "requests_traced", "d"), ("traced share", "traced_share", ".4f"),
           ("spans received", "spans_received", "d"), ("errors", "error_count", "d")]
RATIO_COLUMNS = [("model", "model", "s"), ("tracing", "config", "s"), ("infer/s vs off (means)", "pair", "s"),
                 ("ratio", "ratio", ".3f"), ("cost", "cost", "s"), ("ratio per round", "per_round", "s"),
                 ("target", "target", "s"), ("met", "met", "s")]


def turns(rounds: int) -> list[str]:
    """The configurations' order: ABC CBA, `rounds` times."""
    order = list(SAMPLING)
    return [config for _ in range(rounds) for config in (*order, *reversed(order))]


def point(model: str, config: str, turn: int, collector: Receiver, args: argparse.Namespace) -> dict:
    """One fresh server with the configuration's environment, driven at c=32 for args.duration_s."""
    sampling = SAMPLING[config]
    env = {"OTEL_SDK_DISABLED": "true"} if sampling is None else {  # off whatever the caller's environment says
        **collector.env(schedule_delay_ms=SCHEDULE_DELAY_MS), "OTEL_EXPORTER_OTLP_PROTOCOL": PROTOCOL, **sampling}
    write(REPO, model, BATCHING)
    before = Counter(collector.names)
    with our_server(env=env) as server:
        summary = drive(server.url, samples(model), AIO, CONCURRENCY, args, f"{model} tracing {config}")
        code = server.terminate()  # the last spans are exported before it exits
    log = server.log()
    counts = batch_summary(log, model)
    if code != 0 or counts is None:
        raise RuntimeError(f"server exited {code} without batch statistics:\n{log[-2000:]}")
    said = TRACING_LINE.search(log)
    if said is None or (said[1] == "off") != (sampling is None):
        raise RuntimeError(f"tracing {config}, but the server says: {said[0] if said else 'nothing'}")
    received = collector.names - before
    result = make_point(summary, target=OURS, model=model, gen=AIO, concurrency=CONCURRENCY, counts=counts,
                        config=config)
    # every request is one row: the server's rows are its requests, the warm-up's included
    result.update(turn=turn, server_rows=counts[1], tracing=said[1], spans_received=sum(received.values()),
                  spans_by_name=dict(received), requests_traced=received["InferRequest"],
                  traced_share=round(received["InferRequest"] / max(counts[1], 1), 4))
    return result


def ratio_rows(points: list[dict]) -> list[dict]:
    """Per model and traced configuration: mean infer/s against the mean with tracing off, and per round (each
    round's points against that round's off points)."""
    rows = []
    for model in MODELS:
        mine = [p for p in points if p["model"] == model]
        off = [p for p in mine if p["config"] == OFF]
        for config in (ONE, ALL):
            on = [p for p in mine if p["config"] == config]
            if not on or not off:
                continue
            mean_on = sum(p["infer_per_s"] for p in on) / len(on)
            mean_off = sum(p["infer_per_s"] for p in off) / len(off)
            ratio = mean_on / mean_off
            per_round = []
            for r in sorted({p["turn"] // len(turns(1)) for p in on}):
                a = [p["infer_per_s"] for p in on if p["turn"] // len(turns(1)) == r]
                b = [p["infer_per_s"] for p in off if p["turn"] // len(turns(1)) == r]
                if a and b:
                    per_round.append(f"{sum(a) / len(a) / (sum(b) / len(b)):.3f}")
            applies = config == ONE
            rows.append({"model": model, "config": config, "pair": f"{mean_on:.0f} / {mean_off:.0f}",
                         "ratio": round(ratio, 4), "cost": f"{(1 - ratio) * 100:+.1f} %",
                         "per_round": ", ".join(per_round), "target": f">= {TARGET_AT_ONE}" if applies else "stated",
                         "met": ("yes" if ratio >= TARGET_AT_ONE else "no") if applies else "–"})
    return rows


def tracing_scenario(args: argparse.Namespace) -> dict:
    order = list(SAMPLING) if args.quick else turns(ROUNDS)
    points: list[dict] = []
    failures: list[str] = []
    with receiver(PROTOCOL, keep=False) as collector:
        for model in MODELS:
            for turn, config in enumerate(order):
                try:
                    points.append(point(model, config, turn, collector, args))
                except Exception as e:  # reported with the results; the other points still run
                    failures.append(f"{model}, tracing {config}, turn {turn}: {type(e).__name__}: {str(e)[-800:]}")
                    sys.stderr.write(f"  {failures[-1]}\n")
    ratios = ratio_rows(points)
    notes = [f"{r['model']}, c={CONCURRENCY}, sampled at {r['config']}: {r['ratio']:.3f} of the throughput with "
             f"tracing off ({r['pair']} infer/s; cost {r['cost']}; per round {r['per_round']})"
             + (f"; target cost <= 3 % (ratio >= {TARGET_AT_ONE}): {'met' if r['met'] == 'yes' else 'MISSED'}"
                if r["config"] == ONE else "") for r in ratios]
    notes += [f"Tracing through the environment only: off is OTEL_SDK_DISABLED=true (no endpoint either); 1 % is "
              f"OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG=0.01; 100 % is "
              f"parentbased_always_on. Export: OTLP {PROTOCOL} to a receiver in the benchmark's process (which "
              f"shares the CPUs with the load generator), the SDK's batch span processor with its default "
              f"{SCHEDULE_DELAY_MS} ms schedule. The requests carry no traceparent, so each is a root sampled by "
              "its trace id; 'traced share' is InferRequest spans received / requests the server answered "
              "(warm-up included), 'spans received' every span of the point (InferRequest, the model's span, compute "
              "and one batch span per traced execution).",
              f"Turns: a fresh server per point, the configurations in the order {', '.join(order)} per model, "
              f"so that each ratio compares points measured side by side; the ratio is of the mean infer/s, and "
              "'per round' gives each ABC-CBA round's own ratio (its spread is the machine's noise). Both models: "
              "max_batch_size 64, no queue delay, load generator tritonclient.grpc.aio at concurrency "
              f"{CONCURRENCY}."]
    notes += [f"could not run: {f}" for f in failures]
    return {"title": "OpenTelemetry tracing's cost: off, sampled at 1 % and at 100 %, cheap and compute-bound MLP, "
                     f"concurrency {CONCURRENCY}",
            "points": points, "ratios": ratios, "failures": failures,
            "tables": [{"title": "Points, in the order they ran", "columns": COLUMNS, "rows": points},
                       {"title": "Throughput against tracing off, measured side by side", "columns": RATIO_COLUMNS,
                        "rows": ratios}],
            "notes": notes}
