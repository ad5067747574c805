"""The one datatype table (protocol/tensors.py) and the tables and predicates derived from it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from inference_server.errors import ModelLoadError
from inference_server.execution.backend import tensor_spec
from inference_server.execution.iobinding import can_bind
from inference_server.lifecycle import triton_model
from inference_server.protocol._generated import model_config_pb2
from inference_server.protocol.tensors import (
    BF16,
    BYTES,
    DATATYPES,
    ONNX_DATATYPES,
    RAW_ONLY,
    TRITON_DATATYPES,
    is_bf16,
    is_bytes,
)

V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BYTES", "BF16"]  # the KServe v2 protocol's tensor datatypes


def test_every_v2_datatype_has_one_row_keyed_by_its_name():
    assert list(DATATYPES) == V2_DATATYPES
    assert all(dt.name == name for name, dt in DATATYPES.items())


def test_element_sizes_follow_the_numpy_dtypes_and_bytes_is_variable():
    for dt in DATATYPES.values():
        if dt.name == BYTES:
            assert (dt.dtype, dt.itemsize) == (np.dtype(object), 0)
        else:
            assert dt.itemsize == dt.dtype.itemsize > 0
            assert dt.dtype.byteorder in ("<", "|", "=")  # the wire is little-endian
    assert DATATYPES[BF16].dtype == np.dtype("<u2")  # its raw bits


def test_triton_names_map_back_to_the_v2_names():
    assert len(TRITON_DATATYPES) == len(DATATYPES)
    assert all(DATATYPES[name].config_name == triton for triton, name in TRITON_DATATYPES.items())
    assert TRITON_DATATYPES["TYPE_STRING"] == BYTES and TRITON_DATATYPES["TYPE_FP32"] == "FP32"
    enum = set(model_config_pb2.DataType.keys()) - {"TYPE_INVALID"}
    assert set(TRITON_DATATYPES) == enum  # every Triton datatype, no name Triton does not have
    assert triton_model.TRITON_DATATYPES is TRITON_DATATYPES  # the config.pbtxt reader uses this table


def test_onnx_type_strings_map_back_to_the_v2_names():
    assert len(ONNX_DATATYPES) == len(DATATYPES)
    assert all(DATATYPES[name].onnx_type == onnx for onnx, name in ONNX_DATATYPES.items())
    assert ONNX_DATATYPES["tensor(float)"] == "FP32" and ONNX_DATATYPES["tensor(string)"] == BYTES
    node = SimpleNamespace(name="x", type="tensor(bfloat16)", shape=["batch", 3])
    assert (tensor_spec(node, "m").datatype, tensor_spec(node, "m").shape) == (BF16, (-1, 3))
    with pytest.raises(ModelLoadError, match="unsupported type tensor\\(complex64\\)"):
        tensor_spec(SimpleNamespace(name="x", type="tensor(complex64)", shape=[1]), "m")


def test_raw_only_datatypes_are_those_without_a_typed_contents_field():
    assert RAW_ONLY == {"FP16", BF16}
    assert {name for name, dt in DATATYPES.items() if dt.raw_only} == RAW_ONLY


@pytest.mark.parametrize("name", V2_DATATYPES)
def test_each_predicate_is_true_for_its_own_datatype_only(name):
    assert is_bytes(name) == (name == "BYTES")
    assert is_bf16(name) == (name == "BF16")


def test_predicates_are_false_for_unknown_names():
    assert not is_bytes("bytes") and not is_bytes("TYPE_STRING") and not is_bf16("bf16") and not is_bf16("")


def test_io_binding_takes_numeric_tensors_only():
    def specs(*datatypes):
        return [SimpleNamespace(datatype=d) for d in datatypes]
    assert can_bind(specs("FP32", "INT64", "FP16", "BOOL"))
    assert not can_bind(specs("FP32", BYTES))
    assert not can_bind(specs(BF16))
