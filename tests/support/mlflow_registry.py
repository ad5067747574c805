"""A real, local MLflow model registry for tests: sqlite:/// metadata plus a file:// artifact directory.

Needs the `mlflow` extra (mlflow-skinny + sqlalchemy + alembic). Opening a new registry runs MLflow's database
migrations (about 1.3 s), so share one per test module. `register` logs files as plain artifacts (an .onnx, or
what mlflow.onnx.save_model wrote: tests/integration/test_mlflow_flavor.py); mlflow.onnx.log_model also works
with the dev extra (it imports pandas).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class Registry:
    """A registry under `tmp`; `uri` is its tracking (and registry) URI, `env()` what a server process needs."""

    def __init__(self, tmp: Path) -> None:
        from mlflow import MlflowClient

        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{self.tmp / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        existing = self.client.get_experiment_by_name("tests")  # reopening the same directory is fine
        self.experiment_id = existing.experiment_id if existing is not None else self.client.create_experiment(
            "tests", artifact_location=(self.tmp / "artifacts").as_uri())

    def env(self) -> dict[str, str]:
        """Environment variables for a server subprocess that reads this registry."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}

    def register(self, name: str, onnx_bytes: bytes | None, *, extra_files: dict[str, bytes] | None = None,
                 alias: str | None = None, filename: str = "model.onnx") -> str:
        """Log `filename` (unless `onnx_bytes` is None) and `extra_files` (relative paths) under the run's
        artifact path "model", register them as a new version of `name`, optionally point `alias` at it.
        Returns the new version number."""
        from mlflow.exceptions import MlflowException

        files = dict(extra_files or {})
        if onnx_bytes is not None:
            files[filename] = onnx_bytes
        run = self.client.create_run(self.experiment_id)
        with tempfile.TemporaryDirectory() as staging:
            for relative, data in files.items():
                path = Path(staging, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            # The client's log_artifacts (not the fluent mlflow.log_artifact) keeps the URI off the globals.
            self.client.log_artifacts(run.info.run_id, staging, artifact_path="model")
        self.client.set_terminated(run.info.run_id)
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
        if alias is not None:
            self.set_alias(name, alias, version)
        return str(version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    def transition_stage(self, name: str, version: str, stage: str) -> None:
        """Deprecated in MLflow (aliases replace stages) but still works; MLflow warns with a FutureWarning."""
        self.client.transition_model_version_stage(name, version, stage)

    def delete_version(self, name: str, version: str) -> None:
        self.client.delete_model_version(name, version)


def mlflow_available() -> bool:
    """True when mlflow (the `mlflow` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None
