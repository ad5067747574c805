"""Every TOML example in the README is a config the server accepts, so the documentation cannot drift from
the parser."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from inference_server.config.cli import load_config
from inference_server.config.server import ServerConfig, parse_model

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)


def test_every_toml_example_in_the_readme_is_accepted(tmp_path):
    found = blocks()
    assert len(found) >= 4
    for i, text in enumerate(found):
        doc = tomllib.loads(text)
        if not ({"server", "monitoring", "cache", "models", "routes"} & doc.keys()):  # a model's config.toml
            parse_model(doc, "", ServerConfig(), name="m", path=Path("m.onnx"))
            continue
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        load_config(["--config", str(path)], {"REDIS_URL": "redis://127.0.0.1:6379/0"})
