"""The cache-memory scenario: what the in-process response cache's bound (`--cache memory:MIB`) costs the process.
The target (README, "Response cache"): the bound bounds the process's memory within about 10 %, so a pod can be
sized as the server without a cache plus the bound plus 10 %.

    python -m benchmarks run --scenario cache-memory        # both tables, results/cache-memory.{json,md}
    python -m benchmarks.cache_memory --bound-mib 256 --answers cheap --passes 3   # one in-process row

Through the server: a `python -m inference_server` subprocess serving the cheap MLP (and an uncached twin for the
warm-up) gets distinct requests (1-8 rows each, so 40-320 byte answers, where an entry's overhead is most of its
cost) from gRPC and HTTP clients at once; its RSS growth after the warm-up is read after each round of requests,
and noted when the cache's content has turned over once, twice, three times (evictions reach 1x, 2x, 3x its
entries). The cache off gets the same stream, as many requests as the largest bound's, for the RSS drift that is
not the cache's.

In process (a fresh `python -m benchmarks.cache_memory --json` per row, so no row reuses what another freed): a
`MemoryCache` is filled with answers as the server stores them (copies of a batch output's rows, under keys
built as the server builds them) until its content has turned over `--passes` times. --answers cheap: the cheap
MLP's answers (1-8 rows of 10 floats); wide: 1-8 rows of 1000 floats; mixed: cheap with one 1-8 rows of 4000
floats in 50. tests/system/test_cache_memory.py holds the server to the same target at a bound a test can fill.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys

import numpy as np

from benchmarks.models import MODELS, write
from benchmarks.points import BATCHING, WORK, our_server
from inference_server.cache.memory import MemoryCache, cache_key
from tests.support import onnx_models
from tests.support.request_stream import Stream, rss_bytes
from tests.support.server_process import free_port

TARGET = 0.10  # peak RSS growth within the bound plus 10 %
WIDTHS = {"cheap": 10, "wide": 1000, "mixed": 10}  # in process: an answer's row width
REPOSITORY = WORK / "cache-memory"  # its own, so the uncached twin is not loaded by the other scenarios
UNCACHED = "cheap_uncached"
CLIENTS = 8  # half gRPC, half HTTP
REQUESTS_PER_MIB = 128  # a round: about an eighth of the entries a MiB of the cheap MLP's answers holds


# -- in process --------------------------------------------------------------------------------------------


async def measure(bound_mib: int, answers: str, passes: int) -> dict:
    """RSS growth of this process (MiB) after each pass: a pass ends when as many entries as the cache holds
    were evicted."""
    cache = MemoryCache(bound_mib << 20)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((64, WIDTHS[answers])).astype(np.float32)
    big = rng.standard_normal((64, 4000)).astype(np.float32)
    digest = "0123456789abcdef0123456789abcdef"  # a model file's digest, as long as the server's
    gc.collect()
    base = rss_bytes()
    growth: list[float] = []
    i = 0
    while len(growth) < passes:
        rows = 1 + i % 8
        x = np.full((rows, 64), float(i), np.float32)  # a distinct request
        key = cache_key("cheap", "2", {"x": ("FP32", x)}, ["y"], digest)
        source = big if answers == "mixed" and i % 50 == 0 else batch
        await cache.put(key, {"y": source[:rows]}, 3600.0)  # a view into the batch, as the batcher hands it over
        i += 1
        if cache.evictions >= (len(growth) + 1) * len(cache):
            gc.collect()
            growth.append(round((rss_bytes() - base) / 2**20, 1))
    return {"answers": answers, "bound_mib": bound_mib, "entries": len(cache), "puts": i,
            "bytes_per_entry": round(cache.bytes / len(cache)), "growth_mib": growth,
            **verdict(max(growth), bound_mib), **by_turnover(growth)}


def in_process(bound_mib: int, answers: str, passes: int) -> dict:
    """One in-process row, measured in a fresh interpreter."""
    sys.stderr.write(f"  in process: {answers} answers, {bound_mib} MiB ...\n")
    done = subprocess.run([sys.executable, "-m", "benchmarks.cache_memory", "--bound-mib", str(bound_mib),
                           "--answers", answers, "--passes", str(passes), "--json"],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.cache_memory exited {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# -- through the server ------------------------------------------------------------------------------------


def server_point(bound_mib: int | None, turnovers: int, warm_up: int, round_requests: int,
                 read_at: tuple[int, ...] = ()) -> dict:
    """The server's RSS growth after warm-up, read after each round of `round_requests` distinct requests: with a
    bound, until the cache's content has turned over `turnovers` times; without one, until the last of `read_at`
    (request counts, multiples of a round)."""
    write(REPOSITORY, "cheap", BATCHING)
    onnx_models.write_model(REPOSITORY, UNCACHED, MODELS["cheap"].build(), "cache = false\n" + BATCHING)
    label = f"memory:{bound_mib}" if bound_mib else "off"
    sys.stderr.write(f"  through the server: cache {label} ...\n")
    http_port = free_port()
    cache = ("--cache", label) if bound_mib else ()
    with our_server("--http-port", str(http_port), *cache, repository=REPOSITORY) as server:
        stream = Stream(server.url, http_port, {"cheap": 64, UNCACHED: 64})
        # Warm: both models answer, the uncached twin a stream of the same traffic, so the front ends, the
        # batcher and ONNX Runtime are warm before the baseline, and what grows after it is the cache.
        asyncio.run(stream.run(["cheap", UNCACHED], 16))
        asyncio.run(stream.run([UNCACHED], warm_up, CLIENTS))
        base = rss_bytes(server.proc.pid)
        growth: list[float] = []  # MiB, after each round
        at: list[int] = []  # requests sent when each turnover was reached (off: read_at)
        sent, entries = 0, 0.0
        while (len(at) < turnovers) if bound_mib else (sent < read_at[-1]):
            asyncio.run(stream.run(["cheap"], round_requests, CLIENTS))
            sent += round_requests
            growth.append(round((rss_bytes(server.proc.pid) - base) / 2**20, 1))
            if not bound_mib:
                at += [sent] if sent in read_at else []
                continue
            entries = server.metric("inference_cache_entries")
            evictions = server.metric("inference_cache_evictions_total")
            while len(at) < turnovers and evictions >= (len(at) + 1) * max(entries, 1):
                at.append(sent)
            if sent > 40 * bound_mib * REQUESTS_PER_MIB:
                raise RuntimeError(f"{label}: {turnovers} turnovers not reached in {sent} requests")
        counted = server.metric("inference_cache_bytes")
        code = server.terminate()
    if code != 0:
        raise RuntimeError(f"server exited {code}:\n{server.log()[-2000:]}")
    point = {"cache": label, "bound_mib": bound_mib, "requests": sent, "round_requests": round_requests,
             "growth_by_round_mib": growth, "turnover_requests": at,
             "requests_at": " / ".join(f"{n:,}" for n in at), "peak_growth_mib": max(growth),
             **by_turnover([growth[n // round_requests - 1] for n in at])}
    if bound_mib:
        point.update(entries=int(entries), bytes_per_entry=round(counted / max(entries, 1)),
                     **verdict(max(growth), bound_mib))
    return point


def through_server(bounds: tuple[int, ...], turnovers: int, warm_up: int) -> list[dict]:
    """Each bound, then the cache off over as many requests as the largest bound took, read at its turnovers."""
    points = [server_point(b, turnovers, warm_up, b * REQUESTS_PER_MIB) for b in bounds]
    largest = points[-1]
    off = server_point(None, turnovers, warm_up, largest["round_requests"], tuple(largest["turnover_requests"]))
    return [off, *points]


# -- shared ------------------------------------------------------------------------------------------------


def verdict(peak_mib: float, bound_mib: int) -> dict:
    return {"peak_growth_mib": peak_mib, "peak_over_bound": round(peak_mib / bound_mib, 3),
            "within_target": "yes" if peak_mib <= bound_mib * (1 + TARGET) else "NO"}


def by_turnover(growth: list[float]) -> dict:
    return {f"growth_{k}": g for k, g in enumerate(growth, 1)}


def turnover_columns(what: str, count: int) -> list[tuple[str, str, str]]:
    return [(f"RSS growth MiB, {what} {k}", f"growth_{k}", ".1f") for k in range(1, count + 1)]


def cache_memory_scenario(args: argparse.Namespace) -> dict:
    turnovers = 2 if args.quick else 3
    bounds = (4,) if args.quick else (16, 64)
    warm_up = 1000 if args.quick else 4000
    rows = [("cheap", 16)] if args.quick else [(a, b) for b in (16, 256) for a in ("cheap", "wide", "mixed")]
    server = through_server(bounds, turnovers, warm_up)
    local = [in_process(bound, answers, turnovers) for answers, bound in rows]
    verdicts = [("yes" if all(p["within_target"] == "yes" for p in points) else "NO")
                for points in (server[1:], local)]
    off = server[0]
    notes = [
        f"Target: the peak RSS growth within the bound plus {TARGET:.0%} (README, Response cache). Met through the "
        f"server: {verdicts[0]}; in process: {verdicts[1]}.",
        "Through the server: one `python -m inference_server` subprocess per row (`--cache memory:MIB`, or no cache) "
        "serving the benchmark's cheap MLP (64->256->10, max_batch_size 64) and an uncached twin (`cache = false`). "
        f"Warm-up: 16 requests to each, then {warm_up:,} distinct requests to the twin; RSS (VmRSS) is read there "
        f"and after every round of {REQUESTS_PER_MIB} requests per MiB of bound (about an eighth of the entries), "
        "growth being the difference. Each request is distinct (1-8 rows, a fresh input), so each is a miss and "
        f"becomes an entry; {CLIENTS} clients, half gRPC (grpc.aio), half HTTP (aiohttp, binary tensors), "
        "share the stream.",
        "A turnover is reached when the cache's evictions (`inference_cache_evictions_total`) reach 1x, 2x, 3x its "
        "entries (`inference_cache_entries`); the growth is read at the end of that round. Peak growth: the most "
        "over all rounds, filling included.",
        f"Cache off: the same stream, as many requests as memory:{bounds[-1]} took ({off['requests']:,}), read at "
        f"the same request counts: what RSS moves by without a cache (peak {off['peak_growth_mib']:+.1f} MiB).",
        "In process: a fresh interpreter per row fills a MemoryCache with the server's keys and copies of a batch "
        "output's rows; cheap answers: 1-8 rows of 10 floats; wide: 1-8 rows of 1000 floats; mixed: cheap with one "
        "of 1-8 rows of 4000 floats in 50; growth read after each pass (evictions reach 1x, 2x, 3x the entries).",
        "counted bytes/entry: the cache's own count of what an entry costs (`inference_cache_bytes` / entries).",
        "--duration-s does not apply: the rows run by request counts.",
    ]
    server_columns = [("cache", "cache", "s"), ("entries", "entries", "d"),
                      ("counted bytes/entry", "bytes_per_entry", "d"),
                      ("requests at each turnover", "requests_at", "s"),
                      *turnover_columns("turnover", turnovers), ("peak growth MiB", "peak_growth_mib", ".1f"),
                      ("peak / bound", "peak_over_bound", ".3f"), ("within bound + 10 %", "within_target", "s")]
    local_columns = [("answers", "answers", "s"), ("bound MiB", "bound_mib", "d"), ("entries", "entries", "d"),
                     ("counted bytes/entry", "bytes_per_entry", "d"), *turnover_columns("pass", turnovers),
                     ("peak / bound", "peak_over_bound", ".3f"), ("within bound + 10 %", "within_target", "s")]
    return {"title": "the in-process response cache's bound against the process's RSS", "server": server,
            "in_process": local,
            "tables": [{"title": "Through the server: RSS growth after warm-up, distinct cheap-MLP requests over gRPC "
                                 "and HTTP", "columns": server_columns, "rows": server},
                       {"title": "In process: a MemoryCache filled with the server's entries", "columns": local_columns,
                        "rows": local}],
            "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound-mib", type=int, default=16)
    parser.add_argument("--answers", choices=sorted(WIDTHS), default="cheap")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the row as JSON (what the scenario reads)")
    args = parser.parse_args()
    row = asyncio.run(measure(args.bound_mib, args.answers, args.passes))
    if args.json:
        print(json.dumps(row))
        return
    print("| answers | bound MiB | entries | counted bytes/entry | RSS growth by pass, MiB | peak / bound |")
    print("|---|---|---|---|---|---|")
    print(f"| {row['answers']} | {row['bound_mib']} | {row['entries']} | {row['bytes_per_entry']} | "
          f"{' / '.join(f'{g:.1f}' for g in row['growth_mib'])} | {row['peak_over_bound']:.3f} |")


if __name__ == "__main__":
    main()
