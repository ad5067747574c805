"""Score a large file through the server in order, with bounded concurrency and a progress bar.

    python clients/python/batch_score.py INPUT OUTPUT --model NAME [--url 127.0.0.1:8001]
        [--input-name auto] [--output-name auto] [--rows-per-request 256] [--concurrency 8]
        [--datatype auto] [--no-progress]

INPUT: .npy (memory-mapped), .csv (numeric, header optional) or .parquet (needs pyarrow); it is read in
chunks, never whole. OUTPUT: .npy or .csv (no header, one row per input row, non-batch dims flattened),
written to a temporary file next to it and renamed only once every row has been scored. Requests that fail
with UNAVAILABLE or RESOURCE_EXHAUSTED are retried with backoff; any other error stops the run (exit 1).
Needs `pip install 'tritonclient[grpc]'` (and optionally tqdm) and a running server (./scripts/serve).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
RETRIES, BACKOFF_S = 5, 0.1  # waits 0.1, 0.2, 0.4, ... s between tries


class ScoreError(Exception):
    """A problem the user can fix: reported as one line, exit code 1."""


def _csv_lines(f: TextIO) -> Iterator[str]:
    return (line for line in f if line.strip())


def _csv_shape(path: Path) -> tuple[int, bool]:
    """(data rows, has header), streaming: a header is a first line that is not all numbers."""
    with path.open() as f:
        lines = _csv_lines(f)
        first = next(lines, None)
        if first is None:
            return 0, False
        try:
            [float(v) for v in first.split(",")]
            return 1 + sum(1 for _ in lines), False
        except ValueError:
            return sum(1 for _ in lines), True


def open_input(path: Path, rows: int, dtype: np.dtype) -> tuple[int, Iterator[np.ndarray]]:
    """(total rows, iterator of chunks of at most `rows` rows)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, mmap_mode="r")
        return len(data), (np.asarray(data[i:i + rows], dtype=dtype) for i in range(0, len(data), rows))
    if suffix == ".csv":
        total, header = _csv_shape(path)

        def csv_chunks() -> Iterator[np.ndarray]:
            with path.open() as f:
                lines = _csv_lines(f)
                if header:
                    next(lines)
                while chunk := list(itertools.islice(lines, rows)):
                    try:
                        yield np.loadtxt(chunk, delimiter=",", dtype=dtype, ndmin=2)
                    except ValueError as e:
                        raise ScoreError(f"{path}: not a numeric table: {e}") from None
        return total, csv_chunks()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ScoreError("reading .parquet needs the pyarrow package: pip install pyarrow") from None
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=rows)
        return parquet.metadata.num_rows, (
            np.column_stack([c.to_numpy(zero_copy_only=False) for c in b.columns]).astype(dtype) for b in batches)
    raise ScoreError(f"{path}: unsupported input type {suffix!r} (use .npy, .csv or .parquet)")


class Writer:
    """Puts each chunk at its row offset as soon as it returns (.npy), or in input order through a reorder
    buffer of at most `window` chunks (.csv), into a temporary file that close() renames or deletes."""

    def __init__(self, path: Path, total: int, shape: list[int], dtype: np.dtype, window: int) -> None:
        if path.suffix.lower() not in (".npy", ".csv"):
            raise ScoreError(f"{path}: unsupported output type {path.suffix!r} (use .npy or .csv)")
        self.path, self.total, self.shape, self.dtype, self.window = path, total, shape, dtype, window
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(fd)
        self.tmp = Path(tmp)
        self.array: np.ndarray | None = None  # .npy: allocated from the first response
        self.csv = self.tmp.open("w") if path.suffix.lower() == ".csv" else None
        self.pending: dict[int, np.ndarray] = {}  # .csv: chunks that came back before their turn
        self.next = 0
        self.turn = asyncio.Condition()

    async def admit(self, index: int) -> None:
        """Hold chunk `index` back while it would land more than `window` chunks ahead of the csv."""
        if self.csv is not None:
            async with self.turn:
                await self.turn.wait_for(lambda: index < self.next + self.window)

    async def write(self, index: int, offset: int, data: np.ndarray) -> None:
        if self.csv is None:
            if self.array is None:
                self.array = np.lib.format.open_memmap(self.tmp, "w+", data.dtype, (self.total, *data.shape[1:]))
            self.array[offset:offset + len(data)] = data
            return
        self.pending[index] = data
        async with self.turn:
            while self.next in self.pending:
                flat = (chunk := self.pending.pop(self.next)).reshape(len(chunk), -1)
                fmt = ("%.17g" if flat.dtype.itemsize > 4 else "%.9g") if flat.dtype.kind == "f" else "%d"
                np.savetxt(self.csv, flat, fmt=fmt, delimiter=",")  # round-trips floats exactly
                self.next += 1
            self.turn.notify_all()

    def close(self, complete: bool) -> None:
        """Rename the temporary file to OUTPUT when every row is in it, else delete it."""
        if self.csv is not None:
            self.csv.close()
        elif self.array is not None:
            self.array.flush()
        elif complete:  # no rows: the shape comes from the model metadata
            np.lib.format.open_memmap(self.tmp, "w+", self.dtype, (0, *[max(d, 0) for d in self.shape]))
        self.array = None
        if complete:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class Progress:
    """tqdm when it is installed, else one `\\r` line on stderr with rows/s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.start, self.shown = total, enabled, 0, time.monotonic(), 0.0
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="rows", unit_scale=True, file=sys.stderr) if enabled else None
        except ImportError:
            self.bar = None

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        elif self.enabled and (time.monotonic() - self.shown > 0.2 or self.done == self.total):
            self.shown = time.monotonic()
            rate = self.done / max(self.shown - self.start, 1e-9)
            print(f"\r{self.done}/{self.total} rows, {rate:,.0f} rows/s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done:
            print(file=sys.stderr)


def pick(kind: str, wanted: str, tensors: list[dict]) -> dict:
    names = [t["name"] for t in tensors]
    if wanted == "auto":
        if len(tensors) != 1:
            raise ScoreError(f"the model has {len(tensors)} {kind}s {names}: choose one with --{kind}-name")
        return tensors[0]
    for t in tensors:
        if t["name"] == wanted:
            return t
    raise ScoreError(f"the model has no {kind} {wanted!r}; it has {names}")


async def infer(client: aioclient.InferenceServerClient, args: argparse.Namespace, input_name: str,
                datatype: str, chunk: np.ndarray) -> np.ndarray:
    """One request, retried with backoff while the server answers UNAVAILABLE or RESOURCE_EXHAUSTED."""
    tensor = aioclient.InferInput(input_name, list(chunk.shape), datatype)
    tensor.set_data_from_numpy(chunk)
    outputs = [aioclient.InferRequestedOutput(args.output_name)]
    for attempt in range(RETRIES + 1):
        try:
            result = await client.infer(args.model, [tensor], outputs=outputs)
            return result.as_numpy(args.output_name)
        except InferenceServerException as e:
            if e.status() not in RETRYABLE or attempt == RETRIES:
                raise ScoreError(f"request failed ({e.status()}): {e.message()}") from None
            await asyncio.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


async def score(args: argparse.Namespace) -> int:
    async with aioclient.InferenceServerClient(args.url) as client:
        try:
            meta = await client.get_model_metadata(args.model, as_json=True)
            config = (await client.get_model_config(args.model, as_json=True))["config"]
        except InferenceServerException as e:
            raise ScoreError(f"model {args.model!r} at {args.url}: {e.message()} ({e.status()})") from None
        source = pick("input", args.input_name, meta["inputs"])
        target = pick("output", args.output_name, meta["outputs"])
        args.output_name = target["name"]
        rows, max_rows = args.rows_per_request, int(config.get("max_batch_size", 0))
        if max_rows <= 0:
            raise ScoreError(f"model {args.model!r} has no batch dimension (max_batch_size 0): nothing to stream")
        if rows > max_rows:  # the server refuses a request larger than one batch
            print(f"note: --rows-per-request {rows} > the model's max_batch_size; using {max_rows}", file=sys.stderr)
            rows = max_rows
        datatype = source["datatype"] if args.datatype == "auto" else args.datatype
        if datatype in ("BYTES", "BF16"):
            raise ScoreError(f"input {source['name']!r} is {datatype}: only numeric datatypes can be streamed")
        inner = [int(d) for d in source["shape"][1:]]
        total, chunks = open_input(args.input, rows, np.dtype(triton_to_np_dtype(datatype)))
        out_dtype = np.dtype(triton_to_np_dtype(target["datatype"]))
        writer = Writer(args.output, total, [int(d) for d in target["shape"][1:]], out_dtype, 4 * args.concurrency)
        progress = Progress(total, not args.no_progress)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * args.concurrency)

        async def produce() -> None:
            offset = 0
            for index in itertools.count():
                await writer.admit(index)
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                if all(d > 0 for d in inner) and list(chunk.shape[1:]) != inner and chunk[:1].size == np.prod(inner):
                    chunk = chunk.reshape(len(chunk), *inner)  # e.g. flat csv rows for an [N, 8, 8] input
                await queue.put((index, offset, np.ascontiguousarray(chunk)))
                offset += len(chunk)
            for _ in range(args.concurrency):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                index, offset, chunk = item
                out = await infer(client, args, source["name"], datatype, chunk)
                if len(out) != len(chunk):
                    raise ScoreError(f"chunk {index}: {len(chunk)} rows in, {len(out)} rows out")
                await writer.write(index, offset, out)
                progress.update(len(chunk))

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                for _ in range(args.concurrency):
                    group.create_task(work())
        except BaseException:
            writer.close(complete=False)
            raise
        finally:
            progress.close()
        writer.close(complete=True)
        return progress.done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help=".npy, .csv or .parquet")
    parser.add_argument("output", type=Path, help=".npy or .csv")
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--input-name", default="auto")
    parser.add_argument("--output-name", default="auto")
    parser.add_argument("--rows-per-request", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--datatype", default="auto", help="cast the input to this v2 datatype, e.g. FP32")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.rows_per_request < 1 or args.concurrency < 1:
        parser.error("--rows-per-request and --concurrency must be at least 1")
    start = time.monotonic()
    try:
        rows = asyncio.run(score(args))
    except Exception as e:  # every failure becomes one line and exit code 1
        while isinstance(e, ExceptionGroup):  # raised inside the task group
            e = e.exceptions[0]
        print(f"batch_score: error: {e if isinstance(e, ScoreError) else repr(e)}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - start
    print(f"{rows} rows in {seconds:.2f} s ({rows / max(seconds, 1e-9):,.0f} rows/s) -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
