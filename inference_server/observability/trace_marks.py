"""What the batcher writes down about a traced request, as plain data (no OpenTelemetry here: the execution room
records times and knows nothing of spans). A request that is traced hands its `Marks` to the batcher with its
inputs; the batcher stamps the moments its request entered the queue and its batch began and ended computing, and
the batch that served it (`BatchMarks`, one per execution, shared by its traced requests). The tracing code turns
them into spans afterwards (observability/tracing.py). Times are epoch nanoseconds (`time.time_ns()`), what
OpenTelemetry takes for a span's start and end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False)
class BatchMarks:
    """One execution of a model, which served `requests` requests of `rows` rows in all."""
    model: str
    requests: int
    rows: int
    start_ns: int
    end_ns: int
    context: Any = None  # its span's context, once the first of its requests made it (observability/tracing.py)
    error_code: str = ""  # when the execution failed: the ErrorCode's name...
    error: str = ""  # ...and the status description, `CODE: message`


@dataclass(slots=True, eq=False)
class Marks:
    """One request's moments in the batcher: 0 for a moment it never reached (it left the queue first)."""
    queue_start_ns: int = 0
    compute_start_ns: int = 0
    compute_end_ns: int = 0
    batch: BatchMarks | None = None
