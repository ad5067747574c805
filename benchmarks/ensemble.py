"""The ensemble scenario: a Triton ensemble of preprocess -> cheap MLP -> postprocess (config.pbtxt, an empty version
directory) against the client calling the three models in turn, one server, concurrency 32, points interleaved
(ensemble, chained, chained, ensemble). Every answer is compared with the three models run in process. Then
perf_analyzer against the ensemble (`-m pipeline`) as a smoke check, when it runs here."""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as aioclient

from benchmarks import perf_analyzer
from clients.python import loadgen
from tests.support import onnx_models
from tests.support.server_process import ServerProcess

WORK = Path(__file__).resolve().parent / ".work" / "ensemble"
CONCURRENCY = 32
WIDTH, CLASSES = 64, 10
PRE = onnx_models.affine(WIDTH, scale=2.0, shift=-1.0)
MLP = onnx_models.mlp([WIDTH, 256, CLASSES], seed=0)  # the cheap model of benchmarks/models.py
POST = onnx_models.affine(CLASSES, scale=0.5, shift=0.0)
STEPS = (("pre", PRE, WIDTH, WIDTH), ("mlp", MLP, WIDTH, CLASSES), ("post", POST, CLASSES, CLASSES))
STEP = ('{{ model_name: "{}" model_version: -1 input_map {{ key: "x" value: "{}" }} '
        'output_map {{ key: "y" value: "{}" }} }}')
ENSEMBLE = (f'name: "pipeline"\nplatform: "ensemble"\nmax_batch_size: 64\n'
            f'input [ {{ name: "RAW" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]\n'
            f'output [ {{ name: "SCORES" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]\n'
            "ensemble_scheduling { step [ " + ", ".join([STEP.format("pre", "RAW", "clean"),
                                                         STEP.format("mlp", "clean", "logits"),
                                                         STEP.format("post", "logits", "SCORES")]) + " ] }\n")
COLUMNS = [("round", "round", "d"), ("client", "kind", "s"), ("concurrency", "concurrency", "d"),
           ("infer/s", "infer_per_s", ".0f"), ("p50 ms", "p50_ms", ".3f"), ("p99 ms", "p99_ms", ".3f"),
           ("errors", "error_count", "d"), ("wrong answers", "wrong", "d")]
PA_COLUMNS = [("model", "model", "s"), ("concurrency", "concurrency", "d"), ("infer/s", "infer_per_s", ".0f"),
              ("p50 ms", "p50_ms", ".3f"), ("p99 ms", "p99_ms", ".3f"), ("generator", "load_generator", "s")]


def write_repository(root: Path) -> Path:
    for name, model, width_in, width_out in STEPS:
        onnx_models.write_model(root, name, model)
        (root / name / "config.pbtxt").write_text(
            f'backend: "onnxruntime"\nmax_batch_size: 64\ndynamic_batching {{ }}\n'
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width_in} ] }} ]\n'
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width_out} ] }} ]\n')
    onnx_models.write_ensemble(root, "pipeline", ENSEMBLE)
    return root


def expected(x: np.ndarray) -> np.ndarray:
    for _, model, _, _ in STEPS:
        x = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return x


def tensor(name: str, array: np.ndarray) -> aioclient.InferInput:
    t = aioclient.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(array)
    return t


async def measure(url: str, kind: str, samples: list[np.ndarray], answers: list[np.ndarray],
                  args: argparse.Namespace) -> dict[str, Any]:
    """One closed loop at CONCURRENCY: the ensemble in one call, or the three models called in turn."""
    work = loadgen.workload("pipeline", [{"RAW": s} for s in samples])
    wrong = 0
    index = {id(inputs): i for i, inputs in enumerate(work.requests)}

    def check(i: int, out: np.ndarray) -> None:
        nonlocal wrong
        if not np.allclose(out, answers[i], rtol=1e-4, atol=1e-5):
            wrong += 1

    async def ensemble(client: Any, inputs: Any) -> None:
        result = await client.infer("pipeline", inputs, client_timeout=60)
        check(index[id(inputs)], result.as_numpy("SCORES"))

    async def chained(client: Any, inputs: Any) -> None:
        i = index[id(inputs)]
        x = samples[i]
        for name, _, _, _ in STEPS:
            x = (await client.infer(name, [tensor("x", x)], client_timeout=60)).as_numpy("y")
        check(i, x)

    clients = loadgen._clients(url, 1)
    result = loadgen.LoadResult("closed", CONCURRENCY, args.duration_s, work.rows)
    await loadgen._run_closed(clients, work, result, ensemble if kind == "ensemble" else chained, warmup_s=1.0,
                              max_requests=1_000_000, label=kind)
    summary = result.summary()
    return {**summary, "kind": kind, "error_count": sum(result.errors.values()), "wrong": wrong}


def ensemble_scenario(args: argparse.Namespace) -> dict:
    repo = write_repository(WORK / "repo")
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, WIDTH)).astype(np.float32) for _ in range(64)]
    answers = [expected(s) for s in samples]
    server = ServerProcess(["--model-repository", str(repo), "--log-level", "INFO"], WORK / "server.log")
    points: list[dict[str, Any]] = []
    perf: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        server.wait_serving()
        for round_, order in enumerate((("ensemble", "chained"), ("chained", "ensemble")), start=1):
            for kind in order:
                points.append({**asyncio.run(measure(server.url, kind, samples, answers, args)), "round": round_})
        reason = perf_analyzer.available()
        if reason is None:
            perf.append({**perf_analyzer.run(server.url, "pipeline", 8, measurement_ms=1000, work_dir=WORK,
                                             max_trials=3), "model": "pipeline"})
        else:
            notes.append(f"perf_analyzer smoke skipped: {reason}")
    finally:
        server.terminate()
    by = {kind: [p for p in points if p["kind"] == kind] for kind in ("ensemble", "chained")}
    rate = {k: statistics.mean(p["infer_per_s"] for p in v) for k, v in by.items()}
    p99 = {k: statistics.median(p["p99_ms"] for p in v) for k, v in by.items()}
    notes.insert(0, f"At concurrency {CONCURRENCY}: the ensemble answers {rate['ensemble']:.0f} requests/s against "
                    f"{rate['chained']:.0f} for the three calls in turn ({rate['ensemble'] / rate['chained']:.2f}x); "
                    f"p99 {p99['ensemble']:.2f} vs {p99['chained']:.2f} ms (medians of the rounds).")
    notes.append("A chained request is one client request made of the three calls; its latency covers all three.")
    if perf:
        notes.append(f"perf_analyzer -m pipeline at concurrency 8: {perf[0]['infer_per_s']:.0f} infer/s, "
                     "no errors (a smoke check: perf_analyzer reads the ensemble's metadata, config and statistics).")
    tables = [{"columns": COLUMNS, "rows": points}]
    if perf:
        tables.append({"title": "perf_analyzer against the ensemble", "columns": PA_COLUMNS, "rows": perf})
    return {"title": "ensemble (preprocess -> cheap MLP -> postprocess) vs the three models called in turn",
            "points": points, "perf_analyzer": perf, "tables": tables, "notes": notes}
