"""One array per fixed-size v2 datatype, with its extremes: shared by the gRPC and HTTP codec tests."""

from __future__ import annotations

import numpy as np

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 255, 7]], np.uint8),
    "UINT16": np.array([[0, 65535, 7]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7]], np.uint64),
    "INT8": np.array([[-128, 127, 0]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1, 0]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0]], np.int64),
    "FP16": np.array([[1.5, -0.0, 65504]], np.float16),
    "FP32": np.array([[1.5, -2.25, 3.4e38]], np.float32),
    "FP64": np.array([[1.5, -2.25, 1e300]], np.float64),
}
