"""GPU gauges: read through NVML where there is one; nothing at all where there is none."""

from __future__ import annotations

import sys
import types

from inference_server.observability.gpu import GpuCollector, open_nvml


def test_without_nvml_there_are_no_gpu_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert open_nvml() is None

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert open_nvml() is None


def test_gauges_follow_triton_names_and_units():
    """NVML stood in for (no GPU here): two devices, the values NVML would report."""
    devices = {0: ("GPU-a", 25, 1000, 4000, 70_000), 1: ("GPU-b", 100, 0, 8000, 300_500)}
    nvml = types.SimpleNamespace(
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: devices[h][0].encode(),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=devices[h][1]),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=devices[h][2], total=devices[h][3]),
        nvmlDeviceGetPowerUsage=lambda h: devices[h][4])
    samples = {(s.name, s.labels["gpu_uuid"]): s.value for f in GpuCollector(nvml).collect() for s in f.samples}
    assert samples == {
        ("nv_gpu_utilization", "GPU-a"): 0.25, ("nv_gpu_utilization", "GPU-b"): 1.0,
        ("nv_gpu_memory_used_bytes", "GPU-a"): 1000, ("nv_gpu_memory_used_bytes", "GPU-b"): 0,
        ("nv_gpu_memory_total_bytes", "GPU-a"): 4000, ("nv_gpu_memory_total_bytes", "GPU-b"): 8000,
        ("nv_gpu_power_usage", "GPU-a"): 70.0, ("nv_gpu_power_usage", "GPU-b"): 300.5}
