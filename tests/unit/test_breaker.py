"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from inference_server.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_and_only_then():
    breaker = CircuitBreaker("x", failure_threshold=3, cooldown_s=5, clock=Clock())
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success in between resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow() and breaker.opened == 1


def test_after_the_cooldown_one_probe_goes_through_and_its_outcome_decides():
    clock = Clock()
    breaker = CircuitBreaker("x", failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow() and not breaker.allow()  # everyone else waits for it
    breaker.failure()  # the probe failed: another full cool-down
    assert breaker.state == OPEN and breaker.opened == 2
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


def test_a_probe_that_never_reports_is_replaced_after_another_cooldown():
    clock = Clock()
    breaker = CircuitBreaker("x", failure_threshold=1, cooldown_s=2, clock=clock)
    breaker.failure()
    clock.now += 2
    assert breaker.allow()  # this probe is lost (its caller was cancelled)
    clock.now += 1
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_failures_reported_while_open_do_not_extend_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker("x", failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now += 4
    breaker.failure()  # a call that was already out when it opened
    clock.now += 1
    assert breaker.allow() and breaker.opened == 1


def test_with_tickets_only_calls_let_in_since_the_last_change_of_state_report():
    clock = Clock()
    breaker = CircuitBreaker("x", failure_threshold=2, cooldown_s=5, clock=clock)
    early = [breaker.enter() for _ in range(3)]  # three calls in flight while closed
    breaker.failure("boom", early[0])
    breaker.failure("boom", early[1])
    assert breaker.state == OPEN
    breaker.success(early[2])  # it was let in before the breaker opened: it cannot close it
    assert breaker.state == OPEN and breaker.enter() is None
    clock.now += 5
    probe = breaker.enter()
    assert probe is not None and breaker.state == HALF_OPEN and breaker.enter() is None
    breaker.failure("late", early[2])  # an old call failing does not fail the probe
    assert breaker.state == HALF_OPEN
    breaker.success(probe)
    assert breaker.state == CLOSED and breaker.opened == 1


def test_an_abandoned_probe_is_replaced_at_the_next_call():
    clock = Clock()
    breaker = CircuitBreaker("x", failure_threshold=1, cooldown_s=60, clock=clock)
    breaker.failure("boom", breaker.enter())
    clock.now += 60
    probe = breaker.enter()
    assert breaker.enter() is None  # the probe is out
    breaker.abandon(probe)  # cancelled: no outcome
    assert breaker.enter() is not None  # the next call probes at once, not a cool-down later
