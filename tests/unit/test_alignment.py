"""Every fixed-size input reaches ONNX Runtime on a 64-byte boundary (protocol/tensors.py `aligned`), wherever its
bytes lay in the request: raw and typed gRPC contents, HTTP binary and JSON data, the batcher's concatenation and
the backend's last check. ONNX Runtime's CPU kernels give another answer for the same values at another address
(a ReduceSum of FP32 at an address that is not a multiple of 16 differs in the last bit here), so each path is
checked at every offset 0..63 and the backend's answer compared bit for bit with ONNX Runtime's on an aligned
array."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime
import orjson
import pytest

from inference_server.cache.memory import cache_key
from inference_server.execution.backend import OnnxBackend
from inference_server.execution.batching import DynamicBatcher
from inference_server.grpc import codec as grpc_codec
from inference_server.http import codec as http_codec
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol.tensors import (
    ALIGNMENT,
    aligned,
    aligned_empty,
    concatenate_aligned,
    decode_raw,
    decode_values,
    encode_raw,
)
from tests.support import onnx_models
from tests.support.datatype_samples import NUMERIC

# Every fixed-size datatype: the shared samples and BF16 (its uint16 bits).
FIXED = {**NUMERIC, "BF16": np.array([[0x3FC0, 0xC010, 0x7F7F]], np.uint16)}
OFFSETS = range(ALIGNMENT)
SUMMED = ["FP32", "FP64", "FP16", "INT64"]  # the row_sum model's inputs


def is_aligned(array: np.ndarray) -> bool:
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


def placed(raw: bytes, offset: int) -> memoryview:
    """`raw` in a buffer of its own whose first byte lies `offset` bytes past a 64-byte boundary."""
    buffer = aligned_empty((len(raw) + ALIGNMENT,), np.dtype(np.uint8))
    buffer[offset:offset + len(raw)] = np.frombuffer(raw, np.uint8)
    view = memoryview(buffer[offset:offset + len(raw)])
    assert np.frombuffer(view, np.uint8).ctypes.data % ALIGNMENT == offset
    return view


def test_aligned_empty_starts_on_a_boundary_for_every_size():
    for nbytes in range(0, 130):
        array = aligned_empty((nbytes,), np.dtype(np.uint8))
        assert array.shape == (nbytes,) and (not nbytes or is_aligned(array))
    assert is_aligned(aligned_empty((3, 5), np.dtype("<f8")))


def test_aligned_keeps_an_aligned_array_and_copies_any_other():
    values = np.arange(48, dtype=np.float32).reshape(3, 16)
    for offset in OFFSETS:
        view = np.frombuffer(placed(values.tobytes(), offset), np.float32).reshape(3, 16)
        out = aligned(view)
        assert is_aligned(out), offset
        assert out.tobytes() == values.tobytes()
        assert (out is view) == (offset == 0)  # copied only when misaligned
    strided = aligned(aligned_empty((4, 6), np.dtype(np.float32))[:, ::2])
    assert is_aligned(strided)  # a view that is not C-contiguous is copied too
    text = np.array([b"a", b"b"], dtype=object)
    assert aligned(text) is text  # objects: nothing to align (ONNX Runtime copies strings)


@pytest.mark.parametrize("name", list(FIXED))
def test_raw_contents_at_every_offset_are_handed_on_aligned(name):
    array = FIXED[name]
    raw = encode_raw(array, name)
    for offset in OFFSETS:
        view = placed(raw, offset)
        decoded = decode_raw("x", name, array.shape, view)
        assert is_aligned(decoded), (name, offset)
        assert decoded.tobytes() == raw and decoded.dtype == array.dtype
        assert np.shares_memory(decoded, np.frombuffer(view, np.uint8)) == (offset == 0)


@pytest.mark.parametrize("name", [n for n in NUMERIC if n != "FP16"])
def test_typed_contents_are_handed_on_aligned(name):
    array = NUMERIC[name]
    for _ in range(8):  # numpy's own allocations are 16-byte aligned at best
        assert is_aligned(decode_values("x", name, array.shape, array.ravel().tolist()))


@pytest.mark.parametrize("name", list(FIXED))
def test_grpc_raw_contents_after_fields_of_every_length_are_handed_on_aligned(name):
    array = FIXED[name]
    for length in OFFSETS:
        message = pb.ModelInferRequest(model_name="m", id="i" * length,
                                       inputs=[pb.ModelInferRequest.InferInputTensor(
                                           name="x", datatype=name, shape=array.shape)],
                                       raw_input_contents=[encode_raw(array, name)])
        (tensor,) = grpc_codec.decode_request(pb.ModelInferRequest.FromString(message.SerializeToString())).inputs
        assert is_aligned(tensor.data), (name, length)
        assert tensor.data.tobytes() == array.tobytes()


def http_body(arrays: dict[str, tuple[str, np.ndarray]], padding: int) -> tuple[bytes, int]:
    """A binary HTTP body whose JSON header ends `padding` spaces later, moving the tensors that far."""
    blobs = {name: encode_raw(a, dtype) for name, (dtype, a) in arrays.items()}
    header = orjson.dumps({"inputs": [{"name": name, "datatype": dtype, "shape": list(a.shape),
                                       "parameters": {"binary_data_size": len(blobs[name])}}
                                      for name, (dtype, a) in arrays.items()]}) + b" " * padding
    return header + b"".join(blobs.values()), len(header)


def test_http_binary_tensors_behind_headers_of_every_length_are_handed_on_aligned():
    arrays = {name: (name, a) for name, a in FIXED.items()}
    for padding in OFFSETS:
        body, header_length = http_body(arrays, padding)
        request, _ = http_codec.decode_infer_request(placed(body, 0), header_length, "m", "1")
        for tensor in request.inputs:
            assert is_aligned(tensor.data), (tensor.name, padding)
            assert tensor.data.tobytes() == FIXED[tensor.name].tobytes()


def test_the_cache_key_is_the_same_whichever_protocol_and_offset_brought_the_tensor():
    values = {f"x_{name}": FIXED[name] for name in SUMMED}

    def key(request) -> bytes:
        return cache_key("m", "1", {t.name: (t.datatype, t.data) for t in request.inputs}, ["row_sum_FP32"])

    message = pb.ModelInferRequest(model_name="m", id="grpc", raw_input_contents=[
        encode_raw(a, n[2:]) for n, a in values.items()], inputs=[pb.ModelInferRequest.InferInputTensor(
            name=n, datatype=n[2:], shape=a.shape) for n, a in values.items()])
    keys = {key(grpc_codec.decode_request(message))}
    for padding in OFFSETS:
        body, header_length = http_body({n: (n[2:], a) for n, a in values.items()}, padding)
        keys.add(key(http_codec.decode_infer_request(placed(body, 0), header_length, "m", "1")[0]))
    json_body = orjson.dumps({"inputs": [{"name": n, "datatype": n[2:], "shape": list(a.shape),
                                          "data": a.astype(np.float64 if n == "x_FP16" else a.dtype).ravel().tolist()}
                                         for n, a in values.items()]})
    keys.add(key(http_codec.decode_infer_request(json_body, None, "m", "1")[0]))
    assert len(keys) == 1


@pytest.mark.parametrize("name", ["FP32", "FP64", "INT64", "INT32", "UINT16", "FP16"])
def test_http_json_tensors_are_handed_on_aligned(name):
    array = FIXED[name]
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": name, "shape": list(array.shape),
                                     "data": array.astype(np.float64 if name == "FP16" else array.dtype).tolist()}]})
    for _ in range(8):
        (tensor,) = http_codec.decode_infer_request(body, None, "m", "1")[0].inputs
        assert is_aligned(tensor.data) and tensor.data.tobytes() == array.tobytes()


def test_concatenation_is_aligned_and_keeps_the_order():
    parts = [np.frombuffer(placed(np.full((2, 3), i, np.float64).tobytes(), 8 * i + 1), np.float64).reshape(2, 3)
             for i in range(4)]
    joined = concatenate_aligned(parts)
    assert is_aligned(joined)
    assert joined.tobytes() == np.concatenate(parts).tobytes()
    text = [np.array([b"a"], dtype=object), np.array([b"b"], dtype=object)]
    assert concatenate_aligned(text).tolist() == [b"a", b"b"]


async def test_batches_of_several_requests_reach_the_model_aligned():
    class Recorder:
        def __init__(self) -> None:
            self.seen: list[np.ndarray] = []

        async def run(self, inputs):
            self.seen.append(inputs["x"])
            return {"y": inputs["x"] * 2}

    instance = Recorder()
    batcher = DynamicBatcher([instance], name="m", max_batch_size=8, max_queue_delay_us=60_000_000,
                             preferred_batch_size=(3,))
    batcher.start()
    for width in range(1, 9):  # joined arrays of several sizes: numpy's own would lie at several offsets
        rows = [np.frombuffer(placed(np.full((1, width), i, np.float32).tobytes(), 4 * i + 4), np.float32)
                .reshape(1, width) for i in range(3)]
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit({"x": r}, 1) for r in rows)), 10)
        assert [a["y"].tobytes() for a in answers] == [(r * 2).tobytes() for r in rows]
    await batcher.close()
    assert [len(x) for x in instance.seen] == [3] * 8  # each a batch of three, joined by the batcher
    assert all(is_aligned(x) for x in instance.seen)


@pytest.fixture(scope="module")
def row_sum(tmp_path_factory):
    path = onnx_models.write_model(tmp_path_factory.mktemp("row_sum"), "row_sum", onnx_models.row_sum(SUMMED))
    backend = OnnxBackend(path, model="row_sum")
    yield path, backend
    backend.close()


def reference(path, feeds: dict[str, np.ndarray]) -> dict[str, bytes]:
    """ONNX Runtime in process, on aligned copies of the inputs: the answer every protocol must give."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    copies = {}
    for name, array in feeds.items():
        copies[name] = aligned_empty(array.shape, array.dtype)
        copies[name][...] = array
    names = [o.name for o in session.get_outputs()]
    return {n: a.tobytes() for n, a in zip(names, session.run(names, copies), strict=True)}


def test_the_backend_answers_for_inputs_at_every_offset_as_onnx_runtime_does_for_aligned_ones(row_sum):
    path, backend = row_sum
    rng = np.random.default_rng(23)
    values = {f"x_{name}": (rng.standard_normal((3, 16)) * 100).astype(FIXED[name].dtype) for name in SUMMED}
    want = reference(path, values)
    for offset in OFFSETS:
        feeds = {n: np.frombuffer(placed(a.tobytes(), offset), a.dtype).reshape(a.shape) for n, a in values.items()}
        got = backend.instances[0].run_sync(feeds)
        assert {n: a.tobytes() for n, a in got.items()} == want, offset
