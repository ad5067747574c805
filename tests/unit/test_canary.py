"""The canary controller, driven through the router by a fake clock: ramps, rollbacks, holds, windows, the p99
sketch, administrators' commands and the log line each decision writes."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from inference_server.config.routes import CanaryConfig, RouteConfig, parse_route
from inference_server.routing.canary import (
    ABORTED,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    CanaryConflict,
    CanaryState,
    Window,
    advance,
    command,
    judge,
)
from inference_server.routing.router import NoCanary, RouteError, Router, RouteState

INTERVAL = 30.0
KEYS = [f"user-{i}" for i in range(1_000)]


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ready(model: str, version: str) -> bool:
    return True


def route(**canary) -> RouteConfig:
    table = {
        "variants": [{"name": "stable", "version": 3, "weight": 90}, {"name": "candidate", "version": 4, "weight": 10}],
        "canary": {"candidate": "candidate", "steps_percent": [10, 25, 50, 100], "interval_s": INTERVAL,
                   "min_requests": 100, "max_error_ratio": 0.01, **canary},
    }
    return parse_route("churn", table)


def make(**canary) -> tuple[Router, RouteState, Clock]:
    clock = Clock()
    router = Router([route(**canary)], clock=clock)
    state = router.route("churn")
    assert state is not None
    return router, state, clock


def feed(router: Router, state: RouteState, variant: str, n: int, code: str = "OK",
         duration_s: float | None = 0.005) -> None:
    for _ in range(n):
        router.record(state, variant, code, duration_s)


def window(router: Router, state: RouteState, clock: Clock, *, candidate: int = 100, errors: int = 0,
           error_code: str = "INTERNAL", duration_s: float = 0.005, others: int = 200,
           others_duration_s: float = 0.005) -> list[tuple[str, str]]:
    """One window of traffic, then a tick at its end."""
    feed(router, state, "candidate", candidate - errors, duration_s=duration_s)
    feed(router, state, "candidate", errors, code=error_code, duration_s=duration_s)
    feed(router, state, "stable", others, duration_s=others_duration_s)
    clock.now += INTERVAL
    return router.tick(now=clock.now)


def candidate_share(state: RouteState) -> float:
    return state.shares["candidate"]


# -- ramp and promotion ----------------------------------------------------------------------------------


def test_a_healthy_candidate_ramps_one_step_per_window_and_is_promoted_at_100_percent():
    router, state, clock = make()
    assert state.shares == {"stable": 90.0, "candidate": 10.0}
    seen = []
    for expected_share, expected_decision in ((25.0, "step"), (50.0, "step"), (100.0, "promote")):
        assert window(router, state, clock) == [("churn", expected_decision)]
        assert candidate_share(state) == expected_share
        seen.append(candidate_share(state))
        assert state.canary.decision == expected_decision
        assert state.canary.failed_windows == 0
    assert seen == [25.0, 50.0, 100.0]
    assert state.canary.status == PROMOTED and state.canary.step == 3
    assert state.shares == {"stable": 0.0, "candidate": 100.0}
    assert router.stats.canary_decisions("churn", "candidate") == {"step": 2, "promote": 1}
    assert {router.choose(state, k, ready).name for k in KEYS} == {"candidate"}
    # Promoted is final: more windows decide nothing.
    assert window(router, state, clock, errors=50) == []
    assert state.shares == {"stable": 0.0, "candidate": 100.0}


def test_each_step_moves_the_candidate_share_and_the_keys_follow():
    router, state, clock = make()
    for share in (10.0, 25.0, 50.0):
        assert candidate_share(state) == share
        assert state.shares["stable"] == 100.0 - share
        got = sum(router.choose(state, f"k{i}", ready).name == "candidate" for i in range(10_000)) / 10_000
        assert abs(got - share / 100) <= 0.02
        window(router, state, clock)


def test_a_single_step_of_100_percent_is_promoted_after_one_healthy_window():
    router, state, clock = make(steps_percent=[100])
    assert state.shares == {"stable": 0.0, "candidate": 100.0}
    assert window(router, state, clock) == [("churn", "promote")]
    assert state.canary.status == PROMOTED and state.shares["candidate"] == 100.0


# -- failures and rollback -------------------------------------------------------------------------------


def test_an_error_ratio_above_the_bound_rolls_back_at_the_end_of_the_first_window():
    router, state, clock = make()
    assert window(router, state, clock, errors=2) == [("churn", "rollback")]  # 2 % > 1 %
    assert state.canary.status == ROLLED_BACK and state.canary.failed_windows == 1
    assert state.shares == {"stable": 100.0, "candidate": 0.0}
    assert "error ratio 2.00% > max_error_ratio 1.00%" in state.canary.reason
    assert {router.choose(state, k, ready).name for k in KEYS} == {"stable"}
    assert {router.choose(state, None, ready).name for _ in range(1_000)} == {"stable"}
    # Rolled back is final until an administrator starts it again.
    assert window(router, state, clock) == []
    assert candidate_share(state) == 0.0


def test_an_error_ratio_exactly_at_the_bound_passes():
    router, state, clock = make()
    assert window(router, state, clock, errors=1) == [("churn", "step")]  # 1 % is not > 1 %


def test_three_failed_windows_in_a_row_are_needed_and_a_passing_window_resets_the_count():
    router, state, clock = make(failed_windows_to_rollback=3)
    decisions = []
    for errors in (5, 5, 0, 5, 5):
        decisions += [d for _, d in window(router, state, clock, errors=errors)]
        assert state.canary.status == RUNNING
    assert decisions == ["fail", "fail", "step", "fail", "fail"]
    assert state.canary.failed_windows == 2
    assert candidate_share(state) == 25.0  # failed windows hold the share
    assert window(router, state, clock, errors=5) == [("churn", "rollback")]
    assert state.canary.status == ROLLED_BACK and state.canary.failed_windows == 3
    assert candidate_share(state) == 0.0
    assert {router.choose(state, k, ready).name for k in KEYS} == {"stable"}


def test_a_p99_above_max_p99_ms_fails():
    router, state, clock = make(max_p99_ms=50)
    assert window(router, state, clock, duration_s=0.080) == [("churn", "rollback")]
    assert "max_p99_ms 50" in state.canary.reason
    router, state, clock = make(max_p99_ms=50)
    assert window(router, state, clock, duration_s=0.040) == [("churn", "step")]


def test_a_p99_above_max_p99_ratio_times_the_others_fails():
    router, state, clock = make(max_p99_ratio=1.5)
    assert window(router, state, clock, duration_s=0.020, others_duration_s=0.010) == [("churn", "rollback")]
    assert "max_p99_ratio 1.5" in state.canary.reason
    router, state, clock = make(max_p99_ratio=1.5)
    assert window(router, state, clock, duration_s=0.012, others_duration_s=0.010) == [("churn", "step")]


def test_too_few_requests_on_the_others_for_the_p99_ratio_holds():
    router, state, clock = make(max_p99_ratio=1.5, failed_windows_to_rollback=1)
    for _ in range(5):
        # Slow enough to fail the ratio if there were enough requests to compare with; and also fast enough.
        assert window(router, state, clock, duration_s=0.050, others=99, others_duration_s=0.010) \
            == [("churn", "hold")]
        assert window(router, state, clock, duration_s=0.005, others=0) == [("churn", "hold")]
    assert state.canary.status == RUNNING and state.canary.step == 0 and state.canary.failed_windows == 0
    assert "too few requests on the other variants" in state.canary.reason
    assert candidate_share(state) == 10.0


# -- holding -------------------------------------------------------------------------------------------


def test_no_traffic_holds_for_many_windows_and_the_share_stays():
    router, state, clock = make()
    for _ in range(50):
        assert window(router, state, clock, candidate=0, others=0) == [("churn", "hold")]
    assert state.canary.status == RUNNING and state.canary.step == 0 and state.canary.failed_windows == 0
    assert router.stats.canary_decisions("churn", "candidate") == {"hold": 50}
    assert state.shares == {"stable": 90.0, "candidate": 10.0}


def test_fewer_than_min_requests_hold_even_when_every_one_failed():
    router, state, clock = make()
    for _ in range(20):
        assert window(router, state, clock, candidate=99, errors=99) == [("churn", "hold")]
    assert state.canary.status == RUNNING and state.canary.failed_windows == 0
    assert "too few candidate requests (min_requests 100)" in state.canary.reason
    assert candidate_share(state) == 10.0


def test_a_hold_between_failed_windows_does_not_reset_nor_add_to_the_count():
    router, state, clock = make(failed_windows_to_rollback=2)
    assert window(router, state, clock, errors=5) == [("churn", "fail")]
    assert window(router, state, clock, candidate=0) == [("churn", "hold")]
    assert state.canary.failed_windows == 1
    assert window(router, state, clock, errors=5) == [("churn", "rollback")]


# -- what counts -------------------------------------------------------------------------------------------


def test_client_errors_are_not_counted_against_the_candidate():
    router, state, clock = make()
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "DEADLINE_EXCEEDED"):  # the last: the client's timeout
        feed(router, state, "candidate", 500, code=code)
    assert state.canary.candidate.requests == 0 and state.canary.candidate.errors == 0
    # 100 good requests among 2,000 client errors: a healthy window, and only the 100 count.
    assert window(router, state, clock) == [("churn", "step")]
    assert "candidate 100 requests, 0 errors" in state.canary.reason


def test_client_errors_alone_do_not_reach_min_requests():
    router, state, clock = make()
    feed(router, state, "candidate", 500, code="INVALID_ARGUMENT")
    assert window(router, state, clock, candidate=0) == [("churn", "hold")]


@pytest.mark.parametrize("code", ["INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED"])
def test_server_errors_count_against_the_candidate(code):
    router, state, clock = make()
    assert window(router, state, clock, errors=2, error_code=code) == [("churn", "rollback")]
    assert "2 errors" in state.canary.reason


def test_refusals_by_an_open_breaker_count_as_errors_without_a_latency():
    router, state, clock = make(max_p99_ms=50)
    feed(router, state, "candidate", 100, duration_s=0.001)
    feed(router, state, "candidate", 1, code="UNAVAILABLE", duration_s=None)
    window_ = state.canary.candidate
    assert (window_.requests, window_.errors, round(window_.p99_ms(), 1)) == (101, 1, 1.0)


def test_the_others_errors_do_not_count_against_the_candidate():
    router, state, clock = make()
    feed(router, state, "stable", 100, code="INTERNAL")
    assert window(router, state, clock) == [("churn", "step")]


def test_windows_are_not_cumulative_a_bad_window_then_a_good_one_steps():
    router, state, clock = make(failed_windows_to_rollback=2)
    assert window(router, state, clock, errors=50) == [("churn", "fail")]
    # Cumulatively 50 / 200 = 25 % errors; this window alone has none.
    assert window(router, state, clock) == [("churn", "step")]
    assert state.canary.status == RUNNING and state.canary.failed_windows == 0
    assert candidate_share(state) == 25.0
    assert "candidate 100 requests, 0 errors" in state.canary.reason


# -- the latency sketch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_window_p99_is_within_two_percent_of_numpy(seed):
    rng = np.random.default_rng(seed)
    durations = np.concatenate([rng.lognormal(np.log(0.010), 0.6, 3_000), rng.uniform(0.001, 0.2, 500)])
    w = Window()
    for d in durations:
        w.record("OK", float(d))
    expected = float(np.percentile(durations, 99)) * 1e3
    assert w.requests == len(durations)
    assert abs(w.p99_ms() - expected) / expected <= 0.02


def test_window_p99_of_a_constant_and_of_nothing():
    w = Window()
    assert w.p99_ms() == 0.0 and w.error_ratio == 0.0
    for _ in range(100):
        w.record("OK", 0.010)
    assert 10.0 <= w.p99_ms() <= 10.2
    w.record("INTERNAL", 0.010)
    w.record("CANCELLED", 5.0)  # not counted: neither a request nor a latency
    assert (w.requests, w.errors) == (101, 1)
    assert w.p99_ms() <= 10.2


# -- the window clock --------------------------------------------------------------------------------------


def test_a_window_is_judged_only_once_interval_s_has_passed():
    router, state, clock = make()
    start = clock.now
    feed(router, state, "candidate", 100)
    assert router.next_window_s(start) == INTERVAL
    assert router.tick(now=start + 10) == []
    assert router.next_window_s(start + 10) == pytest.approx(20.0)
    assert router.tick(now=start + INTERVAL - 0.001) == []
    assert state.canary.decision == "start" and state.canary.candidate.requests == 100
    assert router.tick(now=start + INTERVAL) == [("churn", "step")]
    # A new window started at the tick: the next one ends a full interval later.
    assert state.canary.candidate.requests == 0
    assert router.next_window_s(start + INTERVAL) == INTERVAL
    assert router.next_window_s(start + 2 * INTERVAL + 5) == 0.0


def test_tick_without_now_reads_the_injected_clock():
    router, state, clock = make()
    feed(router, state, "candidate", 100)
    clock.now += INTERVAL - 1
    assert router.tick() == []
    clock.now += 1
    assert router.tick() == [("churn", "step")]


def test_next_window_s_is_none_without_a_running_canary():
    router, state, clock = make()
    router.canary_command("churn", "pause")
    assert router.next_window_s() is None
    assert Router([], clock=clock).next_window_s() is None


# -- administrators' commands ------------------------------------------------------------------------------


def test_pause_freezes_the_share_and_stops_judging_then_start_resumes_at_the_same_step():
    router, state, clock = make()
    window(router, state, clock)
    assert candidate_share(state) == 25.0
    router.canary_command("churn", "pause")
    assert state.canary.status == PAUSED and state.canary.decision == "pause"
    for _ in range(20):  # bad traffic while paused: never judged
        assert window(router, state, clock, errors=50) == []
    assert candidate_share(state) == 25.0 and state.canary.status == PAUSED
    router.canary_command("churn", "start")
    assert state.canary.status == RUNNING and state.canary.step == 1 and candidate_share(state) == 25.0
    assert state.canary.reason == "resumed by an administrator"
    # The window restarts at the resume: what was recorded while paused is not judged.
    assert state.canary.candidate.requests == 0
    assert router.tick(now=clock.now + INTERVAL - 1) == []
    assert window(router, state, clock) == [("churn", "step")]
    assert candidate_share(state) == 50.0


@pytest.mark.parametrize("end", ["rollback", "abort"])
def test_start_after_rollback_or_abort_restarts_at_the_first_step(end):
    router, state, clock = make()
    window(router, state, clock)
    window(router, state, clock)
    assert candidate_share(state) == 50.0
    if end == "rollback":
        window(router, state, clock, errors=50)
        assert state.canary.status == ROLLED_BACK
    else:
        router.canary_command("churn", "abort")
        assert state.canary.status == ABORTED and state.canary.decision == "abort"
    assert state.shares == {"stable": 100.0, "candidate": 0.0}
    router.canary_command("churn", "start")
    assert state.canary.status == RUNNING and state.canary.step == 0 and state.canary.failed_windows == 0
    assert state.canary.reason == "started by an administrator"
    assert state.shares == {"stable": 90.0, "candidate": 10.0}
    assert window(router, state, clock) == [("churn", "step")]
    assert candidate_share(state) == 25.0


def test_abort_sends_the_candidate_to_zero_and_a_paused_canary_can_be_aborted():
    router, state, clock = make()
    router.canary_command("churn", "pause")
    router.canary_command("churn", "abort")
    assert state.canary.status == ABORTED
    assert state.shares["candidate"] == 0.0
    assert {router.choose(state, k, ready).name for k in KEYS} == {"stable"}
    assert window(router, state, clock) == []


def test_commands_the_state_does_not_allow_raise_canary_conflict():
    router, state, clock = make()
    router.canary_command("churn", "pause")
    with pytest.raises(CanaryConflict):
        router.canary_command("churn", "pause")
    router.canary_command("churn", "start")
    window(router, state, clock, errors=50)
    assert state.canary.status == ROLLED_BACK
    with pytest.raises(CanaryConflict):
        router.canary_command("churn", "pause")
    with pytest.raises(CanaryConflict):
        router.canary_command("churn", "abort")
    assert state.canary.status == ROLLED_BACK and state.canary.decision == "rollback"


def test_an_unknown_action_raises_value_error_and_changes_nothing():
    router, state, clock = make()
    with pytest.raises(ValueError, match="unknown canary action") as info:
        router.canary_command("churn", "promote")
    assert not isinstance(info.value, CanaryConflict)
    assert state.canary.status == RUNNING and state.canary.decision == "start"


def test_commands_on_a_route_without_a_canary_or_an_unknown_route():
    cfg = parse_route("plain", {"variants": [{"name": "a", "version": 1, "weight": 1}]})
    router = Router([cfg], clock=Clock())
    with pytest.raises(NoCanary):
        router.canary_command("plain", "start")
    with pytest.raises(KeyError):
        router.canary_command("nope", "start")


# -- the pure controller -----------------------------------------------------------------------------------


def test_judge_and_advance_without_the_router():
    cfg = CanaryConfig(candidate="c", steps_percent=(50.0, 100.0), interval_s=10, min_requests=2)
    state = CanaryState(window_start=0.0)
    assert state.share(cfg) == 50.0
    assert advance(cfg, state, 9.9) is False
    state.candidate.record("OK", 0.001)
    state.candidate.record("OK", 0.001)
    assert judge(cfg, state.candidate, state.others)[0] == "step"
    assert advance(cfg, state, 10.0) is True
    assert (state.status, state.decision, state.share(cfg), state.window_start) == (PROMOTED, "promote", 100.0, 10.0)
    state.status = "rolled_back"  # as a rollback leaves it
    command(state, "start", 20.0)
    assert (state.status, state.step, state.share(cfg), state.window_start) == (RUNNING, 0, 50.0, 20.0)


# -- logging -----------------------------------------------------------------------------------------------


ROUTER_LOG = "inference_server.routing.router"


def test_every_window_decision_logs_exactly_one_line_with_the_figures(caplog):
    router, state, clock = make()
    caplog.set_level(logging.INFO, logger=ROUTER_LOG)
    window(router, state, clock)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    message = caplog.records[0].getMessage()
    assert "route 'churn'" in message and "'candidate'" in message and ": step: stepped to 25%" in message
    assert "candidate 100 requests, 0 errors (0.00%)" in message and "others 200 requests" in message

    caplog.clear()
    window(router, state, clock, candidate=10)
    assert len(caplog.records) == 1 and ": hold: too few candidate requests" in caplog.records[0].getMessage()

    caplog.clear()
    window(router, state, clock, errors=3)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert "route 'churn'" in message and ": rollback: " in message and "error ratio 3.00%" in message

    caplog.clear()
    router.tick(now=clock.now + 10 * INTERVAL)  # nothing decided: nothing logged
    assert caplog.records == []


def test_every_command_logs_exactly_one_line(caplog):
    router, state, clock = make()
    caplog.set_level(logging.INFO, logger=ROUTER_LOG)
    for action, words in (("pause", "paused by an administrator"), ("start", "resumed by an administrator"),
                          ("abort", "aborted by an administrator")):
        caplog.clear()
        router.canary_command("churn", action)
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "route 'churn'" in message and f": {action}: {words}" in message
    caplog.clear()
    router.set_weights("churn", {"candidate": 50})
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == "route 'churn': weights set to stable = 90, candidate = 50"


def test_a_shuffled_healthy_stream_still_ramps():
    """Interleaved variants and durations in random order: the windows see the same figures."""
    router, state, clock = make(max_p99_ms=50, max_p99_ratio=2)
    rng = random.Random(5)
    for expected in ("step", "step", "promote"):
        events = [("candidate", rng.uniform(0.002, 0.010)) for _ in range(150)]
        events += [("stable", rng.uniform(0.002, 0.010)) for _ in range(300)]
        rng.shuffle(events)
        for variant, duration in events:
            router.record(state, variant, "OK", duration)
        clock.now += INTERVAL
        assert router.tick(now=clock.now) == [("churn", expected)]


def test_a_promoted_canary_is_not_restarted_and_start_needs_another_variant_to_serve_the_rest():
    router, state, clock = make(steps_percent=[100])
    assert window(router, state, clock) == [("churn", "promote")]
    with pytest.raises(CanaryConflict, match="already promoted"):
        router.canary_command("churn", "start")
    assert (state.canary.status, candidate_share(state)) == ("promoted", 100.0)

    router, state, clock = make()
    router.canary_command("churn", "abort")
    router.set_weights("churn", {"stable": 0})
    with pytest.raises(CanaryConflict, match="no other variant"):
        router.canary_command("churn", "start")
    assert state.canary.status == "off"
    with pytest.raises(RouteError, match="no weights given"):
        router.set_weights("churn", {})
