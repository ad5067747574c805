"""GPU gauges under Triton's names (nv_gpu_utilization, nv_gpu_memory_used_bytes, nv_gpu_memory_total_bytes,
nv_gpu_power_usage), read through NVML when the `gpu` extra's nvidia-ml-py and an NVIDIA driver are present.
Anywhere else the collector yields nothing: no error, no empty families."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


def open_nvml() -> ModuleType | None:
    """pynvml, initialised, or None (not installed, no driver, no device)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ... on machines without a GPU
        log.debug("no GPU metrics: %s", e)
        return None
    return pynvml


class GpuCollector:
    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        labels = ["gpu_uuid"]
        util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=labels)
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=labels)
        total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=labels)
        power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=labels)
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util.add_metric([uuid], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            used.add_metric([uuid], float(memory.used))
            total.add_metric([uuid], float(memory.total))
            power.add_metric([uuid], nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        yield from (util, used, total, power)
