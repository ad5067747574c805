"""Models from an MLflow model registry: resolve models:/NAME@ALIAS (or /VERSION, /STAGE) to a version, download it.

The only module that imports mlflow, and only inside functions: the default install has no mlflow (it is the
`mlflow` extra). The API is synchronous and the MLflow client is not thread-safe, so the caller makes every call
from one worker thread. Registry and tracking URIs come from MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, read
at construction; nothing here calls mlflow.set_*_uri. MLflow's own HTTP retry and timeout settings
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT) are left to the user.

The MLmodel's onnx flavour, when there is one, names the .onnx file and gives session settings (read here,
applied by lifecycle/onnx_flavor.py); the whole artifact directory is downloaded, external data files included.

Only ONNX files are served: a version with no .onnx (say an mlflow.sklearn model, saved as skops by default since
MLflow 3, or as a pickle) is refused, and nothing from the artifact is ever unpickled, deserialised or imported.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from inference_server.config.model import check_source
from inference_server.config.server import redact_url
from inference_server.errors import ConfigError, ModelLoadError
from inference_server.lifecycle.onnx_flavor import Flavor, read_flavor

log = logging.getLogger(__name__)
T = TypeVar("T")
INSTALL_HINT = "install the mlflow extra: pip install 'inference_server[mlflow]'"
STAGES = ("none", "staging", "production", "archived")  # MLflow's (deprecated) stages, matched case-insensitively
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # registries MLflow opens with sqlalchemy
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")


class SourceError(ModelLoadError):
    """The registry or the model version cannot be used; the message is safe to show a client."""


class RegistryUnreachable(SourceError):
    """The registry did not answer: worth asking again later (unlike a version that cannot be served)."""


@dataclass(frozen=True)
class Fetched:
    version: str
    directory: Path  # cache_dir/NAME/VERSION: the artifact tree of the model version
    model_file: Path
    config_file: Path | None  # config.toml or config.pbtxt beside the .onnx
    flavor: Flavor = Flavor()  # what its MLmodel's onnx flavour asks of the session (onnx_flavor.py)


def _redact(uri: str) -> str:
    return redact_url(uri) if "://" in uri else uri


class MlflowSource:
    def __init__(self, uri: str, cache_dir: Path) -> None:
        try:
            self.name, self._ref = check_source(uri, "source")
        except ConfigError as e:
            raise SourceError(str(e)) from None
        if self.name in (".", "..") or "\x00" in self.name:
            raise SourceError(f"invalid registered model name {self.name!r}")
        if importlib.util.find_spec("mlflow") is None:
            raise SourceError(f"{uri} needs MLflow: {INSTALL_HINT}")
        self.uri = uri
        self.cache_dir = Path(cache_dir)
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        self.registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or None  # None: MLflow derives it from tracking
        if self.tracking_uri is None and self.registry_uri is None:
            # MLflow would silently create an empty ./mlflow.db instead.
            raise SourceError(f"{uri} needs a registry: set MLFLOW_TRACKING_URI (e.g. http://mlflow:5000)")
        self._where = _redact(self.registry_uri or self.tracking_uri or "")
        scheme = (self.registry_uri or self.tracking_uri or "").partition(":")[0].partition("+")[0]
        if scheme in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
            raise SourceError(f"MLflow registry at {self._where} needs sqlalchemy and alembic: {INSTALL_HINT}")
        self._client: Any = None

    # -- registry calls ------------------------------------------------------------------------------------------
    def _scrub(self, error: BaseException) -> str:
        text = _USERINFO.sub(r"\1", str(error) or type(error).__name__)
        for uri in (self.tracking_uri, self.registry_uri):
            password = urlsplit(uri).password if uri and "://" in uri else None
            if password:
                text = text.replace(password, "***")
        return text if len(text) <= 400 else text[:400] + " ..."

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one MLflow call; a missing model/alias/version names `what`, anything else is 'unreachable'."""
        try:
            return fn()
        except SourceError:
            raise
        except Exception as e:  # MlflowException, requests/OSError, sqlalchemy, a missing DB driver ...
            code = getattr(e, "error_code", None)  # MlflowException; a missing alias is INVALID_PARAMETER_VALUE
            if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(e)):
                raise SourceError(f"{what} not found in the MLflow registry at {self._where}") from None
            raise RegistryUnreachable(f"MLflow registry at {self._where} is unreachable: {self._scrub(e)}") from None

    def _mlflow(self) -> Any:
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError as e:
                raise SourceError(f"cannot import mlflow ({e}): {INSTALL_HINT}") from None
            self._client = self._call("the registry", lambda: MlflowClient(tracking_uri=self.tracking_uri,
                                                                registry_uri=self.registry_uri))
        return self._client

    def resolve(self) -> str:
        """The version number the URI points at now."""
        client, name, ref = self._mlflow(), self.name, self._ref
        if ref.startswith("@"):
            mv = self._call(f"alias '{ref[1:]}' of model '{name}'", lambda: client.get_model_version_by_alias(
                name, ref[1:]))
        elif ref.isdigit():
            mv = self._call(f"version {ref} of model '{name}'", lambda: client.get_model_version(name, ref))
        elif ref.lower() in STAGES or ref.lower() == "latest":
            stages = None if ref.lower() == "latest" else [ref]
            found = self._call(f"model '{name}'", lambda: client.get_latest_versions(name, stages=stages))
            if not found:
                raise SourceError(f"model '{name}' has no version in stage '{ref}' in the MLflow registry at "
                                  f"{self._where}")
            mv = max(found, key=lambda v: int(v.version))
        else:
            raise SourceError(f"{self.uri}: '{ref}' is not a version number, an MLflow stage ("
                              f"{', '.join(s.title() for s in STAGES)}) or 'latest'; use models:/NAME@ALIAS")
        status = str(getattr(mv, "status", "READY") or "READY")
        if status != "READY":
            raise SourceError(f"version {mv.version} of model '{name}' is not ready in the registry ({status})")
        return str(mv.version)

    # -- download ------------------------------------------------------------------------------------------------
    def fetch(self, version: str) -> Fetched:
        """Download models:/NAME/<version> into cache_dir/NAME/<version>/ unless a complete copy is there."""
        if not version.isdigit():
            raise SourceError(f"model version must be a number, got {version!r}")
        final = self.cache_dir / quote(self.name, safe="") / version
        if final.is_dir():
            return self._fetched(version, final)
        client = self._mlflow()
        what = f"version {version} of model '{self.name}'"
        source = self._call(what, lambda: client.get_model_version_download_uri(self.name, version))
        final.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=final.parent))
        try:
            # Not download_artifacts("models:/...", registry_uri=...): MLflow 3.17 resolves models:/ URIs through
            # the global registry URI, not the one passed in. Download the version's own artifact location.
            from mlflow.artifacts import download_artifacts

            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in server logs
            local = Path(self._call(what, lambda: download_artifacts(
                artifact_uri=source, dst_path=str(partial), tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri)))
            tree = local if local.is_dir() else partial
            self._fetched(version, tree)  # refuse a version with no usable .onnx before caching it
            try:
                tree.rename(final)
            except OSError:
                if not final.is_dir():  # else someone else completed the same download first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("downloaded %s of model '%s' from %s in %.2f s", version, self.name, self._where,
                 time.monotonic() - started)
        return self._fetched(version, final)

    def _fetched(self, version: str, root: Path) -> Fetched:
        model, flavor = self._find_onnx(version, root)
        configs = [p for p in (model.parent / "config.toml", model.parent / "config.pbtxt") if p.is_file()]
        if len(configs) > 1:
            raise SourceError(f"version {version} of model '{self.name}' is ambiguous: it has both config.toml "
                              f"and config.pbtxt beside {model.name}")
        try:
            settings = read_flavor(flavor)  # what the model's config may override is resolved at load (apply_flavor)
        except ConfigError as e:
            raise SourceError(f"version {version} of model '{self.name}': {e}") from None
        return Fetched(version, root, model, configs[0] if configs else None, settings)

    def _find_onnx(self, version: str, root: Path) -> tuple[Path, dict[str, Any]]:
        """The .onnx file, and the MLmodel's onnx flavour table (empty when there is none)."""
        what = f"version {version} of model '{self.name}'"
        flavours: list[str] = []
        flavor: dict[str, Any] = {}
        mlmodels = sorted(root.rglob("MLmodel"), key=lambda p: (len(p.parts), str(p)))
        if mlmodels:
            import yaml  # comes with mlflow-skinny

            try:
                doc = yaml.safe_load(mlmodels[0].read_text(encoding="utf-8")) or {}
                flavour_table = doc.get("flavors") or {}
                flavours = sorted(flavour_table)
            except (OSError, UnicodeError, yaml.YAMLError, AttributeError) as e:
                raise SourceError(f"{what} has an unreadable MLmodel file: {e}") from None
            onnx = flavour_table.get("onnx")
            flavor = onnx if isinstance(onnx, dict) else {}
            if flavor.get("data") or flavor.get("model"):
                path = mlmodels[0].parent / str(flavor.get("data") or flavor.get("model"))
                if not path.resolve().is_relative_to(root.resolve()) or not path.is_file():
                    raise SourceError(f"{what}: the onnx flavour of its MLmodel names {path.name}, which is not in "
                                      "the model's artifacts")
                return path, flavor
        found = sorted(root.rglob("*.onnx"))
        if len(found) == 1:
            return found[0], flavor
        if found:
            names = ", ".join(str(p.relative_to(root)) for p in found)
            raise SourceError(f"{what} has several .onnx files and no MLmodel onnx flavour to choose one: {names}")
        listed = f" (its MLmodel has flavours: {', '.join(flavours)})" if flavours else ""
        raise SourceError(
            f"{what} has no ONNX file{listed}. This server serves only ONNX models and never loads a model of "
            "another flavour (a pickle or cloudpickle runs code as it loads; skops and every other format need "
            "that flavour's library and code): export the model to ONNX and log it with mlflow.onnx.log_model or "
            "mlflow.log_artifact; an sklearn, xgboost or lightgbm model can be converted, checked and registered "
            f"with `python -m inference_server.convert models:/{self.name}/{version} --register NAME`.")
