"""Logging: the stdlib, one line per event, the request id on every line logged while serving a request.

`log_format = "json"` writes one JSON object per line (ts, level, logger, message, request_id, and any
`extra=` fields); "text" writes `time LEVEL logger [request_id]: message`. With tracing on, a request's lines also
carry its trace id (JSON: `trace_id`; text: `[request_id trace=<trace id>]`), so a line can be found from its trace
and a trace from its line. The access log (logger `inference_server.access`, off by default) is one line per
answered request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
TRACE_ID: ContextVar[int] = ContextVar("trace_id", default=0)  # the request's OpenTelemetry trace id; 0: none
ACCESS = logging.getLogger("inference_server.access")
# LogRecord's own attributes; anything else on a record came from `extra=` and goes into the JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id",
                                                                         "trace_id"}


def trace_id_hex(trace_id: int) -> str:
    """A trace id as W3C Trace Context and every tracing backend write it: 32 lowercase hex digits."""
    return f"{trace_id:032x}"


def _stamp_request_id(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = REQUEST_ID.get()
        record.trace_id = TRACE_ID.get()
        return record

    # A marker on the function object, which declares no such attribute.
    make.stamps_request_id = True  # type: ignore[attr-defined]
    return make


# Every record made in a request's context carries its id, whatever handler (or test) receives it.
if not getattr(logging.getLogRecordFactory(), "stamps_request_id", False):
    logging.setLogRecordFactory(_stamp_request_id(logging.getLogRecordFactory()))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "")
        tid = getattr(record, "trace_id", 0)
        if tid:
            record.rid = f" [{rid or '-'} trace={trace_id_hex(tid)}]"
        else:
            record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if rid := getattr(record, "request_id", ""):
            line["request_id"] = rid
        if tid := getattr(record, "trace_id", 0):
            line["trace_id"] = trace_id_hex(tid)
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "rid":
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One handler on the root logger, to stderr; safe to call again (the config replaces the boot default)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class Throttled:
    """A repeating event logged at most once per `interval_s` (a model failing every batch must not flood the
    log); the next line that gets through says how many were left out."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self._left_out = 0

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = self._clock()
        if now - self._last < self._interval_s:
            self._left_out += 1
            return
        if self._left_out:
            msg += " (%d more like it left out of the log since the last)"
            args = (*args, self._left_out)
        self._last, self._left_out = now, 0
        self._log.log(level, msg, *args, exc_info=exc_info)


class RateLimited(logging.Filter):
    """A logger's repeating lines let through once per `interval_s` each (keyed by logger and message template);
    the next line that gets through says how many like it were left out. For libraries' loggers that repeat a
    line per attempt (an OpenTelemetry exporter whose collector is down): one filter, added to each such logger."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._left_out: dict[tuple[str, object], int] = {}
        self._lock = threading.Lock()  # libraries log from their own threads

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -float("inf")) < self._interval_s:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return False
            self._last[key] = now
            left_out = self._left_out.pop(key, 0)
        if left_out:
            record.msg = f"{record.getMessage()} ({left_out} more like it left out of the log since the last)"
            record.args = ()
        return True
