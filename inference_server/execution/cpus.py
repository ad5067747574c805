"""The CPUs this process may use: a container's CPU limit (cgroup quota) and its CPU set.

ONNX Runtime sizes its default intra-op pool to the host's physical cores, and os.cpu_count() counts the host's
too. In a Kubernetes pod limited to 2 CPUs on a 64-core node that is a 64-thread pool per session, throttled by
the quota (latency in steps of the CFS period). A model without intra_op_threads of its own gets this instead.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (cgroup v2 cpu.max, else v1 cfs_quota/period); None when unlimited."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def limited_cpus(root: Path | None = None) -> int | None:
    """Whole CPUs the process may keep busy when that is fewer than the host has (rounded up, at least 1); None
    when nothing limits it below the host."""
    host = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else host
    quota = quota_cpus(root or CGROUP)
    limit = min(allowed, max(1, math.ceil(quota)) if quota is not None else allowed)
    return limit if limit < host else None


_processes = 1  # server processes sharing this machine's CPUs (--workers N): set once, before models load


def share_with(processes: int) -> None:
    """This process is one of `processes` workers of a pod: each gets its share of the CPUs."""
    global _processes
    _processes = max(1, processes)
    default_intra_op_threads.cache_clear()


@functools.cache
def default_intra_op_threads() -> int:
    """The intra-op threads of a session whose model sets none: this process's share of the CPUs it may use (a
    container's limit, else the host's) when that is fewer than the host has; 0 (ONNX Runtime's own default)
    otherwise. Logged once."""
    host = os.cpu_count() or 1
    limit = limited_cpus()
    if _processes > 1:
        limit = max(1, (limit or host) // _processes)
    if limit is not None:
        log.info("this process may use %d of the machine's %d CPUs (container limit, CPU set, or its share as one "
                 "of %d workers): ONNX Runtime sessions get %d intra-op thread(s) unless a model sets "
                 "intra_op_threads", limit, host, _processes, limit)
    return limit or 0
