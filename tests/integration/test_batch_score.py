"""clients/python/batch_score.py against the real server: order, partial last chunk, csv, errors, retries."""

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


def expected(repository: Path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    return session.run(["y"], {"x": x})[0]


def run(server, src: Path, dst: Path, *extra: str) -> int:
    return batch_score.main([str(src), str(dst), "--model", "mlp", "--url", server.url, "--output-name", "y",
                             "--no-progress", *extra])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_npy_20000_rows_in_order_equal_to_onnxruntime(server, repository, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((20_000, 8)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    # 256 rows per request is more than the model's max_batch_size (64): the command uses 64.
    assert run(server, tmp_path / "in.npy", tmp_path / "out.npy", "--concurrency", "8") == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (20_000, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected(repository, x), rtol=1e-6, atol=1e-6)
    err = capsys.readouterr().err
    assert "using 64" in err and "20000 rows in" in err and "rows/s" in err
    assert leftovers(tmp_path) == []


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


def test_ambiguous_output_and_missing_pyarrow_are_clear_errors(server, tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "in.npy", np.zeros((10, 8), np.float32))
    args = [str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--model", "mlp", "--url", server.url]
    assert batch_score.main(args) == 1
    assert "--output-name" in capsys.readouterr().err
    (tmp_path / "in.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert batch_score.main([str(tmp_path / "in.parquet"), *args[1:], "--output-name", "y"]) == 1
    assert "pyarrow" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


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
        return np.full((3, 1), 2.0, np.float32)


def test_retries_only_unavailable_and_resource_exhausted(monkeypatch):
    monkeypatch.setattr(batch_score, "BACKOFF_S", 0)
    args = batch_score.argparse.Namespace(model="m", output_name="y")
    chunk = np.ones((3, 1), np.float32)
    flaky = FlakyClient()
    assert asyncio.run(batch_score.infer(flaky, args, "x", "FP32", chunk)).tolist() == [[2.0]] * 3
    assert flaky.calls == 3
    broken = FlakyClient("StatusCode.INTERNAL")
    with pytest.raises(batch_score.ScoreError, match="INTERNAL"):
        asyncio.run(batch_score.infer(broken, args, "x", "FP32", chunk))
    assert broken.calls == 1
    down = FlakyClient("StatusCode.UNAVAILABLE")
    with pytest.raises(batch_score.ScoreError, match="UNAVAILABLE"):
        asyncio.run(batch_score.infer(down, args, "x", "FP32", chunk))
    assert down.calls == batch_score.RETRIES + 1
