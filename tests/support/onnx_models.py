"""Small real ONNX models built with onnx.helper, and a helper to lay out a model repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

ELEMENT_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING, "BF16": TensorProto.BFLOAT16,
}
# ONNX Runtime's Python API cannot feed BF16 and strings to one session, so tests use two models.
ALL_BUT_BF16 = [t for t in ELEMENT_TYPES if t != "BF16"]


def _model(nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp(sizes: list[int], seed: int = 0, second_output: bool = False) -> onnx.ModelProto:
    """FP32 MLP: input `x` [N, sizes[0]] -> Relu layers -> output `y` [N, sizes[-1]].
    With `second_output`, also `h` = the first hidden layer (for requested-output subsets)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = i == len(sizes) - 2
        if last:
            nodes.append(helper.make_node("Identity", [f"a{i}"], ["y"]))
        else:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            current = f"r{i}"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])]
    if second_output:
        nodes.append(helper.make_node("Identity", ["r0"], ["h"]))
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", sizes[1]]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])
    return _model(nodes, [x], outputs, inits)


def identity(datatypes: list[str], width: int = 3) -> onnx.ModelProto:
    """One Identity per datatype: input `in_<T>` [N, width] -> output `out_<T>` [N, width]."""
    inputs, outputs, nodes = [], [], []
    for name in datatypes:
        element = ELEMENT_TYPES[name]
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, ["N", width]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, ["N", width]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return _model(nodes, inputs, outputs)


def row_sum(datatypes: list[str], width: int = 16) -> onnx.ModelProto:
    """One ReduceSum per datatype: `x_<T>` [N, width] -> `row_sum_<T>` [N, 1]. ONNX Runtime's CPU kernels sum FP32
    and FP64 rows in an order that depends on where the input lies, so its answer shows whether the input was
    aligned (protocol/tensors.py `aligned`)."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    inputs, outputs, nodes = [], [], []
    for name in datatypes:
        element = ELEMENT_TYPES[name]
        inputs.append(helper.make_tensor_value_info(f"x_{name}", element, ["N", width]))
        outputs.append(helper.make_tensor_value_info(f"row_sum_{name}", element, ["N", 1]))
        nodes.append(helper.make_node("ReduceSum", [f"x_{name}", "axes"], [f"row_sum_{name}"], keepdims=1))
    return _model(nodes, inputs, outputs, [axes])


def text_identity() -> onnx.ModelProto:
    """STRING `text` [N] -> STRING `echo` [N]."""
    return _model([helper.make_node("Identity", ["text"], ["echo"])],
                  [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
                  [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"])])


def fixed_shape() -> onnx.ModelProto:
    """No batch dimension: FP32 `a` [2, 3] -> `doubled` [2, 3] (a model that cannot batch)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return _model([helper.make_node("Mul", ["a", "two"], ["doubled"])],
                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [2, 3])], [two])


def drops_a_row() -> onnx.ModelProto:
    """A broken batch model: FP32 `x` [N, 4] -> `y` = x without its first row, so dim 0 is N - 1."""
    starts = numpy_helper.from_array(np.array([1], dtype=np.int64), "starts")
    ends = numpy_helper.from_array(np.array([2**62], dtype=np.int64), "ends")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    return _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 4])], [starts, ends, axes])


def slow(side: int = 512) -> onnx.ModelProto:
    """Deliberately expensive: FP32 `x` [N, 1] -> a [N, side, side] matrix squared -> `y` [N, 1].
    Each row costs about 2*side^3 flops while the file and the tensors stay tiny."""
    shape = numpy_helper.from_array(np.array([1, side, side], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Reshape", ["x", "r3"], ["x3"]),  # [N, 1, 1]
        helper.make_node("Expand", ["x3", "shape"], ["big"]),  # [N, side, side]
        helper.make_node("MatMul", ["big", "big"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["y3"], keepdims=1),  # [N, 1, 1]
        helper.make_node("Reshape", ["y3", "r2"], ["y"]),
    ]
    r3 = numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "r3")
    r2 = numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "r2")
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [shape, axes, r3, r2])


def batch_sum() -> onnx.ModelProto:
    """INT64 `x` [N, 1] -> `y` [N, 1], every row the sum of the whole batch's `x`: a request that sends a bit of its
    own learns from its answer which requests shared its batch."""
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),  # [1, 1]
             helper.make_node("Sub", ["x", "x"], ["zeros"]),
             helper.make_node("Add", ["zeros", "total"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])],
                  [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 1])], [axes])


def affine(width: int = 4, scale: float = 2.0, shift: float = 1.0, source: str = "x",
           target: str = "y", batched: bool = True) -> onnx.ModelProto:
    """FP32 `source` [N, width] -> `target` = source * scale + shift (an ensemble's preprocess or postprocess);
    `batched` False: [width] -> [width], a model without a batch dimension."""
    shape: list[str | int] = ["N", width] if batched else [width]
    consts = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
              numpy_helper.from_array(np.array(shift, dtype=np.float32), "shift")]
    return _model([helper.make_node("Mul", [source, "scale"], ["scaled"]),
                   helper.make_node("Add", ["scaled", "shift"], [target])],
                  [helper.make_tensor_value_info(source, TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info(target, TensorProto.FLOAT, shape)], consts)


def add(width: int = 4) -> onnx.ModelProto:
    """FP32 `a` [N, width] + `b` [N, width] -> `sum` (an ensemble's fan-in)."""
    return _model([helper.make_node("Add", ["a", "b"], ["sum"])],
                  [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name in ("a", "b")],
                  [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", width])])


def write_ensemble(repository: Path, name: str, config: str, version: int = 1) -> Path:
    """An ensemble as Triton users lay it out: repository/<name>/config.pbtxt and an empty version directory."""
    (repository / name / str(version)).mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(config)
    return repository / name


def write_model(repository: Path, name: str, model: onnx.ModelProto, config: str = "", version: int = 1) -> Path:
    """Lay a model out as repository/<name>/<version>/model.onnx (+ config.toml) and return its path."""
    path = repository / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    if config:
        (repository / name / "config.toml").write_text(config)
    return path
