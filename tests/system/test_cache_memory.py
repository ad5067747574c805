"""The in-process cache's bound bounds the server's memory: a stream of distinct requests (gRPC and HTTP at once)
that pushes several times the bound through the cache grows the server's RSS by no more than the bound and 10 %,
plus a small allowance for what RSS moves by without a cache.

Two models: `cheap` (the cheap MLP, 10 floats a row: 40-320 byte answers, where an entry's overhead is most of
its cost) and `wide` (16 KiB a row, so the bound fills in a few hundred requests). The warm-up streams the same
requests to twins with the cache off (`cache = false`), so the front ends, the batcher and ONNX Runtime are warm
before the baseline, and what grows after it is the cache.

The allowance, 3 MiB: the same stream to the uncached twins moved this server's RSS by -1.2 to +0.1 MiB after the
same warm-up, and a full cache's RSS moves by 1-2 MiB from one turnover to the next (the LRU's tables are
reallocated as they churn; pymalloc's arenas). Measured here: 3.4 MiB at most for the 4 MiB bound. Before the
cache counted what an entry costs, this stream grew RSS by 9.1 MiB (2.3x the bound: the cheap model's entries
cost 3.7x their arrays' bytes), past the limit of 7.4 MiB."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import onnx_models
from tests.support.request_stream import Stream, rss_bytes
from tests.support.server_process import free_port

pytestmark = pytest.mark.system

BOUND_MIB = 4
ALLOWANCE_MIB = 3
MIX = 63  # cheap requests to one wide one
ROUND = 1500  # requests
MAX_ROUNDS = 12
FEATURES = {"cheap": 64, "cheap_off": 64, "wide": 8, "wide_off": 8}  # each model's input width
BATCHING = "[batching]\nmax_batch_size = 32\n"


def test_the_cache_bound_bounds_the_servers_memory(launch, tmp_path):
    repo = tmp_path / "repo"
    for suffix, config in (("", BATCHING), ("_off", "cache = false\n" + BATCHING)):
        onnx_models.write_model(repo, "cheap" + suffix, onnx_models.mlp([64, 256, 10], seed=1), config)
        onnx_models.write_model(repo, "wide" + suffix, onnx_models.mlp([8, 1024], seed=2), config)
    http_port = free_port()
    server = launch("--model-repository", str(repo), "--cache", f"memory:{BOUND_MIB}", "--http-port",
                    str(http_port))
    stream = Stream(server.url, http_port, FEATURES)
    # Warm: every model answers, the uncached twins a whole stream's worth of the same traffic.
    asyncio.run(stream.run(["cheap", "wide"], 16))
    asyncio.run(stream.run(["cheap_off"] * MIX + ["wide_off"], ROUND))
    before = rss_bytes(server.proc.pid)
    grown, rounds = [], 0
    # Until the cache's content has turned over twice (evictions past twice its entries): several bounds through.
    while rounds < MAX_ROUNDS and server.metric("inference_cache_evictions_total") < 2 * max(
            server.metric("inference_cache_entries"), 1):
        asyncio.run(stream.run(["cheap"] * MIX + ["wide"], ROUND))
        grown.append(rss_bytes(server.proc.pid) - before)
        rounds += 1

    bound = BOUND_MIB << 20
    entries = server.metric("inference_cache_entries")
    held = server.metric("inference_cache_bytes")
    figures = (f"RSS growth by round {[round(g / 2**20, 1) for g in grown]} MiB with a {BOUND_MIB} MiB cache "
               f"({entries:.0f} entries, {held / 2**20:.2f} MiB counted)")
    assert max(grown) <= bound * 1.1 + (ALLOWANCE_MIB << 20), figures
    assert server.metric("inference_cache_evictions_total") >= 2 * entries, figures
    assert bound * 0.95 <= held <= bound, figures
