"""ModelStreamInfer's per-stream limit: a stream's next request is read only while fewer than
max_requests_per_stream of its requests are unanswered, so a client that sends faster than it is answered (or that
reads no answers) is held back by HTTP/2 flow control instead of filling the server with tasks and answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

StreamBehaviour = Callable[[AsyncIterator[Any], Any], AsyncGenerator[Any, None]]


def requests_in_flight(behaviour: StreamBehaviour, limit: int) -> StreamBehaviour:
    """`behaviour` (requests, context) -> responses, answering every request with exactly one response (as
    InferenceServicer.ModelStreamInfer does, errors included), with at most `limit` requests of a stream read and not
    yet answered. A slot frees once its answer has been written (the generator is resumed after the write)."""

    @functools.wraps(behaviour)
    async def bounded(requests: AsyncIterator[Any], context: Any) -> AsyncGenerator[Any, None]:
        slots = asyncio.Semaphore(limit)

        async def admitted() -> AsyncGenerator[Any, None]:
            iterator = aiter(requests)
            while True:
                await slots.acquire()  # before reading: the next request stays in the transport meanwhile
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    return
                yield request

        async with contextlib.aclosing(behaviour(admitted(), context)) as responses:
            async for response in responses:
                yield response
                slots.release()

    return bounded
