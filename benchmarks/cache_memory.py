"""What the in-process cache's bound costs the process: fill a `MemoryCache` with answers as the server stores them
(copies of a batch output's rows, under keys built as the server builds them) until the bound has passed through
several times, and print the RSS growth after each pass against the bound.

    python -m benchmarks.cache_memory --bound-mib 256 --answers cheap --passes 3

--answers cheap: the cheap MLP's answers (1-8 rows of 10 floats, 40-320 bytes: overhead is most of an entry);
wide: 1-8 rows of 1000 floats; mixed: cheap with one 1-8 rows of 4000 floats in 50. The server test
(tests/system/test_cache_memory.py) measures the same through the server; this one reaches sizes a test cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import gc

import numpy as np

from inference_server.cache.memory import MemoryCache, cache_key

WIDTHS = {"cheap": 10, "wide": 1000, "mixed": 10}


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def measure(bound_mib: int, answers: str, passes: int) -> list[float]:
    """RSS growth (MiB) after each pass: a pass ends when as many entries as the cache holds were evicted."""
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
            growth.append((rss_bytes() - base) / 2**20)
    print(f"| {answers} | {bound_mib} | {len(cache)} | {cache.bytes / len(cache):.0f} | "
          f"{' / '.join(f'{g:.1f}' for g in growth)} | {max(growth) / bound_mib:.3f} |")
    return growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound-mib", type=int, default=16)
    parser.add_argument("--answers", choices=sorted(WIDTHS), default="cheap")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print("| answers | bound MiB | entries | counted bytes/entry | RSS growth by pass, MiB | peak / bound |")
    print("|---|---|---|---|---|---|")
    asyncio.run(measure(args.bound_mib, args.answers, args.passes))


if __name__ == "__main__":
    main()
