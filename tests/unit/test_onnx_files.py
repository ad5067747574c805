"""protocol/onnx_files.py: the external data files a .onnx names; the backend's refusal of a model without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from inference_server.errors import ModelLoadError
from inference_server.execution.backend import OnnxBackend
from inference_server.protocol.onnx_files import external_data_files, missing_external_data
from tests.support import onnx_models


def save(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=location is not None, location=location)
    return path


def test_a_model_saved_with_external_data_names_its_file(tmp_path: Path) -> None:
    path = save(onnx_models.mlp([4, 64, 2]), tmp_path / "m" / "model.onnx", location="weights.bin")
    assert external_data_files(path) == ["weights.bin"]  # one file for every tensor, named once
    assert missing_external_data(path) == []
    (tmp_path / "m" / "weights.bin").unlink()
    assert missing_external_data(path) == ["weights.bin"]


def test_a_model_with_its_tensors_inside_names_none(tmp_path: Path) -> None:
    path = save(onnx_models.mlp([4, 64, 2]), tmp_path / "model.onnx")
    assert external_data_files(path) == [] and missing_external_data(path) == []


def test_tensors_of_a_subgraph_are_found(tmp_path: Path) -> None:
    """An If node's branches are graphs in its attributes; their initializers may be external too."""
    def branch(name: str, value: float) -> onnx.GraphProto:
        weights = helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [512], np.full(512, value, np.float32).tobytes(),
                                      raw=True)
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [512])
        return helper.make_graph([helper.make_node("Identity", [f"{name}_w"], [f"{name}_y"])], name, [], [out],
                                 initializer=[weights])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 2.0))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512])])
    path = save(helper.make_model(graph), tmp_path / "model.onnx", location="branches.data")
    assert external_data_files(path) == ["branches.data"]


def test_a_file_that_is_not_a_model_is_refused_and_reports_nothing_missing(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ValueError, match="model.onnx is not an ONNX model"):
        external_data_files(path)
    assert missing_external_data(path) == []  # ONNX Runtime's own error is the one to report
    assert missing_external_data(tmp_path / "absent.onnx") == []


def test_the_backend_loads_external_data_from_beside_the_model_and_names_a_missing_file(tmp_path: Path) -> None:
    path = save(onnx_models.mlp([4, 64, 2], seed=1), tmp_path / "m" / "model.onnx", location="weights.bin")
    x = np.ones((1, 4), np.float32)
    backend = OnnxBackend(path, model="m", device="cpu")
    want = onnx_models.mlp([4, 64, 2], seed=1).SerializeToString()
    expected = onnxruntime.InferenceSession(want, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(backend.instances[0].run_sync({"x": x})["y"], expected, rtol=1e-6)
    backend.close()
    (tmp_path / "m" / "weights.bin").unlink()
    with pytest.raises(ModelLoadError) as info:
        OnnxBackend(path, model="m", device="cpu")
    assert str(info.value) == (f"model 'm': model.onnx keeps tensors in external data files that are not beside it: "
                               f"weights.bin (expected in {tmp_path / 'm'}; copy the model's directory whole)")
