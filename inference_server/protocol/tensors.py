"""Tensors as the core sees them: v2 datatypes, requests and responses of numpy arrays, byte layouts.

Everything here is protocol-neutral. Sizes are validated against shape x datatype before any array is
allocated; fixed-size data is wrapped with ``np.frombuffer``, and copied only when the wrapped bytes do not start on
a 64-byte boundary (`aligned`: ONNX Runtime's answer depends on where its input lies). BYTES elements are held as an
object array of ``bytes`` and travel as ``<u32 little-endian length><bytes>`` per element. The decoders take the
server's limits (`TensorLimits`, `[server.limits]`) as an argument and check them before allocating: the
elements from the shape, the bytes from the shape or the BYTES content, each BYTES length as it is framed.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inference_server.errors import invalid


@dataclass(frozen=True, slots=True)
class DataType:
    name: str  # the v2 protocol string, e.g. "FP32"
    dtype: np.dtype  # how the core holds it (BF16: the raw uint16 bits; BYTES: object)
    itemsize: int  # bytes per element on the wire; 0 for BYTES (variable)
    config_name: str  # Triton's model configuration DataType enum name (config.pbtxt data_type), e.g. "TYPE_FP32"
    onnx_type: str  # ONNX Runtime's type string of a tensor of it (NodeArg.type), e.g. "tensor(float)"
    raw_only: bool  # no typed contents field exists for it: its data travels raw (gRPC) or binary (HTTP)


BYTES, BF16 = "BYTES", "BF16"


def _dt(name: str, dtype: Any, config_name: str, onnx_type: str, raw_only: bool = False) -> DataType:
    np_dtype = np.dtype(dtype)
    itemsize = 0 if np_dtype == np.dtype(object) else np_dtype.itemsize
    return DataType(name, np_dtype, itemsize, config_name, onnx_type, raw_only)


# The one table of datatypes: the others (Triton's names, ONNX Runtime's) are derived from it.
DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        _dt("BOOL", np.bool_, "TYPE_BOOL", "tensor(bool)"),
        _dt("UINT8", "<u1", "TYPE_UINT8", "tensor(uint8)"),
        _dt("UINT16", "<u2", "TYPE_UINT16", "tensor(uint16)"),
        _dt("UINT32", "<u4", "TYPE_UINT32", "tensor(uint32)"),
        _dt("UINT64", "<u8", "TYPE_UINT64", "tensor(uint64)"),
        _dt("INT8", "<i1", "TYPE_INT8", "tensor(int8)"),
        _dt("INT16", "<i2", "TYPE_INT16", "tensor(int16)"),
        _dt("INT32", "<i4", "TYPE_INT32", "tensor(int32)"),
        _dt("INT64", "<i8", "TYPE_INT64", "tensor(int64)"),
        _dt("FP16", "<f2", "TYPE_FP16", "tensor(float16)", raw_only=True),
        _dt("FP32", "<f4", "TYPE_FP32", "tensor(float)"),
        _dt("FP64", "<f8", "TYPE_FP64", "tensor(double)"),
        _dt(BYTES, object, "TYPE_STRING", "tensor(string)"),
        _dt(BF16, "<u2", "TYPE_BF16", "tensor(bfloat16)", raw_only=True),
    )
}

RAW_ONLY = frozenset(dt.name for dt in DATATYPES.values() if dt.raw_only)
TRITON_DATATYPES = {dt.config_name: dt.name for dt in DATATYPES.values()}  # config.pbtxt data_type -> v2 name
ONNX_DATATYPES = {dt.onnx_type: dt.name for dt in DATATYPES.values()}  # ONNX Runtime's type string -> v2 name


def is_bytes(datatype: str) -> bool:
    """BYTES: variable-length elements, held as an object array of bytes (strings in ONNX)."""
    return datatype == BYTES


def is_bf16(datatype: str) -> bool:
    """BF16: no numpy dtype; held as its raw uint16 bits, fed to ONNX Runtime through OrtValues."""
    return datatype == BF16


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[Tensor]
    model_version: str = ""
    id: str = ""
    requested_outputs: tuple[str, ...] | None = None  # None: every output, in model order
    timeout_us: int | None = None  # Triton's per-request queue timeout
    priority: int = 0  # Triton's priority parameter: 1 is the highest level, 0 the model's default
    parameters: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = None  # the `routing-key` gRPC metadata or HTTP header, set by the front end
    # W3C Trace Context: the caller's `traceparent` and `tracestate` metadata or headers, as sent (the core
    # extracts the context when tracing is on), and the front end that took the request ("grpc" | "http")
    traceparent: str = ""
    tracestate: str = ""
    protocol: str = ""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, str | bool] = field(default_factory=dict)  # e.g. the route's `variant`


_U32 = struct.Struct("<I")

# Where an input lies decides ONNX Runtime's answer: its CPU kernels can take the same values in another order at
# another address (a ReduceSum of FP32 or FP64 rows differs in the last bit at any address that is not a multiple
# of 16 bytes, on an AVX-512 Xeon). ONNX Runtime allocates its own tensors on 64-byte boundaries; every fixed-size
# array the core hands it starts on one too, so the answer never depends on the protocol, or on where a tensor sat
# in a request's body or frame (docs/architecture.md, "Where each decision lives").
ALIGNMENT = 64


def aligned_empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` whose data starts on an ALIGNMENT-byte boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def aligned(array: np.ndarray) -> np.ndarray:
    """The one alignment decision: `array` itself when it is C-contiguous and starts on an ALIGNMENT-byte boundary
    (or holds objects, or nothing), else an aligned C-contiguous copy of it."""
    if array.dtype.hasobject or not array.size:
        return array
    if array.flags.c_contiguous and not array.ctypes.data % ALIGNMENT:
        return array
    out = aligned_empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out


def concatenate_aligned(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays joined along dimension 0 into one aligned array (object arrays: numpy's own)."""
    first = arrays[0]
    if first.dtype.hasobject:
        return np.concatenate(arrays)
    out = aligned_empty((sum(a.shape[0] for a in arrays), *first.shape[1:]), first.dtype)
    return np.concatenate(arrays, out=out)


class TensorLimits(Protocol):
    """The limits the decoders check (config.LimitsConfig is one). None instead: only what the buffers bound."""

    @property
    def max_tensor_elements(self) -> int: ...

    @property
    def max_tensor_bytes(self) -> int: ...

    @property
    def max_bytes_element_bytes(self) -> int: ...

    @property
    def max_request_elements(self) -> int: ...


def datatype(name: str, tensor: str) -> DataType:
    try:
        return DATATYPES[name]
    except KeyError:
        raise invalid(f"input '{tensor}': unknown datatype '{name}'") from None


# numpy refuses a shape whose non-zero dimensions multiply past this (times the item size), even when another
# dimension is 0 and the array is empty.
_MAX_DIMS_PRODUCT = 2**60


MAX_DIMS = 32  # dimensions of one tensor: numpy 1.x holds 32 (numpy 2: 64), and the package supports both


def element_count(shape: Sequence[int], tensor: str, limits: TensorLimits | None = None) -> int:
    """The elements of `shape`, from the shape alone: at most limits.max_tensor_elements."""
    if len(shape) > MAX_DIMS:
        raise invalid(f"input '{tensor}': shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if shape and min(shape) < 0:
        raise invalid(f"input '{tensor}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if limits is not None and count > limits.max_tensor_elements:
        raise invalid(f"input '{tensor}': shape {list(shape)} holds {count} elements, which exceeds "
                      f"max_tensor_elements ({limits.max_tensor_elements})")
    if count > _MAX_DIMS_PRODUCT or (not count and math.prod(max(d, 1) for d in shape) > _MAX_DIMS_PRODUCT):
        raise invalid(f"input '{tensor}': shape {list(shape)} is too large")
    return count


def check_tensor_bytes(name: str, dt: DataType, count: int, limits: TensorLimits | None) -> None:
    """A fixed-size tensor of `count` elements against limits.max_tensor_bytes, before it is built."""
    if limits is not None and dt.itemsize and count * dt.itemsize > limits.max_tensor_bytes:
        raise invalid(f"input '{name}': {count} elements of {dt.name} are {count * dt.itemsize} bytes, which exceeds "
                      f"max_tensor_bytes ({limits.max_tensor_bytes})")


def add_request_elements(total: int, count: int, name: str, limits: TensorLimits | None) -> int:
    """The elements of a request's inputs so far, with input `name`'s `count` added: at most
    limits.max_request_elements. Called before the input is decoded."""
    total += count
    if limits is not None and total > limits.max_request_elements:
        raise invalid(f"input '{name}' brings the request to {total} elements, which exceeds max_request_elements "
                      f"({limits.max_request_elements})")
    return total


def decode_raw(name: str, dtype_name: str, shape: Sequence[int], raw: bytes | memoryview,
               limits: TensorLimits | None = None) -> np.ndarray:
    """A raw, row-major, little-endian blob -> an array of `shape`; checks the size (and limits) first."""
    dt = datatype(dtype_name, name)
    count = element_count(shape, name, limits)
    if dt.itemsize == 0:
        return decode_bytes(raw, count, name, limits).reshape(shape)
    expected = count * dt.itemsize
    check_tensor_bytes(name, dt, count, limits)
    if len(raw) != expected:
        raise invalid(
            f"input '{name}': raw content is {len(raw)} bytes but shape {list(shape)} "
            f"of {dt.name} needs {expected} bytes"
        )
    array = np.frombuffer(raw, dtype=dt.dtype).reshape(shape)
    if dt.name == "BOOL" and count and array.view(np.uint8).max() > 1:
        raise invalid(f"input '{name}': BOOL elements must be 0 or 1")
    return aligned(array)


def decode_bytes(raw: bytes | memoryview, count: int, name: str, limits: TensorLimits | None = None) -> np.ndarray:
    """Split 4-byte-length-framed elements; the whole buffer must be exactly `count` elements. With limits, the
    elements' bytes (the buffer less its lengths) are checked first, and each length before its element is copied."""
    if count * 4 > len(raw):
        raise invalid(
            f"input '{name}': BYTES content of {len(raw)} bytes cannot hold {count} elements"
        )
    max_element = sys.maxsize
    if limits is not None:
        payload = len(raw) - 4 * count  # what the elements add up to, when the framing is right
        if payload > limits.max_tensor_bytes:
            raise invalid(f"input '{name}': BYTES content of {len(raw)} bytes holds {payload} bytes of elements, "
                          f"which exceeds max_tensor_bytes ({limits.max_tensor_bytes})")
        max_element = limits.max_bytes_element_bytes
    if isinstance(raw, memoryview):
        raw = bytes(raw)
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise invalid(f"input '{name}': BYTES element {i} is missing its 4-byte length")
        (length,) = _U32.unpack_from(raw, pos)
        pos += 4
        if length > max_element:
            raise invalid(f"input '{name}': BYTES element {i} is {length} bytes, which exceeds "
                          f"max_bytes_element_bytes ({max_element})")
        if pos + length > end:
            raise invalid(f"input '{name}': BYTES element {i} is truncated")
        out[i] = raw[pos : pos + length]
        pos += length
    if pos != end:
        raise invalid(
            f"input '{name}': BYTES content has {end - pos} bytes after its {count} elements"
        )
    return out


def decode_values(name: str, dtype_name: str, shape: Sequence[int], values: Sequence[Any],
                  limits: TensorLimits | None = None) -> np.ndarray:
    """Typed contents (a sequence of Python values) -> an array of `shape`."""
    dt = datatype(dtype_name, name)
    if dt.raw_only:
        raise invalid(f"input '{name}': {dt.name} data must be sent in raw_input_contents")
    count = element_count(shape, name, limits)
    if len(values) != count:
        raise invalid(
            f"input '{name}': {len(values)} elements given but shape {list(shape)} needs {count}"
        )
    if dt.itemsize == 0:
        if limits is not None:
            _check_bytes_values(name, values, limits)
        out = np.empty(count, dtype=object)
        out[:] = [bytes(v) for v in values]
        return out.reshape(shape)
    check_tensor_bytes(name, dt, count, limits)
    try:
        return aligned(np.asarray(values, dtype=dt.dtype).reshape(shape))
    except OverflowError:
        raise invalid(f"input '{name}': a value is out of range for {dt.name}") from None


def _check_bytes_values(name: str, values: Sequence[Any], limits: TensorLimits) -> None:
    """Typed BYTES elements against max_bytes_element_bytes each and max_tensor_bytes together."""
    max_element, total = limits.max_bytes_element_bytes, 0
    for i, value in enumerate(values):
        length = len(value)
        if length > max_element:
            raise invalid(f"input '{name}': BYTES element {i} is {length} bytes, which exceeds "
                          f"max_bytes_element_bytes ({max_element})")
        total += length
    if total > limits.max_tensor_bytes:
        raise invalid(f"input '{name}': BYTES elements of {total} bytes exceed max_tensor_bytes "
                      f"({limits.max_tensor_bytes})")


def encode_raw(array: np.ndarray, dtype_name: str) -> bytes:
    """An array -> the v2 raw layout (row-major, little-endian; BYTES framed)."""
    dt = DATATYPES[dtype_name]
    if dt.itemsize == 0:
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=dt.dtype).tobytes()


def encode_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for element in array.reshape(-1):
        data = element.encode("utf-8") if isinstance(element, str) else bytes(element)
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def bytes_to_text(array: np.ndarray, name: str) -> np.ndarray:
    """BYTES elements -> str elements (what ONNX string tensors take), rejecting non-UTF-8.

    ONNX Runtime turns a ``bytes`` object into its repr ("b'hi'") and a fixed-width ``S`` array loses
    trailing NULs, so the exact text has to be handed over as ``str``.
    """
    out = np.empty(array.shape, dtype=object)
    flat_out = out.reshape(-1)
    for i, element in enumerate(array.reshape(-1)):
        try:
            flat_out[i] = element.decode("utf-8") if isinstance(element, bytes) else str(element)
        except UnicodeDecodeError:
            raise invalid(f"input '{name}': BYTES element {i} is not valid UTF-8") from None
    return out
