"""Admission and health: whether the server takes a request now, and what its health endpoints answer.

`Gate` owns the drain and the in-flight count: every inference passes it (refused while draining, or past
`max_in_flight`), and so do repository changes (refused while draining). `Health` answers ServerLive,
ServerReady and ModelReady from the gate, the model manager and the registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from inference_server.errors import ErrorCode, InferenceError, unavailable
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.registry import ModelRegistry

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, max_in_flight: int = 0) -> None:
        self.max_in_flight = max_in_flight  # inference requests at once; more are refused at once (0: no cap)
        self.rejected: Counter[str] = Counter()  # requests refused at once, by reason (metrics)
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_refused = -float("inf")  # monotonic time of the last request refused while draining

    def check_open(self) -> None:
        """UNAVAILABLE while draining (remembered: see `settle`)."""
        if self.draining:
            self._last_refused = time.monotonic()
            self.rejected["draining"] += 1
            raise unavailable("server is shutting down")

    def admit(self) -> Gate:
        """`with gate.admit():` an inference request, refused here or counted in flight until the block ends (a
        plain context manager: this is on every request's path)."""
        self.check_open()
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            self.rejected["max_in_flight"] += 1
            raise InferenceError(ErrorCode.RESOURCE_EXHAUSTED, f"the server has {self.in_flight} requests in "
                                                               f"flight, its limit (max_in_flight); try again shortly")
        self.in_flight += 1
        self._idle.clear()
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def close(self, grace_s: float) -> None:
        """Refuse new requests and let in-flight ones finish (up to `grace_s`)."""
        self.draining = True
        if self.in_flight:  # nothing to wait for (or to say) otherwise, as when a start fails
            log.info("draining: %d requests in flight", self.in_flight)
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("drain grace of %.1fs expired with %d requests in flight", grace_s, self.in_flight)

    async def settle(self, quiet_s: float, limit_s: float) -> None:
        """After a drain, before the front ends close: until no request has been refused for `quiet_s` (at most
        `limit_s`), counted from now when nothing has been refused yet. Requests a transport has already received
        are then answered UNAVAILABLE by us; a transport that closes with requests still unanswered cuts them off
        (gRPC's answer to those is CANCELLED). Calls sent as the drain began may not have reached us yet, so even
        a drain that refused nothing waits `quiet_s`."""
        start = time.monotonic()
        deadline = start + limit_s
        while (now := time.monotonic()) < deadline and now - max(start, self._last_refused) < quiet_s:
            await asyncio.sleep(min(quiet_s, deadline - now))


class Health:
    def __init__(self, gate: Gate, manager: ModelManager, registry: ModelRegistry) -> None:
        self._gate = gate
        self._manager = manager
        self._registry = registry

    @property
    def live(self) -> bool:
        return True

    @property
    def draining(self) -> bool:
        return self._gate.draining

    @property
    def ready(self) -> bool:
        return not self._gate.draining and self._manager.ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for a model or version that is unknown, loading, failed or unloaded (as Triton answers)."""
        return not self._gate.draining and self._registry.ready(name, version)
