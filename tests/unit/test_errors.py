"""Every protocol-neutral error code has a gRPC status, and the names agree."""

from __future__ import annotations

import grpc

from inference_server.errors import ErrorCode
from inference_server.grpc.servicer import TO_GRPC


def test_every_error_code_maps_to_the_grpc_status_of_the_same_name():
    assert set(TO_GRPC) == set(ErrorCode)
    for code, status in TO_GRPC.items():
        assert isinstance(status, grpc.StatusCode) and status.name == code.name
