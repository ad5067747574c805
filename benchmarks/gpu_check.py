"""The GPU path check: python -m benchmarks.gpu_check [--out-dir DIR] [--duration-s S] [--deadline-s S] ...

Run by scripts/gpu_check in its own venv (".[gpu,dev]" with onnxruntime-gpu), on a machine with an NVIDIA GPU:

1. install: onnxruntime-gpu is installed and the CPU `onnxruntime` distribution is not (the two wheels overwrite
   each other's files); if it is, what requires it.
2. backend: every model loads through the server's own OnnxBackend with device "cuda": CUDAExecutionProvider in
   `session.get_providers()`, IO binding on (numeric models); its answers equal a device "cpu" backend's.
3. server: two real servers (`python -m inference_server --device cuda` and `--device cpu`) on one repository with
   the embedded digits model; every model's answers over tritonclient.grpc compared, also under concurrent
   requests that the CUDA server batches together.
4. benchmark: points of the closed-loop scenario (benchmarks.scenarios.ours_point, max_batch_size 64, delay 0) on
   `--device cuda`, and on `--device cpu` for reference.

Writes DIR/gpu_check.json and .md (default benchmarks/results) after every stage; exit code 1 with one
"FAIL <stage>: ..." line per failure. Only the standard library is imported at module level, so that an install
failure can be reported without the venv (scripts/gpu_check does that with --install-failed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".work" / "gpu_check"
CUDA = "CUDAExecutionProvider"
CPU_DIST, GPU_DIST = "onnxruntime", "onnxruntime-gpu"

# CUDA against CPU, float outputs: |cuda - cpu| <= RTOL * |cpu| + ATOL_SCALE * rms(cpu output), element by element.
# On Ampere and later, ONNX Runtime's CUDA provider runs FP32 MatMul/Gemm/Conv in TF32 (10-bit mantissa) unless
# use_tf32 is turned off, and the server leaves it at ONNX Runtime's default. Emulating TF32 (inputs truncated to
# 10 mantissa bits, float64 accumulation) on the MLPs below moves outputs by at most 0.4-0.65 % of the output's
# RMS; elements near zero then have no meaningful relative error, hence the absolute term scaled by the output's
# RMS. 2 % of RMS is 3x that, and the 1 % relative term covers large elements. The bugs this check is for (a row
# of another request, a stale or zeroed buffer, outputs swapped, a wrong dtype) move elements by about the RMS
# itself, 50x over the bound. Integer, bool and string outputs, and models that only copy or scale by 2 (no
# rounding anywhere), must be equal exactly.
RTOL = 1e-2
ATOL_SCALE = 2e-2
TOLERANCE_TEXT = (f"float outputs: |cuda - cpu| <= {RTOL:g} * |cpu| + {ATOL_SCALE:g} * rms(cpu output) element-wise "
                  "(TF32 matmuls on the GPU move outputs by up to 0.65 % of their RMS in emulation); integer, bool "
                  "and string outputs, and the identity and fixed-shape models: exactly equal")
# Batchable models in the server check: batches of up to 64 rows, 2 ms for concurrent requests to join one.
SERVER_BATCHING = "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 2000\n"


class Report:
    """Everything found so far; written to DIR/gpu_check.{json,md} after every stage."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.failures: list[str] = []
        self.data: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "ok": False, "failures": self.failures,
                                     "stages": {}, "tolerance": {"rtol": RTOL, "atol_scale_of_rms": ATOL_SCALE,
                                                                 "text": TOLERANCE_TEXT},
                                     "comparisons": [], "benchmark": [], "notes": []}

    def fail(self, stage: str, message: str) -> None:
        line = f"{stage}: {message}"
        self.failures.append(line)
        self.data["stages"][stage] = "failed"
        print(f"FAIL {line}", file=sys.stderr, flush=True)

    def passed(self, stage: str) -> None:
        self.data["stages"].setdefault(stage, "passed")

    def skipped(self, stage: str, why: str) -> None:
        self.data["stages"].setdefault(stage, f"skipped: {why}")
        print(f"SKIP {stage}: {why}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def save(self) -> tuple[Path, Path]:
        self.data["ok"] = not self.failures and "passed" in self.data["stages"].values()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = self.out_dir / "gpu_check.json", self.out_dir / "gpu_check.md"
        json_path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        md_path.write_text(markdown(self.data))
        return json_path, md_path


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        self.end = time.monotonic() + (seconds if seconds is not None else float("inf"))

    def left(self) -> float:
        return self.end - time.monotonic()


# -- comparison ------------------------------------------------------------------------------------------------


def compare_arrays(cpu: Any, got: Any, *, exact: bool) -> dict[str, Any]:
    """One output, CUDA (`got`) against CPU: {ok, dtype, shape, max_abs_diff, rms, worst, problem}. `worst` is the
    largest |diff| / allowed over the elements (<= 1 passes; 0 when equal)."""
    import numpy as np

    cpu, got = np.asarray(cpu), np.asarray(got)
    out: dict[str, Any] = {"dtype": str(cpu.dtype), "shape": list(cpu.shape), "max_abs_diff": None, "rms": None,
                           "worst": None, "ok": False, "problem": None}
    if got.shape != cpu.shape:
        out["problem"] = f"shape {list(got.shape)}, CPU gave {list(cpu.shape)}"
        return out
    if got.dtype != cpu.dtype:
        out["problem"] = f"dtype {got.dtype}, CPU gave {cpu.dtype}"
        return out
    if cpu.dtype == object or cpu.dtype.kind in "SU":
        differ = int(np.count_nonzero(np.asarray(cpu != got, dtype=bool)))
        out.update(ok=differ == 0, worst=float(differ), problem=f"{differ} elements differ" if differ else None)
        return out
    c, g = cpu.astype(np.float64), got.astype(np.float64)
    same = (c == g) | (np.isnan(c) & np.isnan(g))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(c - g))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    out["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    if exact or cpu.dtype.kind not in "fc":
        out.update(ok=out["max_abs_diff"] == 0.0, worst=0.0 if out["max_abs_diff"] == 0.0 else float("inf"))
        if not out["ok"]:
            out["problem"] = f"{int(np.count_nonzero(diff))} elements differ (exact match required)"
        return out
    finite = c[np.isfinite(c)]
    rms = float(np.sqrt(np.mean(finite * finite))) if finite.size else 0.0
    allowed = RTOL * np.abs(np.where(np.isfinite(c), c, 0.0)) + ATOL_SCALE * rms
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0.0, 0.0, diff / allowed)
    worst = float(np.nan_to_num(ratio, nan=np.inf).max()) if ratio.size else 0.0
    out.update(rms=rms, worst=worst, ok=worst <= 1.0)
    if not out["ok"]:
        out["problem"] = (f"max |diff| {out['max_abs_diff']:.3g} is {worst:.3g}x the tolerance "
                          f"({RTOL:g}*|cpu| + {ATOL_SCALE:g}*rms {rms:.3g})")
    return out


def compare_outputs(cpu: Mapping[str, Any], got: Mapping[str, Any], *, exact: bool) -> list[dict[str, Any]]:
    """Every output of the CPU answer against the CUDA one (missing or extra outputs fail)."""
    rows = []
    for name, array in cpu.items():
        if name not in got:
            rows.append({"output": name, "ok": False, "problem": "missing from the CUDA answer"})
            continue
        rows.append({"output": name, **compare_arrays(array, got[name], exact=exact)})
    for name in got:
        if name not in cpu:
            rows.append({"output": name, "ok": False, "problem": "not in the CPU answer"})
    return rows


# -- the models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckModel:
    name: str
    description: str
    build: Callable[[], Any] | None  # an onnx.ModelProto; None: the embedded default model, copied
    sample: Callable[[Any, int], dict[str, Any]]  # (numpy Generator, rows) -> inputs
    exact: bool = False
    rows: tuple[int, ...] = (1, 5, 64)  # request sizes checked; () for a model without a batch dimension
    config: str = SERVER_BATCHING


def check_models(*, large: bool = True, only: Sequence[str] = ()) -> list[CheckModel]:
    import numpy as np

    from benchmarks.models import channel_means
    from inference_server.protocol.tensors import DATATYPES
    from tests.support import onnx_models

    numeric = [t for t in onnx_models.ALL_BUT_BF16 if t != "BYTES"]

    def floats(*shape: int) -> Callable[[Any, int], dict[str, Any]]:
        return lambda rng, rows: {"x": rng.standard_normal((rows, *shape)).astype(np.float32)}

    def identity_sample(rng: Any, rows: int) -> dict[str, Any]:
        out = {}
        for name in numeric:
            dtype = DATATYPES[name].dtype
            if dtype == np.bool_:
                out[f"in_{name}"] = rng.integers(0, 2, (rows, 3)).astype(bool)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                out[f"in_{name}"] = rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
            else:
                out[f"in_{name}"] = (rng.standard_normal((rows, 3)) * 100).astype(dtype)
        return out

    def text_sample(rng: Any, rows: int) -> dict[str, Any]:
        return {"text": np.array([f"word {i} {int(rng.integers(1 << 30))}" for i in range(rows)], dtype=object)}

    def digits_sample(rng: Any, rows: int) -> dict[str, Any]:
        return {"pixels": rng.integers(0, 17, (rows, 64)).astype(np.float32)}

    models = [
        CheckModel("digits", "the embedded default model (LinearClassifier + Normalizer)", None, digits_sample),
        CheckModel("cheap", "MLP FP32 64->256->10", lambda: onnx_models.mlp([64, 256, 10], seed=0), floats(64)),
        CheckModel("two_outputs", "MLP FP32 16->32->4 with the hidden layer as a 2nd output",
                   lambda: onnx_models.mlp([16, 32, 4], seed=1, second_output=True), floats(16)),
        CheckModel("identity", "Identity of every numeric datatype (" + ", ".join(numeric) + ")",
                   lambda: onnx_models.identity(numeric), identity_sample, exact=True),
        CheckModel("text", "STRING Identity (no IO binding: the plain run path on a CUDA session)",
                   onnx_models.text_identity, text_sample, exact=True),
        CheckModel("fixed_shape", "no batch dimension: FP32 [2,3] times 2", onnx_models.fixed_shape,
                   lambda rng, rows: {"a": rng.standard_normal((2, 3)).astype(np.float32)}, exact=True, rows=(),
                   config=""),
        CheckModel("image", "FP32 [N,3,224,224] -> channel means (GlobalAveragePool)", channel_means,
                   floats(3, 224, 224), rows=(1, 4), config="[batching]\nmax_batch_size = 8\n"),
    ]
    if large:
        models.append(CheckModel("large", "MLP FP32 512->4096->4096->10 (TF32-sized matmuls)",
                                 lambda: onnx_models.mlp([512, 4096, 4096, 10], seed=0), floats(512)))
    if only:
        unknown = set(only) - {m.name for m in models}
        if unknown:
            known = ", ".join(m.name for m in models)
            raise SystemExit(f"unknown model(s) {', '.join(sorted(unknown))}; known: {known}")
        models = [m for m in models if m.name in only]
    return models


def write_repository(repo: Path, models: Sequence[CheckModel]) -> None:
    from inference_server.config.server import DEFAULT_REPOSITORY
    from tests.support import onnx_models

    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for m in models:
        if m.build is None:
            shutil.copytree(DEFAULT_REPOSITORY / m.name, repo / m.name)
        else:
            onnx_models.write_model(repo, m.name, m.build(), m.config)


def sample_rows(m: CheckModel) -> tuple[int | None, ...]:
    return m.rows or (None,)


# -- environment -------------------------------------------------------------------------------------------------


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # NVML raises its own error types; any failure is only a missing detail
        return f"unavailable ({type(e).__name__}: {e})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_info() -> dict[str, Any]:
    """Driver, CUDA version the driver supports, and GPUs: from NVML (nvidia-ml-py), else nvidia-smi."""
    info: dict[str, Any] = {"gpus": []}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info["source"] = "NVML (nvidia-ml-py)"
            info["driver"] = _try(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
            cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion_v2)
            info["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else cuda
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = _try(lambda h=handle: pynvml.nvmlDeviceGetMemoryInfo(h))
                cc = _try(lambda h=handle: pynvml.nvmlDeviceGetCudaComputeCapability(h))
                info["gpus"].append({
                    "index": i, "name": _try(lambda h=handle: _text(pynvml.nvmlDeviceGetName(h))),
                    "memory_total_mib": getattr(mem, "total", 0) // 2**20 or mem,
                    "memory_used_mib": getattr(mem, "used", 0) // 2**20 or mem,
                    "compute_capability": f"{cc[0]}.{cc[1]}" if isinstance(cc, tuple) else cc})
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:
        info["nvml_error"] = f"{type(e).__name__}: {e}"
    if info["gpus"]:
        return info
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["nvidia_smi_error"] = "nvidia-smi not found"
        return info
    try:
        query = subprocess.run([smi, "--query-gpu=index,name,driver_version,memory.total,compute_cap",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        plain = subprocess.run([smi], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi_error"] = f"{type(e).__name__}: {e}"
        return info
    info["source"] = "nvidia-smi"
    for line in query.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5 and parts[0].isdigit():
            info["driver"] = parts[2]
            info["gpus"].append({"index": int(parts[0]), "name": parts[1], "memory_total_mib": parts[3],
                                 "compute_capability": parts[4]})
    found = re.search(r"CUDA Version:\s*([\d.]+)", plain.stdout)
    if found:
        info["cuda_driver"] = found.group(1)
    if not info["gpus"]:
        info["nvidia_smi_error"] = (query.stderr or query.stdout or plain.stdout).strip()[:300]
    return info


def machine_info() -> dict[str, Any]:
    return {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "executable": sys.executable,
            "ld_library_path": os.environ.get("LD_LIBRARY_PATH", "")}


def distributions() -> dict[str, str]:
    """Installed distributions this check cares about: ONNX Runtime, the NVIDIA wheels, the client, numpy."""
    wanted = re.compile(r"^(onnxruntime.*|nvidia-.*|tritonclient|numpy|onnx|grpcio|inference.server)$")
    found = {}
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata["Name"] or "")
        if wanted.match(name):
            found[name] = dist.version
    return dict(sorted(found.items()))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirers(target: str) -> tuple[list[str], list[str]]:
    """Installed distributions that require `target`: (unconditionally, only through one of their extras)."""
    always, via_extra = [], []
    for dist in importlib.metadata.distributions():
        for req in dist.requires or ():
            found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
            if found and _normalise(found.group(1)) == target:
                (via_extra if "extra" in req.partition(";")[2] else always).append(f"{dist.metadata['Name']} ({req})")
    return sorted(set(always)), sorted(set(via_extra))


def check_install(report: Report, args: argparse.Namespace) -> None:
    problems = []
    install: dict[str, Any] = {"fresh_venv": args.fresh_venv, "seconds": args.install_seconds,
                               "log": args.install_log, "distributions": distributions()}
    report.data["install"] = install
    if args.install_log and Path(args.install_log).is_file():
        text = Path(args.install_log).read_text(errors="replace")
        done = [line for line in text.splitlines() if line.startswith("Successfully installed")]
        if done:
            names = done[-1].split()[2:]
            install["installed_count"] = len(names)
            install["cpu_onnxruntime_in_pip_log"] = any(re.fullmatch(r"onnxruntime-[0-9].*", n) for n in names)
    dists = install["distributions"]
    if GPU_DIST not in dists:
        problems.append(f"{GPU_DIST} is not installed (pip install -e '.[gpu]')")
    if CPU_DIST in dists:
        always, via_extra = requirers(CPU_DIST)
        who = "; ".join(always) or "nothing installed requires it unconditionally (installed by hand, or by an extra: "
        if not always:
            who += ("; ".join(via_extra) or "none") + ")"
        problems.append(f"the CPU '{CPU_DIST}' distribution {dists[CPU_DIST]} is installed"
                               f"{' next to ' + GPU_DIST if GPU_DIST in dists else ''}: the two overwrite each "
                               f"other's files (whichever was installed last wins). Required by: {who}")
    for problem in problems:
        if args.target_device == "cuda":
            report.fail("install", problem)
        else:
            report.note(f"dry run, not counted as a failure: install: {problem}")
    report.passed("install")


def check_onnxruntime(report: Report, target: str = "cuda") -> Any | None:
    """Import ONNX Runtime the way the server does; None when that fails."""
    try:
        from inference_server.execution.backend import import_onnxruntime
        from inference_server.execution.iobinding import pinned_memory_info

        ort = import_onnxruntime()
    except Exception as e:
        report.fail("onnxruntime", f"cannot import: {type(e).__name__}: {e}")
        return None
    info = {"version": getattr(ort, "__version__", "?"), "device": _try(ort.get_device),
            "available_providers": _try(ort.get_available_providers),
            "pinned_host_memory": _try(lambda: pinned_memory_info(ort) is not None),
            "module": getattr(ort, "__file__", "?")}
    report.data["onnxruntime"] = info
    if target == "cuda" and CUDA not in (info["available_providers"] or ()):
        report.fail("onnxruntime", f"{CUDA} is not available in this ONNX Runtime build "
                                   f"(onnxruntime {info['version']}, providers: {info['available_providers']}): "
                                   "the CPU onnxruntime wheel is in use, not onnxruntime-gpu")
    gpu = report.data.get("gpu", {})
    needed = _cuda_major_for(info["version"])
    driver_cuda = str(gpu.get("cuda_driver", ""))
    if needed and re.fullmatch(r"\d+\.\d+", driver_cuda) and int(driver_cuda.split(".")[0]) < needed:
        report.fail("onnxruntime", f"onnxruntime-gpu {info['version']} needs CUDA {needed}, but the driver "
                                   f"({gpu.get('driver')}) supports CUDA {driver_cuda}: upgrade the driver or pin "
                                   "onnxruntime-gpu<1.27 (CUDA 12)")
    report.passed("onnxruntime")
    return ort


def _cuda_major_for(version: str) -> int | None:
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found:
        return None
    return 13 if (int(found.group(1)), int(found.group(2))) >= (1, 27) else 12


@contextlib.contextmanager
def stderr_lines() -> Iterator[list[str]]:
    """Capture file descriptor 2 (ONNX Runtime's C++ logger writes there, not through Python), echo it after."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(text.splitlines())
            sys.stderr.write(text)


def ort_reasons(lines: Sequence[str]) -> str:
    """ONNX Runtime's own error and warning lines (why CUDA did not start), shortened."""
    picked = []
    for line in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if re.search(r"\[[EW]:onnxruntime", line):
            line = re.sub(r"^.*?\] ", "", line)
            picked.append(line.rpartition(" : FAIL : ")[2].strip())
    return " | ".join(picked[:4])[:800]


# -- stage 2: the backend in process -----------------------------------------------------------------------------


def check_backend(report: Report, models: Sequence[CheckModel], repo: Path, deadline: Deadline,
                  target: str = "cuda") -> bool:
    """Each model through OnnxBackend(device="cuda") against OnnxBackend(device="cpu"); False when CUDA never
    started (the later stages are then pointless)."""
    import numpy as np

    from inference_server.errors import ModelLoadError
    from inference_server.execution.backend import OnnxBackend
    from inference_server.execution.iobinding import can_bind

    loaded_any = False
    report.data["backend"] = []
    for m in models:
        if deadline.left() < 30:
            report.fail("backend", f"{m.name}: not checked, {deadline.left():.0f}s left of the time budget")
            continue
        path = repo / m.name / "1" / "model.onnx"
        entry: dict[str, Any] = {"model": m.name}
        report.data["backend"].append(entry)
        start = time.perf_counter()
        with stderr_lines() as lines:
            gpu, error = None, ""
            try:
                gpu = OnnxBackend(path, model=m.name, device=target)
            except ModelLoadError as e:
                error = str(e)
            except Exception as e:  # ONNX Runtime's own exception types
                error = f"{type(e).__name__}: {e}"
        entry["load_s"] = round(time.perf_counter() - start, 3)
        if gpu is None:
            reasons = ort_reasons(lines)
            report.fail("backend", f"{m.name}: {error}" + (f" ONNX Runtime said: {reasons}" if reasons else ""))
            entry["error"] = error
            if not loaded_any:
                return False  # the first model: CUDA does not start at all
            continue
        loaded_any = True
        cpu = OnnxBackend(path, model=m.name, device="cpu")
        try:
            instance = gpu.instances[0]
            session = instance.session
            bindable = can_bind(gpu.inputs + gpu.outputs)
            entry.update(providers=session.get_providers(), device=gpu.device,
                         io_binding=getattr(instance, "_io_bound", None) is not None, bindable=bindable,
                         cuda_options=_try(lambda s=session: {k: v for k, v in s.get_provider_options().get(CUDA, {})
                                                              .items() if k in ("device_id", "use_tf32",
                                                                                "cudnn_conv_algo_search",
                                                                                "arena_extend_strategy")}))
            if target == "cuda" and (CUDA not in entry["providers"] or gpu.device != "cuda"):
                report.fail("backend", f"{m.name}: session providers {entry['providers']} (device {gpu.device}), "
                                       f"{CUDA} expected")
            if target == "cuda" and bindable and not entry["io_binding"]:
                report.fail("backend", f"{m.name}: IO binding is off on a CUDA session of a numeric model")
            rng = np.random.default_rng(7)
            for rows in sample_rows(m):
                inputs = m.sample(rng, rows or 0)
                got = instance.run_sync(inputs)
                want = cpu.instances[0].run_sync(inputs)
                record_comparison(report, "backend", m, rows, compare_outputs(want, got, exact=m.exact))
        except Exception as e:  # a failed run is a finding, not a crash of the check
            report.fail("backend", f"{m.name}: {type(e).__name__}: {e}")
        finally:
            gpu.close()
            cpu.close()
    report.passed("backend")
    return loaded_any


def record_comparison(report: Report, where: str, m: CheckModel, rows: int | None, outputs: list[dict[str, Any]],
                      request: str = "") -> None:
    for row in outputs:
        report.data["comparisons"].append({"where": where, "model": m.name, "rows": rows, "request": request, **row})
        if not row["ok"]:
            label = f"rows={rows}" if rows is not None else "fixed shape"
            report.fail(f"answers-{where}", f"{m.name} ({label}{', ' + request if request else ''}) output "
                                            f"'{row['output']}': {row['problem']}")
    report.passed(f"answers-{where}")


# -- stage 3: two real servers -------------------------------------------------------------------------------------


def infer(client: Any, model: str, sample: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in sample.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, client_timeout=60)
    return {name: result.as_numpy(name) for name in outputs}


def check_servers(report: Report, models: Sequence[CheckModel], repo: Path, deadline: Deadline,
                  target: str = "cuda") -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from tests.support.server_process import ServerProcess

    if deadline.left() < 60:
        report.fail("server", f"not run: {deadline.left():.0f}s left of the time budget")
        return
    servers: dict[str, Any] = {}
    info: dict[str, Any] = {}
    report.data["server"] = info
    try:
        for side, device in (("cuda", target), ("cpu", "cpu")):
            log_path = WORK / f"server-{side}.log"
            server = ServerProcess(["--model-repository", str(repo), "--device", device, "--exit-on-error",
                                    "--log-level", "INFO"], log_path)
            servers[side] = server
            start = time.perf_counter()
            try:
                server.wait_serving(timeout_s=max(30.0, min(180.0, deadline.left() - 30)))
            except (RuntimeError, TimeoutError) as e:
                tail = " | ".join(str(e).strip().splitlines()[-6:])[-1200:]
                report.fail("server", f"the --device {device} server did not start: {tail} (log: {log_path})")
                return
            info[f"{side}_start_s"] = round(time.perf_counter() - start, 2)
            info[f"{side}_log"] = str(log_path)
        log = servers["cuda"].log()
        for m in models:
            if not re.search(rf"model '{re.escape(m.name)}' version \d+ ready from .* on {target} ", log):
                report.fail("server", f"the --device {target} server's log does not say model '{m.name}' is ready "
                                      f"on {target} (log: {info['cuda_log']})")
        info["io_binding_lines"] = re.findall(r"model '[^']+': CUDA IO binding on[^\n]*", log)
        clients = {d: grpcclient.InferenceServerClient(s.url) for d, s in servers.items()}
        rng = np.random.default_rng(11)
        for m in models:
            if deadline.left() < 20:
                report.fail("server", f"{m.name}: not compared, {deadline.left():.0f}s left of the time budget")
                continue
            try:
                outputs = [o["name"] for o in clients["cuda"].get_model_metadata(m.name, as_json=True)["outputs"]]
                for rows in sample_rows(m):
                    sample = m.sample(rng, rows or 0)
                    want = infer(clients["cpu"], m.name, sample, outputs)
                    got = infer(clients["cuda"], m.name, sample, outputs)
                    record_comparison(report, "server", m, rows, compare_outputs(want, got, exact=m.exact))
                if m.rows and m.name != "image":
                    compare_concurrent(report, m, clients, outputs, rng)
            except Exception as e:
                report.fail("server", f"{m.name}: {type(e).__name__}: {str(e)[:500]}")
        for client in clients.values():
            client.close()
    finally:
        for device, server in servers.items():
            try:
                code = server.terminate(timeout_s=30)
            except Exception:  # did not drain in time
                server.kill()
                code = "killed"
            info[f"{device}_exit_code"] = code
    if info.get("cuda_exit_code") not in (0, None):
        report.fail("server", f"the --device cuda server exited {info['cuda_exit_code']} after SIGTERM "
                              f"(log: {info.get('cuda_log')})")
    report.passed("server")


def compare_concurrent(report: Report, m: CheckModel, clients: Mapping[str, Any], outputs: Sequence[str],
                       rng: Any, count: int = 32) -> None:
    """`count` requests of 1-8 rows at once: the CUDA server batches them; each answer must be its own request's."""
    from concurrent.futures import ThreadPoolExecutor

    samples = [m.sample(rng, int(rng.integers(1, 9))) for _ in range(count)]
    want = [infer(clients["cpu"], m.name, s, outputs) for s in samples]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda s: infer(clients["cuda"], m.name, s, outputs), samples))
    worst: list[dict[str, Any]] = []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        rows = compare_outputs(w, g, exact=m.exact)
        bad = [r for r in rows if not r["ok"]]
        if bad:
            record_comparison(report, "server", m, len(next(iter(samples[i].values()))), bad,
                              request=f"concurrent request {i} of {count}")
        worst.extend(rows)
    summary = {"output": "*", "ok": all(r["ok"] for r in worst), "problem": None, "dtype": "",
               "max_abs_diff": max((r.get("max_abs_diff") or 0.0) for r in worst),
               "worst": max((r.get("worst") or 0.0) for r in worst)}
    report.data["comparisons"].append({"where": "server", "model": m.name, "rows": "1-8",
                                       "request": f"{count} concurrent requests", **summary})


# -- stage 4: the closed-loop benchmark on --device cuda ----------------------------------------------------------


def check_benchmark(report: Report, args: argparse.Namespace, deadline: Deadline) -> None:
    try:
        from benchmarks import scenarios
    except Exception as e:
        report.fail("benchmark", f"cannot import benchmarks.scenarios: {type(e).__name__}: {e}")
        return
    bench_args = argparse.Namespace(duration_s=args.duration_s, quick=True)
    per_point = args.duration_s + 25  # start (CUDA init, warmup), 1 s client warm-up, drain
    models = args.bench_models.split(",")
    levels = [int(c) for c in args.bench_concurrency.split(",")]
    target = args.target_device
    devices = [target] + ([] if args.no_cpu_reference or target == "cpu" else ["cpu"])
    for device in devices:
        for model in models:
            for concurrency in levels:
                label = f"{model} --device {device} c={concurrency}"
                if deadline.left() < per_point:
                    msg = f"{label}: not run, {deadline.left():.0f}s left of the time budget"
                    if device == target:
                        report.fail("benchmark", msg)
                    else:
                        report.note(f"benchmark {msg} (CPU reference point)")
                    continue
                try:
                    point = scenarios.ours_point(model, scenarios.BATCHING, concurrency, bench_args, label=label,
                                                 extra=("--device", device, "--exit-on-error"))
                except Exception as e:
                    report.fail("benchmark", f"{label}: {type(e).__name__}: {' | '.join(str(e).splitlines()[-6:])}")
                    continue
                log_path = scenarios.WORK / "server.log"
                log = log_path.read_text(errors="replace") if log_path.is_file() else ""
                on_device = bool(re.search(rf"model '{re.escape(model)}' version \d+ ready from .* on {device} ", log))
                keep = ("infer_per_s", "rows_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_batch_rows", "error_count",
                        "requests")
                row = {"device": device, "model": model, "concurrency": concurrency, "on_device_per_log": on_device,
                       **{k: point.get(k) for k in keep}}
                report.data["benchmark"].append(row)
                if device == target and (point.get("error_count") or not point.get("rows_per_s")):
                    report.fail("benchmark", f"{label}: {point.get('error_count')} errors, "
                                             f"{point.get('rows_per_s')} rows/s ({point.get('errors')})")
                if device == target and not on_device:
                    report.fail("benchmark", f"{label}: the server log ({log_path}) does not say the model ran on "
                                             f"{device}")
                report.save()
    report.note("Benchmark points: benchmarks.scenarios.ours_point, the closed-loop scenario's per-point function "
                "(a fresh server per point, max_batch_size 64, delay 0, tritonclient.grpc.aio closed loop, "
                f"{args.duration_s:g} s after 1 s of warm-up), with --device passed as a server flag; the scenario's "
                "in-process ceiling columns are left out (benchmarks/ceiling.py always runs on CPU).")
    report.passed("benchmark")


# -- the report ---------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def aggregate(comparisons: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (where, model, request kind, output) over the request sizes: the largest differences, the
    first problem (the JSON keeps every comparison)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for c in comparisons:
        key = (c["where"], c["model"], c.get("request", "").partition(" of ")[0].rstrip("0123456789 "), c["output"])
        g = groups.setdefault(key, {**c, "rows": [], "max_abs_diff": None, "rms": None, "worst": None, "ok": True,
                                    "problem": None})
        g["rows"].append("fixed" if c.get("rows") is None else str(c["rows"]))
        for field in ("max_abs_diff", "rms", "worst"):
            if isinstance(c.get(field), (int, float)):
                g[field] = max(g[field] or 0.0, float(c[field]))
        if not c["ok"]:
            g["ok"] = False
            g["problem"] = g["problem"] or c.get("problem")
    for g in groups.values():
        g["rows"] = ", ".join(dict.fromkeys(g["rows"]))
        if g.get("request", "").startswith("concurrent request"):
            g["request"] = "concurrent (failed ones)"
    return list(groups.values())


def markdown(data: Mapping[str, Any]) -> str:
    gpu = data.get("gpu", {})
    ort = data.get("onnxruntime", {})
    machine = data.get("machine", {})
    gpus = "; ".join(f"{g.get('name')} ({g.get('memory_total_mib')} MiB, compute {g.get('compute_capability')})"
                     for g in gpu.get("gpus", [])) or "none found"
    status = "PASSED" if data.get("ok") else "FAILED"
    if data.get("target_device", "cuda") != "cuda":
        status += f" (DRY RUN with --target-device {data['target_device']}: no GPU involved, proves nothing about CUDA)"
    lines = [f"# GPU path check: {status}", "",
             f"{data.get('date')}, {machine.get('host', '?')} ({machine.get('platform', '?')}, "
             f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}).", "",
             f"- GPU: {gpus}; driver {gpu.get('driver', '?')}, CUDA {gpu.get('cuda_driver', '?')} (driver), "
             f"from {gpu.get('source', gpu.get('nvml_error') or gpu.get('nvidia_smi_error') or '?')}",
             f"- ONNX Runtime {ort.get('version', '?')} ({ort.get('device', '?')}), available providers: "
             f"{ort.get('available_providers', '?')}, pinned host memory for outputs: "
             f"{ort.get('pinned_host_memory', '?')}"]
    install = data.get("install")
    if install:
        dists = install.get("distributions", {})
        nvidia = ", ".join(f"{k} {v}" for k, v in dists.items() if k.startswith("nvidia-")) or "none"
        lines.append(f"- Install: {'fresh venv' if install.get('fresh_venv') in (True, 'true') else 'reused venv'}"
                     f", {install.get('seconds', '?')} s; onnxruntime-gpu {dists.get(GPU_DIST, 'MISSING')}, CPU "
                     f"onnxruntime {dists.get(CPU_DIST, 'not installed')}; NVIDIA wheels: {nvidia}")
    lines += ["", "Stages: " + ", ".join(f"{k} {v}" for k, v in data.get("stages", {}).items()), ""]
    if data.get("failures"):
        lines += ["## Failures", ""] + [f"- {f}" for f in data["failures"]] + [""]
    backend = data.get("backend") or []
    if backend:
        lines += ["## Models on CUDAExecutionProvider (the server's OnnxBackend, device \"cuda\")", "",
                  "| model | session providers | device | IO binding | CUDA options | load s |",
                  "|---|---|---|---|---|---:|"]
        for b in backend:
            lines.append(f"| {b['model']} | {', '.join(b.get('providers', [])) or b.get('error', '–')[:160]} | "
                         f"{b.get('device', '–')} | {_fmt(b.get('io_binding'))} | {_fmt(b.get('cuda_options'))} | "
                         f"{_fmt(b.get('load_s'))} |")
        lines.append("")
    comparisons = data.get("comparisons") or []
    if comparisons:
        lines += ["## Answers: CUDA against CPU", "", f"Tolerance: {data['tolerance']['text']}.", "",
                  "| where | model | rows | request | output | dtype | max abs diff | max rms (CPU) "
                  "| worst / tolerance | ok |",
                  "|---|---|---:|---|---|---|---:|---:|---:|---|"]
        for c in aggregate(comparisons):
            lines.append(f"| {c['where']} | {c['model']} | {c['rows']} | {c.get('request') or ''} | "
                         f"{c['output']} | {c.get('dtype', '')} | {_fmt(c.get('max_abs_diff'))} | "
                         f"{_fmt(c.get('rms'))} | "
                         f"{_fmt(c.get('worst'))} | {'yes' if c['ok'] else 'NO: ' + str(c.get('problem'))} |")
        lines.append("")
    bench = data.get("benchmark") or []
    if bench:
        lines += ["## Closed-loop benchmark points", "",
                  "| device | model | concurrency | infer/s | rows/s | p50 ms | p90 ms | p99 ms | mean batch "
                  "| errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in bench:
            lines.append(f"| {p['device']} | {p['model']} | {p['concurrency']} | {_fmt(p.get('infer_per_s'), '.0f')} | "
                         f"{_fmt(p.get('rows_per_s'), '.0f')} | {_fmt(p.get('p50_ms'), '.2f')} | "
                         f"{_fmt(p.get('p90_ms'), '.2f')} | {_fmt(p.get('p99_ms'), '.2f')} | "
                         f"{_fmt(p.get('mean_batch_rows'), '.1f')} | {_fmt(p.get('error_count'))} |")
        lines.append("")
    lines += [f"- {n}" for n in data.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu_check.json and .md go")
    p.add_argument("--deadline-s", type=float, help="time budget: what no longer fits is skipped (and fails)")
    p.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per benchmark point")
    p.add_argument("--models", default="", help="comma-separated subset of the check models (default: all)")
    p.add_argument("--no-large", action="store_true", help="leave out the 75 MB MLP 512->4096->4096->10")
    p.add_argument("--bench-models", default="cheap,large", help="benchmarks.models names for the benchmark")
    p.add_argument("--bench-concurrency", default="1,32", help="closed-loop concurrency levels")
    p.add_argument("--no-cpu-reference", action="store_true", help="benchmark --device cuda only")
    p.add_argument("--target-device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a dry run of the plumbing where there is no GPU (it proves nothing about CUDA)")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--install-log", default="", help="scripts/gpu_check's pip log")
    p.add_argument("--install-seconds", default=None)
    p.add_argument("--fresh-venv", default=None)
    p.add_argument("--install-failed", default="", help="only report that the install failed (with this reason)")
    return p.parse_args(argv)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    report = Report(args.out_dir)
    report.data["target_device"] = args.target_device
    report.data["machine"] = machine_info()
    report.data["gpu"] = gpu_info()
    if args.install_failed:
        report.data["install"] = {"log": args.install_log, "error": args.install_failed}
        report.fail("install", args.install_failed + (f" (log: {args.install_log})" if args.install_log else ""))
        report.save()
        return 3
    deadline = Deadline(args.deadline_s)
    code = 1
    try:
        if not report.data["gpu"]["gpus"] and args.target_device == "cuda":
            g = report.data["gpu"]
            report.fail("gpu", "no NVIDIA GPU visible: " + (g.get("nvml_error") or "") + "; " +
                        (g.get("nvidia_smi_error") or ""))
        check_install(report, args)
        ort = check_onnxruntime(report, args.target_device)
        report.save()
        if ort is None:
            return 1
        models = check_models(large=not args.no_large, only=[m for m in args.models.split(",") if m])
        repo = WORK / "repo"
        write_repository(repo, models)
        if not check_backend(report, models, repo, deadline, args.target_device):
            report.skipped("server", f"{CUDA} did not start in process")
            report.skipped("benchmark", f"{CUDA} did not start in process")
            return 1
        report.save()
        if args.skip_server:
            report.skipped("server", "--skip-server")
        else:
            check_servers(report, models, repo, deadline, args.target_device)
            report.save()
        if args.skip_benchmark:
            report.skipped("benchmark", "--skip-benchmark")
        else:
            check_benchmark(report, args, deadline)
        code = 1 if report.failures else 0
        return code
    except KeyboardInterrupt as e:
        report.fail("time", f"interrupted ({e}) before the checks finished")
        code = 124
        return code
    finally:
        json_path, md_path = report.save()
        verdict = "PASSED" if report.data["ok"] else f"FAILED ({len(report.failures)} failures)"
        print(f"gpu_check {verdict}: {json_path} {md_path}", file=sys.stderr, flush=True)
        for line in report.failures:
            print(f"FAIL {line}", flush=True)  # once more, together, on stdout


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    if not args.install_failed:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    WORK.mkdir(parents=True, exist_ok=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
