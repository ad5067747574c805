"""Bearer tokens (inference_server/auth.py): the tokens file, the decision, and the one table of scopes that both
front ends use, checked against every RPC the server's service descriptors define and every HTTP route."""

from __future__ import annotations

import os

import pytest

from inference_server.errors import ConfigError
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol._generated import route_admin_pb2 as admin_pb
from inference_server.security import auth
from inference_server.security.auth import ADMIN, INFER, Auth, Refusal, load, load_tokens, parse_tokens, reload

ADMIN_TOKEN = "admin-0123456789abcdef"
INFER_TOKEN = "infer-0123456789abcdef"
BOTH_TOKEN = "both-0123456789abcdefg"

FILE = f"""# tokens for the tests
admin {ADMIN_TOKEN}

   infer   {INFER_TOKEN}
infer,admin {BOTH_TOKEN}
"""


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.fixture
def policy() -> Auth:
    return Auth(parse_tokens(FILE))


# -- the file --------------------------------------------------------------------------------------------------

def test_parse_scopes_comments_and_blank_lines():
    tokens = parse_tokens(FILE)
    assert len(tokens.entries) == 3
    assert tokens.counts() == {INFER: 2, ADMIN: 2}
    assert tokens.scopes(ADMIN_TOKEN) == {ADMIN}
    assert tokens.scopes(INFER_TOKEN) == {INFER}
    assert tokens.scopes(BOTH_TOKEN) == {INFER, ADMIN}
    assert tokens.scopes("not-a-token-0123456789") is None


def test_no_token_is_kept_in_clear():
    tokens = parse_tokens(FILE, "tokens.txt")
    shown = repr(tokens) + tokens.describe() + repr(Auth(tokens)) + Auth(tokens).describe()
    assert "3 token(s): 2 admin, 2 infer" in shown
    for token in (ADMIN_TOKEN, INFER_TOKEN, BOTH_TOKEN):
        assert token not in shown
        assert all(token.encode() not in digest for digest, _ in tokens.entries)


@pytest.mark.parametrize("line, says", [
    (f"{INFER_TOKEN}", "expected 'SCOPE[,SCOPE...] TOKEN'"),
    (f"infer {INFER_TOKEN} extra", "found 3 field(s)"),
    (f"inference {INFER_TOKEN}", "not a list of scopes"),
    (f"infer,root {INFER_TOKEN}", "not a list of scopes"),
    (f"{INFER_TOKEN} infer", "not a list of scopes"),  # the fields swapped: the token is not echoed
    ("infer sh0rt", "shorter than 16 characters"),
    ("infer tokén-0123456789abcdef", "printable ASCII"),
    (f"infer,,admin {INFER_TOKEN}", "not a list of scopes"),
])
def test_a_bad_line_is_refused_by_its_number_without_its_token(line, says):
    with pytest.raises(ConfigError) as e:
        parse_tokens(f"# header\n\nadmin {ADMIN_TOKEN}\n{line}\n", "tokens.txt")
    message = str(e.value)
    assert e.value.key == "server.auth.tokens_file"
    assert "tokens.txt: line 4:" in message and says in message
    for secret in (INFER_TOKEN, ADMIN_TOKEN, "sh0rt", "tokén"):
        assert secret not in message


def test_a_duplicate_token_is_refused_naming_both_lines():
    with pytest.raises(ConfigError, match="line 3: the same token as line 1") as e:
        parse_tokens(f"infer {INFER_TOKEN}\nadmin {ADMIN_TOKEN}\nadmin {INFER_TOKEN}\n")
    assert INFER_TOKEN not in str(e.value)


def test_a_file_without_tokens_is_refused():
    with pytest.raises(ConfigError, match="no tokens"):
        parse_tokens("# only a comment\n\n")


def test_load_from_a_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(FILE)
    path.chmod(0o600)
    tokens = load_tokens(path)
    assert tokens.counts() == {INFER: 2, ADMIN: 2} and not tokens.exposed and str(path) in tokens.describe()
    path.chmod(0o644)
    assert load_tokens(path).exposed and "chmod 600" in load_tokens(path).describe()


def test_load_refuses_a_missing_or_non_utf8_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        load_tokens(tmp_path / "missing")
    path = tmp_path / "tokens"
    path.write_bytes(f"infer {INFER_TOKEN}\nadmin \xff{ADMIN_TOKEN}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="line 2 is not UTF-8") as e:
        load_tokens(path)
    assert ADMIN_TOKEN not in str(e.value)


def test_load_and_reload(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"infer {INFER_TOKEN}\n")
    assert load(None, False) is None
    current = load(path, True)
    assert current is not None and current.open_metadata
    path.write_text(f"admin {ADMIN_TOKEN}\n")
    new = reload(current, path, False)
    assert new is not None and new.tokens.scopes(ADMIN_TOKEN) == {ADMIN} and new.tokens.scopes(INFER_TOKEN) is None
    with pytest.raises(ConfigError, match="turning authentication off needs a restart"):
        reload(current, None, False)
    with pytest.raises(ConfigError, match="turning authentication on needs a restart"):
        reload(None, path, False)
    assert reload(None, None, False) is None
    path.write_text(f"admin {ADMIN_TOKEN}\nadmin\n")
    with pytest.raises(ConfigError, match="line 2"):
        reload(current, path, False)


# -- the decision ----------------------------------------------------------------------------------------------

def test_missing_header(policy):
    for header in (None, ""):
        kind, message = policy.check(header, INFER)
        assert kind is Refusal.UNAUTHENTICATED and "missing bearer token" in message


@pytest.mark.parametrize("header", [INFER_TOKEN, f"Basic {INFER_TOKEN}", "Bearer", "Bearer   ", f"Token {INFER_TOKEN}"])
def test_not_a_bearer_token(policy, header):
    kind, message = policy.check(header, INFER)
    assert kind is Refusal.UNAUTHENTICATED and "not 'Bearer TOKEN'" in message
    assert INFER_TOKEN not in message


@pytest.mark.parametrize("token", ["wrong-0123456789abcdef", INFER_TOKEN[:-1], INFER_TOKEN + "x", "x", "é" * 20,
                                   "\ud800" * 20])
def test_wrong_token(policy, token):
    kind, message = policy.check(bearer(token), INFER)
    assert kind is Refusal.UNAUTHENTICATED and message == "invalid bearer token"


def test_the_scheme_is_case_insensitive_and_spaces_are_forgiven(policy):
    for header in (f"bearer {INFER_TOKEN}", f"BEARER {INFER_TOKEN}", f"  Bearer   {INFER_TOKEN}  "):
        assert policy.check(header, INFER) is None


def test_an_infer_token_cannot_administer(policy):
    assert policy.check(bearer(INFER_TOKEN), INFER) is None
    kind, message = policy.check(bearer(INFER_TOKEN), ADMIN)
    assert kind is Refusal.PERMISSION_DENIED and "'admin' scope" in message
    for operation in ("RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex", "RouteWeights"):
        assert policy.refusal(operation, bearer(INFER_TOKEN))[0] is Refusal.PERMISSION_DENIED


def test_an_admin_token_may_do_everything(policy):
    for operation in auth.OPERATIONS:
        assert policy.refusal(operation, bearer(ADMIN_TOKEN)) is None
        assert policy.refusal(operation, bearer(BOTH_TOKEN)) is None


def test_every_token_is_compared(policy, monkeypatch):
    """No early exit on a match: the time taken says nothing about which entry matched."""
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for token in (ADMIN_TOKEN, BOTH_TOKEN, "wrong-0123456789abcdef"):
        calls.clear()
        policy.tokens.scopes(token)
        assert len(calls) == 3


def test_health_is_open_and_metadata_open_only_when_asked():
    closed, opened = Auth(parse_tokens(FILE)), Auth(parse_tokens(FILE), open_metadata=True)
    for operation in ("ServerLive", "ServerReady", "ModelReady"):
        assert closed.refusal(operation, None) is None
    for operation in ("ServerMetadata", "ModelMetadata", "ModelConfig"):
        assert closed.refusal(operation, None)[0] is Refusal.UNAUTHENTICATED
        assert closed.refusal(operation, bearer(INFER_TOKEN)) is None
        assert opened.refusal(operation, None) is None
    for operation in ("ModelInfer", "ModelStreamInfer", "ModelStatistics"):
        assert opened.refusal(operation, None)[0] is Refusal.UNAUTHENTICATED
        assert opened.required(operation) == INFER


def test_an_operation_nobody_placed_needs_admin(policy):
    assert policy.required("SomeNewRpc") == ADMIN
    assert policy.refusal("SomeNewRpc", bearer(INFER_TOKEN))[0] is Refusal.PERMISSION_DENIED


# -- the table covers every RPC and every HTTP route -----------------------------------------------------------

def test_every_rpc_of_the_served_services_has_a_scope():
    methods = {service.full_name: {m.name for m in service.methods}
               for service in (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                               admin_pb.DESCRIPTOR.services_by_name["RouteAdmin"])}
    assert set(methods) == {"inference.GRPCInferenceService", "inference_server.admin.RouteAdmin"}
    every = set().union(*methods.values())
    assert every - set(auth.OPERATIONS) == set()
    assert set(auth.OPERATIONS) - every == set()  # and nothing stale
    assert {auth.OPERATIONS[m] for m in methods["inference_server.admin.RouteAdmin"]} == {ADMIN}
    assert all(need in (auth.OPEN, auth.METADATA, INFER, ADMIN) for need in auth.OPERATIONS.values())


def test_the_scope_table():
    """The table as the README states it."""
    policy = Auth(parse_tokens(FILE))
    required = {operation: policy.required(operation) for operation in auth.OPERATIONS}
    assert {op for op, scope in required.items() if scope is None} == {"ServerLive", "ServerReady", "ModelReady"}
    assert {op for op, scope in required.items() if scope == INFER} == {
        "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer", "ModelStreamInfer", "ModelStatistics"}
    assert {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "RouteStatus", "RouteWeights",
            "RouteCanary"} <= {op for op, scope in required.items() if scope == ADMIN}


def test_every_http_route_has_an_operation():
    pytest.importorskip("starlette")
    from inference_server.http import auth as http_auth
    from inference_server.http.server import Routes, routes

    table = routes(Routes.__new__(Routes))
    handlers = {route.endpoint.__name__ for route in table}
    assert handlers == set(http_auth.OPERATIONS)
    assert set(http_auth.OPERATIONS.values()) <= set(auth.OPERATIONS)
    by_path = {route.path: auth.OPERATIONS[http_auth.OPERATIONS[route.endpoint.__name__]] for route in table}
    assert by_path["/v2/health/live"] == by_path["/v2/health/ready"] == by_path["/v2/models/{model}/ready"] == "open"
    assert {scope for path, scope in by_path.items() if path.startswith(("/v2/repository", "/v2/routes"))} == {ADMIN}
    with pytest.raises(LookupError, match="no operation"):
        http_auth.operation("a_new_route")


def test_the_grpc_method_names():
    pytest.importorskip("grpc")
    from inference_server.grpc.auth import authorization, operation

    assert operation("/inference.GRPCInferenceService/ModelInfer") == "ModelInfer"
    assert operation("/inference_server.admin.RouteAdmin/RouteWeights") == "RouteWeights"
    assert operation("/grpc.health.v1.Health/Check") is None
    assert operation("/grpc.health.v1.Health/Watch") is None
    assert operation("/some.Other/Thing") == "Thing"  # not in the table: admin
    assert authorization((("user-agent", "x"), ("authorization", "Bearer t"))) == "Bearer t"
    assert authorization(None) is None
    assert authorization((("authorization-bin", b"x"),)) is None


def test_the_file_mode_check_uses_the_real_permissions(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(FILE)
    os.chmod(path, 0o640)
    assert not load_tokens(path).exposed  # its group is this process's own (Kubernetes: 0440 with fsGroup)
    os.chmod(path, 0o604)
    assert load_tokens(path).exposed  # anyone


def test_a_file_readable_by_a_group_this_process_is_not_in_is_exposed(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(FILE)
    os.chmod(path, 0o640)
    stranger = max({os.getgid(), *os.getgroups()}) + 1000
    try:
        os.chown(path, -1, stranger)
    except PermissionError:
        pytest.skip("changing a file's group to one we are not in needs root")
    assert load_tokens(path).exposed
