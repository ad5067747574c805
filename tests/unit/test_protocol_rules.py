"""protocol/rules.py: the request rules both front ends apply, with their exact codes and messages, and the
configuration facts both render. The codecs' own tests (test_codec.py, test_http_codec.py) check the same rules
through each wire."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from inference_server.config.model import VersionPolicy
from inference_server.errors import ErrorCode, InferenceError
from inference_server.grpc import codec as grpc_codec
from inference_server.http import codec as http_codec
from inference_server.protocol import rules
from inference_server.protocol._generated import grpc_service_pb2 as pb


def refusal(call, *args) -> tuple[ErrorCode, str]:
    with pytest.raises(InferenceError) as info:
        call(*args)
    return info.value.code, info.value.message


# -- inference requests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", rules.SHARED_MEMORY_PARAMS)
def test_shared_memory_is_refused_on_inputs_and_outputs(key):
    assert refusal(rules.check_input_parameters, "x", {key: 1}) == (
        ErrorCode.UNIMPLEMENTED, "input 'x': shared memory is not supported by this server")
    assert refusal(rules.check_output_parameters, "y", {key: 1}) == (
        ErrorCode.UNIMPLEMENTED, "output 'y': shared memory is not supported by this server")


def test_classification_is_refused_before_shared_memory():
    assert refusal(rules.check_output_parameters, "y", {"classification": 3, "shared_memory_region": "r"}) == (
        ErrorCode.UNIMPLEMENTED, "output 'y': the classification extension is not supported")
    rules.check_input_parameters("x", {"classification": 3, "binary_data_size": 4})  # inputs: not a rule
    rules.check_output_parameters("y", {"binary_data": True})


@pytest.mark.parametrize("sequence_id", [5, "s", True, -1])
def test_a_correlation_id_is_refused(sequence_id):
    assert refusal(rules.check_sequence_id, "m", {"sequence_id": sequence_id}) == (
        ErrorCode.INVALID_ARGUMENT, "inference request to model 'm' must not specify a non-zero or non-empty "
                                    "correlation ID (the model has no sequence batcher)")


@pytest.mark.parametrize("sequence_id", [0, "", None, False])
def test_no_correlation_id_passes(sequence_id):
    rules.check_sequence_id("m", {"sequence_id": sequence_id})
    rules.check_sequence_id("m", {})


@pytest.mark.parametrize(("params", "expected"), [({}, None), ({"timeout": None}, None), ({"timeout": 0}, None),
                                                  ({"timeout": 2500}, 2500)])
def test_timeout_in_microseconds(params, expected):
    assert rules.timeout_us(params) == expected


@pytest.mark.parametrize("timeout", [-1, True, 1.5, "10"])
def test_a_timeout_that_is_not_a_non_negative_integer_is_refused(timeout):
    assert refusal(rules.timeout_us, {"timeout": timeout}) == (
        ErrorCode.INVALID_ARGUMENT,
        f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")


# -- repository parameters, through each wire ----------------------------------------------------------------------

def grpc_params(values: dict[str, tuple[str, object]]):
    """InferParameters by key, each given as (its oneof choice, its value)."""
    request = pb.RepositoryModelLoadRequest()
    for key, (choice, value) in values.items():
        setattr(request.parameters[key], choice, value)
    return request.parameters.items()


def test_load_parameters_on_both_wires():
    json_wire = {"config": '{"max_batch_size": 2}', "file:2/model.onnx": base64.b64encode(b"\0\1").decode(),
                 "version": 2, "unload_dependents": True}
    assert rules.load_parameters(json_wire.items(), http_codec.PARAMETERS) == (
        '{"max_batch_size": 2}', {"2/model.onnx": b"\0\1"}, "2")
    grpc_wire = grpc_params({"config": ("string_param", '{"max_batch_size": 2}'),
                             "file:2/model": ("bytes_param", b"\0\1"), "version": ("string_param", "02"),
                             "unload_dependents": ("bool_param", True)})
    assert rules.load_parameters(grpc_wire, grpc_codec.PARAMETERS) == (
        '{"max_batch_size": 2}', {"2/model": b"\0\1"}, "2")
    assert rules.load_parameters([], http_codec.PARAMETERS) == (None, {}, None)


@pytest.mark.parametrize(("wire", "params", "message"), [
    (http_codec.PARAMETERS, {"config": 1}, "parameter 'config' must be a string holding the model configuration "
                                           "as JSON"),
    (http_codec.PARAMETERS, {"nope": 1}, "unknown parameter 'nope' (known: config, file:<version>/<name>, version)"),
    (http_codec.PARAMETERS, {"version": 0}, "parameter 'version' must be a positive version number (integer or "
                                            "string), got 0"),
    (http_codec.PARAMETERS, {"file:1/m": "!"}, "parameter 'file:1/m' must be the file's content in base64: "),
    (grpc_codec.PARAMETERS, grpc_params({"config": ("bytes_param", b"{}")}),
     "parameter 'config' must be a string holding the model configuration as JSON"),
    (grpc_codec.PARAMETERS, grpc_params({"version": ("bool_param", True)}),
     "parameter 'version' must be a positive version number (int64 or string), got None"),
    (grpc_codec.PARAMETERS, grpc_params({"file:1/m": ("string_param", "x")}),
     "parameter 'file:1/m' must carry the file's content as bytes"),
])
def test_load_refusals(wire, params, message):
    items = params.items() if isinstance(params, dict) else params
    code, text = refusal(rules.load_parameters, items, wire)
    assert code is ErrorCode.INVALID_ARGUMENT and text.startswith(message), text


def test_unload_parameters_on_both_wires():
    assert rules.unload_parameters({"version": 4, "unload_dependents": False}.items(),
                                   http_codec.PARAMETERS) == ("4", False)
    assert rules.unload_parameters({"unload_dependents": True}.items(), http_codec.PARAMETERS) == (None, True)
    assert rules.unload_parameters(grpc_params({"version": ("int64_param", 4)}), grpc_codec.PARAMETERS) == ("4", False)
    assert rules.unload_parameters(grpc_params({"unload_dependents": ("bool_param", True)}),
                                   grpc_codec.PARAMETERS) == (None, True)
    assert rules.unload_parameters([], grpc_codec.PARAMETERS) == (None, False)
    assert refusal(rules.unload_parameters, {"unload_dependents": "yes"}.items(), http_codec.PARAMETERS) == (
        ErrorCode.INVALID_ARGUMENT, "parameter 'unload_dependents' must be a boolean")
    assert refusal(rules.unload_parameters, grpc_params({"unload_dependents": ("string_param", "yes")}),
                   grpc_codec.PARAMETERS) == (ErrorCode.INVALID_ARGUMENT,
                                              "parameter 'unload_dependents' must be a bool")
    assert refusal(rules.unload_parameters, {"config": "{}"}.items(), http_codec.PARAMETERS) == (
        ErrorCode.INVALID_ARGUMENT, "unknown parameter 'config' (known: unload_dependents, version)")


# -- configuration facts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "data"), [
    (VersionPolicy(), {"latest": {"num_versions": 1}}),
    (VersionPolicy(kind="latest", latest=3), {"latest": {"num_versions": 3}}),
    (VersionPolicy(kind="all"), {"all": {}}),
    (VersionPolicy(kind="specific", specific=("2", "10")), {"specific": {"versions": [2, 10]}}),
])
def test_version_policy_as_plain_data(policy, data):
    assert rules.version_policy(policy) == data


def test_the_instance_group():
    assert rules.instance_group("m", 2, True) == {"name": "m_0", "kind": "KIND_GPU", "count": 2}
    assert rules.instance_group("m", 1, False) == {"name": "m_0", "kind": "KIND_CPU", "count": 1}


def test_rules_import_no_wire_library():
    tree = ast.parse(Path(rules.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    allowed = {"__future__", "collections.abc", "dataclasses", "typing", "inference_server.errors",
               "inference_server.protocol.tensors", "inference_server.config.model"}
    assert imported <= allowed, imported - allowed
