"""Prediction distribution monitoring: per model output, the distribution of predicted values against a
reference, scored by the population stability index (PSI), exported as a gauge.

- Integer outputs are classes: counts per class seen in the reference (plus one bin for any other class).
- Other numeric outputs are values: 10 bins with edges at the reference's deciles (every element counts).
- The reference is the first `reference_size` predictions of each model version, or a JSON file written by
  an earlier run (`reference_path`; written there once captured when the file does not exist yet).
- The score compares the last `window_size` predictions with the reference. PSI < 0.1 is usually read as
  stable, 0.1-0.25 as a shift worth a look, > 0.25 as a real one.

The request path only puts the outputs on a bounded queue (dropped and counted when full); binning and
scoring run in a background task.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

VALUE_BINS = 10
MIN_PROPORTION = 1e-4  # an empty bin would make PSI infinite


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    ref = np.maximum(reference, MIN_PROPORTION)
    cur = np.maximum(current, MIN_PROPORTION)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


class OutputDistribution:
    """One output's bins and reference proportions, and a window of recent bin indices."""

    def __init__(self, kind: str, edges: list[float], proportions: list[float], window_size: int) -> None:
        self.kind = kind  # "class" (edges are the class labels) or "value" (edges are bin edges)
        self.edges = np.asarray(edges, dtype=np.float64)
        self.reference = np.asarray(proportions, dtype=np.float64)
        self._window: deque[np.ndarray] = deque()
        self._window_count = 0
        self._window_size = window_size

    @classmethod
    def from_sample(cls, sample: np.ndarray, window_size: int) -> OutputDistribution:
        flat = sample.ravel()
        if np.issubdtype(flat.dtype, np.integer) or flat.dtype == np.bool_:
            kind, edges = "class", [float(c) for c in np.unique(flat)]
        else:
            kind = "value"
            deciles = np.quantile(flat.astype(np.float64), np.linspace(0, 1, VALUE_BINS + 1))[1:-1]
            edges = [float(e) for e in np.unique(deciles)]
        made = cls(kind, edges, [], window_size)
        made.reference = made.proportions(made.bins(flat))
        return made

    def bins(self, values: np.ndarray) -> np.ndarray:
        flat = values.ravel().astype(np.float64)
        if self.kind == "value":
            return np.searchsorted(self.edges, flat, side="right")
        index = np.searchsorted(self.edges, flat)
        known = (index < len(self.edges)) & (self.edges[np.minimum(index, len(self.edges) - 1)] == flat)
        return np.where(known, index, len(self.edges))  # the last bin: classes the reference never saw

    def proportions(self, bins: np.ndarray) -> np.ndarray:
        counts = np.bincount(bins, minlength=self.size).astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    @property
    def size(self) -> int:
        return len(self.edges) + 1

    def add(self, values: np.ndarray) -> None:
        bins = self.bins(values)
        self._window.append(bins)
        self._window_count += len(bins)
        while self._window and self._window_count - len(self._window[0]) >= self._window_size:
            self._window_count -= len(self._window.popleft())

    def score(self) -> float | None:
        if not self._window:
            return None
        window = list(self._window)  # one C-level copy: scrapes run on another thread than additions
        return psi(self.reference, self.proportions(np.concatenate(window)))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": self.edges.tolist(), "proportions": self.reference.tolist()}


class ModelDrift:
    """The reference being captured, then one OutputDistribution per output."""

    def __init__(self, reference_size: int, window_size: int, saved: Mapping[str, Any] | None = None) -> None:
        self._reference_size = reference_size
        self._window_size = window_size
        self._captured: dict[str, list[np.ndarray]] = {}
        self._rows = 0
        self.outputs: dict[str, OutputDistribution] = {}
        for name, spec in (saved or {}).items():
            self.outputs[name] = OutputDistribution(spec["kind"], spec["edges"], spec["proportions"], window_size)

    @property
    def ready(self) -> bool:
        return bool(self.outputs)

    def add(self, outputs: Mapping[str, np.ndarray]) -> bool:
        """Returns True when this call completed the reference."""
        if self.ready:
            for name, values in outputs.items():
                if name in self.outputs:
                    self.outputs[name].add(values)
            return False
        for name, values in outputs.items():
            self._captured.setdefault(name, []).append(np.asarray(values))
        self._rows += len(next(iter(outputs.values()))) if outputs else 0
        if self._rows < self._reference_size:
            return False
        self.outputs = {name: OutputDistribution.from_sample(np.concatenate(parts), self._window_size)
                        for name, parts in self._captured.items()}
        self._captured.clear()
        return True


class DriftMonitor:
    """Every model version's drift, fed off the request path through a bounded queue."""

    def __init__(self, *, reference_size: int = 1000, window_size: int = 1000, reference_path: Path | None = None,
                 queue_size: int = 1024) -> None:
        self._reference_size = reference_size
        self._window_size = window_size
        self._path = reference_path
        self._saved: dict[str, Any] = {}
        if reference_path is not None and reference_path.is_file():
            self._saved = json.loads(reference_path.read_text())
            log.info("drift reference loaded from %s", reference_path)
        self.models: dict[tuple[str, str], ModelDrift] = {}
        self._queue: asyncio.Queue[tuple[str, str, Mapping[str, np.ndarray]]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drift")

    def observe(self, model: str, version: str, outputs: Mapping[str, np.ndarray]) -> None:
        """From the request path: never blocks, never raises."""
        try:
            self._queue.put_nowait((model, version, outputs))
        except asyncio.QueueFull:
            self.dropped += 1

    def scores(self) -> list[tuple[str, str, str, float]]:
        """(model, version, output, PSI) for every output with a reference and recent predictions."""
        out = []  # called from the metrics thread: iterate copies of what the event loop grows
        for (model, version), drift in list(self.models.items()):
            for name, dist in list(drift.outputs.items()):
                score = dist.score()
                if score is not None:
                    out.append((model, version, name, score))
        return out

    async def drained(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            model, version, outputs = await self._queue.get()
            try:
                self._add(model, version, outputs)
            except Exception:  # a bad output never stops monitoring of the others
                log.exception("drift: cannot bin the outputs of model '%s' version %s", model, version)
            finally:
                self._queue.task_done()

    def _add(self, model: str, version: str, outputs: Mapping[str, np.ndarray]) -> None:
        drift = self.models.get((model, version))
        if drift is None:
            saved = self._saved.get(model, {}).get(version)
            drift = self.models[(model, version)] = ModelDrift(self._reference_size, self._window_size, saved)
        if drift.add(outputs):
            log.info("drift: reference of model '%s' version %s captured from %d predictions", model, version,
                     self._reference_size)
            self._save()

    def _save(self) -> None:
        if self._path is None or self._path.exists():
            return
        doc: dict[str, dict[str, Any]] = {}
        for (model, version), drift in self.models.items():
            if drift.ready:
                doc.setdefault(model, {})[version] = {n: d.to_json() for n, d in drift.outputs.items()}
        self._path.write_text(json.dumps(doc, indent=1) + "\n")
