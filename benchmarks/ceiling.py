"""The ceiling: the same ONNX model run in-process by ONNX Runtime, no server, no network."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime


def measure(model_path: Path, sample: Callable[[np.random.Generator, int], dict[str, np.ndarray]],
            batch_sizes: list[int], *, min_time_s: float = 1.0, intra_op_threads: int = 0) -> list[dict[str, float]]:
    """Rows/s and latency of session.run at each batch size, one thread calling (as a server instance does),
    ONNX Runtime's default intra-op threads unless given."""
    options = onnxruntime.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = []
    for batch in batch_sizes:
        feeds = sample(rng, batch)
        for _ in range(3):
            session.run(None, feeds)  # warm-up
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < min_time_s:
            t = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t)
        mean_s = float(np.mean(times))
        out.append({"batch_size": batch, "runs": len(times), "mean_ms": round(mean_s * 1e3, 4),
                    "p50_ms": round(float(np.median(times)) * 1e3, 4), "rows_per_s": round(batch / mean_s, 1)})
    return out


def rows_per_s_at(ceiling: list[dict[str, float]], batch: float) -> float:
    """Ceiling rows/s at a (fractional) batch size, interpolating between measured sizes."""
    sizes = [c["batch_size"] for c in ceiling]
    rates = [c["rows_per_s"] for c in ceiling]
    return float(np.interp(batch, sizes, rates))
