"""Request and response bodies on the HTTP front end: read bounded (413), decompressed bounded, compressed as
the client accepts; and the errors that carry an HTTP status of their own."""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import Request
from starlette.responses import Response

from inference_server.errors import ErrorCode, InferenceError
from inference_server.http import codec

JSON = "application/json"
# Compressing a response larger than this runs in a thread (zlib releases the GIL). Compressed request bodies
# are always inflated in a thread: a small one may inflate to max_request_bytes.
OFFLOAD_BYTES = 1 << 20
MAX_GZIP_MEMBERS = 64  # concatenated gzip members in one body (a client sends one)
BODY_IDLE_TIMEOUT_S = 30.0  # between two pieces of a request body
COMPRESS_LEVEL = 1  # responses: speed over ratio (tensors rarely compress much better at higher levels)
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}  # "deflate" in HTTP is the zlib format (RFC 9110 8.4.1.2)


class HttpError(Exception):
    """An error answered with an HTTP status of its own (not an InferenceError's): 400, 413, 415."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def error(self) -> InferenceError:
        """The same refusal in the core's terms (for the request's span): 408 a deadline, 413 a bound, else bad
        input."""
        code = _ERROR_CODE.get(self.status, ErrorCode.INVALID_ARGUMENT)
        return InferenceError(code, self.message)


_ERROR_CODE = {408: ErrorCode.DEADLINE_EXCEEDED, 413: ErrorCode.RESOURCE_EXHAUSTED}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.error_json(message), status, headers, JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, decompressed per Content-Encoding; over `limit` (compressed or not) -> 413, refused
    from Content-Length before anything is read when the client declares it."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise HttpError(400, f"Content-Length is not a number: {length!r}")
        if len(length) > 18 or int(length) > limit:  # (int() refuses strings of over 4300 digits)
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        try:
            async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):
                message = await receive()
        except TimeoutError:
            raise HttpError(408, f"no part of the request body arrived for {BODY_IDLE_TIMEOUT_S:g} s") from None
        if message["type"] != "http.request":  # http.disconnect: nobody is left to answer
            raise HttpError(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding")
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None:
        raise HttpError(415, f"unsupported Content-Encoding {encoding!r} (gzip, deflate or identity)")
    return await asyncio.to_thread(decompress, body, wbits, limit)


def decompress(data: bytes, wbits: int, limit: int) -> bytes:
    """gzip (every member, up to MAX_GZIP_MEMBERS) or zlib data, never inflating past `limit` bytes (413)
    whatever the ratio."""
    parts: list[bytes] = []
    total = 0
    while True:
        if len(parts) >= MAX_GZIP_MEMBERS:
            raise HttpError(400, f"the compressed request body has more than {MAX_GZIP_MEMBERS} gzip members")
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, limit - total + 1)
        except zlib.error:
            if wbits == 15 and not parts:  # some clients send raw deflate without the zlib wrapper
                wbits = -15
                continue
            raise HttpError(400, "the request body is not valid compressed data for its Content-Encoding") from None
        total += len(out)
        if total > limit:
            raise HttpError(413, f"decompressed request body exceeds the limit of {limit} bytes")
        parts.append(out)
        if not inflater.eof:
            raise HttpError(400, "the compressed request body is truncated")
        data = inflater.unused_data
        if not data:
            break
        if wbits != 31:  # only gzip may hold several members
            raise HttpError(400, "the compressed request body has trailing data")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def accepted_encoding(accept: str | None) -> str | None:
    """gzip or deflate when Accept-Encoding allows one (the higher q; gzip on a tie), else None."""
    if not accept:
        return None
    weights: dict[str, float] = {}
    for item in accept.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name] = q
    star = weights.get("*", 0.0)  # for the codings not named (a named one, q=0 included, wins over "*")
    best, best_q = None, 0.0
    for name in ("gzip", "deflate"):
        q = weights.get(name, star)
        if q > best_q:
            best, best_q = name, q
    return best


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        deflater = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
        return deflater.compress(data) + deflater.flush()
    return zlib.compress(data, COMPRESS_LEVEL)


def header_length(request: Request) -> int | None:
    value = request.headers.get(codec.HEADER_LENGTH)
    if value is None:
        return None
    value = value.strip()
    # Not str.isdigit alone ("²" is a digit that int() refuses), nor thousands of digits (int() refuses them too).
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HttpError(400, f"Inference-Header-Content-Length must be a non-negative integer below 10**18, "
                             f"got {value[:40]!r}")
    return int(value)


