"""The shadow's queue and workers, with a stand-in model version (no ONNX Runtime): copies wait while the real
traffic is busy, a full queue drops and counts, failures are counted, and closing drops what is left."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from inference_server.config.routes import ShadowConfig
from inference_server.errors import internal
from inference_server.lifecycle.registry import Lease
from inference_server.observability.stats import ModelStats
from inference_server.routing import shadow as shadow_module
from inference_server.routing.shadow import BUSY_WINDOW_S, LoopLoad, Shadow, ShadowStats
from tests.support.waiting import until


class Version:
    def __init__(self, fail: bool = False, ensemble: object = None) -> None:
        self.name, self.version, self.fail = "shadow", "1", fail
        self.ensemble = ensemble  # an ensemble has no batcher (only the request runner runs its steps)
        self.inputs = [SimpleNamespace(name="x")]
        self.stats = ModelStats()
        self.runs = 0
        self.leases = 0

    async def submit(self, inputs, rows, deadline, request_id):
        self.runs += 1
        if self.fail:
            raise internal("broken")
        return {"y": inputs["x"] * 2}

    def release(self) -> None:
        self.leases -= 1


class Registry:
    def __init__(self, version: Version) -> None:
        self.version = version

    def lease(self, name: str, version: str = "") -> Lease:
        self.version.leases += 1
        return Lease(self.version)


def copy(shadow: Shadow, value: float) -> None:
    x = np.array([[value]], np.float32)
    shadow.offer({"x": x}, 1, {"y": x * 2 + 0.5}, f"r{value}")


async def settle() -> None:
    """Time for a paused worker to look again several times (it looks every PAUSE_POLL_S): what it must NOT do
    (run a copy while paused) can only be observed over a period; what it must do is waited for with until()."""
    await asyncio.sleep(4 * shadow_module.PAUSE_POLL_S)


async def test_copies_wait_while_real_traffic_is_busy_and_a_full_queue_drops():
    busy = [10]
    version, stats = Version(), ShadowStats()
    shadow = Shadow("r", ShadowConfig(model="shadow", queue_size=2, pause_above_in_flight=4,
                                                pause_above_loop_busy_percent=100), Registry(version),
                    stats, in_flight=lambda: busy[0])
    for i in range(5):
        copy(shadow, i)
    await settle()
    assert version.runs == 0  # 10 real requests in flight: nothing runs
    assert stats.requests[("r", "dropped")] == 3  # offered at once: two fit the queue
    assert shadow.queued == 1  # the paused worker holds the other
    busy[0] = 4
    await until(lambda: stats.requests[("r", "ok")] == 2, "both queued copies to run")
    assert version.runs == 2 and stats.requests[("r", "ok")] == 2 and version.leases == 0
    assert stats.difference[("r", "y")].sum == 2 * 0.5  # each answer differs from the primary's by 0.5
    await shadow.close()


async def test_failures_are_counted_and_close_drops_what_is_queued():
    version, stats = Version(fail=True), ShadowStats()
    shadow = Shadow("r", ShadowConfig(model="shadow", pause_above_in_flight=0, pause_above_loop_busy_percent=100),
                    Registry(version), stats)
    copy(shadow, 1)
    await until(lambda: stats.requests[("r", "error")] == 1, "the failure to be counted")
    assert version.leases == 0
    blocked = Shadow("b", ShadowConfig(model="shadow", queue_size=8, pause_above_in_flight=1), Registry(version),
                     stats, in_flight=lambda: 5)
    for i in range(3):
        copy(blocked, i)
    await settle()
    await blocked.close()
    assert stats.requests[("b", "dropped")] == 3  # the waiting one and the queued ones, at close
    copy(blocked, 9)  # after close: ignored
    assert stats.requests[("b", "dropped")] == 3


async def test_a_shadow_without_a_request_runner_refuses_an_ensemble_and_counts_it_failed(caplog):
    """An ensemble's copies run through its steps, which the request runner's run_copy does; without one a copy is
    refused by name (FAILED_PRECONDITION), never sent to a batcher the ensemble does not have."""
    version, stats = Version(ensemble=object()), ShadowStats()
    shadow = Shadow("r", ShadowConfig(model="shadow", pause_above_in_flight=0, pause_above_loop_busy_percent=100),
                    Registry(version), stats)
    with caplog.at_level("DEBUG", logger="inference_server.routing.shadow"):
        copy(shadow, 1)
        await until(lambda: stats.requests[("r", "error")] == 1, "the refusal to be counted")
    assert version.runs == 0 and version.leases == 0
    assert any("shadow 'shadow' is an ensemble" in r.getMessage() for r in caplog.records), caplog.text
    assert not any(r.exc_info for r in caplog.records)  # refused, not a traceback
    await shadow.close()


async def test_copies_wait_while_the_event_loop_is_busy(monkeypatch):
    """The loop's load on clocks the test moves (the shadow's LoopLoad reads them), not on the thread's real CPU
    time: a busy loop's real share depends on what else the machine runs (it once read 0.7999 against 0.8)."""
    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(shadow_module, "LoopLoad", lambda: LoopLoad(wall=lambda: clock["wall"],
                                                                    cpu=lambda: clock["cpu"]))
    version, stats = Version(), ShadowStats()
    shadow = Shadow("r", ShadowConfig(model="shadow", pause_above_in_flight=0, pause_above_loop_busy_percent=50),
                    Registry(version), stats)
    copy(shadow, 1)
    await settle()
    assert version.runs == 0  # no whole window yet: the loop reads as fully busy
    clock["wall"] += BUSY_WINDOW_S
    clock["cpu"] += 0.9 * BUSY_WINDOW_S  # on the CPU for 90 % of a window
    await settle()
    assert version.runs == 0
    clock["wall"] += BUSY_WINDOW_S  # then a window off the CPU: the next look reads quiet
    await until(lambda: version.runs == 1, "the copy to run once the loop is quiet")
    await shadow.close()


def test_loop_load_reads_the_calling_threads_share_of_the_cpu():
    """Thread CPU time over wall time, per window, on clocks the test moves (no assertion on real CPU timing: a
    busy loop's share depends on what else the machine runs)."""
    clock = {"wall": 0.0, "cpu": 0.0}
    load = LoopLoad(wall=lambda: clock["wall"], cpu=lambda: clock["cpu"])
    assert load.busy() == 1.0  # no window yet
    clock["wall"] += BUSY_WINDOW_S / 2
    clock["cpu"] += BUSY_WINDOW_S / 4
    assert load.busy() == 1.0  # still no whole window: the last reading stands
    clock["wall"] += BUSY_WINDOW_S / 2
    clock["cpu"] += BUSY_WINDOW_S / 2
    assert load.busy() == pytest.approx(0.75)  # on the CPU for three quarters of the window
    clock["wall"] += BUSY_WINDOW_S
    assert load.busy() == 0.0  # slept through the next one
