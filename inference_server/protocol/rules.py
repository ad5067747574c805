"""The KServe v2 / Triton request rules both front ends apply, with their codes and messages: what a request may
not ask for (shared memory, classification, a correlation ID), what its timeout and priority must be, which
parameters the repository extension's load and unload take, and the facts a model's configuration is rendered from.

Each codec reads its own wire (a protobuf InferParameter, a JSON value) and renders its own answer; the rules
here are written once, so gRPC and HTTP refuse the same requests with the same words. No wire library here.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from inference_server.config.model import version_number
from inference_server.errors import ErrorCode, InferenceError, invalid

# -- inference requests --------------------------------------------------------------------------------------------

SHARED_MEMORY_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
NO_CORRELATION_ID = (None, 0, "")  # sequence_id values that name no sequence


def unsupported(message: str) -> InferenceError:
    """An extension this server does not implement: UNIMPLEMENTED (HTTP 501)."""
    return InferenceError(ErrorCode.UNIMPLEMENTED, message)


def check_input_parameters(name: str, parameters: Container[str]) -> None:
    """An input's parameters (their names): shared memory is refused."""
    if any(k in parameters for k in SHARED_MEMORY_PARAMS):
        raise unsupported(f"input '{name}': shared memory is not supported by this server")


def check_output_parameters(name: str, parameters: Container[str]) -> None:
    """A requested output's parameters (their names): classification and shared memory are refused."""
    if "classification" in parameters:
        raise unsupported(f"output '{name}': the classification extension is not supported")
    if any(k in parameters for k in SHARED_MEMORY_PARAMS):
        raise unsupported(f"output '{name}': shared memory is not supported by this server")


def check_sequence_id(model: str, parameters: Mapping[str, Any]) -> None:
    """No model here has a sequence batcher, so a request naming a sequence is refused (as Triton refuses it)."""
    if parameters.get("sequence_id") not in NO_CORRELATION_ID:
        raise invalid(f"inference request to model '{model}' must not specify a non-zero or non-empty correlation "
                      "ID (the model has no sequence batcher)")


def timeout_us(parameters: Mapping[str, Any]) -> int | None:
    """The request's `timeout` parameter: a non-negative integer of microseconds; None when absent or 0."""
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise invalid(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
    return timeout or None


MAX_UINT64 = 2**64 - 1


def priority(parameters: Mapping[str, Any]) -> int:
    """The request's `priority` parameter: a non-negative integer (tritonclient sends uint64, perf_analyzer int64);
    0 when absent. 1 is the highest level; 0 and levels above the model's priority_levels mean its default level,
    as in Triton (the batcher maps it: execution/priority.py). A negative or non-integer value is refused, as
    Triton refuses it."""
    value = parameters.get("priority")
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT64:
        raise invalid(f"parameter 'priority' must be a non-negative integer (1 is the highest priority level, 0 the "
                      f"model's default), got {value!r}")
    return value


# -- the repository extension's parameters -------------------------------------------------------------------------

LOAD_PARAMETERS = "config, file:<version>/<name>, version"
UNLOAD_PARAMETERS = "unload_dependents, version"
FILE_PREFIX = "file:"  # file:<version>/<name>: a file of the model's directory, sent with its config


@dataclass(frozen=True, slots=True)
class ParameterWire:
    """How one front end reads a repository parameter's value, and how its refusals name the value's types."""
    text: Callable[[Any], str | None]  # a string value's text; None when the value is not a string
    flag: Callable[[Any], bool | None]  # a boolean value; None when the value is not a boolean
    file: Callable[[str, Any], bytes]  # (key, value) -> the file's content; refuses in the wire's own words
    version: Callable[[Any], Any]  # the value as given (an integer, a string), for version_number
    version_types: str  # "int64 or string" (gRPC), "integer or string" (JSON)
    bool_type: str  # "bool" (gRPC), "boolean" (JSON)


def load_parameters(parameters: Iterable[tuple[str, Any]],
                    wire: ParameterWire) -> tuple[str | None, dict[str, bytes], str | None]:
    """A load request's parameters -> (config as its JSON text, files by "<version>/<name>", version).
    `unload_dependents` is accepted and ignored here (Triton's clients may send it with a load; it means something
    to an unload only)."""
    config, files, version = None, {}, None
    for key, value in parameters:
        if key == "config":
            config = wire.text(value)
            if config is None:
                raise invalid("parameter 'config' must be a string holding the model configuration as JSON")
        elif key.startswith(FILE_PREFIX):
            files[key.removeprefix(FILE_PREFIX)] = wire.file(key, value)
        elif key == "version":
            version = _version(value, wire)
        elif key != "unload_dependents":
            raise invalid(f"unknown parameter '{key}' (known: {LOAD_PARAMETERS})")
    return config, files, version


def unload_parameters(parameters: Iterable[tuple[str, Any]], wire: ParameterWire) -> tuple[str | None, bool]:
    """An unload request's parameters -> (the one version to unload (None: every version), unload_dependents).
    With `unload_dependents` true, unloading an ensemble also unloads the composing models its load brought in
    that no other loaded ensemble uses (lifecycle/manager.py `unload`), as Triton does."""
    version, dependents = None, False
    for key, value in parameters:
        if key == "version":
            version = _version(value, wire)
        elif key == "unload_dependents":
            flag = wire.flag(value)
            if flag is None:
                raise invalid(f"parameter 'unload_dependents' must be a {wire.bool_type}")
            dependents = flag
        else:
            raise invalid(f"unknown parameter '{key}' (known: {UNLOAD_PARAMETERS})")
    return version, dependents


def _version(value: Any, wire: ParameterWire) -> str:
    raw = wire.version(value)
    version = version_number(raw)
    if version is None:
        raise invalid(f"parameter 'version' must be a positive version number ({wire.version_types}), got {raw!r}")
    return version


# -- model configuration -------------------------------------------------------------------------------------------

class Policy(Protocol):
    """A version policy's fields, as config.model.VersionPolicy and service.views.PolicyView both carry them."""

    @property
    def kind(self) -> str: ...  # latest | all | specific

    @property
    def latest(self) -> int: ...

    @property
    def specific(self) -> tuple[str, ...]: ...


def version_policy(policy: Policy) -> dict[str, Any]:
    """Triton's ModelVersionPolicy as plain data (its JSON form, proto field names): one of all, specific, latest."""
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": [int(v) for v in policy.specific]}}
    return {"latest": {"num_versions": policy.latest}}


class QueuePolicyFields(Protocol):
    """A queue policy's fields, as service.views.QueuePolicyView carries them."""

    @property
    def timeout_action(self) -> str: ...

    @property
    def default_timeout_us(self) -> int: ...

    @property
    def allow_timeout_override(self) -> bool: ...

    @property
    def max_queue_size(self) -> int: ...


class Batching(Protocol):
    """The dynamic batcher's fields, as service.views.BatchingView carries them."""

    @property
    def preferred_batch_size(self) -> tuple[int, ...]: ...

    @property
    def max_queue_delay_us(self) -> int: ...

    @property
    def max_queue_size(self) -> int: ...

    @property
    def default_queue_policy(self) -> QueuePolicyFields | None: ...

    @property
    def priority_levels(self) -> int: ...

    @property
    def default_priority_level(self) -> int: ...

    @property
    def priority_queue_policy(self) -> tuple[tuple[int, QueuePolicyFields], ...]: ...


def dynamic_batching(b: Batching) -> dict[str, Any]:
    """Triton's ModelDynamicBatching as plain data (its JSON form, proto field names; map keys as strings): the
    priority and queue timeout fields only when the model has them."""
    def queue_policy(p: QueuePolicyFields) -> dict[str, Any]:
        return {"timeout_action": p.timeout_action, "default_timeout_microseconds": p.default_timeout_us,
                "allow_timeout_override": p.allow_timeout_override, "max_queue_size": p.max_queue_size}

    default = ({"max_queue_size": b.max_queue_size} if b.default_queue_policy is None
               else queue_policy(b.default_queue_policy))
    doc: dict[str, Any] = {"preferred_batch_size": list(b.preferred_batch_size),
                           "max_queue_delay_microseconds": b.max_queue_delay_us, "default_queue_policy": default}
    if b.priority_levels:
        doc.update(priority_levels=b.priority_levels, default_priority_level=b.default_priority_level,
                   priority_queue_policy={str(level): queue_policy(p) for level, p in b.priority_queue_policy})
    return doc


def instance_group(model: str, count: int, gpu: bool) -> dict[str, Any]:
    """The one ModelInstanceGroup a model has here, as plain data: named "<model>_0", as Triton names a group
    the config leaves unnamed."""
    return {"name": f"{model}_0", "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": count}
