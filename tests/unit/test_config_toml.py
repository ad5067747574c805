"""The TOML readers of config/toml.py, and what the parsers built on them promise: every default is the
dataclass field's own, and the keys of [server] are one list (parser, flags, ServerConfig)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inference_server.config import toml
from inference_server.config.cli import FLAG_SERVER_KEYS, build_parser, load_config
from inference_server.config.model import BatchingConfig, ModelConfig, WarmupConfig, parse_model, parse_warmup
from inference_server.config.routes import CanaryConfig, FallbackConfig, ShadowConfig, parse_route
from inference_server.config.server import (
    NOT_SERVER_KEYS,
    SERVER_KEYS,
    AuthConfig,
    CacheConfig,
    LimitsConfig,
    MonitoringConfig,
    ServerConfig,
    parse_auth,
    parse_cache,
    parse_limits,
    parse_monitoring,
    parse_server,
)
from inference_server.errors import ConfigError


def refusal(call, *args) -> str:
    with pytest.raises(ConfigError) as e:
        call(*args)
    return str(e.value)


def test_get_checks_the_type_and_never_takes_a_bool_for_a_number():
    assert toml.get({}, "k", "t.", int, 7) == 7
    assert toml.get({"k": 3}, "k", "t.", int, 7) == 3
    assert toml.get({"k": True}, "k", "t.", bool, False) is True
    assert "t.k" in refusal(toml.get, {"k": True}, "k", "t.", int, 0)
    assert "expected int, got 'x'" in refusal(toml.get, {"k": "x"}, "k", "t.", int, 0)
    assert "expected float" in refusal(toml.get, {"k": False}, "k", "t.", float, 0.0)


def test_count_and_seconds_check_their_bounds():
    assert toml.count({"k": 5}, "k", "t.", 0, minimum=1, maximum=5) == 5
    assert "must be between 1 and 5, got 6" in refusal(toml.count, {"k": 6}, "k", "t.", 0, 1, 5)
    assert "must be >= 1, got 0" in refusal(toml.count, {"k": 0}, "k", "t.", 0, 1)
    assert toml.count({}, "k", "t.", None) is None
    seconds = toml.seconds({"k": 2}, "k", "t.")
    assert seconds == 2.0 and isinstance(seconds, float)
    assert toml.seconds({}, "k", "t.", None) is None
    assert "must be >= 0.5, got 0.1" in refusal(toml.seconds, {"k": 0.1}, "k", "t.", 1.0, 0.5)


def test_choice_names_and_path_refuse_what_they_do_not_take():
    assert toml.choice({}, "k", "t.", ("a", "b"), "a") == "a"
    assert "t.k" in (message := refusal(toml.choice, {"k": "c"}, "k", "t.", ("a", "b"), "a"))
    assert "must be one of a, b, got 'c'" in message
    assert toml.positive_ints({"k": [2, 1]}, "k", "t.", []) == [2, 1]
    assert "must be positive integers" in refusal(toml.positive_ints, {"k": [1, 0]}, "k", "t.", [])
    assert "must be positive integers" in refusal(toml.positive_ints, {"k": [True]}, "k", "t.", [])
    assert toml.names({"k": ["m"]}, "k", "t.") == ["m"]
    assert "must be model names" in refusal(toml.names, {"k": ["m", ""]}, "k", "t.")
    assert toml.path({"k": "a/b"}, "k", "t.") == Path("a/b")
    assert toml.path({}, "k", "t.") is None
    assert "must be a file's path" in refusal(toml.path, {"k": ""}, "k", "t.")


def test_reject_unknown_names_the_key_and_what_is_allowed():
    toml.reject_unknown({"a": 1}, ["a", "b"], "t.")
    assert refusal(toml.reject_unknown, {"a": 1, "c": 2}, ["a", "b"], "t.") == (
        "config error at 't.c': unknown key (allowed: a, b)")


def test_read_toml_reports_unreadable_and_invalid_files(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[server]\nport = 1\n")
    assert toml.read_toml(good, "--config") == {"server": {"port": 1}}
    assert "cannot read" in refusal(toml.read_toml, tmp_path / "absent.toml", "--config")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    assert "is not valid TOML" in refusal(toml.read_toml, bad, "--config")


def test_field_defaults_calls_factories_and_leaves_required_fields_out():
    defaults = toml.field_defaults(ModelConfig)
    assert "name" not in defaults
    assert defaults["batching"] == BatchingConfig() and defaults["warmup"] == WarmupConfig()
    assert defaults["version"] == "1"
    assert set(defaults) == {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}


# Defaults: an empty table parses to the dataclass's own defaults, so a default changed on a field is the default.

def test_empty_tables_parse_to_the_dataclass_defaults():
    assert parse_server({}) == ServerConfig()
    assert parse_cache({}) == CacheConfig()
    assert parse_monitoring({}) == MonitoringConfig()
    assert parse_limits({}) == LimitsConfig()
    assert parse_auth({}) == AuthConfig()
    assert parse_warmup({}, "w.") == WarmupConfig()


def test_a_minimal_model_table_parses_to_the_model_defaults():
    assert parse_model({"name": "m", "path": "m.onnx"}, "models[0].", ServerConfig()) == ModelConfig(
        name="m", path=Path("m.onnx"))


def test_minimal_route_tables_parse_to_the_route_defaults():
    route = parse_route("r", {"variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 0}],
                              "canary": {"candidate": "b"}, "shadow": {"model": "other"},
                              "fallback": {"model": "f"}})
    assert route.canary == CanaryConfig(candidate="b")
    assert route.shadow == ShadowConfig(model="other")
    assert route.fallback == FallbackConfig(model="f")
    assert route.routing_key == "routing_key"


# The keys of [server]: one list, in ServerConfig's order, read by the parser and by the command line.

def test_server_keys_are_the_server_config_fields_read_from_the_server_table():
    fields = [f.name for f in dataclasses.fields(ServerConfig)]
    assert [f for f in fields if f not in NOT_SERVER_KEYS] == list(SERVER_KEYS)
    assert NOT_SERVER_KEYS <= set(fields)


def test_an_unknown_server_key_lists_the_allowed_keys_as_before():
    assert refusal(parse_server, {"server": {"colour": 1}}) == (
        "config error at 'server.colour': unknown key (allowed: host, port, http_port, max_message_bytes, "
        "drain_grace_s, max_connection_age_s, max_connection_age_grace_s, grpc_engine, log_level, log_format, "
        "access_log, model_repository, model_name, device, execution, cache, workers, reuse_port, metrics, "
        "metrics_host, metrics_port, model_control_mode, load_models, repository_poll_secs, exit_on_error, "
        "load_on_demand, max_loaded_models, model_memory_budget_mb, "
        "strict_readiness, model_cache_dir, tls_cert, tls_key, tls_client_ca, auth, limits)")


def test_every_server_key_but_auth_and_limits_has_a_flag_of_its_name():
    dests = {action.dest for action in build_parser()._actions}
    assert set(FLAG_SERVER_KEYS) == set(SERVER_KEYS) - {"auth", "limits"}
    assert set(FLAG_SERVER_KEYS) <= dests


def test_flags_set_their_server_keys(tmp_path):
    cfg = load_config(["--model-repository", str(tmp_path), "--workers", "2", "--port", "9001",
                       "--auth-tokens", "tokens.txt", "--max-batch-size", "4"], {})
    assert (cfg.model_repository, cfg.workers, cfg.port) == (tmp_path, 2, 9001)
    assert cfg.auth.tokens_file == Path("tokens.txt")
    assert cfg.batching.max_batch_size == 4
