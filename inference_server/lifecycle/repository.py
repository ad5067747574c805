"""A Triton-style model repository on disk: DIR/<model>/<version>/model.onnx with DIR/<model>/config.toml or a
Triton config.pbtxt (never both), plus the directories RepositoryModelLoad's `file:` parameters are written to.

DIR may also be one model itself (the single-model layout: DIR/model.onnx, or DIR/<version>/model.onnx, with its
config beside them; or DIR/config.pbtxt, whose default_model_filename may name another file), as KServe's storage
initializer leaves a storageUri naming one ONNX model in /mnt/models. That model is named by `[server] model_name`
(--model-name). `single_model` is the one place that tells the layouts apart; `layout_warning` names the .onnx
files of a root that is neither layout (say /mnt/models/iris.onnx), which would otherwise serve nothing silently.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from inference_server.config.model import (
    MODEL_FILE,
    ModelConfig,
    ModelDefaults,
    parse_model,
    version_key,
    version_number,
)
from inference_server.config.toml import read_toml
from inference_server.errors import ConfigError, ModelLoadError, invalid
from inference_server.lifecycle.triton_model import model_config_from_triton

CONFIG_TOML = "config.toml"
CONFIG_PBTXT = "config.pbtxt"
PbtxtReader = Callable[[str], dict[str, Any]]  # protobuf text -> Triton ModelConfig as a dict (from grpc/)
Fingerprint = tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns) of every file


@dataclass(frozen=True)
class ModelSpec:
    """What a repository offers for one model: its config and every version that has a model file."""
    name: str
    config: ModelConfig
    versions: dict[str, Path]  # version -> the model file

    def version_config(self, version: str) -> ModelConfig:
        return dataclasses.replace(self.config, version=version, path=self.versions[version])

    def selected(self) -> dict[str, ModelConfig]:
        """The versions its version_policy serves."""
        return {v: self.version_config(v) for v in self.config.version_policy.select(self.versions)}


class Repository:
    def __init__(self, root: Path, defaults: ModelDefaults, read_pbtxt: PbtxtReader,
                 model_name: str | None = None) -> None:
        self.root = root
        self._defaults = defaults
        self._read_pbtxt = read_pbtxt
        self.model_name = model_name  # the model's name when the root is one model (single_model)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError("server.model_repository", f"{self.root} is not a directory")
        if single_model(self.root):
            if self.model_name is None:
                raise ConfigError("server.model_name", f"{self.root} holds {MODEL_FILE} or {CONFIG_PBTXT} itself (or "
                                  f"{MODEL_FILE} in a version directory): it is one model, not a repository of model "
                                  "directories, and needs a name: give --model-name NAME")
            return [self.model_name]
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def describe(self) -> str:
        """The layout, for the start-up log: a --model-name that names nothing is said to be unused."""
        names = self.names()
        if single_model(self.root):
            return f"model repository {self.root} is one model, '{names[0]}'"
        unused = (f"; --model-name {self.model_name!r} is not used (it names the model of a directory holding "
                  f"{MODEL_FILE} itself)") if self.model_name is not None else ""
        return f"model repository {self.root} holds {len(names)} model(s), each named by its directory{unused}"

    def layout_warning(self) -> str | None:
        """For the start-up log: .onnx files directly in a root that is a repository of model directories, which
        serves none of them (a storageUri naming iris.onnx rather than model.onnx, say)."""
        try:
            stray = sorted(p.name for p in self.root.glob("*.onnx") if p.is_file())
        except OSError:
            return None
        if not stray or single_model(self.root):
            return None
        return (f"model repository {self.root} holds {', '.join(stray)} itself, which is not served: a repository "
                f"holds model directories (<model>/<version>/{MODEL_FILE}), and one model is {self.root}/"
                f"{MODEL_FILE} (or <version>/{MODEL_FILE}, or any file a {CONFIG_PBTXT} beside it names with "
                "default_model_filename): rename the file or add that config.pbtxt")

    def model_dir(self, name: str) -> Path | None:
        """The directory of the model's config and versions; None when the repository has no such model. A name the
        repository lacks costs one stat (it is asked on the request path: a model loaded on demand, an unknown
        name's 404); the layout (single_model, one listing of the root's names) is looked at only for a name that
        may be a model."""
        model_dir: Path | None = None
        if name and not name.startswith(".") and "/" not in name and "\\" not in name:  # never a path out of it
            model_dir = self.root / name
            if not model_dir.is_dir():
                model_dir = None
        if model_dir is None and name != self.model_name:
            return None
        if single_model(self.root):
            return self.root if name == self.model_name else None
        return model_dir

    def has(self, name: str) -> bool:
        """Whether the repository holds the model (ConfigError when the root is not a directory, as names() says)."""
        if self.model_dir(name) is not None:
            return True
        if not self.root.is_dir():
            raise ConfigError("server.model_repository", f"{self.root} is not a directory")
        return False

    def read(self, name: str, override: Mapping[str, Any] | None = None) -> ModelSpec:
        """The model's config (or `override`, a Triton config as a dict) and its versions."""
        model_dir = self.model_dir(name)
        if model_dir is None:
            raise ModelLoadError(f"model '{name}' is not in the model repository {self.root}")
        config = self._config(name, model_dir, override)
        versions = {}
        for entry in model_dir.iterdir():
            version = version_number(entry.name)
            if version is None:
                continue
            if config.ensemble is not None and entry.is_dir():  # an ensemble's version directory is empty
                versions[version] = entry
            elif (entry / config.filename).is_file():
                versions[version] = entry / config.filename
        if model_dir == self.root and (model_dir / config.filename).is_file():  # DIR/model.onnx: version 1
            if versions:
                raise ModelLoadError(f"model '{name}': {model_dir} holds {config.filename} itself and in version "
                                     f"directories ({', '.join(sorted(versions, key=version_key))}); which is "
                                     "served is ambiguous: keep one layout")
            versions["1"] = model_dir / config.filename
        if not versions:
            wanted = "<version> directory" if config.ensemble is not None else f"<version>/{config.filename}"
            raise ModelLoadError(f"model '{name}': {model_dir} has no {wanted} (versions are positive integers)")
        return ModelSpec(name, config, dict(sorted(versions.items(), key=lambda kv: version_key(kv[0]))))

    def _config(self, name: str, model_dir: Path, override: Mapping[str, Any] | None) -> ModelConfig:
        if override is not None:
            return model_config_from_triton(override, name=name, defaults=self._defaults,
                                            where="the load request's config parameter: ")
        toml, pbtxt = model_dir / CONFIG_TOML, model_dir / CONFIG_PBTXT
        if toml.is_file() and pbtxt.is_file():
            raise ModelLoadError(f"model '{name}': both {CONFIG_TOML} and {CONFIG_PBTXT} in {model_dir}; which one "
                                 "applies is ambiguous, so neither is used: keep one")
        found = pbtxt if pbtxt.is_file() else toml if toml.is_file() else None
        return read_config(found, name, self._defaults, self._read_pbtxt)

    def fingerprint(self, name: str) -> dict[str, Fingerprint] | None:
        """Per version directory (and "" for the model's own files), what changes when a file is written; None
        when the model directory is gone."""
        model_dir = self.model_dir(name)
        if model_dir is None:
            return None
        found: dict[str, list[tuple[str, int, int]]] = {}
        for dirpath, _dirs, files in os.walk(model_dir):
            rel = Path(dirpath).relative_to(model_dir)
            top = rel.parts[0] if rel.parts else ""
            for file in files:
                try:
                    st = os.stat(os.path.join(dirpath, file))
                except FileNotFoundError:  # removed between the listing and the stat
                    continue
                found.setdefault(top, []).append((str(rel / file), st.st_size, st.st_mtime_ns))
        return {key: tuple(sorted(entries)) for key, entries in found.items()}


def single_model(root: Path) -> bool:
    """Whether the directory is one model rather than a repository of model directories: it holds model.onnx or
    config.pbtxt itself (whose default_model_filename names the model file, at the root or in version
    directories), or a version directory (a positive integer) that holds model.onnx. A repository's model
    directories hold their configs and model files, never its root, and keep model files in version
    directories, so no repository reads as one model (a model named "1" holds 1/1/model.onnx, not 1/model.onnx).
    Decided at each read, so the layout may change while the server runs (poll mode, a repository a KServe
    agent fills) and every reader agrees."""
    if (root / MODEL_FILE).is_file() or (root / CONFIG_PBTXT).is_file():
        return True
    try:  # names only (no Path per entry): asked on the request path for a model not loaded (Repository.model_dir)
        return any(n.isdigit() and version_number(n) is not None and (root / n / MODEL_FILE).is_file()
                   for n in os.listdir(root))
    except OSError:  # not a directory (names() says so), or gone
        return False


def read_config(path: Path | None, name: str, defaults: ModelDefaults, read_pbtxt: PbtxtReader) -> ModelConfig:
    """A model's config.toml or config.pbtxt (None: the defaults). Errors are ModelLoadError naming the file."""
    try:
        if path is not None and path.name == CONFIG_PBTXT:
            try:
                doc = read_pbtxt(path.read_text())
            except ValueError as e:
                raise ConfigError(str(path), f"not a valid Triton model configuration: {e}") from None
            return model_config_from_triton(doc, name=name, defaults=defaults, where=f"{path}: ")
        table = read_toml(path, str(path)) if path is not None else {}
        return parse_model(table, f"{path}:", defaults, name=name, path=Path(name), version="1")
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None


_upload_ids = itertools.count(1)


def write_upload(cache_dir: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """Lay out `file:<version>/<name>` parameters as a one-model repository; returns its root."""
    if not name or "/" in name or name.startswith("."):
        raise invalid(f"model name {name!r} cannot name a directory")
    root = cache_dir / "uploads" / f"{os.getpid()}-{next(_upload_ids)}"
    for key, data in files.items():
        rel = PurePosixPath(key)
        if rel.is_absolute() or len(rel.parts) < 2 or ".." in rel.parts or version_number(rel.parts[0]) is None:
            raise invalid(f"parameter 'file:{key}': expected file:<version>/<file name> with a positive version "
                          "number and no '..'")
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
