"""Which engine serves gRPC (grpc/engine.py, config.native_engine_conflicts): the flag and the key, auto's choice
and its reason, and `native` refused, naming the option, when the configuration asks for what it cannot do."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import pytest

from inference_server.config.cli import load_config
from inference_server.config.server import parse_server
from inference_server.errors import ConfigError
from inference_server.grpc import engine
from inference_server.grpc.servicer import deadline_of

TLS = {"tls_cert": "server.pem", "tls_key": "server.key"}
CONFLICTS = [  # [server] settings only grpcio can honour, and the key that names each
    (TLS, "server.tls_cert"),
    ({"max_connection_age_s": 60}, "server.max_connection_age_s"),
    ({"limits": {"max_request_bytes": 1 << 20}}, "server.limits.max_request_bytes"),
    ({"max_message_bytes": 1 << 20}, "server.limits.max_request_bytes"),  # the default of max_request_bytes
]


def test_auto_is_the_default_and_picks_native_for_a_plain_configuration():
    cfg = parse_server({})
    assert cfg.grpc_engine == "auto"
    assert engine.choose(cfg) == ("native", "auto: nothing configured needs grpcio")


def test_the_flag_overrides_the_file(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('[server]\ngrpc_engine = "native"\n')
    assert load_config(["--config", str(path)], {}).grpc_engine == "native"
    assert load_config(["--config", str(path), "--grpc-engine", "grpcio"], {}).grpc_engine == "grpcio"
    assert engine.choose(load_config(["--grpc-engine", "grpcio"], {}))[0] == "grpcio"


@pytest.mark.parametrize("server, key", CONFLICTS)
def test_auto_picks_grpcio_for_what_native_cannot_do_and_says_why(server, key):
    chosen, why = engine.choose(parse_server({"server": server}))
    assert chosen == "grpcio"
    assert why.startswith("auto: ") and key in why


@pytest.mark.parametrize("server, key", CONFLICTS)
def test_native_with_an_option_it_cannot_honour_is_a_config_error_naming_it(server, key):
    with pytest.raises(ConfigError) as refused:
        parse_server({"server": {**server, "grpc_engine": "native"}})
    assert refused.value.key == "server.grpc_engine" and key in str(refused.value)
    parse_server({"server": {**server, "grpc_engine": "grpcio"}})  # grpcio takes it


def test_an_unknown_engine_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as refused:
        parse_server({"server": {"grpc_engine": "rust"}})
    assert refused.value.key == "server.grpc_engine"
    with pytest.raises(SystemExit):
        load_config(["--grpc-engine", "rust"], {})


def test_without_pygrpc_native_auto_falls_back_and_native_is_a_config_error(monkeypatch):
    monkeypatch.setattr(engine, "NATIVE_PACKAGE", "pygrpc_native_is_not_installed")
    assert engine.choose(parse_server({})) == ("grpcio", "auto: pygrpc-native is not installed")
    with pytest.raises(ConfigError) as refused:
        engine.choose(parse_server({"server": {"grpc_engine": "native"}}))
    assert refused.value.key == "server.grpc_engine" and "pygrpc-native" in str(refused.value)


def test_a_pygrpc_native_that_cannot_load_is_not_picked(monkeypatch):
    """Installed but not importable (a wheel for another platform, a missing shared library): auto serves grpcio
    and says why, instead of failing at start-up."""
    real = engine.importlib.import_module

    def broken(name: str):
        if name.startswith(engine.NATIVE_PACKAGE):
            raise ImportError("libfoo.so: cannot open shared object file", name="pygrpc_native._native")
        return real(name)

    monkeypatch.setattr(engine.importlib, "import_module", broken)
    chosen, why = engine.choose(parse_server({}))
    assert chosen == "grpcio" and why.startswith("auto: pygrpc-native does not load: libfoo.so")


@pytest.mark.parametrize("server, key", CONFLICTS)
def test_native_in_a_config_built_without_the_parser_is_refused_too(server, key):
    cfg = dataclasses.replace(parse_server({"server": server}), grpc_engine="native")
    with pytest.raises(ConfigError) as refused:
        engine.choose(cfg)
    assert refused.value.key == "server.grpc_engine" and key in str(refused.value)


class Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


async def test_no_deadline_reads_the_same_from_either_engine():
    """grpc.aio says "no deadline" with None, the native engine with sys.maxsize seconds: both are no deadline, and a
    real one is a deadline in event-loop time."""
    assert deadline_of(Context(None)) is None
    assert deadline_of(Context(float(sys.maxsize))) is None
    now = asyncio.get_running_loop().time()
    assert now + 1.5 <= deadline_of(Context(1.5)) <= asyncio.get_running_loop().time() + 1.5
