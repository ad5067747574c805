"""The access log: off by default; when on, one line per answered request, with its id and outcome."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerThread, server_config

pytestmark = pytest.mark.integration


def call(url: str, request_id: str, width: int = 8) -> None:
    x = grpcclient.InferInput("x", [1, width], "FP32")
    x.set_data_from_numpy(np.ones((1, width), np.float32))
    with grpcclient.InferenceServerClient(url) as client:
        client.infer("mlp", [x], request_id=request_id)


def test_access_log_is_off_by_default(server, caplog):
    caplog.set_level(logging.INFO, logger="inference_server.access")
    call(server.url, "quiet-1")
    assert not [r for r in caplog.records if r.name == "inference_server.access"]


def test_access_log_has_a_line_per_request_with_its_id_and_code(repository, caplog, grpc_engine):
    caplog.set_level(logging.INFO, logger="inference_server.access")
    thread = ServerThread(server_config(repository, access_log=True, grpc_engine=grpc_engine)).start()
    try:
        call(thread.url, "abc-1")
        with pytest.raises(InferenceServerException):
            call(thread.url, "bad-2", width=3)
    finally:
        thread.stop()
    lines = [(r.request_id, r.model, r.code) for r in caplog.records if r.name == "inference_server.access"]
    assert lines == [("abc-1", "mlp", "OK"), ("bad-2", "mlp", "INVALID_ARGUMENT")]
