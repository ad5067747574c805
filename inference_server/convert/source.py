"""SOURCE to a loaded model: where it is (models:/, runs:/ or a local MLflow model directory), its flavor, its
signature and input example, and the model itself, loaded with the flavor's MLflow loader."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_server.convert import BadInput

log = logging.getLogger(__name__)

FLAVORS = ("sklearn", "xgboost", "lightgbm")  # in the order they are looked for in MLmodel
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(/(?P<version>\d+)|@(?P<alias>[^/@]+))")
_RUNS_URI = re.compile(r"runs:/[^/]+/.+")
TRUST_WARNING = ("WARNING: loading {source} runs the model's own code (MLflow's {flavor} loader deserialises it "
                 "with pickle or skops): convert only models you trust.")


@dataclass(frozen=True)
class Source:
    uri: str
    flavor: str  # one of FLAVORS
    directory: Path  # the local MLflow model directory (holds MLmodel)
    signature: Any  # mlflow.models.ModelSignature or None
    example: Any  # the logged input example (a DataFrame, an ndarray or a dict), or None


def check_registry_env() -> None:
    """MLflow reads MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI itself (as the server's MLflow source does). The
    tracking URI is needed here, unlike in the server: the run that logs the ONNX model goes there. Without it
    MLflow would log and register into a new local store, which no server would read."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise BadInput("no registry: set MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI where the registry is elsewhere)")


def is_remote(uri: str) -> bool:
    """True for models:/ and runs:/ URIs; BadInput for any other scheme or a malformed one."""
    if uri.startswith("models:"):
        if not _MODELS_URI.fullmatch(uri):
            raise BadInput(f"{uri}: use models:/NAME/VERSION or models:/NAME@ALIAS")
        return True
    if uri.startswith("runs:"):
        if not _RUNS_URI.fullmatch(uri):
            raise BadInput(f"{uri}: use runs:/RUN_ID/PATH")
        return True
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri):
        raise BadInput(f"{uri}: unsupported scheme; SOURCE is models:/NAME/VERSION, models:/NAME@ALIAS, "
                       "runs:/RUN_ID/PATH or a local MLflow model directory")
    return False


def fetch(uri: str, into: Path) -> Path:
    """The local MLflow model directory of `uri`: downloaded into `into` when remote."""
    if not is_remote(uri):
        directory = Path(uri)
        if not (directory / "MLmodel").is_file():
            raise BadInput(f"{uri}: not an MLflow model directory (no MLmodel file)")
        return directory
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(into)))
    except MlflowException as e:
        raise BadInput(f"{uri}: {e.message}") from None
    if not (local / "MLmodel").is_file():
        raise BadInput(f"{uri}: not an MLflow model (no MLmodel file)")
    return local


def describe(uri: str, directory: Path) -> Source:
    """Read MLmodel: the convertible flavor, the signature and the input example. Nothing is loaded yet."""
    from mlflow.models import Model

    try:
        meta = Model.load(str(directory / "MLmodel"))
    except Exception as e:  # a YAML or schema error in MLmodel
        raise BadInput(f"{uri}: unreadable MLmodel: {e}") from None
    flavor = next((f for f in FLAVORS if f in meta.flavors), None)
    if flavor is None:
        found = ", ".join(sorted(f for f in meta.flavors if f != "python_function")) or "none"
        raise BadInput(f"{uri}: flavor {found} cannot be converted; supported: {', '.join(FLAVORS)}")
    try:
        example = meta.load_input_example(str(directory))
    except Exception as e:  # a missing or unreadable example file
        log.warning("the input example of %s cannot be read (%s); the check draws rows instead", uri, e)
        example = None
    if meta.signature is None and example is None:
        raise BadInput(f"{uri}: the model has neither a signature nor an input example, so its input is unknown; "
                       "log it again with input_example= (or signature=)")
    return Source(uri, flavor, directory, meta.signature, example)


def load(source: Source) -> Any:
    """The original model, through MLflow's own loader for its flavor (this runs the model's code)."""
    import importlib

    from mlflow.exceptions import MlflowException

    loader = importlib.import_module(f"mlflow.{source.flavor}")
    # MLflow refuses to deserialise a model unless this is set: the user asked for this model to be loaded.
    previous = os.environ.get("MLFLOW_ALLOW_MODEL_CODE_EXECUTION")
    os.environ["MLFLOW_ALLOW_MODEL_CODE_EXECUTION"] = "true"
    try:
        return loader.load_model(str(source.directory))
    except ImportError as e:
        raise BadInput(f"{source.uri}: loading its {source.flavor} model needs {e.name}: install it") from None
    except MlflowException as e:
        raise BadInput(f"{source.uri}: MLflow cannot load it: {e.message}") from None
    except Exception as e:  # a missing or corrupted model file: FileNotFoundError, UnpicklingError, BadZipFile, ...
        raise BadInput(f"{source.uri}: its {source.flavor} model cannot be loaded: {type(e).__name__}: {e}") from None
    finally:
        if previous is None:
            del os.environ["MLFLOW_ALLOW_MODEL_CODE_EXECUTION"]
        else:
            os.environ["MLFLOW_ALLOW_MODEL_CODE_EXECUTION"] = previous
