"""Every TOML example in README.md and docs/*.md is a config the server accepts (an unknown key or a bad value is
refused), so the documentation cannot drift from the parser. A failure names the document's line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from inference_server.config.cli import load_config
from inference_server.config.server import ServerConfig, parse_model
from inference_server.errors import ConfigError
from tests.support.docs import DOCS, fenced


def test_every_toml_example_in_the_documents_is_accepted(tmp_path):
    found = [code for path in DOCS for code in fenced(path) if code.language == "toml"]
    assert len(found) >= 5
    for i, code in enumerate(found):
        try:
            doc = tomllib.loads(code.text)
            server_tables = {"server", "monitoring", "cache", "tracing", "models", "routes"}
            if not (server_tables & doc.keys()):  # a model's config.toml
                parse_model(doc, "", ServerConfig(), name="m", path=Path("m.onnx"))
                continue
            path = tmp_path / f"example{i}.toml"
            path.write_text(code.text)
            load_config(["--config", str(path)], {"REDIS_URL": "redis://127.0.0.1:6379/0"})
        except (tomllib.TOMLDecodeError, ConfigError, SystemExit) as e:
            pytest.fail(f"{code.where}: the TOML example is refused: {e}")
