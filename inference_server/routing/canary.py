"""The canary controller: pure decisions (no I/O, no clock of its own), driven by the router at each window.

Each window the candidate's requests are compared with the thresholds, and its p99 with the other variants'
p99 in the same window (windowed figures, never cumulative since start):
- fewer than `min_requests` candidate requests, or too few on the others for a p99 comparison: hold (the
  window neither passes nor fails: "not enough data" never means pass or fail);
- an error ratio or a p99 past its bound: a failed window; `failed_windows_to_rollback` of them in a row roll
  the candidate back to 0 %;
- otherwise the candidate steps up to its next share; the step to 100 % promotes it (the stable variant).
Client errors (bad input, an unknown model, a cancelled call) say nothing about a variant and are not counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from inference_server.config.routes import CanaryConfig
from inference_server.errors import ErrorCode

RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED, OFF = "running", "paused", "promoted", "rolled_back", "aborted", "off"
STATES = (RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED, OFF)
# Decisions: at a window's end, or by an administrator.
STEP, HOLD, FAIL, ROLLBACK, PROMOTE = "step", "hold", "fail", "rollback", "promote"
START, PAUSE, ABORT = "start", "pause", "abort"
DECISIONS = (STEP, HOLD, FAIL, ROLLBACK, PROMOTE, START, PAUSE, ABORT)


def counts_against(code: str) -> bool:
    """Whether a failed outcome (the router records codes by name) counts against its variant: the code is
    ErrorCode.server_fault, or it names no ErrorCode (gRPC's UNKNOWN; none arrives today, since the dispatcher
    records an unexpected exception as INTERNAL). A client's own mistakes are not counted at all."""
    member = ErrorCode.__members__.get(code)
    return member is None or member.server_fault


class CanaryConflict(ValueError):
    """A command the canary's state does not allow (pausing one that is not running)."""


_RATIO = 1.02  # latency sketch: log buckets 2 % wide, so a p99 is within 2 %
_LOG_RATIO = math.log(_RATIO)


@dataclass(slots=True)
class Window:
    """One side's requests in the current window: counts and a log-bucketed latency sketch (bounded memory)."""
    requests: int = 0
    errors: int = 0
    _latency: Counter[int] = field(default_factory=Counter)

    def record(self, code: str, duration_s: float | None) -> None:
        if code != "OK" and not counts_against(code):
            return
        self.requests += 1
        if code != "OK":
            self.errors += 1
        if duration_s is None:  # refused without a call (an open breaker): an error with no latency
            return
        self._latency[max(0, math.ceil(math.log(max(duration_s, 1e-6) / 1e-6) / _LOG_RATIO))] += 1

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_ms(self) -> float:
        """The 99th percentile in milliseconds (the bucket's upper bound); 0 with no requests."""
        rank = math.ceil(0.99 * self.requests)
        running = 0
        for index in sorted(self._latency):
            running += self._latency[index]
            if running >= rank:
                return 1e-3 * _RATIO ** index
        return 0.0


@dataclass(slots=True)
class CanaryState:
    status: str = RUNNING
    step: int = 0  # index into steps_percent
    failed_windows: int = 0  # in a row
    decision: str = START  # the last decision...
    reason: str = "started"  # ...and why, with the figures (the router counts each decision: RouteStats)
    window_start: float = 0.0  # monotonic seconds
    candidate: Window = field(default_factory=Window)
    others: Window = field(default_factory=Window)

    def share(self, cfg: CanaryConfig) -> float | None:
        """The candidate's share in percent; None when the canary does not set it (off: the weights do)."""
        if self.status in (RUNNING, PAUSED):
            return cfg.steps_percent[self.step]
        if self.status == PROMOTED:
            return 100.0
        if self.status in (ROLLED_BACK, ABORTED):
            return 0.0
        return None

    def decide(self, decision: str, reason: str) -> None:
        self.decision, self.reason = decision, reason

    def new_window(self, now: float) -> None:
        self.window_start = now
        self.candidate, self.others = Window(), Window()


def judge(cfg: CanaryConfig, candidate: Window, others: Window) -> tuple[str, str]:
    """(STEP | HOLD | FAIL, why with the figures) for one window."""
    p99, base_p99 = candidate.p99_ms(), others.p99_ms()
    figures = (f"candidate {candidate.requests} requests, {candidate.errors} errors "
               f"({candidate.error_ratio:.2%}), p99 {p99:.1f} ms; others {others.requests} requests, "
               f"p99 {base_p99:.1f} ms")
    if candidate.requests < cfg.min_requests:
        return HOLD, f"too few candidate requests (min_requests {cfg.min_requests}): {figures}"
    if candidate.error_ratio > cfg.max_error_ratio:
        return FAIL, f"error ratio {candidate.error_ratio:.2%} > max_error_ratio {cfg.max_error_ratio:.2%}: {figures}"
    if cfg.max_p99_ms is not None and p99 > cfg.max_p99_ms:
        return FAIL, f"p99 {p99:.1f} ms > max_p99_ms {cfg.max_p99_ms:g}: {figures}"
    if cfg.max_p99_ratio is not None:
        if others.requests < cfg.min_requests:
            return HOLD, (f"too few requests on the other variants to compare p99 (min_requests "
                          f"{cfg.min_requests}): {figures}")
        if p99 > cfg.max_p99_ratio * base_p99:
            return FAIL, f"p99 {p99 / base_p99:.2f}x the others' > max_p99_ratio {cfg.max_p99_ratio:g}: {figures}"
    return STEP, f"within bounds: {figures}"


def advance(cfg: CanaryConfig, state: CanaryState, now: float) -> bool:
    """Judge the window if it is over (only while running); returns whether a decision was made. The
    decision and its reason are in `state`; a new window starts."""
    if state.status != RUNNING or now - state.window_start < cfg.interval_s:
        return False
    verdict, reason = judge(cfg, state.candidate, state.others)
    state.new_window(now)
    if verdict == HOLD:
        state.decide(HOLD, reason)
    elif verdict == FAIL:
        state.failed_windows += 1
        if state.failed_windows >= cfg.failed_windows_to_rollback:
            state.status = ROLLED_BACK
            state.decide(ROLLBACK, f"rolled back to 0% after {state.failed_windows} failed window(s): {reason}")
        else:
            state.decide(FAIL, f"failed window {state.failed_windows} of {cfg.failed_windows_to_rollback}: "
                               f"{reason}")
    else:
        state.failed_windows = 0
        state.step = min(state.step + 1, len(cfg.steps_percent) - 1)  # steps_percent = [100]: promote
        share = cfg.steps_percent[state.step]
        if share >= 100:
            state.status = PROMOTED
            state.decide(PROMOTE, f"promoted to 100% (now the stable variant): {reason}")
        else:
            state.decide(STEP, f"stepped to {share:g}%: {reason}")
    return True


def command(state: CanaryState, action: str, now: float) -> None:
    """An administrator's START (resume a paused canary, else restart a rolled back, aborted or off one at the
    first step; a promoted one is done), PAUSE (hold the
    share, stop judging) or ABORT (candidate to 0 %)."""
    if action == START:
        if state.status == PROMOTED:
            raise CanaryConflict("the candidate is already promoted (to ramp again, set weights or change the "
                                 "canary's steps in the config and reload)")
        resumed = state.status == PAUSED
        if not resumed:
            state.step, state.failed_windows = 0, 0
        state.status = RUNNING
        state.new_window(now)
        state.decide(START, "resumed by an administrator" if resumed else "started by an administrator")
    elif action == PAUSE:
        if state.status != RUNNING:
            raise CanaryConflict(f"the canary is {state.status}, not running")
        state.status = PAUSED
        state.decide(PAUSE, "paused by an administrator")
    elif action == ABORT:
        if state.status not in (RUNNING, PAUSED):
            raise CanaryConflict(f"the canary is {state.status}, not running or paused")
        state.status = ABORTED
        state.decide(ABORT, "aborted by an administrator: candidate back to 0%")
    else:
        raise ValueError(f"unknown canary action {action!r} (start, pause or abort)")
