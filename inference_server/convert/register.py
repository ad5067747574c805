"""The checked ONNX model as a new version of a registered model (mlflow.onnx.log_model), with the source and the
check's result as version tags, and the alias pointed at it. MLflow reads MLFLOW_TRACKING_URI /
MLFLOW_REGISTRY_URI (and MLFLOW_EXPERIMENT_NAME for the run) itself."""

from __future__ import annotations

import logging
from typing import Any

from inference_server.convert.check import Result, Rows
from inference_server.convert.onnx_export import Layout

log = logging.getLogger(__name__)

TAG_SOURCE = "inference_server.convert.source"
TAG_CHECK = "inference_server.convert.check"
ARTIFACT_NAME = "model"
EXAMPLE_ROWS = 5
# The server picks its device from its own settings; tree ensembles and small pipelines run on CPU.
PROVIDERS = ["CPUExecutionProvider"]


def register(onnx_model: Any, name: str, alias: str | None, layout: Layout, rows: Rows, result: Result,
             source_uri: str) -> str:
    """Log, register, tag and alias; returns the new version number."""
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    example = {layout.name: rows.onnx[:EXAMPLE_ROWS]}
    signature = infer_signature(example, _outputs(onnx_model, example))
    with mlflow.start_run(run_name=f"convert {source_uri}") as run:
        mlflow.set_tags({TAG_SOURCE: source_uri, TAG_CHECK: result.summary()})
        info = mlflow.onnx.log_model(onnx_model, name=ARTIFACT_NAME, registered_model_name=name,
                                     signature=signature, input_example=example,
                                     onnx_execution_providers=PROVIDERS,
                                     pip_requirements=mlflow.onnx.get_default_pip_requirements())
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(name, version, TAG_SOURCE, source_uri)
    client.set_model_version_tag(name, version, TAG_CHECK, result.summary())
    if alias:
        client.set_registered_model_alias(name, alias, version)
    log.info("registered version %s of model '%s' from run %s", version, name, run.info.run_id)
    return version


def _outputs(onnx_model: Any, feeds: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=PROVIDERS)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
