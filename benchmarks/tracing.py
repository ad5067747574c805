"""The tracing scenario: what OpenTelemetry tracing costs in throughput, the cheap and the compute-bound MLP at
concurrency 32, tracing off, sampled at 1 % and at 100 %, side by side in one run.

Each configuration is a server of ours configured the way a platform configures it, by the environment alone:
off (`OTEL_SDK_DISABLED=true`); 1 % (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`);
100 % (`OTEL_TRACES_SAMPLER=parentbased_always_on`, the default). Both traced ones export with the
specification's default protocol (OTLP HTTP/protobuf) and the SDK's default batching (a 5 s schedule), each to a
real receiver of its own in this process (tests/support/otlp_receiver.py, counting spans by name). The load
generator's requests carry no traceparent: each is a root, sampled by its trace id.

The three servers of a model run at once (idle but for their turn) and take short turns: a warm-up round (each
once, not counted: the first turns of fresh servers ran up to a fifth slower), then rounds of off, 1 %, 1 %, off
(ABBA), then fewer rounds of off, 100 %, 100 %, off. The shared machine's speed drifts by tens of percent over
minutes, so only figures measured side by side compare; each round gives its own ratio, and the 1 % figure, the
one with a target, gets the most rounds and never follows a 100 % turn. The helpers come from points.py.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from pathlib import Path

from benchmarks.http import batch_counts, parse_stat
from benchmarks.models import write
from benchmarks.points import AIO, BATCHING, OURS, REPO, drive, make_point, our_server, samples
from tests.support.otlp_receiver import Receiver, receiver
from tests.support.server_process import ServerProcess

MODELS = ("cheap", "large")
CONCURRENCY = 32
PROTOCOL = "http/protobuf"  # the specification's default, what OTEL_EXPORTER_OTLP_ENDPOINT alone gives
SCHEDULE_DELAY_MS = 5000  # the SDK's default OTEL_BSP_SCHEDULE_DELAY
OFF, ONE, ALL = "off", "1 %", "100 %"
SAMPLING = {OFF: None,
            ONE: {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            ALL: {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}}
TARGET_AT_ONE = 0.97  # the issue: throughput cost <= 3 % sampled at 1 %
ROUNDS = {ONE: 8, ALL: 2}  # counted rounds of off, X, X, off for each traced configuration
TRACING_LINE = re.compile(r"tracing: (.*)$", re.MULTILINE)
COLUMNS = [("model", "model", "s"), ("tracing", "config", "s"), ("round", "round", "d"), ("turn", "turn", "d"),
           ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"),
           ("mean batch", "mean_batch_rows", ".1f"), ("server CPU µs/request", "server_us_per_request", ".0f"),
           ("errors", "error_count", "d")]
RATIO_COLUMNS = [("model", "model", "s"), ("tracing", "config", "s"), ("infer/s vs off (means)", "pair", "s"),
                 ("ratio", "ratio", ".3f"), ("cost", "cost", "s"), ("ratio per round", "per_round", "s"),
                 ("median of rounds", "median_round", ".3f"),
                 ("target", "target", "s"), ("met", "met", "s"),
                 ("server CPU µs/request vs off", "cpu_pair", "s"), ("CPU ratio", "cpu_ratio", ".3f"),
                 ("CPU ratio, median of rounds", "cpu_median_round", ".3f"),
                 ("traced share", "traced_share", ".4f"),
                 ("spans received", "spans_received", "d")]


def turns(rounds: dict[str, int]) -> list[tuple[int, str]]:
    """(round, configuration) in the order they run: round 0 is the warm-up (each configuration once, not counted),
    then `rounds[X]` rounds of off, X, X, off for each traced X."""
    order = [(0, config) for config in SAMPLING]
    for config in (ONE, ALL):
        for _ in range(rounds[config]):
            n = order[-1][0] + 1
            order += [(n, OFF), (n, config), (n, config), (n, OFF)]
    return order


def environment(config: str, collector: Receiver | None) -> dict[str, str]:
    sampling = SAMPLING[config]
    if sampling is None or collector is None:
        return {"OTEL_SDK_DISABLED": "true"}  # off, whatever the caller's environment says
    return {**collector.env(schedule_delay_ms=SCHEDULE_DELAY_MS), "OTEL_EXPORTER_OTLP_PROTOCOL": PROTOCOL,
            **sampling}


@contextmanager
def three_servers(model: str) -> Iterator[dict[str, tuple[ServerProcess, Receiver | None]]]:
    """A server per configuration, each traced one with a receiver of its own, all serving `model`."""
    write(REPO, model, BATCHING)
    with ExitStack() as stack:
        running = {}
        for i, config in enumerate(SAMPLING):
            collector = None if SAMPLING[config] is None else stack.enter_context(receiver(PROTOCOL, keep=False))
            server = stack.enter_context(our_server(env=environment(config, collector), log=f"server-{i}.log"))
            said = TRACING_LINE.search(server.log())
            if said is None or (said[1] == "off") != (collector is None):
                raise RuntimeError(f"tracing {config}, but the server says: {said[0] if said else 'nothing'}")
            running[config] = (server, collector)
        yield running


def cpu_s(server: ServerProcess) -> float:
    """The server process's CPU seconds so far (user + system, all its threads)."""
    return parse_stat(Path(f"/proc/{server.proc.pid}/stat").read_text())[1]


def measure(server: ServerProcess, model: str, config: str, args: argparse.Namespace) -> dict:
    """One turn. Besides throughput, the server's CPU per request over the turn (warm-up included on both sides):
    what tracing costs the server, which the machine's other users disturb less than they do throughput."""
    before, cpu_before = batch_counts(server.url, model), cpu_s(server)
    summary = drive(server.url, samples(model), AIO, CONCURRENCY, args, f"{model} tracing {config}")
    after, cpu_after = batch_counts(server.url, model), cpu_s(server)
    counts = (after[1] - before[1], after[0] - before[0]) if before and after else None
    point = make_point(summary, target=OURS, model=model, gen=AIO, concurrency=CONCURRENCY, counts=counts,
                       config=config)
    if counts and counts[1]:
        point["server_us_per_request"] = round((cpu_after - cpu_before) / counts[1] * 1e6, 1)
    return point


def model_points(model: str, order: list[tuple[int, str]], args: argparse.Namespace,
                 failures: list[str]) -> tuple[list[dict], dict[str, dict]]:
    """The model's points in turns, and per traced configuration what its receiver got against what its server
    answered."""
    points = []
    traced: dict[str, dict] = {}
    with three_servers(model) as running:
        for turn, (round_, config) in enumerate(order):
            try:
                point = measure(running[config][0], model, config, args)
                points.append({**point, "turn": turn, "round": round_})
            except Exception as e:  # reported with the results; the other points still run
                failures.append(f"{model}, tracing {config}, turn {turn}: {type(e).__name__}: {str(e)[-800:]}")
                sys.stderr.write(f"  {failures[-1]}\n")
        served = {config: batch_counts(server.url, model) for config, (server, _) in running.items()}
        for config, (server, collector) in running.items():
            code = server.terminate()  # a traced server exports its last spans before it exits
            if code != 0:
                failures.append(f"{model}, tracing {config}: the server exited {code}:\n{server.log()[-1500:]}")
            rows = served[config]
            if collector is not None and rows:
                traced[config] = {"requests": rows[0], "traced": collector.names["InferRequest"],
                                  "spans": sum(collector.names.values()), "by_name": dict(collector.names),
                                  "share": round(collector.names["InferRequest"] / max(rows[0], 1), 4)}
    return points, traced


def ratio_rows(points: list[dict], traced: dict[str, dict[str, dict]]) -> list[dict]:
    """Per model and traced configuration: mean infer/s against the mean with tracing off, and per round (each
    round's points against that round's off points)."""
    rows = []
    for model in MODELS:
        mine = [p for p in points if p["model"] == model and p["round"] > 0]  # round 0: the warm-up

        def mean(config: str, round_: int | None = None, key: str = "infer_per_s",
                 of: list[dict] = mine) -> float | None:
            got = [p[key] for p in of if p["config"] == config and round_ in (None, p["round"]) and p.get(key)]
            return sum(got) / len(got) if got else None

        for config in (ONE, ALL):
            rounds = sorted({p["round"] for p in mine if p["config"] == config})
            with_it = [p for p in mine if p["round"] in rounds]  # its rounds' off turns, side by side with it
            on, off = mean(config, of=with_it), mean(OFF, of=with_it)
            if not on or not off:
                continue
            ratio = on / off
            per_round = []
            for r in rounds:
                a, b = mean(config, r), mean(OFF, r)
                if a and b:
                    per_round.append(a / b)
            cpu_off = mean(OFF, key="server_us_per_request", of=with_it)
            applies = config == ONE
            spans = traced.get(model, {}).get(config, {})
            cpu_on = mean(config, key="server_us_per_request")
            rows.append({"model": model, "config": config, "pair": f"{on:.0f} / {off:.0f}",
                         "ratio": round(ratio, 4), "cost": f"{(1 - ratio) * 100:.1f} %",
                         "per_round": ", ".join(f"{r:.3f}" for r in per_round),
                         "median_round": round(statistics.median(per_round), 4) if per_round else None,
                         "target": f">= {TARGET_AT_ONE}" if applies else "stated",
                         "met": ("yes" if ratio >= TARGET_AT_ONE else "no") if applies else "–",
                         "cpu_pair": f"{cpu_on:.0f} / {cpu_off:.0f}" if cpu_on and cpu_off else "–",
                         "cpu_median_round": median_ratio(mine, config, rounds, "server_us_per_request"),
                         "cpu_ratio": round(cpu_on / cpu_off, 4) if cpu_on and cpu_off else None,
                         "traced_share": spans.get("share"), "spans_received": spans.get("spans")})
    return rows


def median_ratio(points: list[dict], config: str, rounds: list[int], key: str) -> float | None:
    """The median over rounds of the round's mean `key` for `config` against its off turns' mean."""
    ratios = []
    for r in rounds:
        on = [p[key] for p in points if p["round"] == r and p["config"] == config and p.get(key)]
        off = [p[key] for p in points if p["round"] == r and p["config"] == OFF and p.get(key)]
        if on and off:
            ratios.append((sum(on) / len(on)) / (sum(off) / len(off)))
    return round(statistics.median(ratios), 4) if ratios else None


def tracing_scenario(args: argparse.Namespace) -> dict:
    order = turns({ONE: 1, ALL: 1} if args.quick else ROUNDS)
    points: list[dict] = []
    traced: dict[str, dict[str, dict]] = {}
    failures: list[str] = []
    for model in MODELS:
        try:
            model_points_, traced[model] = model_points(model, order, args, failures)
            points += model_points_
        except Exception as e:  # a model whose servers cannot start is reported; the other still runs
            failures.append(f"{model}: {type(e).__name__}: {str(e)[-800:]}")
            sys.stderr.write(f"  {failures[-1]}\n")
    ratios = ratio_rows(points, traced)
    notes = [f"{r['model']}, c={CONCURRENCY}, sampled at {r['config']}: {r['ratio']:.3f} of the throughput with "
             f"tracing off ({r['pair']} infer/s; cost {r['cost']}; per round {r['per_round']}, median "
             f"{r['median_round']})"
             + (f"; target cost <= 3 % (ratio >= {TARGET_AT_ONE}): {'met' if r['met'] == 'yes' else 'MISSED'}"
                if r["config"] == ONE else "")
             + (f"; server CPU per request {r['cpu_pair']} µs ({r['cpu_ratio']:.2f}x)" if r["cpu_ratio"] else "")
             for r in ratios]
    notes += [f"Tracing through the environment only: off is OTEL_SDK_DISABLED=true; 1 % is "
              f"OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG=0.01; 100 % is "
              f"parentbased_always_on. Export: OTLP {PROTOCOL} to a receiver per traced server in the benchmark's "
              f"process (which shares the CPUs with the load generator and the servers), the SDK's batch span "
              f"processor with its default {SCHEDULE_DELAY_MS} ms schedule. The requests carry no traceparent, so "
              "each is a root sampled by its trace id. 'traced share': InferRequest spans received / requests its "
              "server answered (warm-ups included); 'spans received': all of that server's spans (InferRequest, "
              "the model's span, compute, and a batch span per traced execution). 'server CPU µs/request': the "
              "server process's CPU time (/proc/<pid>/stat) over a turn / the requests it answered in it.",
              f"Turns: the three servers of a model run at once, each measured in its turn: a warm-up round (each "
              f"once, shown as round 0, not counted), then {ROUNDS[ONE] if not args.quick else 1} rounds of off, 1 "
              f"%, 1 %, off and {ROUNDS[ALL] if not args.quick else 1} of off, 100 %, 100 %, off. A ratio is of the "
              "mean infer/s over its rounds' turns against their off turns; 'per round' gives each round's own "
              "ratio (their spread is the shared machine's noise) and the median of them. Both models: "
              "max_batch_size "
              f"64, no queue delay; load generator tritonclient.grpc.aio at concurrency {CONCURRENCY}, "
              f"{args.duration_s:g} s per turn after 1 s of warm-up."]
    notes += [f"could not run: {f}" for f in failures]
    return {"title": "OpenTelemetry tracing's cost: off, sampled at 1 % and at 100 %, cheap and compute-bound MLP, "
                     f"concurrency {CONCURRENCY}",
            "points": points, "ratios": ratios, "traced": traced, "failures": failures,
            "tables": [{"title": "Throughput against tracing off, measured side by side", "columns": RATIO_COLUMNS,
                        "rows": ratios},
                       {"title": "Turns, in the order they ran", "columns": COLUMNS, "rows": points}],
            "notes": notes}
