"""A Triton-style model repository on disk: DIR/<model>/<version>/model.onnx and DIR/<model>/config.toml."""

from __future__ import annotations

from pathlib import Path

from .config import ModelConfig, ServerConfig, parse_model, read_toml
from .errors import ConfigError

MODEL_FILE = "model.onnx"
MODEL_CONFIG = "config.toml"


def scan_repository(root: Path, server: ServerConfig) -> list[ModelConfig]:
    """One ModelConfig per model directory, for its highest numbered version (Triton's default policy)."""
    if not root.is_dir():
        raise ConfigError("server.model_repository", f"{root} is not a directory")
    models = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = [v for v in model_dir.iterdir() if v.name.isdigit() and (v / MODEL_FILE).is_file()]
        if not versions:
            raise ConfigError("server.model_repository",
                              f"{model_dir} has no <version>/{MODEL_FILE} (versions are positive integers)")
        latest = max(versions, key=lambda v: int(v.name))
        config_path = model_dir / MODEL_CONFIG
        table = read_toml(config_path, str(config_path)) if config_path.is_file() else {}
        models.append(parse_model(table, f"{config_path}:", server, name=model_dir.name,
                                  path=latest / MODEL_FILE, version=str(int(latest.name))))
    if not models:
        raise ConfigError("server.model_repository", f"{root} contains no models")
    return models
