"""A load test of a running server, on the load generator beside it (loadgen.py, which the benchmarks use too).

    python clients/python/load_test.py --model digits [--url 127.0.0.1:8001] [--concurrency 8]
        [--rate 500] [--duration-s 10] [--warmup-s 1] [--rows 1]

Random inputs shaped from the model's metadata (numeric inputs only). Closed loop by default (`--concurrency`
requests in flight); `--rate` switches to an open loop at that many requests/s, with latency measured from
each request's scheduled send time.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import loadgen  # clients/python/loadgen.py, beside this script
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import triton_to_np_dtype

EPILOG = """It sends for --warmup-s seconds first and counts nothing of it, then counts for --duration-s. It prints
one JSON line: warmup_s and warmup_requests (answered during the warm-up, not counted), duration_s (the counted
window), requests (answered OK in it), infer_per_s and rows_per_s over that window, p50/p90/p99/mean ms, and
errors (every failed request, warm-up included). The server's own count is warmup_requests + requests plus the
errors it answered."""


def random_requests(url: str, model: str, rows: int, count: int = 64) -> loadgen.Workload:
    with grpcclient.InferenceServerClient(url) as client:
        metadata = client.get_model_metadata(model, as_json=True)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(count):
        sample = {}
        for spec in metadata["inputs"]:
            if spec["datatype"] == "BYTES":
                raise SystemExit(f"input {spec['name']!r} is BYTES: this example sends numeric inputs only")
            shape = [rows if i == 0 and int(d) == -1 else max(int(d), 1) for i, d in enumerate(spec["shape"])]
            sample[spec["name"]] = rng.random(shape).astype(triton_to_np_dtype(spec["datatype"]))
        samples.append(sample)
    return loadgen.workload(model, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, help="requests/s (open loop) instead of a closed loop")
    parser.add_argument("--duration-s", type=float, default=10.0, help="the counted window, after the warm-up "
                        "(default: 10)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="seconds of sending before the counted window, "
                        "not counted (default: 1; 0 for none)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    args = parser.parse_args(argv)
    if args.warmup_s < 0 or args.duration_s <= 0:
        parser.error("--warmup-s must be at least 0 and --duration-s more than 0")
    work = random_requests(args.url, args.model, args.rows)
    if args.rate:
        run = loadgen.open_loop(args.url, work, rate_per_s=args.rate, duration_s=args.duration_s,
                                warmup_s=args.warmup_s, label=args.model)
    else:
        run = loadgen.closed_loop(args.url, work, concurrency=args.concurrency, duration_s=args.duration_s,
                                  warmup_s=args.warmup_s, label=args.model)
    result = asyncio.run(run)
    print(json.dumps({"warmup_s": args.warmup_s, "warmup_requests": result.warmup_requests, **result.summary()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
