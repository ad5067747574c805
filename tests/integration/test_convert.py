"""`python -m inference_server.convert` on a real local MLflow registry (sqlite:/// + file:// artifacts): models
logged the usual way (mlflow.sklearn / mlflow.xgboost / mlflow.lightgbm) are converted, checked and registered,
then served by alias by a real server whose answers are compared with the original model's predictions on rows
neither the conversion nor the check saw. A conversion that changes answers is refused (exit 1) and registers
nothing; bad input exits 2 (before any model code runs where it can), a converted model ONNX Runtime cannot run or
any unexpected error 3, never 1.

The command runs in-process (main(argv)), so scikit-learn and the converters are imported once per session.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.mlflow_registry import Registry

CONVERT_MODULES = ("mlflow", "sklearn", "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "pandas", "skops")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in CONVERT_MODULES),
                       reason="needs the convert extra: pip install -e '.[cpu,convert,dev]'"),
]

import pandas as pd  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from inference_server.config.server import parse_server  # noqa: E402
from inference_server.convert.__main__ import main  # noqa: E402
from inference_server.convert.register import TAG_CHECK, TAG_SOURCE  # noqa: E402
from tests.conftest import ServerThread  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

COLUMNS = ["a", "b", "c", "d"]
ALIAS = "serving"
WARNING = "runs the model's own code"


def frame(seed: int, rows: int, offset: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))) + offset, columns=COLUMNS)


TRAIN, UNSEEN = frame(0, 120), frame(99, 24)  # UNSEEN: what the served models answer, never logged


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def convert(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for the module; MLflow (and the command) find it through the environment, and runs go to its
    own experiment (the default one would put artifacts under ./mlruns)."""
    registry = Registry(tmp_path_factory.mktemp("mlflow"))
    with pytest.MonkeyPatch.context() as env:
        for key, value in registry.env().items():
            env.setenv(key, value)
        env.delenv("MLFLOW_REGISTRY_URI", raising=False)
        env.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
        yield registry


def log(flavor: str, model: Any, *, name: str | None = None, example: bool = True, **options: Any) -> str:
    """Log `model` with mlflow.<flavor>.log_model as users do (an input example, or only a signature), optionally
    registering it as `name`; returns the run's runs:/ URI of the model."""
    import importlib

    import mlflow
    from mlflow.models import infer_signature

    module = importlib.import_module(f"mlflow.{flavor}")
    first = {"sklearn": "sk_model", "xgboost": "xgb_model", "lightgbm": "lgb_model"}[flavor]
    extra: dict[str, Any] = ({"input_example": TRAIN.head(8)} if example
                             else {"signature": infer_signature(TRAIN, model.predict(TRAIN))})
    with mlflow.start_run() as run:
        module.log_model(**{first: model}, name="model", registered_model_name=name,
                         pip_requirements=[flavor if flavor != "sklearn" else "scikit-learn"], **extra, **options)
    return f"runs:/{run.info.run_id}/model"


@dataclass(frozen=True)
class Original:
    source: str  # what the command is given
    answers: Callable[[pd.DataFrame], dict[str, np.ndarray]]  # the original's answers, named as the ONNX outputs


def classifier(labels: Callable[[pd.DataFrame], Any], probabilities: Callable[[pd.DataFrame], Any]) -> Callable[
        [pd.DataFrame], dict[str, np.ndarray]]:
    return lambda rows: {"label": np.asarray(labels(rows)), "probabilities": np.asarray(probabilities(rows))}


def regressor(values: Callable[[pd.DataFrame], Any]) -> Callable[[pd.DataFrame], dict[str, np.ndarray]]:
    return lambda rows: {"variable": np.asarray(values(rows)).reshape(-1, 1)}


def originals(registry: Registry, tmp: Path) -> dict[str, Original]:
    """The models of the issue (and raw Boosters, as xgboost.train and lightgbm.train make them), each given to the
    command through a different kind of SOURCE."""
    import lightgbm
    import mlflow.lightgbm
    import xgboost
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    three_classes = np.digitize(TRAIN.a + 0.5 * TRAIN.b, [-0.5, 0.5])
    two_classes = (TRAIN.a * TRAIN.c > 0).astype(int)
    target = 2.0 * TRAIN.a + TRAIN.b ** 2 - TRAIN.d

    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(TRAIN, three_classes)
    log("sklearn", pipeline, name="pipeline-trained")
    registry.set_alias("pipeline-trained", "trained", "1")

    forest = RandomForestRegressor(n_estimators=4, max_depth=4, random_state=0).fit(TRAIN, target)
    # A signature and no input example: the check draws rows. skops asks for trees' node storage to be trusted.
    forest_run = log("sklearn", forest, example=False, skops_trusted_types=["sklearn.tree._tree.Tree"])

    boosted = xgboost.XGBClassifier(n_estimators=6, max_depth=3).fit(TRAIN, two_classes)
    log("xgboost", boosted, name="xgboost-trained")

    light = lightgbm.LGBMRegressor(n_estimators=6, num_leaves=4, min_child_samples=5, verbose=-1).fit(TRAIN, target)
    mlflow.lightgbm.save_model(light, str(tmp / "lightgbm"), input_example=TRAIN.head(8),
                               pip_requirements=["lightgbm"])

    xgb_booster = xgboost.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                                xgboost.DMatrix(TRAIN, label=three_classes), num_boost_round=5)
    xgb_booster_run = log("xgboost", xgb_booster)
    lgb_booster = lightgbm.train({"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 5, "verbose": -1},
                                 lightgbm.Dataset(TRAIN, label=two_classes), num_boost_round=5)
    lgb_booster_run = log("lightgbm", lgb_booster)

    def xgb_probabilities(rows: pd.DataFrame) -> np.ndarray:
        return xgb_booster.predict(xgboost.DMatrix(rows))

    def lgb_probabilities(rows: pd.DataFrame) -> np.ndarray:
        return np.stack([1 - lgb_booster.predict(rows), lgb_booster.predict(rows)], axis=1)

    return {
        "pipeline": Original("models:/pipeline-trained@trained", classifier(pipeline.predict, pipeline.predict_proba)),
        "forest": Original(forest_run, regressor(forest.predict)),
        "xgboost": Original("models:/xgboost-trained/1", classifier(boosted.predict, boosted.predict_proba)),
        "lightgbm": Original(str(tmp / "lightgbm"), regressor(light.predict)),
        "xgboost-booster": Original(xgb_booster_run, classifier(lambda r: xgb_probabilities(r).argmax(axis=1),
                                                               xgb_probabilities)),
        "lightgbm-booster": Original(lgb_booster_run, classifier(lambda r: lgb_booster.predict(r) > 0.5,
                                                                lgb_probabilities)),
    }


@pytest.fixture(scope="module")
def converted(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Original, Run]]:
    """Each original converted and registered as NAME-onnx with the alias, by the command."""
    models = originals(registry, tmp_path_factory.mktemp("models"))
    return {name: (original, convert(original.source, "--register", f"{name}-onnx", "--alias", ALIAS))
            for name, original in models.items()}


@pytest.mark.parametrize("name", ["pipeline", "forest", "xgboost", "lightgbm", "xgboost-booster", "lightgbm-booster"])
def test_each_model_is_checked_and_registered_with_its_source_and_check_as_tags(
        converted: dict[str, tuple[Original, Run]], registry: Registry, name: str) -> None:
    original, run = converted[name]
    assert run.code == 0, run.stdout + run.stderr
    assert WARNING in run.stderr and "trust" in run.stderr
    assert "check passed on" in run.stdout
    origin = "drawn from the signature" if name == "forest" else "the logged input example"
    assert origin in run.stdout
    version = registry.client.get_model_version_by_alias(f"{name}-onnx", ALIAS)
    assert str(version.version) == "1"
    assert version.tags[TAG_SOURCE] == original.source
    assert version.tags[TAG_CHECK].startswith("passed on ")
    assert f"serve it as models:/{name}-onnx@{ALIAS}" in run.stdout


def test_the_converted_models_served_by_alias_answer_like_the_originals(
        converted: dict[str, tuple[Original, Run]], tmp_path: Path) -> None:
    assert all(run.code == 0 for _, run in converted.values())
    cfg = parse_server({
        "server": {"port": 0, "metrics_port": 0, "http_port": 0, "drain_grace_s": 5,
                   "model_cache_dir": str(tmp_path / "cache")},
        "models": [{"name": name, "source": f"models:/{name}-onnx@{ALIAS}"} for name in converted]})
    server = ServerThread(cfg).start()
    rows = UNSEEN.to_numpy(np.float32)
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for name, (original, _) in converted.items():
                wait_until(lambda name=name: client.is_model_ready(name), f"{name} ready", timeout_s=30)
                request = grpcclient.InferInput("input", list(rows.shape), "FP32")
                request.set_data_from_numpy(rows)
                result = client.infer(name, [request])
                expected = original.answers(UNSEEN)
                for output, values in expected.items():
                    if output == "label":
                        np.testing.assert_array_equal(result.as_numpy(output), values.astype(np.int64), err_msg=name)
                    else:
                        np.testing.assert_allclose(result.as_numpy(output), values, rtol=1e-4, atol=1e-5,
                                                   err_msg=name)
    finally:
        server.stop()


def refused_models() -> dict[str, Any]:
    """Features near 1e8, where float32 keeps steps of 8: a scaler + classifier whose labels change, and a
    regressor whose values do, once their input is the ONNX model's FP32."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    far = frame(5, 40) * 3 + 1e8
    return {"labels": (make_pipeline(StandardScaler(), LogisticRegression()).fit(far, (far.a > 1e8).astype(int)), far),
            "values": (LinearRegression().fit(far, far.a - 1e8), far)}


@pytest.mark.parametrize("kind", ["labels", "values"])
def test_a_conversion_that_changes_answers_is_refused_and_registers_nothing(registry: Registry, kind: str) -> None:
    import mlflow.sklearn

    model, rows = refused_models()[kind]
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model", input_example=rows.head(20), pip_requirements=["scikit-learn"])
    result = convert(f"runs:/{run.info.run_id}/model", "--register", f"refused-{kind}", "--alias", ALIAS)
    assert result.code == 1, result.stdout + result.stderr
    assert "check failed on 20 rows" in result.stdout and "largest difference" in result.stdout
    assert ("labels differ" in result.stdout) == (kind == "labels")
    assert "refused" in result.stderr
    assert registry.client.search_model_versions(f"name='refused-{kind}'") == []


def write_mlmodel(directory: Path, text: str) -> str:
    directory.mkdir()
    (directory / "MLmodel").write_text(text)
    return str(directory)


@pytest.mark.parametrize("case", ["scheme", "malformed", "no-mlmodel", "pytorch", "unknown-input", "text-column",
                                  "no-registry", "missing-version"])
def test_bad_input_exits_2_with_a_reason_before_any_model_code_runs(registry: Registry, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      case: str) -> None:
    sources = {
        "scheme": ("s3://bucket/model", "unsupported scheme"),
        "malformed": ("models:/name", "use models:/NAME/VERSION or models:/NAME@ALIAS"),
        "no-mlmodel": (str(tmp_path), "no MLmodel file"),
        "pytorch": (write_mlmodel(tmp_path / "torch", "flavors:\n  pytorch:\n    model_data: data\n"),
                    "flavor pytorch cannot be converted; supported: sklearn, xgboost, lightgbm"),
        "unknown-input": (write_mlmodel(tmp_path / "bare", "flavors:\n  sklearn:\n    pickled_model: model.pkl\n"),
                          "neither a signature nor an input example"),
        "text-column": (write_mlmodel(tmp_path / "text", "flavors:\n  sklearn:\n    pickled_model: model.pkl\n"
                                      "signature:\n  inputs: '[{\"type\": \"double\", \"name\": \"a\"}, "
                                      "{\"type\": \"string\", \"name\": \"city\"}]'\n"),
                        "columns city (string) are not numeric"),
        "no-registry": ("models:/pipeline-trained/1", "no registry: set MLFLOW_TRACKING_URI"),
        "missing-version": ("models:/never-registered/3", "never-registered"),
    }
    source, reason = sources[case]
    if case == "no-registry":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    result = convert(source, "--register", "bad-input")
    assert result.code == 2, result.stdout + result.stderr
    assert reason in result.stderr
    assert WARNING not in result.stderr  # refused before anything was loaded
    assert registry.client.search_model_versions("name='bad-input'") == []


def saved_classifier(directory: Path, features_expected: int | None = None) -> Path:
    """A local MLflow sklearn model directory with an input example. features_expected: the fitted model claims
    that many features afterwards, so its own predict raises on the example while its coefficients convert."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(TRAIN, (TRAIN.a > 0).astype(int))
    if features_expected is not None:
        model.n_features_in_ = features_expected
    mlflow.sklearn.save_model(model, str(directory), input_example=TRAIN.head(8), pip_requirements=["scikit-learn"])
    return directory


@pytest.mark.parametrize("case", ["corrupted", "missing"])
def test_a_model_file_the_loader_cannot_read_exits_2_naming_the_cause(registry: Registry, tmp_path: Path,
                                                                     case: str) -> None:
    directory = saved_classifier(tmp_path / "model")
    (model_file,) = [p for p in directory.iterdir() if p.name.startswith("model.") and p.suffix != ".json"]
    if case == "corrupted":
        model_file.write_bytes(model_file.read_bytes()[:100])
    else:
        model_file.unlink()
    result = convert(str(directory), "--register", "unreadable")
    assert result.code == 2, result.stdout + result.stderr
    assert "its sklearn model cannot be loaded: " in result.stderr
    assert ("FileNotFoundError" in result.stderr) == (case == "missing")
    assert registry.client.search_model_versions("name='unreadable'") == []


def test_an_original_that_fails_on_its_own_example_exits_2(registry: Registry, tmp_path: Path) -> None:
    result = convert(str(saved_classifier(tmp_path / "model", features_expected=5)), "--register", "failing")
    assert result.code == 2, result.stdout + result.stderr
    assert "the original model fails on the logged input example: ValueError: X has 4 features" in result.stderr
    assert registry.client.search_model_versions("name='failing'") == []


def test_a_converted_model_onnx_runtime_cannot_run_exits_3(registry: Registry, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter's failure, not the input's: a graph with an operator ONNX Runtime does not know."""
    from inference_server.convert import onnx_export

    real = onnx_export.convert

    def broken(model: Any, layout: Any) -> Any:
        converted = real(model, layout)
        converted.graph.node[0].op_type = "NoSuchOperator"
        return converted

    monkeypatch.setattr(onnx_export, "convert", broken)
    result = convert(str(saved_classifier(tmp_path / "model")), "--register", "broken")
    assert result.code == 3, result.stdout + result.stderr
    assert "ONNX Runtime cannot run the converted model" in result.stderr and "NoSuchOperator" in result.stderr
    assert registry.client.search_model_versions("name='broken'") == []


def test_an_unexpected_error_exits_3_with_one_line_not_1(registry: Registry, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_server.convert import register

    def failing(*args: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(register, "register", failing)
    result = convert(str(saved_classifier(tmp_path / "model")), "--register", "unexpected")
    assert result.code == 3, result.stdout + result.stderr
    assert "error: internal error: OSError: disk full (run with -v for the traceback)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("rtol", ["nan", "-1e-3", "inf", "tight"])
def test_an_rtol_that_is_not_a_finite_number_at_least_0_exits_2(registry: Registry, rtol: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(["models:/pipeline-trained/1", "--register", "bad-rtol", f"--rtol={rtol}"])
    assert exited.value.code == 2
    assert "--rtol" in err.getvalue() and WARNING not in err.getvalue()
