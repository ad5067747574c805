"""Prediction logging: a sampled record of requests (inputs, outputs, model, version, id, latency) written as
JSON lines, off the request path.

The request path draws one random number and, for a sampled request, puts references to its arrays on a
bounded queue; when the queue is full the record is dropped and counted, never waited for. A background
task turns records into JSON and appends them to the file in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)

BATCH = 256  # records written per trip to the thread


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class PredictionLog:
    def __init__(self, path: Path, sample_rate: float, *, queue_size: int = 1024) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._file: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="prediction-log")
        log.info("logging %.3g of predictions to %s", self.sample_rate, self.path)

    def offer(self, model: str, version: str, request_id: str, inputs: Mapping[str, np.ndarray],
              outputs: Mapping[str, np.ndarray], latency_s: float, *, shadow: bool = False) -> None:
        """From the request path: samples, never blocks, never raises. `shadow`: a shadow model's answer (never
        returned to the client), marked as such."""
        if random.random() >= self.sample_rate:
            return
        record = {"ts": datetime.now(UTC).isoformat(timespec="microseconds"), "model": model, "version": version,
                  "id": request_id, "latency_ms": round(latency_s * 1e3, 3), "inputs": inputs, "outputs": outputs}
        if shadow:
            record["shadow"] = True
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1

    async def drained(self) -> None:
        """Until every record queued so far is written (or counted as dropped)."""
        await self._queue.join()

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._file is not None:
            self._file.close()
        if self.dropped:
            log.warning("prediction log: %d records dropped (queue full)", self.dropped)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await loop.run_in_executor(None, self._write, batch)
                self.written += len(batch)
            except Exception:  # a full disk must not stop the server; the records are lost, and said so
                log.exception("prediction log: cannot write %d records to %s", len(batch), self.path)
                self.dropped += len(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        assert self._file is not None
        lines = []
        for record in batch:
            for key in ("inputs", "outputs"):
                record[key] = {name: array.tolist() for name, array in record[key].items()}
            lines.append(json.dumps(record, default=_jsonable))
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
