"""The http scenario: KServe v2 over HTTP/REST (Triton's binary tensor extension) against our own gRPC and against
Triton's HTTP front end (through PyTriton), cheap and compute-bound MLP, concurrency 1 and 32.

Per model, one server of ours serves both ports (gRPC and --http-port) and one Triton (PyTriton) runs beside it;
for each load generator and concurrency the points run back to back, interleaved: ours HTTP, Triton HTTP, ours
gRPC, Triton gRPC, so that the ratios compare figures measured side by side. Every process's CPU is read from
/proc/<pid>/stat while the points run (server, load generator, everything else). The helpers the scenarios share
come from points.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks import peers, perf_analyzer
from benchmarks.models import MODELS, write
from benchmarks.points import AIO, BATCHING, OURS, PA, REPO, WORK, make_point, our_server, samples
from clients.python import loadgen

TARGET_VS_TRITON = 1.0  # ours HTTP / Triton HTTP, infer/s at c=32, both models
TARGET_VS_GRPC = 0.7  # ours HTTP / ours gRPC, infer/s, cheap MLP
LEVELS = (1, 32)
TRITON = "Triton via PyTriton"
CLOCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.2  # CPU sampling period
COLUMNS = [("target", "target", "s"), ("model", "model", "s"), ("protocol", "protocol", "s"), ("load", "gen", "s"),
           ("concurrency", "concurrency", "d"), ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".2f"),
           ("p90 ms", "p90_ms", ".2f"), ("p99 ms", "p99_ms", ".2f"), ("mean batch", "mean_batch_rows", ".1f"),
           ("errors", "error_count", "d"), ("server CPU cores", "server_cores", ".2f"),
           ("server CPU µs/infer", "server_us_per_infer", ".0f"), ("load generator CPU cores", "loadgen_cores", ".2f"),
           ("idle other server CPU cores", "idle_server_cores", ".2f"), ("other CPU cores", "other_cores", ".2f")]
RATIO_COLUMNS = [("ratio", "what", "s"), ("model", "model", "s"), ("load", "gen", "s"),
                 ("concurrency", "concurrency", "d"), ("infer/s", "pair", "s"), ("ratio", "ratio", ".2f"),
                 ("target", "target", "s"), ("met", "met", "s"), ("p99 ms", "p99_pair", "s"),
                 ("errors", "errors", "d")]
LOG_PROBLEM = re.compile(r"^.*\b(ERROR|CRITICAL|Traceback|Exception)\b.*$", re.MULTILINE)


# -- CPU accounting from /proc ---------------------------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far: user + system, all threads) for every process visible."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError):  # gone meanwhile
            table[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
    return table


def parse_stat(text: str) -> tuple[int, float]:
    """(ppid, utime + stime in seconds) from one /proc/<pid>/stat line (the command name may hold spaces)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK


def subtree(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    """root and every descendant of it in a proc_table()."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in table and pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def machine_busy_s() -> float:
    ticks = [int(t) for t in Path("/proc/stat").read_text().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK  # all but idle and iowait


@dataclass
class Sample:
    at: float  # time.monotonic()
    cpu: dict[int, tuple[int, float]]  # proc_table()
    busy_s: float  # machine_busy_s()


class CpuSampler(loadgen.Sampler):
    """Samples every process's CPU every SAMPLE_S seconds in a thread; cores() gives a process tree's mean
    cores between two moments (only processes alive at both samples count: one that exits drops out)."""

    period_s = SAMPLE_S

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[Sample] = []

    def sample(self) -> None:
        self.samples.append(Sample(time.monotonic(), proc_table(), machine_busy_s()))

    def window(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        inside = [s for s in self.samples if start <= s.at <= end]
        return (inside[0], inside[-1]) if len(inside) >= 2 and inside[-1].at - inside[0].at >= 0.5 else None


def tree_cores(first: Sample, last: Sample, pids: set[int]) -> float:
    used = sum(last.cpu[p][1] - first.cpu[p][1] for p in pids if p in first.cpu and p in last.cpu)
    return used / (last.at - first.at)


def cpu_split(first: Sample, last: Sample, server: int, others: list[int]) -> dict[str, float]:
    """Mean cores over the window: the server's process tree; the other, idle server(s) of the scenario; the load
    generator (this process and its children other than the servers: perf_analyzer); everything else on the
    machine (other users of it)."""
    servers = subtree(last.cpu, server)
    idle = set().union(*(subtree(last.cpu, p) for p in others))
    loadgen_pids = subtree(last.cpu, os.getpid()) - servers - idle
    busy = (last.busy_s - first.busy_s) / (last.at - first.at)
    cores = {"server_cores": tree_cores(first, last, servers), "idle_server_cores": tree_cores(first, last, idle),
             "loadgen_cores": tree_cores(first, last, loadgen_pids)}
    cores["other_cores"] = max(busy - sum(cores.values()), 0.0)
    return {k: round(v, 3) for k, v in cores.items()}


# -- the points ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    label: str  # scenarios.OURS, or "Triton via PyTriton: Triton 2.51.0 via PyTriton 0.7.0"
    pid: int  # the root of its process tree
    grpc_url: str
    http_url: str
    alive: Callable[[], bool]


def batch_counts(grpc_url: str, model: str) -> tuple[int, int] | None:
    """(rows, batches) the server's model has executed so far, from ModelStatistics (ours and Triton alike)."""
    with suppress(Exception), grpcclient.InferenceServerClient(grpc_url) as client:
        stats = client.get_inference_statistics(model, client_timeout=5)
        if stats.model_stats:
            return int(stats.model_stats[0].inference_count), int(stats.model_stats[0].execution_count)
    return None


def wait_http_ready(http_url: str, model: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with suppress(OSError), urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/ready",
                                                       timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no HTTP answer from {http_url} for {model} after {timeout_s:.0f}s")
        time.sleep(0.1)


def drive(target: Target, protocol: str, gen: str, concurrency: int, work: loadgen.Workload,
          args: argparse.Namespace, work_dir: Path) -> dict:

    url = target.http_url if protocol == "http" else target.grpc_url
    label = f"{target.label.split(':')[0]} {work.model}" + (" grpc" if protocol == "grpc" else "")  # loadgen: http
    if gen == PA:
        return perf_analyzer.run(url, work.model, concurrency, measurement_ms=int(args.duration_s * 1000),
                                 work_dir=work_dir, protocol=protocol)
    run = loadgen.http_closed_loop if protocol == "http" else loadgen.closed_loop
    return asyncio.run(run(url, work, concurrency=concurrency, duration_s=args.duration_s, label=label)).summary()


def measure(target: Target, others: list[Target], protocol: str, gen: str, concurrency: int,
            work: loadgen.Workload, args: argparse.Namespace, sampler: CpuSampler, work_dir: Path) -> dict:

    before = batch_counts(target.grpc_url, work.model)
    start = time.monotonic()
    summary = drive(target, protocol, gen, concurrency, work, args, work_dir)
    end = time.monotonic()
    after = batch_counts(target.grpc_url, work.model)
    counts = (after[1] - before[1], after[0] - before[0]) if before and after else None
    point = make_point(summary, target=target.label, model=work.model, gen=gen, concurrency=concurrency, counts=counts)
    point["protocol"] = "HTTP" if protocol == "http" else "gRPC"
    # The steady part: after the closed loop's 1 s warm-up (perf_analyzer: its start-up), before its end.
    if window := sampler.window(start + 1.0, end - 0.3):
        point.update(cpu_split(*window, target.pid, [o.pid for o in others]))
        if point["infer_per_s"]:
            point["server_us_per_infer"] = round(point["server_cores"] / point["infer_per_s"] * 1e6, 1)
    return point


def http_samples(model: str, count: int = 64, rows: int = 1) -> loadgen.Workload:
    """The same 64 requests as scenarios.samples(), as tritonclient.http inputs."""
    rng = np.random.default_rng(1)
    return loadgen.http_workload(model, [MODELS[model].sample(rng, rows) for _ in range(count)])


# -- ratios and notes ------------------------------------------------------------------------------------------


def ratio_rows(points: list[dict]) -> list[dict]:
    """ours HTTP / Triton HTTP and ours HTTP / ours gRPC (and, for context, Triton HTTP / Triton gRPC), per model,
    load generator and concurrency, where both points exist without errors."""

    def find(target_prefix: str, protocol: str, model: str, gen: str, c: int) -> dict | None:
        return next((p for p in points if p["target"].startswith(target_prefix) and p["protocol"] == protocol
                     and (p["model"], p["gen"], p["concurrency"]) == (model, gen, c)), None)

    pairs = [("ours HTTP / Triton HTTP", (OURS, "HTTP"), (TRITON, "HTTP"), TARGET_VS_TRITON, None),
             ("ours HTTP / ours gRPC", (OURS, "HTTP"), (OURS, "gRPC"), TARGET_VS_GRPC, "cheap"),
             ("Triton HTTP / Triton gRPC", (TRITON, "HTTP"), (TRITON, "gRPC"), None, None)]
    rows = []
    keys = sorted({(p["model"], p["gen"], p["concurrency"]) for p in points},
                  key=lambda k: (list(MODELS).index(k[0]), k[1], k[2]))
    for what, (ta, pa), (tb, pb), target, target_model in pairs:
        for model, gen, c in keys:
            a, b = find(ta, pa, model, gen, c), find(tb, pb, model, gen, c)
            if not a or not b or not b["infer_per_s"]:
                continue
            ratio = a["infer_per_s"] / b["infer_per_s"]
            # The targets: vs Triton at c=32 on both models; vs our gRPC on the cheap MLP.
            applies = target is not None and (target_model in (None, model)) and (c == 32 or target_model)
            rows.append({"what": what, "model": model, "gen": gen, "concurrency": c,
                         "pair": f"{a['infer_per_s']:.0f} / {b['infer_per_s']:.0f}", "ratio": round(ratio, 3),
                         "target": f">= {target}" if applies else "–",
                         "met": ("yes" if ratio >= target else "no") if applies else "–",
                         "p99_pair": f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f}",
                         "errors": a["error_count"] + b["error_count"]})
    return rows


def cpu_notes(points: list[dict]) -> list[str]:
    """Server CPU per answered request, HTTP vs gRPC, per target and model at c=32 (the saturated points)."""
    notes = []
    for target in sorted({p["target"] for p in points}):
        for model in MODELS:
            got = {(p["protocol"], p["gen"]): p for p in points if p["target"] == target and p["model"] == model
                   and p["concurrency"] == 32 and p.get("server_us_per_infer")}
            if not got:
                continue
            parts = [f"{proto} {gen} {p['server_us_per_infer']:.0f} µs ({p['server_cores']:.2f} cores; load "
                     f"generator {p['loadgen_cores']:.2f}, other users {p['other_cores']:.2f})"
                     for (proto, gen), p in sorted(got.items())]
            notes.append(f"server CPU per request, {target.split(':')[0]}, {model}, c=32: " + "; ".join(parts))
    return notes


# -- the scenario ----------------------------------------------------------------------------------------------


@contextmanager
def triton(path: Path, model: str, work_dir: Path, failures: list[str]) -> Iterator[Target | None]:
    """Triton via PyTriton with our batching settings, or None (the failure recorded) where it cannot start."""
    with ExitStack() as stack:
        try:
            peer = stack.enter_context(peers.pytriton(path, model, max_batch_size=64, max_queue_delay_us=0,
                                                      work_dir=work_dir))
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            failures.append(f"{TRITON} on {model}: {type(e).__name__}: {str(e)[-600:]}")
            sys.stderr.write(f"  {failures[-1]}\n")
            yield None
            return
        yield Target(f"{TRITON}: {peer.name}", peer.proc.pid, peer.url, peer.http_url,
                     lambda: peer.proc.poll() is None)


def http_scenario(args: argparse.Namespace) -> dict:
    from tests.support.server_process import free_port

    gens = [AIO] + ([PA] if perf_analyzer.available() is None else [])
    points: list[dict] = []
    failures: list[str] = []
    log_problems: list[str] = []
    for model in ("cheap", "large"):
        path = write(REPO, model, BATCHING)
        works = {"grpc": samples(model), "http": http_samples(model)}
        http_port = free_port()
        with ExitStack() as stack:
            server = stack.enter_context(our_server("--http-port", str(http_port)))
            ours = Target(OURS, server.proc.pid, server.url, f"127.0.0.1:{http_port}",
                          lambda s=server: s.proc.poll() is None)
            wait_http_ready(ours.http_url, model)
            peer = stack.enter_context(triton(path, model, WORK / "peers", failures))
            sampler = stack.enter_context(CpuSampler())
            order = [(ours, "http"), (peer, "http"), (ours, "grpc"), (peer, "grpc")]
            for gen in gens:
                for c in LEVELS:
                    for target, protocol in order:
                        if target is None:
                            continue
                        others = [t for t in (ours, peer) if t is not None and t is not target]
                        try:
                            if not target.alive():
                                raise RuntimeError(f"{target.label} is no longer running")
                            points.append(measure(target, others, protocol, gen, c, works[protocol], args, sampler,
                                                  WORK / "perf_analyzer"))
                        except Exception as e:  # reported with the results, the other points still run
                            failures.append(f"{target.label.split(':')[0]}, {model}, {protocol}, {gen}, c={c}: "
                                            f"{type(e).__name__}: {str(e)[-600:]}")
                            sys.stderr.write(f"  {failures[-1]}\n")
            code = server.terminate()
            if code != 0:
                failures.append(f"our server ({model}) exited {code} on SIGTERM:\n{server.log()[-2000:]}")
            lines = [m.group(0) for m in LOG_PROBLEM.finditer(server.log())]
            if lines:
                log_problems.append(f"our server's log ({model}): {len(lines)} ERROR/Traceback lines, first: "
                                    + " | ".join(lines[:5]))
    ratios = ratio_rows(points)
    notes = [f"{r['what']}, {r['model']}, {r['gen']}, c={r['concurrency']}: {r['ratio']:.2f}x ({r['pair']} infer/s; "
             f"p99 {r['p99_pair']} ms)" + (f"; target {r['target']}: {'met' if r['met'] == 'yes' else 'MISSED'}"
                                           if r["met"] != "–" else "") for r in ratios]
    notes += cpu_notes(points)
    notes += ["Load: 'aio' is tritonclient.grpc.aio for gRPC and tritonclient.http.aio for HTTP "
              "(clients/python/loadgen.py; HTTP: binary input and output tensors, one keep-alive connection per "
              "worker); 'perf_analyzer' is "
              "perf_analyzer -i grpc / -i http (HTTP: binary tensors, its default). Both servers: max_batch_size 64, "
              "no queue delay. One server of ours serves both ports; Triton (PyTriton) runs beside it, idle while "
              "ours is measured and the other way round.",
              "CPU: mean cores over each point's steady part, from /proc/<pid>/stat sampled every 0.2 s: the server's"
              " process tree (Triton: PyTriton's Python, tritonserver and its Python stub); the other server, idle "
              "meanwhile; the load generator (this process, or perf_analyzer); other = the machine's busy cores less "
              "those (other users of the machine). µs/infer = server cores / infer/s."]
    notes += log_problems + [f"could not run: {f}" for f in failures]
    return {"title": "KServe v2 HTTP (binary tensors) vs Triton's HTTP and vs our gRPC, cheap and compute-bound MLP",
            "points": points, "ratios": ratios, "failures": failures, "log_problems": log_problems,
            "tables": [{"title": "Points", "columns": COLUMNS, "rows": points},
                       {"title": "Ratios (infer/s), measured side by side", "columns": RATIO_COLUMNS,
                        "rows": ratios}],
            "notes": notes}
