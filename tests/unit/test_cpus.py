"""A container's CPU limit, read from cgroup files (fakes of them here), sizes ONNX Runtime's default pool."""

from __future__ import annotations

import os

import pytest

from inference_server.execution import cpus


def cgroup_v2(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def cgroup_v1(tmp_path, quota_us, period_us):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return tmp_path


def test_quota_in_cpus_from_cgroup_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert cpus.quota_cpus(cgroup_v2(v2, "250000 100000\n")) == 2.5
    assert cpus.quota_cpus(cgroup_v2(tmp_path, "max 100000\n")) is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    assert cpus.quota_cpus(cgroup_v1(v1, 150000, 100000)) == 1.5
    unlimited = tmp_path / "v1-unlimited"
    unlimited.mkdir()
    assert cpus.quota_cpus(cgroup_v1(unlimited, -1, 100000)) is None
    assert cpus.quota_cpus(tmp_path / "none") is None


@pytest.mark.parametrize(("quota", "host", "expected"), [
    ("50000 100000", 64, 1),     # half a CPU: one thread, never zero
    ("250000 100000", 64, 3),    # 2.5 CPUs: rounded up
    ("6400000 100000", 64, None),  # as many as the host: ONNX Runtime's own default
    ("max 100000", 64, None),
])
def test_limited_cpus(tmp_path, monkeypatch, quota, host, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: host)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(host)), raising=False)
    assert cpus.limited_cpus(cgroup_v2(tmp_path, quota)) == expected


def test_a_cpu_set_smaller_than_the_host_limits_too(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert cpus.limited_cpus(cgroup_v2(tmp_path, "max 100000")) == 4
    assert cpus.limited_cpus(cgroup_v2(tmp_path, "200000 100000")) == 2


def test_each_worker_of_a_pod_gets_its_share_of_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(cpus, "CGROUP", tmp_path)  # no quota: the host's 16
    try:
        cpus.share_with(1)
        assert cpus.default_intra_op_threads() == 0  # alone and unlimited: ONNX Runtime's own default
        cpus.share_with(4)
        assert cpus.default_intra_op_threads() == 4  # one of 4 workers on 16 CPUs
        (tmp_path / "cpu.max").write_text("400000 100000\n")  # a 4-CPU container
        cpus.share_with(3)
        assert cpus.default_intra_op_threads() == 1  # 4 // 3, never 0
    finally:
        cpus.share_with(1)
