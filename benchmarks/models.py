"""The benchmark models, built with onnx.helper, and request pools for them.

- cheap: MLP FP32 64->256->10, overhead-bound (a row costs ~7 us in ONNX Runtime);
- large: MLP FP32 512->4096->4096->10, compute-bound;
- bytes: a vocabulary lookup, BYTES tokens [N, 16] -> INT64 ids (ai.onnx.ml LabelEncoder);
- image: FP32 [N, 3, 224, 224] -> per-channel means [N, 3] (600 kB a row: transport-bound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.support import onnx_models

VOCABULARY = [f"token{i}" for i in range(1000)]


def vocabulary_lookup(width: int = 16) -> onnx.ModelProto:
    node = helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", keys_strings=VOCABULARY,
                            values_int64s=list(range(len(VOCABULARY))), default_int64=-1)
    graph = helper.make_graph([node], "lookup", [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def channel_means() -> onnx.ModelProto:
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])
    graph = helper.make_graph(nodes, "means", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class BenchModel:
    name: str
    description: str
    build: Callable[[], onnx.ModelProto]
    sample: Callable[[np.random.Generator, int], dict[str, np.ndarray]]  # rows -> one request's inputs


def _floats(*shape: int) -> Callable[[np.random.Generator, int], dict[str, np.ndarray]]:
    return lambda rng, rows: {"x": rng.standard_normal((rows, *shape)).astype(np.float32)}


def _tokens(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    words = np.array(VOCABULARY + ["unknown"], dtype=object)
    return {"x": words[rng.integers(0, len(words), (rows, 16))]}


MODELS = {m.name: m for m in (
    BenchModel("cheap", "MLP FP32 64->256->10", lambda: onnx_models.mlp([64, 256, 10], seed=0), _floats(64)),
    BenchModel("large", "MLP FP32 512->4096->4096->10", lambda: onnx_models.mlp([512, 4096, 4096, 10], seed=0),
               _floats(512)),
    BenchModel("bytes", "vocabulary lookup BYTES [N,16] -> INT64 [N,16]", vocabulary_lookup, _tokens),
    BenchModel("image", "FP32 [N,3,224,224] -> channel means [N,3]", channel_means, _floats(3, 224, 224)),
)}


def write(repo: Path, name: str, config: str = "") -> Path:
    """repo/<name>/1/model.onnx (built once) and its config.toml (rewritten every time)."""
    path = repo / name / "1" / "model.onnx"
    if not path.exists():
        onnx_models.write_model(repo, name, MODELS[name].build())
    config_path = repo / name / "config.toml"
    config_path.unlink(missing_ok=True)
    if config:
        config_path.write_text(config)
    return path
