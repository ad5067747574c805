"""Bearer tokens through tritonclient against a real server with both front ends: no token, a wrong one, an
`infer` token on the repository and route administration, an `admin` token everywhere; health open; metadata
open only with open_metadata; ModelStreamInfer refused on its stream; rotation without a restart (and a bad file
refused, the old tokens kept); no token in any log line."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import queue
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from inference_server.config.server import AuthConfig
from inference_server.protocol._generated import route_admin_pb2 as admin_pb
from inference_server.grpc._generated import route_admin_pb2_grpc as admin_grpc
from tests.conftest import ServerThread, server_config
from tests.support import onnx_models
from tests.support.server_process import free_port

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789abcdef"
INFER = "infer-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"
NEW_ADMIN = "rotated-admin-0123456789abcdef"
NEW_INFER = "rotated-infer-0123456789abcdef"
TOKENS = (ADMIN, INFER, WRONG, NEW_ADMIN, NEW_INFER)

UNAUTHENTICATED = "StatusCode.UNAUTHENTICATED"
PERMISSION_DENIED = "StatusCode.PERMISSION_DENIED"
X = np.arange(8, dtype=np.float32).reshape(1, 8) / 8


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def write_tokens(path: Path, admin: str, infer: str) -> None:
    path.write_text(f"# scopes token\nadmin {admin}\ninfer {infer}\n")
    path.chmod(0o600)


def start(tmp_path: Path, open_metadata: bool = False, **server: object) -> ServerThread:
    """Both front ends in explicit mode: `mlp` loaded, `spare` in the repository to load and unload."""
    repo = tmp_path / "repo"
    if not repo.exists():
        onnx_models.write_model(repo, "mlp", onnx_models.mlp([8, 16, 4], seed=1), "[batching]\nmax_batch_size = 8\n")
        onnx_models.write_model(repo, "spare", onnx_models.mlp([8, 16, 4], seed=2), "[batching]\nmax_batch_size = 8\n")
    tokens = tmp_path / "tokens"
    write_tokens(tokens, ADMIN, INFER)
    cfg = server_config(repo, http_port=free_port(), model_control_mode="explicit", load_models=["mlp"], **server)
    cfg = dataclasses.replace(cfg, models=(), auth=AuthConfig(tokens_file=tokens, open_metadata=open_metadata))
    return ServerThread(cfg).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_engine):
    thread = start(tmp_path_factory.mktemp("auth"), grpc_engine=grpc_engine)
    yield thread
    thread.stop()


def grpc_client(server: ServerThread) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.url)


def http_client(server: ServerThread) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.app.http_port}")


def inputs(module) -> list:
    x = module.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return [x]


def refused(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        call(*args, **kwargs)
    return e.value


def infer_grpc(server: ServerThread, headers: dict[str, str] | None) -> np.ndarray:
    with grpc_client(server) as client:
        return client.infer("mlp", inputs(grpcclient), headers=headers).as_numpy("y")


def infer_http(server: ServerThread, headers: dict[str, str] | None) -> np.ndarray:
    with http_client(server) as client:
        return client.infer("mlp", inputs(httpclient), headers=headers).as_numpy("y")


def raw_http(server: ServerThread, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        content = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(content or b"{}")
    finally:
        connection.close()


# -- gRPC ------------------------------------------------------------------------------------------------------

def test_grpc_missing_and_wrong_token_are_unauthenticated(server):
    for headers in (None, bearer(WRONG), {"authorization": INFER}, {"authorization": f"Basic {INFER}"}):
        e = refused(infer_grpc, server, headers)
        assert e.status() == UNAUTHENTICATED, headers
    with grpc_client(server) as client:
        e = refused(client.get_model_metadata, "mlp")
        assert e.status() == UNAUTHENTICATED and "missing bearer token" in e.message()
        assert refused(client.get_inference_statistics, "mlp", headers=bearer(WRONG)).status() == UNAUTHENTICATED


def test_grpc_infer_token_infers_but_cannot_administer(server):
    assert infer_grpc(server, bearer(INFER)).shape == (1, 4)
    with grpc_client(server) as client:
        h = bearer(INFER)
        assert client.get_model_metadata("mlp", headers=h).name == "mlp"
        assert client.get_model_config("mlp", headers=h).config.name == "mlp"
        assert client.get_server_metadata(headers=h).name
        assert client.get_inference_statistics("mlp", headers=h).model_stats
        for call in (lambda: client.load_model("spare", headers=h), lambda: client.unload_model("mlp", headers=h),
                     lambda: client.get_model_repository_index(headers=h)):
            e = refused(call)
            assert e.status() == PERMISSION_DENIED and "'admin' scope" in e.message()
        assert client.is_model_ready("mlp") and not client.is_model_ready("spare")  # nothing happened


def test_grpc_admin_token_loads_and_unloads(server):
    with grpc_client(server) as client:
        h = bearer(ADMIN)
        client.load_model("spare", headers=h)
        assert client.is_model_ready("spare")
        assert client.infer("spare", inputs(grpcclient), headers=h).as_numpy("y").shape == (1, 4)
        assert ("spare", "READY") in [(m.name, m.state) for m in client.get_model_repository_index(headers=h).models]
        client.unload_model("spare", headers=h)
        assert not client.is_model_ready("spare")


def test_grpc_route_admin_needs_admin(server):
    with grpc.insecure_channel(server.url) as channel:
        stub = admin_grpc.RouteAdminStub(channel)
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               (tuple(bearer(INFER).items()), grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as e:
                stub.RouteStatus(admin_pb.RouteStatusRequest(), metadata=metadata, timeout=10)
            assert e.value.code() == code
        assert stub.RouteStatus(admin_pb.RouteStatusRequest(), metadata=tuple(bearer(ADMIN).items()),
                                timeout=10).routes == []


def test_grpc_health_is_open(server):
    with grpc_client(server) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
        assert client.is_server_live(headers=bearer(WRONG))  # a wrong token does not close what is open
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def stream(server: ServerThread, headers: dict[str, str] | None) -> tuple[object, InferenceServerException | None]:
    answers: queue.Queue = queue.Queue()
    with grpc_client(server) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        try:
            try:
                client.async_stream_infer("mlp", inputs(grpcclient))
            except InferenceServerException as e:  # refused before the request went out: the callback has it
                assert "no longer in valid state" in e.message()
            return answers.get(timeout=10)
        finally:
            client.stop_stream()


def test_grpc_stream_is_refused_on_the_stream(server):
    for headers, status in ((None, UNAUTHENTICATED), (bearer(WRONG), UNAUTHENTICATED)):
        result, error = stream(server, headers)
        assert result is None and error is not None and error.status() == status
    result, error = stream(server, bearer(INFER))
    assert error is None and result.as_numpy("y").shape == (1, 4)


# -- HTTP ------------------------------------------------------------------------------------------------------

def test_http_missing_and_wrong_token_are_401(server):
    for headers in (None, bearer(WRONG)):
        e = refused(infer_http, server, headers)  # POST .../infer: the fast path, before Starlette
        assert e.status() == "401"
        with http_client(server) as client:
            assert refused(client.get_model_metadata, "mlp", headers=headers).status() == "401"
            assert refused(client.get_server_metadata, headers=headers).status() == "401"
            assert refused(client.get_inference_statistics, headers=headers).status() == "401"
    status, headers, body = raw_http(server, "GET", "/v2/models/mlp")
    assert status == 401 and headers["www-authenticate"] == "Bearer" and "missing bearer token" in body["error"]
    status, headers, body = raw_http(server, "POST", "/v2/models/mlp/infer", bearer(WRONG), b"{}")
    assert status == 401 and headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert body == {"error": "invalid bearer token"} and headers["connection"] == "close"
    status, _, _ = raw_http(server, "POST", "/v1/models/mlp:predict", None, b'{"instances": []}')
    assert status == 401


def test_http_infer_token_infers_but_cannot_administer(server):
    assert infer_http(server, bearer(INFER)).shape == (1, 4)
    with http_client(server) as client:
        h = bearer(INFER)
        assert client.get_model_metadata("mlp", headers=h)["name"] == "mlp"
        assert client.get_model_config("mlp", headers=h)["name"] == "mlp"
        for call in (lambda: client.load_model("spare", headers=h), lambda: client.unload_model("mlp", headers=h),
                     lambda: client.get_model_repository_index(headers=h)):
            e = refused(call)
            assert e.status() == "403" and "'admin' scope" in e.message()
        assert client.is_model_ready("mlp") and not client.is_model_ready("spare")
    status, headers, body = raw_http(server, "GET", "/v2/routes", bearer(INFER))
    assert status == 403 and headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="admin"'
    assert "'admin' scope" in body["error"]
    assert raw_http(server, "POST", "/v2/routes/x/weights", bearer(INFER), b"{}")[0] == 403


def test_http_admin_token_loads_and_unloads(server):
    with http_client(server) as client:
        h = bearer(ADMIN)
        client.load_model("spare", headers=h)
        assert client.is_model_ready("spare")
        assert client.infer("spare", inputs(httpclient), headers=h).as_numpy("y").shape == (1, 4)
        client.unload_model("spare", headers=h)
        assert not client.is_model_ready("spare")
    assert raw_http(server, "GET", "/v2/routes", bearer(ADMIN))[0] == 200


def test_http_health_is_open(server):
    with http_client(server) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
        connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
        connection.request("GET", path)
        assert connection.getresponse().status == 200, path
        connection.close()


# -- open metadata, rotation, logs -----------------------------------------------------------------------------

@pytest.fixture
def fresh(tmp_path, caplog, grpc_engine):
    """A server of its own, started with every log record captured (DEBUG and up, from every thread)."""
    caplog.set_level(logging.DEBUG)
    thread = start(tmp_path, access_log=True, grpc_engine=grpc_engine)
    yield thread
    thread.stop()


def reload(server: ServerThread, cfg) -> bool:
    """What SIGHUP runs (App.reload), with `cfg` as the re-read config, on the server's loop."""
    server.app._reread = lambda: cfg
    done: queue.Queue = queue.Queue()
    server.loop.call_soon_threadsafe(lambda: done.put(server.app.reload()))
    return done.get(timeout=10)


def no_token_logged(caplog) -> None:
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    assert records  # the server's own lines were captured
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(token in text for token in TOKENS), text


def test_open_metadata(fresh):
    cfg = fresh.app.cfg
    assert refused(http_client(fresh).get_model_metadata, "mlp").status() == "401"
    assert reload(fresh, dataclasses.replace(cfg, auth=dataclasses.replace(cfg.auth, open_metadata=True)))
    with grpc_client(fresh) as client:
        assert client.get_model_metadata("mlp").name == "mlp" and client.get_model_config("mlp").config.name
        assert client.get_server_metadata().name
        assert refused(client.infer, "mlp", inputs(grpcclient)).status() == UNAUTHENTICATED
        assert refused(client.get_inference_statistics, "mlp").status() == UNAUTHENTICATED
    with http_client(fresh) as client:
        assert client.get_model_metadata("mlp")["name"] == "mlp" and client.get_model_config("mlp")["name"]
        assert client.get_server_metadata()["name"]
        assert refused(client.infer, "mlp", inputs(httpclient)).status() == "401"


def test_rotation_without_a_restart_and_a_bad_file_refused(fresh, caplog):
    tokens = fresh.app.cfg.auth.tokens_file
    assert infer_grpc(fresh, bearer(INFER)).shape == infer_http(fresh, bearer(ADMIN)).shape == (1, 4)
    write_tokens(tokens, NEW_ADMIN, NEW_INFER)
    assert reload(fresh, fresh.app.cfg)
    for old in (ADMIN, INFER):
        assert refused(infer_grpc, fresh, bearer(old)).status() == UNAUTHENTICATED
        assert refused(infer_http, fresh, bearer(old)).status() == "401"
    assert infer_grpc(fresh, bearer(NEW_INFER)).shape == infer_http(fresh, bearer(NEW_INFER)).shape == (1, 4)
    with grpc_client(fresh) as client:
        assert refused(client.load_model, "spare", headers=bearer(NEW_INFER)).status() == PERMISSION_DENIED
        client.load_model("spare", headers=bearer(NEW_ADMIN))
    assert "SIGHUP: authentication on: 2 token(s): 1 admin, 1 infer" in caplog.text

    # A bad line: the reload is refused (naming the line, not the token) and the tokens in use stay.
    tokens.write_text(f"admin {ADMIN}\ninfer\n{INFER}\n")
    assert not reload(fresh, fresh.app.cfg)
    assert "line 2" in caplog.text and "server.auth.tokens_file" in caplog.text
    assert infer_grpc(fresh, bearer(NEW_INFER)).shape == infer_http(fresh, bearer(NEW_INFER)).shape == (1, 4)
    assert refused(infer_grpc, fresh, bearer(ADMIN)).status() == UNAUTHENTICATED
    assert refused(infer_http, fresh, bearer(ADMIN)).status() == "401"
    # A file gone, and turning authentication off: refused as well.
    tokens.unlink()
    assert not reload(fresh, fresh.app.cfg)
    assert not reload(fresh, dataclasses.replace(fresh.app.cfg, auth=AuthConfig()))
    assert infer_grpc(fresh, bearer(NEW_ADMIN)).shape == (1, 4)
    no_token_logged(caplog)


def test_no_token_in_any_log_line(fresh, caplog):
    started = [r.getMessage() for r in caplog.get_records("setup") if "authentication" in r.getMessage()]
    assert len(started) == 1 and started[0].startswith("authentication on: 2 token(s): 1 admin, 1 infer")
    for token in TOKENS:
        for call in (infer_grpc, infer_http):
            try:
                call(fresh, bearer(token))
            except InferenceServerException:
                pass
        stream(fresh, bearer(token))
        with grpc_client(fresh) as client:
            try:
                client.load_model("spare", headers=bearer(token))
            except InferenceServerException:
                pass
        raw_http(fresh, "POST", "/v2/repository/models/spare/unload", bearer(token), b"{}")
    fresh.app.cfg.auth.tokens_file.write_text(f"infer {INFER}\nadmin {ADMIN} {WRONG}\n")
    assert not reload(fresh, fresh.app.cfg)
    no_token_logged(caplog)
