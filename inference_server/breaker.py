"""A circuit breaker for a dependency the server can do without (the Redis cache; later, fallbacks).

closed: calls go through; `failure_threshold` failures in a row open it.
open: calls are refused for `cooldown_s` (monotonic clock), then one probe is let through (half-open).
half_open: the probe's success closes it; its failure opens it for another cool-down. Other calls are
refused while the probe is out (a probe that never reports is replaced after another cool-down).

`enter()` is `allow()` with a ticket to report with: an outcome reported with a ticket from before the
breaker last changed state is ignored, so a call that was let in while it was closed cannot close it once it
is open, nor fail the probe of a half-open one; `abandon(ticket)` gives up a probe that never ran to an end
(the next call probes at once). Without tickets, every report counts (the Redis cache's one connection).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    def __init__(self, name: str, failure_threshold: int = 5, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0  # in a row, while closed
        self._opened_at = 0.0
        self._generation = 0  # bumped at every change of state: the tickets of earlier calls go stale
        self.opened = 0  # times it has opened

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN  # the next allow() lets a probe through
        return self._state

    def allow(self) -> bool:
        """Whether to make a call now; with True, report its outcome with success() or failure()."""
        return self.enter() is not None

    def enter(self) -> int | None:
        """A ticket when a call may be made now (report its outcome with it), None when it may not."""
        if self._state == CLOSED:
            return self._generation
        now = self._clock()
        if now - self._opened_at >= self.cooldown_s:  # open long enough, or a probe lost
            self._state = HALF_OPEN  # this caller is the probe
            self._opened_at = now
            self._generation += 1
            return self._generation
        return None

    def _stale(self, ticket: int | None) -> bool:
        return ticket is not None and ticket != self._generation

    def success(self, ticket: int | None = None) -> None:
        if self._stale(ticket):
            return
        if self._state != CLOSED:
            log.info("%s: reachable again; circuit closed", self.name)
            self._generation += 1
        self._state = CLOSED
        self._failures = 0

    def abandon(self, ticket: int | None) -> None:
        """The call with this ticket ended with no outcome (cancelled): a probe is replaced at the next call."""
        if not self._stale(ticket) and self._state == HALF_OPEN:
            self._opened_at = self._clock() - self.cooldown_s

    def failure(self, reason: str = "", ticket: int | None = None) -> None:
        if self._state == OPEN or self._stale(ticket):
            return  # a call that was already out when it opened, or when it last changed state
        self._failures += 1
        if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
            was_probe = self._state == HALF_OPEN
            self._state = OPEN
            self._opened_at = self._clock()
            self._failures = 0
            self._generation += 1
            self.opened += 1
            log.warning("%s: %s; circuit open, not called for %.1fs%s", self.name,
                        "probe failed" if was_probe else f"{self.failure_threshold} failures in a row",
                        self.cooldown_s, f" ({reason})" if reason else "")
