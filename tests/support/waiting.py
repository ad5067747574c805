"""Waiting for a condition instead of sleeping for a guessed time: polled often, bounded by a deadline, and the
timeout names what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.005


async def until(predicate: Callable[[], object], what: str = "the condition", timeout_s: float = 10.0) -> None:
    """On the event loop: yields to the loop between looks, so the tasks being waited for run."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def wait_until(predicate: Callable[[], object], what: str = "the condition", timeout_s: float = 10.0) -> None:
    """From a test's thread, while a server (thread or process) does the work."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


async def turns(count: int = 20) -> None:
    """Let every task that is ready run, `count` times over: for code that waits on events, not on time, so
    nothing is left to chance and no wall-clock time passes."""
    for _ in range(count):
        await asyncio.sleep(0)
