"""Score a large file through the server in order, with bounded concurrency and a progress bar.

    python clients/python/batch_score.py INPUT OUTPUT --model NAME [--url 127.0.0.1:8001]
        [--input-name auto] [--output-name NAME ...] [--rows-per-request N] [--concurrency 8]
        [--datatype auto] [--no-progress]

INPUT: .npy (memory-mapped), .csv (numeric, header optional) or .parquet (needs pyarrow); it is read in
chunks, never whole. Every output of the model is written unless --output-name (repeatable) picks some.
OUTPUT: .npz (one array per output, as numpy.savez writes them), .npy (exactly one output) or .csv (one row
per input row, non-batch dims flattened, the outputs' columns side by side; when there are several outputs,
a header row: `NAME` for a 1-wide output, `NAME[i]` for each flattened element of a wider one, e.g.
`label,probabilities[0],...,probabilities[9]`; none for one output), written to a temporary file next to it
and renamed only once every row has been scored. Requests that fail with UNAVAILABLE or RESOURCE_EXHAUSTED are
retried with backoff; any other error stops the run (exit 1).
Needs `pip install 'tritonclient[grpc]'` (and optionally tqdm) and a running server (./scripts/serve).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

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


class Output(NamedTuple):
    """One output tensor to write: its name, its non-batch dims (-1 if variable) and its numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def csv_columns(outputs: list[Output], widths: list[int]) -> list[str]:
    """The header: `<output>` for a 1-wide output, `<output>[i]` for each flattened element of a wider one."""
    return [o.name if w == 1 else f"{o.name}[{i}]" for o, w in zip(outputs, widths, strict=True)
            for i in range(w)]


def _width(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _fmt(dtype: np.dtype) -> str:
    return ("%.17g" if dtype.itemsize > 4 else "%.9g") if dtype.kind == "f" else "%d"  # floats round-trip


def check_output_type(path: Path, names: list[str]) -> None:
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy", ".csv"):
        raise ScoreError(f"{path}: unsupported output type {path.suffix!r} (use .npz, .npy or .csv)")
    if suffix == ".npy" and len(names) != 1:
        raise ScoreError(f"{path}: a .npy file holds one output but {len(names)} would be written {names}: "
                         f"write .npz or .csv, or choose one with --output-name")


class Writer:
    """Puts each chunk at its row offset as soon as it returns (.npy, .npz: one memory-mapped .npy per
    output), or in input order through a reorder buffer of at most `window` chunks (.csv), into temporary
    files that close() renames (.npz: zips, uncompressed like numpy.savez) or deletes."""

    def __init__(self, path: Path, total: int, outputs: list[Output], window: int) -> None:
        check_output_type(path, [o.name for o in outputs])
        self.kind = path.suffix.lower()
        self.path, self.total, self.outputs, self.window = path, total, outputs, window
        self.tmp = self._temp(path.name)
        # .npy/.npz: one memory-mapped array per output, allocated from the first response (its dtype, dims)
        self.parts = [self.tmp] if self.kind == ".npy" else \
            [self._temp(f"{path.name}.{i}.npy") for i in range(len(outputs))] if self.kind == ".npz" else []
        self.arrays: list[np.ndarray | None] = [None] * len(self.parts)
        self.csv = self.tmp.open("w", newline="") if self.kind == ".csv" else None
        self.pending: dict[int, list[np.ndarray]] = {}  # .csv: chunks that came back before their turn
        self.next = 0
        self.turn = asyncio.Condition()

    def _temp(self, name: str) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{name}.", suffix=".partial")
        os.close(fd)
        return Path(tmp)

    async def admit(self, index: int) -> None:
        """Hold chunk `index` back while it would land more than `window` chunks ahead of the csv."""
        if self.csv is not None:
            async with self.turn:
                await self.turn.wait_for(lambda: index < self.next + self.window)

    async def write(self, index: int, offset: int, data: list[np.ndarray]) -> None:
        """`data`: one array per output, in the order of `outputs`, all of the chunk's rows."""
        if self.csv is None:
            for i, (part, out) in enumerate(zip(self.parts, data, strict=True)):
                if self.arrays[i] is None:
                    self.arrays[i] = np.lib.format.open_memmap(part, "w+", out.dtype, (self.total, *out.shape[1:]))
                self.arrays[i][offset:offset + len(out)] = out
            return
        self.pending[index] = data
        async with self.turn:
            while self.next in self.pending:
                self._csv_rows(self.pending.pop(self.next))
                self.next += 1
            self.turn.notify_all()

    def _csv_rows(self, data: list[np.ndarray]) -> None:
        flat = [out.reshape(len(out), _width(out.shape[1:])) for out in data]
        if self.next == 0 and len(self.outputs) > 1:
            self._csv_header([f.shape[1] for f in flat])
        fmt = [_fmt(f.dtype) for f in flat for _ in range(f.shape[1])]
        if len({f.dtype for f in flat}) > 1:  # e.g. int64 next to float32: no common dtype loses nothing
            flat = [f.astype(object) for f in flat]
        np.savetxt(self.csv, np.hstack(flat), fmt=fmt, delimiter=",")

    def _csv_header(self, widths: list[int]) -> None:
        csv.writer(self.csv, lineterminator="\n").writerow(csv_columns(self.outputs, widths))

    def close(self, complete: bool) -> None:
        """Rename the temporary file to OUTPUT when every row is in it, else delete it (and any parts)."""
        try:
            if self.csv is not None:
                if complete and self.next == 0 and len(self.outputs) > 1 and all(
                        d >= 0 for o in self.outputs for d in o.shape):  # no rows: the header from the metadata
                    self._csv_header([_width(o.shape) for o in self.outputs])
                self.csv.close()
            for i, part in enumerate(self.parts):  # .npy, .npz: one per output
                if self.arrays[i] is not None:
                    self.arrays[i].flush()
                elif complete:  # no rows: the shape comes from the model metadata
                    shape, dtype = (0, *[max(d, 0) for d in self.outputs[i].shape]), self.outputs[i].dtype
                    np.lib.format.open_memmap(part, "w+", dtype, shape)
                self.arrays[i] = None
            if complete and self.kind == ".npz":
                with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                    for part, output in zip(self.parts, self.outputs, strict=True):
                        z.write(part, arcname=f"{output.name}.npy")  # copied in blocks, never whole
                        part.unlink()
            if complete:
                os.replace(self.tmp, self.path)
        finally:
            for leftover in (self.tmp, *self.parts):
                leftover.unlink(missing_ok=True)


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


def pick_outputs(wanted: list[str] | None, tensors: list[dict]) -> list[Output]:
    """Every output of the model, in its order, when `wanted` is None; else those named, in the order named."""
    names = [t["name"] for t in tensors]
    chosen = tensors if wanted is None else [pick("output", name, tensors) for name in dict.fromkeys(wanted)]
    if not chosen:
        raise ScoreError("the model has no outputs")
    for t in chosen:
        if t["datatype"] in ("BYTES", "BF16"):
            others = [n for n in names if n != t["name"]]
            raise ScoreError(f"output {t['name']!r} is {t['datatype']}: only numeric outputs can be written"
                             + (f"; choose among {others} with --output-name" if others else ""))
    return [Output(t["name"], tuple(int(d) for d in t["shape"][1:]), np.dtype(triton_to_np_dtype(t["datatype"])))
            for t in chosen]


async def infer(client: aioclient.InferenceServerClient, model: str, input_name: str, datatype: str,
                chunk: np.ndarray, output_names: list[str]) -> list[np.ndarray]:
    """One request for the named outputs (one array each, in that order), retried with backoff while the
    server answers UNAVAILABLE or RESOURCE_EXHAUSTED."""
    tensor = aioclient.InferInput(input_name, list(chunk.shape), datatype)
    tensor.set_data_from_numpy(chunk)
    outputs = [aioclient.InferRequestedOutput(name) for name in output_names]
    for attempt in range(RETRIES + 1):
        try:
            result = await client.infer(model, [tensor], outputs=outputs)
            arrays = [result.as_numpy(name) for name in output_names]
            if missing := [n for n, a in zip(output_names, arrays, strict=True) if a is None]:
                raise ScoreError(f"the response has no output {missing}")
            return arrays
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
        targets = pick_outputs(args.output_name, meta["outputs"])
        names = [t.name for t in targets]
        rows, max_rows = args.rows_per_request, int(config.get("max_batch_size", 0))
        if max_rows <= 0:
            raise ScoreError(f"model {args.model!r} has no batch dimension (max_batch_size 0): nothing to stream")
        if rows is None:
            rows = max_rows
        elif rows > max_rows:  # the server refuses a request larger than one batch
            print(f"note: --rows-per-request {rows} > the model's max_batch_size {max_rows}; using {max_rows}",
                  file=sys.stderr)
            rows = max_rows
        datatype = source["datatype"] if args.datatype == "auto" else args.datatype
        if datatype in ("BYTES", "BF16"):
            raise ScoreError(f"input {source['name']!r} is {datatype}: only numeric datatypes can be streamed")
        inner = [int(d) for d in source["shape"][1:]]
        check_output_type(args.output, names)  # before reading the input: counting csv rows is a whole pass
        total, chunks = open_input(args.input, rows, np.dtype(triton_to_np_dtype(datatype)))
        writer = Writer(args.output, total, targets, 4 * args.concurrency)
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
                out = await infer(client, args.model, source["name"], datatype, chunk, names)
                for name, array in zip(names, out, strict=True):
                    if len(array) != len(chunk):
                        raise ScoreError(f"chunk {index}: {len(chunk)} rows in, {len(array)} rows of {name!r} out")
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
    parser.add_argument("output", type=Path,
                        help=".npz (one array per output), .npy (exactly one output) or .csv (the outputs' columns "
                             "side by side; when there are several, a header row names them: `NAME` for a 1-wide "
                             "output, `NAME[i]` for each flattened element of a wider one)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--input-name", default="auto", help="the model's input to feed (default: its only one)")
    parser.add_argument("--output-name", action="append", metavar="NAME",
                        help="write this output; repeat for several (written in the order given). "
                             "Default (or 'auto'): every output of the model, in its order")
    parser.add_argument("--rows-per-request", type=int, metavar="N",
                        help="rows per request (default: the model's max_batch_size; a larger N is lowered to it)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    parser.add_argument("--datatype", default="auto", help="cast the input to this v2 datatype, e.g. FP32")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.rows_per_request is not None and args.rows_per_request < 1) or args.concurrency < 1:
        parser.error("--rows-per-request and --concurrency must be at least 1")
    if args.output_name == ["auto"]:
        args.output_name = None
    elif args.output_name is not None and "auto" in args.output_name:
        parser.error("--output-name auto (every output) cannot be combined with output names")
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
