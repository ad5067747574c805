"""benchmarks/gpu_check.py and scripts/gpu_check, as far as a machine without a GPU allows: the CUDA-vs-CPU
comparison and its tolerance, the report, the failure without CUDAExecutionProvider, and the plumbing (servers,
tritonclient, the closed-loop benchmark point) in a dry run on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from benchmarks import gpu_check
from benchmarks.gpu_check import ATOL_SCALE, RTOL, Report, compare_arrays, compare_outputs, markdown
from tests.support import onnx_models

ROOT = Path(__file__).resolve().parents[2]


def tf32(a: np.ndarray) -> np.ndarray:
    """float32 truncated to TF32's 10 mantissa bits (what tensor cores multiply; truncation is the worse case)."""
    return (a.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def mlp_outputs(sizes: list[int], x: np.ndarray, rounding=lambda a: a) -> np.ndarray:
    weights = {i.name: numpy_helper.to_array(i) for i in onnx_models.mlp(sizes, seed=0).graph.initializer}
    current = x
    for i in range(len(sizes) - 1):
        current = (rounding(current).astype(np.float64) @ rounding(weights[f"w{i}"]).astype(np.float64))
        current = current.astype(np.float32) + weights[f"b{i}"]
        if i < len(sizes) - 2:
            current = np.maximum(current, 0)
    return current


@pytest.fixture(scope="module")
def mlp_pair() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32)
    sizes = [512, 1024, 1024, 10]
    return mlp_outputs(sizes, x), mlp_outputs(sizes, x, tf32)


def test_tf32_rounding_passes_and_is_not_trivially_zero(mlp_pair):
    cpu, gpu = mlp_pair
    result = compare_arrays(cpu, gpu, exact=False)
    assert result["ok"], result
    assert 0.05 < result["worst"] < 0.8  # a real difference, well inside the bound
    assert result["max_abs_diff"] > 0 and result["rms"] > 0


@pytest.mark.parametrize("bug", ["row of another request", "zeroed buffer", "one element 5 % off", "rows shifted",
                                 "float16 round trip of a wrong dtype", "NaN"])
def test_real_bugs_fail(mlp_pair, bug):
    cpu, _ = mlp_pair
    got = cpu.copy()
    if bug == "row of another request":
        got[3] = cpu[4]
    elif bug == "zeroed buffer":
        got[:] = 0
    elif bug == "one element 5 % off":
        i = np.unravel_index(np.argmax(np.abs(cpu)), cpu.shape)
        got[i] *= 1.05
    elif bug == "rows shifted":
        got = np.roll(cpu, 1, axis=0)
    elif bug == "float16 round trip of a wrong dtype":
        got = cpu.astype(np.float16).astype(np.float32) * 1.1
    else:
        got[0, 0] = np.nan
    result = compare_arrays(cpu, got, exact=False)
    assert not result["ok"] and result["worst"] > 1 and result["problem"]


def test_the_bound_is_rtol_plus_a_share_of_the_rms():
    cpu = np.array([[1.0, -1.0, 0.0, 10.0]], dtype=np.float32)
    rms = float(np.sqrt(np.mean(cpu.astype(np.float64) ** 2)))
    allowed_at_zero = ATOL_SCALE * rms
    inside = cpu.copy()
    inside[0, 2] = allowed_at_zero * 0.9
    outside = cpu.copy()
    outside[0, 2] = allowed_at_zero * 1.1
    assert compare_arrays(cpu, inside, exact=False)["ok"]
    assert not compare_arrays(cpu, outside, exact=False)["ok"]
    big = cpu.copy()
    big[0, 3] += (RTOL * 10 + allowed_at_zero) * 0.9
    assert compare_arrays(cpu, big, exact=False)["ok"]


def test_exact_types_and_structure():
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert compare_arrays(ints, ints.copy(), exact=False)["ok"]  # integers are always exact
    off = ints.copy()
    off[1, 1] += 1
    assert not compare_arrays(ints, off, exact=False)["ok"]
    floats = np.ones((2, 3), dtype=np.float32)
    assert not compare_arrays(floats, floats + 1e-7, exact=True)["ok"]
    assert compare_arrays(floats, floats.copy(), exact=True)["ok"]
    assert "dtype" in compare_arrays(floats, floats.astype(np.float64), exact=False)["problem"]
    assert "shape" in compare_arrays(floats, floats[:1], exact=False)["problem"]
    both_nan = np.array([np.nan, 1.0], dtype=np.float32)
    assert compare_arrays(both_nan, both_nan.copy(), exact=False)["ok"]
    words = np.array([b"a", b"b"], dtype=object)
    assert compare_arrays(words, words.copy(), exact=True)["ok"]
    assert not compare_arrays(words, np.array([b"a", b"c"], dtype=object), exact=True)["ok"]
    rows = compare_outputs({"y": floats, "h": floats}, {"y": floats, "z": floats}, exact=False)
    assert [(r["output"], r["ok"]) for r in rows] == [("y", True), ("h", False), ("z", False)]


def test_report_files(tmp_path):
    report = Report(tmp_path)
    report.data["gpu"] = {"gpus": [{"name": "NVIDIA H200", "memory_total_mib": 143771, "compute_capability": "9.0"}],
                          "driver": "580.159.03", "cuda_driver": "13.0", "source": "NVML (nvidia-ml-py)"}
    report.data["onnxruntime"] = {"version": "1.31.1", "available_providers": ["CUDAExecutionProvider"]}
    report.data["backend"] = [{"model": "cheap", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                               "device": "cuda", "io_binding": True, "load_s": 0.5}]
    cpu = np.ones((2, 3), dtype=np.float32)
    gpu_check.record_comparison(report, "server", gpu_check.CheckModel("cheap", "", None, None), 2,
                                compare_outputs({"y": cpu}, {"y": cpu}, exact=False))
    report.data["benchmark"].append({"device": "cuda", "model": "cheap", "concurrency": 32, "infer_per_s": 9000.0,
                                     "rows_per_s": 9000.0, "p50_ms": 3.0, "p90_ms": 4.0, "p99_ms": 5.0,
                                     "mean_batch_rows": 20.0, "error_count": 0})
    report.save()
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["ok"] is True and data["failures"] == []
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# GPU path check: PASSED")
    assert "NVIDIA H200" in text and "580.159.03" in text and "CUDA 13.0" in text and "1.31.1" in text
    assert "| cuda | cheap | 32 | 9000 | 9000 | 3.00 |" in text
    assert "| server | cheap | 2 |" in text

    gpu_check.record_comparison(report, "server", gpu_check.CheckModel("cheap", "", None, None), 2,
                                compare_outputs({"y": cpu}, {"y": cpu * 0}, exact=False))
    report.save()
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["ok"] is False and len(data["failures"]) == 1
    assert data["failures"][0].startswith("answers-server: cheap (rows=2) output 'y':")
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# GPU path check: FAILED") and "## Failures" in text and data["failures"][0] in text
    assert markdown(data) == text


def run_check(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out-dir", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def cuda_usable(tmp_path: Path) -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    path = onnx_models.write_model(tmp_path / "repo", "m", onnx_models.mlp([2, 2]))
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return "CUDAExecutionProvider" in session.get_providers()


def test_fails_naming_the_missing_provider(tmp_path):
    if cuda_usable(tmp_path):
        pytest.skip("CUDA works here: the failure path cannot be shown")
    proc = run_check(tmp_path, "--deadline-s", "90")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail_lines = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert any("CUDAExecutionProvider" in line for line in fail_lines), proc.stdout
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["ok"] is False
    assert any(f.startswith(("onnxruntime:", "backend:")) and "CUDAExecutionProvider" in f for f in data["failures"])
    # Nothing was started on a device that is not there.
    assert data["stages"]["server"].startswith("skipped") and data["stages"]["benchmark"].startswith("skipped")
    assert "# GPU path check: FAILED" in (tmp_path / "gpu_check.md").read_text()


def test_cpu_onnxruntime_is_a_failure(tmp_path):
    """This venv has the CPU wheel: on a GPU run that is a failure naming it (the dry run only notes it)."""
    import importlib.metadata

    try:
        importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the CPU onnxruntime distribution is not installed here")
    proc = run_check(tmp_path, "--deadline-s", "90", "--models", "cheap")
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert any(f.startswith("install: the CPU 'onnxruntime' distribution") for f in data["failures"]), data
    assert proc.returncode != 0


def test_dry_run_on_cpu_drives_servers_and_a_benchmark_point(tmp_path):
    proc = run_check(tmp_path, "--target-device", "cpu", "--models", "digits,cheap,two_outputs,text,fixed_shape",
                     "--bench-models", "cheap", "--bench-concurrency", "2", "--duration-s", "0.5",
                     "--deadline-s", "100")
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, (data["failures"], proc.stderr[-3000:])
    assert data["ok"] and data["target_device"] == "cpu"
    assert {c["where"] for c in data["comparisons"]} == {"backend", "server"}
    served = {c["model"] for c in data["comparisons"] if c["where"] == "server"}
    assert served == {"digits", "cheap", "two_outputs", "text", "fixed_shape"}
    assert all(c["ok"] for c in data["comparisons"])
    [point] = data["benchmark"]
    assert point["device"] == "cpu" and point["rows_per_s"] > 0 and point["error_count"] == 0
    assert point["on_device_per_log"] is True
    assert "DRY RUN" in (tmp_path / "gpu_check.md").read_text()


def test_install_failure_is_reported(tmp_path):
    proc = run_check(tmp_path, "--install-failed", "pip install exited 1", "--install-log", "/nonexistent.log")
    assert proc.returncode == 3
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["failures"] == ["install: pip install exited 1 (log: /nonexistent.log)"]


def test_script_arguments():
    script = ROOT / "scripts" / "gpu_check"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0 and "--reuse-venv" in help_text.stdout
    assert subprocess.run([str(script), "--bogus"], capture_output=True, timeout=30).returncode == 2
    assert subprocess.run([str(script), "--timeout-s", "x"], capture_output=True, timeout=30).returncode == 2
