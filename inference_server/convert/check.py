"""The check before registering: the original and the ONNX model on the same rows (the logged input example, or
rows drawn from the signature's types), labels equal and every other value within the tolerance.

A value passes when |onnx - original| <= rtol * max(1, |original|): relative for values above 1, absolute below
(probabilities near 0 differ by float32 rounding, which a purely relative test would refuse)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.convert import BadInput, ConversionFailed
from inference_server.convert.onnx_export import Layout, is_classifier

log = logging.getLogger(__name__)

DRAWN_ROWS = 64
# Drawn values per MLflow column type (or numpy kind of a tensor signature): floats standard normal, integers
# 0..9, booleans 0/1.
INTEGER_HIGH = 10


@dataclass(frozen=True)
class Rows:
    original: Any  # what the original model reads: a DataFrame (column signature) or an ndarray (tensor signature)
    onnx: np.ndarray  # the same rows as the ONNX model's FP32 input
    origin: str  # where the rows come from, for the report


@dataclass(frozen=True)
class Result:
    rows: int
    origin: str
    rtol: float
    labels_differing: int  # rows whose label differs (0 for a regressor)
    largest: float  # the largest |onnx - original| / max(1, |original|) over every compared value
    where: str  # that value: which output, which row, both numbers

    @property
    def passed(self) -> bool:
        return self.labels_differing == 0 and self.largest <= self.rtol

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        labels = f"{self.labels_differing} of {self.rows} labels differ; " if self.labels_differing else ""
        return (f"{verdict} on {self.rows} rows ({self.origin}): {labels}largest difference {self.largest:.3g} x "
                f"max(1, |original|) (rtol {self.rtol:g}) at {self.where}")


def check_rows(example: Any, layout: Layout, seed: int = 0) -> Rows:
    """The logged input example, in the layout's order; without one, DRAWN_ROWS rows drawn from its types."""
    import pandas as pd

    if example is None:
        return _drawn(layout, seed)
    if isinstance(example, dict) and layout.columns is None:
        example = example.get(layout.name, next(iter(example.values()), None))
    if layout.columns is not None:
        frame = example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
        missing = [c for c in layout.columns if c not in frame.columns]
        if missing:
            raise BadInput(f"the input example lacks the signature's columns {', '.join(map(str, missing))}")
        frame = frame[list(layout.columns)]
        return Rows(frame, frame.to_numpy(np.float64).astype(np.float32), "the logged input example")
    array = np.asarray(example)
    if array.ndim != 2 or array.shape[1] != layout.width:
        raise BadInput(f"the input example's shape {array.shape} does not match the signature's (-1, {layout.width})")
    return Rows(array, array.astype(np.float32), "the logged input example")


def _drawn(layout: Layout, seed: int) -> Rows:
    import pandas as pd

    rng = np.random.default_rng(seed)

    def draw(kind: str) -> np.ndarray:
        if kind in ("boolean", "b"):
            return rng.integers(0, 2, DRAWN_ROWS).astype(bool)
        if kind in ("long", "integer", "i", "u"):
            return rng.integers(0, INTEGER_HIGH, DRAWN_ROWS)
        return rng.standard_normal(DRAWN_ROWS)

    origin = f"{DRAWN_ROWS} rows drawn from the signature's types: no input example was logged"
    if layout.columns is not None and layout.column_types is not None:
        frame = pd.DataFrame({c: draw(t) for c, t in zip(layout.columns, layout.column_types, strict=True)})
        return Rows(frame, frame.to_numpy(np.float64).astype(np.float32), origin)
    assert layout.dtype is not None
    array = np.stack([draw(layout.dtype.kind) for _ in range(layout.width)], axis=1).astype(layout.dtype)
    return Rows(array, array.astype(np.float32), origin)


def compare(model: Any, onnx_model: Any, rows: Rows, rtol: float) -> Result:
    """Run both models on `rows` and measure how far the ONNX model's answers are from the original's. BadInput
    when the original fails on them; ConversionFailed when ONNX Runtime cannot load or run the converted model."""
    count = len(rows.onnx)
    if count == 0:
        raise BadInput("the input example has no rows to check the ONNX model on")
    answers = _onnx_answers(onnx_model, rows)
    try:
        predicted = np.asarray(model.predict(rows.original))  # labels, or a regressor's values
        probabilities = np.asarray(model.predict_proba(rows.original)) if is_classifier(model) else None
    except Exception as e:  # the user's model (its own code) on its own example or signature's rows
        raise BadInput(f"the original model fails on {rows.origin}: {type(e).__name__}: {e}") from None
    if probabilities is None:
        largest, where = _largest("variable", predicted, answers[0])
        return Result(count, rows.origin, rtol, 0, largest, where)
    differing = _labels_differing(predicted, answers[0])
    largest, where = _largest("probabilities", probabilities, answers[1])
    if differing:
        row = int(np.flatnonzero(_label_mismatch(predicted, answers[0]))[0])
        where += f"; first differing label at row {row}: ONNX {answers[0][row]!r}, original {predicted[row]!r}"
    return Result(count, rows.origin, rtol, differing, largest, where)


def _onnx_answers(onnx_model: Any, rows: Rows) -> list[Any]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, {session.get_inputs()[0].name: rows.onnx}))
    except Exception as e:  # onnxruntime's Fail, InvalidGraph, RuntimeException ...: what the converters wrote
        raise ConversionFailed(f"ONNX Runtime cannot run the converted model: {type(e).__name__}: {e}") from None


def _label_mismatch(original: np.ndarray, converted: np.ndarray) -> np.ndarray:
    converted = np.asarray(converted).reshape(-1)
    if converted.dtype.kind in "iuf" and original.dtype.kind in "iufb":
        return np.asarray(original.reshape(-1) != converted.astype(original.dtype))
    return np.array([str(a) != str(b) for a, b in zip(original.reshape(-1), converted, strict=True)])


def _labels_differing(original: np.ndarray, converted: np.ndarray) -> int:
    return int(_label_mismatch(original, converted).sum())


def _largest(output: str, original: np.ndarray, converted: np.ndarray) -> tuple[float, str]:
    """The largest scaled difference between the two answers, and where it is."""
    a = np.asarray(original, np.float64).reshape(len(original), -1)
    b = np.asarray(converted, np.float64).reshape(len(converted), -1)
    if a.shape != b.shape:
        raise BadInput(f"the ONNX model's {output} has shape {b.shape}, the original's {a.shape}")
    scaled = np.abs(b - a) / np.maximum(1.0, np.abs(a))
    scaled = np.where(np.isnan(a) & np.isnan(b), 0.0, np.nan_to_num(scaled, nan=np.inf))
    row, column = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
    return float(scaled[row, column]), f"{output}[{row}, {column}]: ONNX {b[row, column]:.9g}, original " \
                                      f"{a[row, column]:.9g}"
