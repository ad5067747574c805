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


class InferenceError(Exception):
    """An error a client is told about: a code plus a message that is safe to show."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"InferenceError({self.code.name}, {self.message!r})"


class QueueFull(InferenceError):
    """A model's queue is at its bound: UNAVAILABLE at once, as Triton answers (the client may retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)


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
