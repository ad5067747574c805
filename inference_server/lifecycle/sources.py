"""ModelSources: where a model's versions come from, and the config each one loads with.

Three sources: the model repository (DIR/<model>/<version>/, or DIR itself as one model: repository.py),
`[[models]]` entries with a path (one version each), and `[[models]]` entries with an MLflow `source` (the version
the alias, stage or number names). A
load request may also bring its own files (`file:` parameters, laid out as a one-model repository) and its
own config (a Triton ModelConfig as a dict) that replaces the model's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inference_server.config.model import ModelConfig
from inference_server.config.server import DEFAULT_REPOSITORY, ServerConfig
from inference_server.errors import ConfigError, ErrorCode, InferenceError
from inference_server.lifecycle.mlflow_source import MlflowSource
from inference_server.lifecycle.onnx_flavor import apply_flavor
from inference_server.lifecycle.repository import PbtxtReader, Repository, read_config
from inference_server.lifecycle.triton_model import model_config_from_triton

Offer = tuple[dict[str, ModelConfig], list[str]]  # every available version's config, and those to serve
OVERRIDE = "the load request's config parameter: "


class ModelSources:
    def __init__(self, cfg: ServerConfig, read_pbtxt: PbtxtReader, cache_dir: Path) -> None:
        self.cfg = cfg
        self._read_pbtxt = read_pbtxt
        self._cache_dir = cache_dir
        root = cfg.model_repository if cfg.model_repository is not None or cfg.models else DEFAULT_REPOSITORY
        self.repository = Repository(root, cfg, read_pbtxt, cfg.model_name) if root is not None else None
        self._entries: dict[str, list[ModelConfig]] = {}
        for entry in cfg.models:
            versions = self._entries.setdefault(entry.name, [])
            if entry.source is not None and versions or any(e.source or e.version == entry.version for e in versions):
                raise ConfigError("models", f"model '{entry.name}' version {entry.version} is configured more than "
                                            "once (an MLflow source stands alone)")
            versions.append(entry)
        self._mlflow: dict[str, MlflowSource] = {}
        self._registry_pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow")  # MLflow's client: one thread
        self.resolved: dict[str, str] = {}  # the MLflow version each model's last offer resolved to

    def known(self) -> list[str]:
        names = set(self._entries)
        if self.repository is not None:
            found = set(self.repository.names())
            clash = names & found
            if clash:
                raise ConfigError("models", f"model {sorted(clash)[0]!r} is both a [[models]] entry and a "
                                            f"directory of {self.repository.root}")
            names |= found
        return sorted(names)

    def has(self, name: str) -> bool:
        """Whether the model is known (a [[models]] entry or a repository directory) without listing the repository:
        asked on the request path, where known() would scan every model directory (ConfigError when the repository
        root is not a directory)."""
        return name in self._entries or (self.repository is not None and self.repository.has(name))

    def in_repository(self, name: str) -> bool:
        """A model the repository provides (not a [[models]] entry): poll mode follows these."""
        return name not in self._entries

    def required(self, name: str) -> bool:
        """Whether strict readiness waits for the model (a route's MLflow alias companion does not)."""
        entries = self._entries.get(name)
        return not entries or entries[0].required

    def registry_entries(self) -> dict[str, ModelConfig]:
        """The [[models]] entries served from an MLflow registry, by model name."""
        return {name: entries[0] for name, entries in self._entries.items() if entries[0].source is not None}

    async def resolve(self, name: str) -> str:
        """The version an MLflow source names now (SourceError when the registry cannot say)."""
        source = self._source(name)
        return await asyncio.get_running_loop().run_in_executor(self._registry_pool, source.resolve)

    async def offer(self, name: str, override: Mapping[str, Any] | None = None, upload: Path | None = None,
                    mlflow_version: str | None = None) -> Offer:
        """The model's versions and the ones to serve. Raises ModelLoadError or ConfigError (a config that
        cannot be used), InferenceError NOT_FOUND (no such model)."""
        self.resolved.pop(name, None)
        if upload is not None:
            spec = Repository(upload, self.cfg, self._read_pbtxt).read(name, override)
        elif name in self._entries:
            entries = self._entries[name]
            if entries[0].source is not None:
                return await self._mlflow_offer(name, entries[0], override, mlflow_version)
            configs = {e.version: self._with_override(e, override) for e in entries}
            return configs, list(configs)
        elif self.repository is not None and self.repository.model_dir(name) is not None:
            spec = self.repository.read(name, override)
        else:
            raise InferenceError(ErrorCode.NOT_FOUND, f"model '{name}' is not in the model repository")
        available = {v: spec.version_config(v) for v in spec.versions}
        return available, spec.config.version_policy.select(available)

    def _with_override(self, entry: ModelConfig, override: Mapping[str, Any] | None) -> ModelConfig:
        if override is None:
            return entry
        base = model_config_from_triton(override, name=entry.name, defaults=self.cfg, where=OVERRIDE)
        return dataclasses.replace(base, path=entry.path, version=entry.version, source=entry.source,
                                   poll_interval_s=entry.poll_interval_s)

    def _source(self, name: str) -> MlflowSource:
        if name not in self._mlflow:
            entry = self.registry_entries()[name]
            assert entry.source is not None
            self._mlflow[name] = MlflowSource(entry.source, self._cache_dir / "mlflow")
        return self._mlflow[name]

    async def _mlflow_offer(self, name: str, entry: ModelConfig, override: Mapping[str, Any] | None,
                            version: str | None) -> Offer:
        """Resolve the alias to a version number first, then fetch that version (an alias that moves during
        the download cannot mix versions). A config file beside the .onnx is the model's config; the MLmodel's
        onnx flavour fills in the session settings it leaves out (lifecycle/onnx_flavor.py)."""
        source = self._source(name)
        loop = asyncio.get_running_loop()
        if version is None:
            version = await loop.run_in_executor(self._registry_pool, source.resolve)
        self.resolved[name] = version
        fetched = await loop.run_in_executor(self._registry_pool, source.fetch, version)
        base = entry
        if fetched.config_file is not None:
            base = dataclasses.replace(read_config(fetched.config_file, name, self.cfg, self._read_pbtxt),
                                       source=entry.source, poll_interval_s=entry.poll_interval_s)
        cfg = dataclasses.replace(self._with_override(base, override), path=fetched.model_file, version=version)
        return {version: apply_flavor(cfg, fetched.flavor)}, [version]

    def close(self) -> None:
        self._registry_pool.shutdown(wait=False, cancel_futures=True)
