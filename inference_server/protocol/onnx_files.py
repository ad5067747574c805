"""The external data files a .onnx file names.

A model saved with external data (mlflow.onnx.log_model does so by default, for every tensor of 1 KiB or more)
keeps its tensors in files beside the .onnx, named by each tensor's `location` entry relative to the model's
directory; ONNX Runtime reads them from there when a session is made from the file's path. Read with the part of
ONNX's schema that says where tensors keep their data (protos/onnx_files.proto).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from inference_server.protocol._generated import onnx_files_pb2 as pb

PROTOBUF_LIMIT = 2**31 - 1  # bytes: no protobuf message, and so no .onnx file, is larger


def _graph_tensors(graph: pb.GraphProto) -> Iterator[pb.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[pb.NodeProto]) -> Iterator[pb.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            yield attribute.t
            yield from attribute.tensors
            for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for graph in (attribute.g, *attribute.graphs):
                yield from _graph_tensors(graph)


def external_data_files(path: Path) -> list[str]:
    """The files (relative to the model's directory) that the model's tensors keep their data in, in order of first
    mention. ValueError for a file that is not an ONNX model."""
    if path.stat().st_size > PROTOBUF_LIMIT:
        raise ValueError(f"{path.name} is larger than an ONNX model can be ({PROTOBUF_LIMIT} bytes)")
    model = pb.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except DecodeError as e:
        raise ValueError(f"{path.name} is not an ONNX model: {e}") from None
    functions = (_node_tensors(function.node) for function in model.functions)
    files: dict[str, None] = {}  # ordered, without repeats
    for tensor in itertools.chain(_graph_tensors(model.graph), *functions):
        if tensor.data_location == pb.TensorProto.EXTERNAL:
            files.update({entry.value: None for entry in tensor.external_data if entry.key == "location"})
    return list(files)


def missing_external_data(path: Path) -> list[str]:
    """The external data files the model names that are not where ONNX Runtime looks for them (beside it);
    empty when none is missing or the file cannot be read as a model (ONNX Runtime's own error says more)."""
    try:
        named = external_data_files(path)
    except (OSError, ValueError):
        return []
    return [name for name in named if not (path.parent / name).is_file()]
