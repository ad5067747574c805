"""Every protocol-neutral error code has a gRPC status, and the names agree; what each code says about the
server (its fault, a fallback, a retry, Triton's failure reason)."""

from __future__ import annotations

import grpc

from inference_server.errors import FAILURE_REASONS, ErrorCode, InferenceError, QueueFull, internal, unavailable
from inference_server.grpc.servicer import TO_GRPC
from inference_server.routing.canary import counts_against


def test_every_error_code_maps_to_the_grpc_status_of_the_same_name():
    assert set(TO_GRPC) == set(ErrorCode)
    for code, status in TO_GRPC.items():
        assert isinstance(status, grpc.StatusCode) and status.name == code.name


# What each code says about the server, as every classifier asks it: the exact sets, so a change shows here.

def codes(prop: str) -> set[str]:
    return {code.name for code in ErrorCode if getattr(code, prop)}


def test_server_faults_count_against_a_canary_and_open_a_breaker():
    assert codes("server_fault") == {"INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}


def test_a_route_falls_back_on_a_failed_or_unavailable_variant():
    assert codes("falls_back") == {"INTERNAL", "UNAVAILABLE"}
    assert codes("falls_back") <= codes("server_fault")


def test_only_the_in_flight_cap_and_a_full_queue_ask_for_a_retry():
    assert codes("retryable") == {"RESOURCE_EXHAUSTED"}
    assert QueueFull("full").retryable and QueueFull("full").code is ErrorCode.UNAVAILABLE
    assert not unavailable("not ready").retryable and not internal("x").retryable
    assert InferenceError(ErrorCode.RESOURCE_EXHAUSTED, "busy").retryable


def test_a_reworded_error_keeps_its_class_code_and_retry_hint():
    full = QueueFull("Exceeds maximum queue size")
    said = full.reworded("in ensemble 'e', step 0 (model 'm') failed: Exceeds maximum queue size")
    assert type(said) is QueueFull and said.retryable and said.code is ErrorCode.UNAVAILABLE
    assert said.message == str(said) == "in ensemble 'e', step 0 (model 'm') failed: Exceeds maximum queue size"
    assert full.message == "Exceeds maximum queue size"  # the original is unchanged
    plain = internal("broken").reworded("step failed: broken")
    assert type(plain) is InferenceError and plain.code is ErrorCode.INTERNAL and not plain.retryable


def test_triton_failure_reasons():
    assert {code.name: code.failure_reason for code in ErrorCode} == {
        "UNAVAILABLE": "REJECTED", "DEADLINE_EXCEEDED": "REJECTED", "RESOURCE_EXHAUSTED": "REJECTED",
        "CANCELLED": "CANCELED", "INTERNAL": "BACKEND",
        "INVALID_ARGUMENT": "OTHER", "NOT_FOUND": "OTHER", "UNIMPLEMENTED": "OTHER", "ALREADY_EXISTS": "OTHER",
        "FAILED_PRECONDITION": "OTHER"}
    # the metrics list every label, zero or not, so a reason outside the list would never be exported
    assert FAILURE_REASONS == ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    assert {code.failure_reason for code in ErrorCode} <= set(FAILURE_REASONS)


def test_a_canary_counts_server_faults_and_names_it_does_not_know():
    assert {code.name for code in ErrorCode if counts_against(code.name)} == codes("server_fault")
    assert counts_against("UNKNOWN")  # gRPC's answer to an unexpected exception, were one recorded
