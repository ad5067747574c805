"""Protocol-neutral error codes; the protocol layer maps them to its own status codes."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"

    # What a code says about the server: every classifier (a canary's windows, a route's breaker and fallback,
    # Triton's failure statistics, HTTP's Retry-After) asks the code, so each decision is made here only.

    @property
    def server_fault(self) -> bool:
        """The server failed or could not take the request: counted against a canary's variant, and as a failure
        by a route's breaker. A client's own mistakes, its cancellations and its deadlines (a timeout it chose;
        a slow variant shows in the p99) say nothing about the server and are not counted at all."""
        return self in _SERVER_FAULTS

    @property
    def falls_back(self) -> bool:
        """A route's fallback answers instead: the variant failed, or is not available (not ready, its queue full
        (Triton's answer to a full queue is UNAVAILABLE), its breaker open). A client's own mistake is its answer."""
        return self in _FALLS_BACK

    @property
    def retryable(self) -> bool:
        """The server is busy (its in-flight cap): worth another try shortly, so HTTP adds Retry-After. A full
        queue is too, though its code is UNAVAILABLE: ask InferenceError.retryable."""
        return self in _RETRYABLE

    @property
    def failure_reason(self) -> str:
        """Triton's reason for a failed request (nv_inference_request_failure{reason}): one of FAILURE_REASONS."""
        return _FAILURE_REASONS.get(self, "OTHER")


_SERVER_FAULTS = frozenset({ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED})
_FALLS_BACK = frozenset({ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE})
_RETRYABLE = frozenset({ErrorCode.RESOURCE_EXHAUSTED})
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # every label, in the order metrics list them
_FAILURE_REASONS = {ErrorCode.UNAVAILABLE: "REJECTED", ErrorCode.DEADLINE_EXCEEDED: "REJECTED",
                    ErrorCode.RESOURCE_EXHAUSTED: "REJECTED", ErrorCode.CANCELLED: "CANCELED",
                    ErrorCode.INTERNAL: "BACKEND"}


class InferenceError(Exception):
    """An error a client is told about: a code plus a message that is safe to show."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth another try shortly (HTTP answers with Retry-After): a bound was reached, not a fault."""
        return self.code.retryable

    def reworded(self, message: str) -> InferenceError:
        """The same error with another message: its class, code and whatever else it carries (a full queue's
        retry hint) kept, as when an ensemble names the step that failed."""
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.message = message
        error.args = (message,)
        return error

    def __repr__(self) -> str:
        return f"InferenceError({self.code.name}, {self.message!r})"


class QueueFull(InferenceError):
    """A model's queue is at its bound: UNAVAILABLE at once, as Triton answers (the client may retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)

    @property
    def retryable(self) -> bool:
        return True


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> InferenceError:
    return InferenceError(ErrorCode.UNAVAILABLE, message)


def internal(message: str) -> InferenceError:
    return InferenceError(ErrorCode.INTERNAL, message)


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at '{key}': {message}")
        self.key = key


class ModelLoadError(RuntimeError):
    """A model could not be loaded (file missing, unsupported, required device absent)."""
