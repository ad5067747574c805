"""Log lines: JSON or text, and the request id on every line logged while a request is served."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from inference_server.observability.logs import REQUEST_ID, TRACE_ID, JsonFormatter, TextFormatter

log = logging.getLogger("inference_server.test")


def capture(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler, out


async def test_lines_logged_while_serving_a_request_carry_its_id_and_others_do_not():
    handler, out = capture(JsonFormatter())
    try:
        async def serve(request_id: str) -> None:
            REQUEST_ID.set(request_id)  # a task's own context: concurrent requests never mix ids
            await asyncio.sleep(0)
            log.info("working on it", extra={"model": "m"})

        await asyncio.gather(serve("req-1"), serve("req-2"))
        log.warning("between requests")
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line.get("request_id"), line["message"]) for line in lines] == [
        ("req-1", "working on it"), ("req-2", "working on it"), (None, "between requests")]
    assert lines[0]["model"] == "m" and lines[0]["level"] == "INFO" and lines[0]["ts"].endswith("Z")
    assert lines[2]["logger"] == "inference_server.test"


def test_text_lines_show_the_request_id_in_brackets():
    handler, out = capture(TextFormatter())
    try:
        token = REQUEST_ID.set("abc")
        log.info("one")
        REQUEST_ID.reset(token)
        log.info("two")
    finally:
        log.removeHandler(handler)
    first, second = out.getvalue().splitlines()
    assert first.endswith("INFO inference_server.test [abc]: one")
    assert second.endswith("INFO inference_server.test: two")


def test_a_repeating_event_is_logged_once_per_interval_and_says_how_many_were_left_out(caplog):
    from inference_server.observability.logs import Throttled

    now = [0.0]
    throttled = Throttled(logging.getLogger("throttle-test"), interval_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="throttle-test"):
        for _ in range(100):
            throttled.log(logging.ERROR, "model '%s': batch failed", "m")
        now[0] = 1.0
        throttled.log(logging.ERROR, "model '%s': batch failed", "m")
    assert [r.getMessage() for r in caplog.records] == [
        "model 'm': batch failed", "model 'm': batch failed (99 more like it left out of the log since the last)"]


async def test_with_tracing_on_a_requests_lines_carry_its_trace_id_beside_its_request_id():
    json_handler, json_out = capture(JsonFormatter())
    text_handler, text_out = capture(TextFormatter())
    try:
        async def serve(request_id: str, trace_id: int) -> None:
            REQUEST_ID.set(request_id)
            TRACE_ID.set(trace_id)
            await asyncio.sleep(0)
            log.info("working on it")

        await asyncio.gather(serve("req-1", 0x0AF7651916CD43DD8448EB211C80319C), serve("", 1), serve("req-3", 0))
    finally:
        log.removeHandler(json_handler)
        log.removeHandler(text_handler)
    lines = [json.loads(line) for line in json_out.getvalue().splitlines()]
    assert [(line.get("request_id"), line.get("trace_id")) for line in lines] == [
        ("req-1", "0af7651916cd43dd8448eb211c80319c"), (None, "00000000000000000000000000000001"), ("req-3", None)]
    text = text_out.getvalue().splitlines()
    assert "[req-1 trace=0af7651916cd43dd8448eb211c80319c]: working on it" in text[0]
    assert "[- trace=00000000000000000000000000000001]: working on it" in text[1]
    assert "[req-3]: working on it" in text[2]
