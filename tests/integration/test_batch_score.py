"""clients/python/batch_score.py against the real server: order, partial last chunk, csv, several outputs
(.npz, .csv), the default rows per request, errors, retries."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).resolve().parents[2] / "clients" / "python"


def _load():
    sys.path.insert(0, str(CLIENTS))  # as when run as a script: it may import its neighbours
    try:
        spec = importlib.util.spec_from_file_location("batch_score", CLIENTS / "batch_score.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(CLIENTS))


batch_score = _load()


def expected(repository: Path, x: np.ndarray, output: str = "y") -> np.ndarray:
    session = onnxruntime.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    return session.run([output], {"x": x})[0]


def run(server, src: Path, dst: Path, *extra: str) -> int:
    """Output y unless `extra` names others (--output-name is repeatable: the names add up)."""
    output = [] if "--output-name" in extra else ["--output-name", "y"]
    return batch_score.main([str(src), str(dst), "--model", "mlp", "--url", server.url, *output, "--no-progress",
                             *extra])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def record_request_rows(monkeypatch) -> list[int]:
    """The row count of every request the command sends."""
    rows, infer = [], batch_score.infer

    async def recording(client, model, input_name, datatype, chunk, output_names):
        rows.append(len(chunk))
        return await infer(client, model, input_name, datatype, chunk, output_names)
    monkeypatch.setattr(batch_score, "infer", recording)
    return rows


def test_npy_20000_rows_in_order_equal_to_onnxruntime(server, repository, tmp_path, capsys, monkeypatch):
    x = np.random.default_rng(1).standard_normal((20_000, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    rows = record_request_rows(monkeypatch)
    # No --rows-per-request: the model's max_batch_size (64), silently.
    assert run(server, tmp_path / "in.npy", tmp_path / "out.npy", "--concurrency", "8") == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (20_000, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected(repository, x), rtol=1e-6, atol=1e-6)
    assert sorted(rows) == [32] + [64] * 312  # 20000 = 312 * 64 + 32
    err = capsys.readouterr().err
    assert "note" not in err and "rows-per-request" not in err
    assert "20000 rows in" in err and "rows/s" in err
    assert leftovers(tmp_path) == []


def test_more_rows_per_request_than_max_batch_size_is_lowered_with_one_note(server, tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "in.npy", np.zeros((1000, 8), np.float32))
    rows = record_request_rows(monkeypatch)
    assert run(server, tmp_path / "in.npy", tmp_path / "out.npy", "--rows-per-request", "256") == 0
    assert max(rows) == 64 and sum(rows) == 1000
    err = capsys.readouterr().err
    assert err.count("note:") == 1
    assert "note: --rows-per-request 256 > the model's max_batch_size 64; using 64" in err
    # At or under the limit: no note.
    assert run(server, tmp_path / "in.npy", tmp_path / "out.npy", "--rows-per-request", "64") == 0
    assert "note" not in capsys.readouterr().err


def score_all(server, src: Path, dst: Path, *extra: str) -> int:
    """Without --output-name: every output of the model."""
    return batch_score.main([str(src), str(dst), "--model", "mlp", "--url", server.url, "--no-progress", *extra])


def test_every_output_to_npz_equal_to_onnxruntime(server, repository, tmp_path):
    x = np.random.default_rng(5).standard_normal((1001, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    assert score_all(server, tmp_path / "in.npy", tmp_path / "out.npz", "--concurrency", "4") == 0
    with np.load(tmp_path / "out.npz") as out:
        assert list(out.keys()) == ["y", "h"]  # the model's order
        assert out["y"].shape == (1001, 4) and out["h"].shape == (1001, 16) and out["h"].dtype == np.float32
        for name in ("y", "h"):
            np.testing.assert_allclose(out[name], expected(repository, x, name), rtol=1e-6, atol=1e-6)
    assert leftovers(tmp_path) == []


def test_every_output_to_csv_one_column_group_each(server, repository, tmp_path):
    x = np.random.default_rng(6).standard_normal((300, 8)).astype(np.float32)
    np.savetxt(tmp_path / "in.csv", x, fmt="%.9g", delimiter=",")
    assert score_all(server, tmp_path / "in.csv", tmp_path / "out.csv", "--rows-per-request", "7") == 0
    header, *lines = (tmp_path / "out.csv").read_text().splitlines()
    assert header.split(",") == [f"y[{i}]" for i in range(4)] + [f"h[{i}]" for i in range(16)]
    out = np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2)
    assert out.shape == (300, 20)
    np.testing.assert_allclose(out[:, :4], expected(repository, x, "y"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[:, 4:], expected(repository, x, "h"), rtol=1e-6, atol=1e-6)
    assert leftovers(tmp_path) == []


def test_a_subset_of_outputs_in_the_order_named(server, repository, tmp_path):
    x = np.random.default_rng(7).standard_normal((200, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    assert run(server, tmp_path / "in.npy", tmp_path / "y.npz") == 0  # --output-name y
    with np.load(tmp_path / "y.npz") as out:
        assert list(out.keys()) == ["y"]
        np.testing.assert_allclose(out["y"], expected(repository, x, "y"), rtol=1e-6, atol=1e-6)
    assert score_all(server, tmp_path / "in.npy", tmp_path / "hy.csv", "--output-name", "h", "--output-name", "y") == 0
    header, *lines = (tmp_path / "hy.csv").read_text().splitlines()
    assert header.split(",") == [f"h[{i}]" for i in range(16)] + [f"y[{i}]" for i in range(4)]
    out = np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2)
    np.testing.assert_allclose(out[:, :16], expected(repository, x, "h"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[:, 16:], expected(repository, x, "y"), rtol=1e-6, atol=1e-6)
    assert score_all(server, tmp_path / "in.npy", tmp_path / "auto.npz", "--output-name", "auto") == 0
    with np.load(tmp_path / "auto.npz") as out:
        assert list(out.keys()) == ["y", "h"]


def test_several_outputs_to_npy_and_unknown_output_are_refused(server, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((10, 8), np.float32))
    assert score_all(server, tmp_path / "in.npy", tmp_path / "out.npy") == 1
    err = capsys.readouterr().err
    assert "a .npy file holds one output but 2 would be written ['y', 'h']" in err
    assert ".npz" in err and "--output-name" in err
    assert score_all(server, tmp_path / "in.npy", tmp_path / "out.npz", "--output-name", "z") == 1
    assert "the model has no output 'z'; it has ['y', 'h']" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_last_partial_chunk_and_the_second_output(server, repository, tmp_path):
    x = np.random.default_rng(2).standard_normal((1001, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    assert run(server, tmp_path / "in.npy", tmp_path / "y.npy", "--rows-per-request", "50") == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(repository, x), rtol=1e-6, atol=1e-6)
    assert run(server, tmp_path / "in.npy", tmp_path / "h.npy", "--rows-per-request", "50", "--output-name", "h") == 0
    session = onnxruntime.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    np.testing.assert_allclose(np.load(tmp_path / "h.npy"), session.run(["h"], {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("header", [True, False])
def test_csv_in_csv_out(server, repository, tmp_path, header):
    x = np.random.default_rng(3).standard_normal((777, 8)).astype(np.float32)
    names = ",".join(f"f{i}" for i in range(8)) if header else ""
    np.savetxt(tmp_path / "in.csv", x, fmt="%.9g", delimiter=",", header=names, comments="")
    assert run(server, tmp_path / "in.csv", tmp_path / "out.csv", "--rows-per-request", "64", "--concurrency", "4") == 0
    out = np.loadtxt(tmp_path / "out.csv", delimiter=",", dtype=np.float32, ndmin=2)
    np.testing.assert_allclose(out, expected(repository, x), rtol=1e-6, atol=1e-6)


def test_csv_in_npy_out_and_the_fallback_progress_line(server, repository, tmp_path, capsys, monkeypatch):
    x = np.random.default_rng(4).standard_normal((130, 8)).astype(np.float32)
    np.savetxt(tmp_path / "in.csv", x, fmt="%.9g", delimiter=",")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed
    assert batch_score.main([str(tmp_path / "in.csv"), str(tmp_path / "out.npy"), "--model", "mlp",
                             "--url", server.url, "--output-name", "y"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected(repository, x), rtol=1e-6, atol=1e-6)
    assert "\r130/130 rows" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_empty_input(server, tmp_path, suffix):
    src = tmp_path / f"in{suffix}"
    np.save(src, np.zeros((0, 8), np.float32)) if suffix == ".npy" else src.write_text("")
    assert run(server, src, tmp_path / f"out{suffix}") == 0
    if suffix == ".npy":
        out = np.load(tmp_path / "out.npy")
        assert out.shape == (0, 4) and out.dtype == np.float32
    else:
        assert (tmp_path / "out.csv").read_text() == ""
    # Every output: the shapes (.npz) and the header (.csv) come from the model metadata.
    assert score_all(server, src, tmp_path / "all.npz") == 0
    with np.load(tmp_path / "all.npz") as out:
        assert out["y"].shape == (0, 4) and out["h"].shape == (0, 16) and out["h"].dtype == np.float32
    assert score_all(server, src, tmp_path / "all.csv") == 0
    assert (tmp_path / "all.csv").read_text().splitlines() == [",".join(
        [f"y[{i}]" for i in range(4)] + [f"h[{i}]" for i in range(16)])]
    assert leftovers(tmp_path) == []


def test_unknown_model_fails_and_writes_nothing(server, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((10, 8), np.float32))
    code = batch_score.main([str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--model", "nope",
                             "--url", server.url, "--no-progress"])
    assert code != 0 and not (tmp_path / "out.npy").exists() and leftovers(tmp_path) == []
    assert "nope" in capsys.readouterr().err


def test_a_rejected_request_stops_the_run_without_output(server, tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((100, 5), np.float32))  # the model wants 8 columns
    assert run(server, tmp_path / "in.npy", tmp_path / "out.csv", "--rows-per-request", "10") == 1
    assert not (tmp_path / "out.csv").exists() and leftovers(tmp_path) == []
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_missing_pyarrow_is_a_clear_error(server, tmp_path, capsys, monkeypatch):
    (tmp_path / "in.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert run(server, tmp_path / "in.parquet", tmp_path / "out.npy") == 1
    assert "pyarrow" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_csv_columns_and_mixed_dtypes_without_a_server(tmp_path):
    output = batch_score.Output
    outputs = [output("score", (), np.dtype(np.float32)), output("ids", (1,), np.dtype(np.int64)),
               output("emb", (2, 2), np.dtype(np.float64))]
    assert batch_score.csv_columns(outputs, [1, 1, 4]) == ["score", "ids", "emb[0]", "emb[1]", "emb[2]", "emb[3]"]

    async def write() -> None:
        writer = batch_score.Writer(tmp_path / "out.csv", 3, outputs, window=4)
        big = 2**62 + 1  # not a float64
        for index in (1, 0):  # out of order: written in order
            rows = range(2 * index, min(2 * index + 2, 3))
            await writer.write(index, 2 * index, [np.array([0.1 * r for r in rows], np.float32),
                                                  np.array([[big + r] for r in rows], np.int64),
                                                  np.array([np.full((2, 2), r / 3) for r in rows])])
        writer.close(complete=True)
    asyncio.run(write())
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "score,ids,emb[0],emb[1],emb[2],emb[3]"
    assert [line.split(",")[1] for line in lines[1:]] == [str(2**62 + 1 + r) for r in range(3)]
    out = np.loadtxt(lines[1:], delimiter=",", ndmin=2)
    np.testing.assert_array_equal(out[:, 0].astype(np.float32), np.array([0, 0.1, 0.2], np.float32))  # round-trips
    np.testing.assert_array_equal(out[:, 2:], np.repeat(np.arange(3)[:, None] / 3, 4, axis=1))
    assert leftovers(tmp_path) == []


def test_bytes_outputs_are_refused_by_name():
    tensors = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
               {"name": "p", "datatype": "FP32", "shape": [-1, 3]}]
    with pytest.raises(batch_score.ScoreError, match=r"output 'label' is BYTES.*\['p'\] with --output-name"):
        batch_score.pick_outputs(None, tensors)
    assert batch_score.pick_outputs(["p", "p"], tensors) == [batch_score.Output("p", (3,), np.dtype(np.float32))]


class FlakyClient:
    """Answers UNAVAILABLE, then RESOURCE_EXHAUSTED, then the rows doubled; or always `status`."""

    def __init__(self, status: str | None = None) -> None:
        self.calls, self.status = 0, status

    async def infer(self, model, inputs, outputs):
        self.calls += 1
        if self.status or self.calls <= 2:
            raise InferenceServerException("busy", self.status or
                                           ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")[self.calls - 1])
        return self

    def as_numpy(self, name):
        return np.full((3, 1), 2.0 if name == "y" else 3.0, np.float32)


def test_retries_only_unavailable_and_resource_exhausted(monkeypatch):
    monkeypatch.setattr(batch_score, "BACKOFF_S", 0)
    chunk = np.ones((3, 1), np.float32)
    flaky = FlakyClient()
    y, h = asyncio.run(batch_score.infer(flaky, "m", "x", "FP32", chunk, ["y", "h"]))
    assert y.tolist() == [[2.0]] * 3 and h.tolist() == [[3.0]] * 3
    assert flaky.calls == 3
    broken = FlakyClient("StatusCode.INTERNAL")
    with pytest.raises(batch_score.ScoreError, match="INTERNAL"):
        asyncio.run(batch_score.infer(broken, "m", "x", "FP32", chunk, ["y"]))
    assert broken.calls == 1
    down = FlakyClient("StatusCode.UNAVAILABLE")
    with pytest.raises(batch_score.ScoreError, match="UNAVAILABLE"):
        asyncio.run(batch_score.infer(down, "m", "x", "FP32", chunk, ["y"]))
    assert down.calls == batch_score.RETRIES + 1
