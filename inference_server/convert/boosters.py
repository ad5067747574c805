"""Raw XGBoost and LightGBM Boosters (from xgboost.train / lightgbm.train, as mlflow.xgboost and mlflow.lightgbm
log them) seen as scikit-learn style estimators for the check, and converted with onnxmltools.

A Booster's objective says what it answers: probabilities (binary: of class 1; multiclass: one per class), of
which the label is the most probable class, or values. Objectives that answer margins or labels only (binary:
logitraw, multi:softmax, ranking) are refused: the ONNX model's probabilities could not be checked."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.convert import BadInput

CLASSIFIER_OBJECTIVES = {"xgboost": ("binary:logistic", "multi:softprob"), "lightgbm": ("binary", "multiclass")}
REFUSED_OBJECTIVES = ("binary:logitraw", "binary:hinge", "multi:softmax", "rank:", "lambdarank", "rank_xendcg",
                      "multiclassova", "cross_entropy", "survival:")
ONNXMLTOOLS_OPSET = 15  # the newest main opset onnxmltools 1.16 writes for Boosters


@dataclass(frozen=True)
class Booster:
    booster: Any  # xgboost.Booster or lightgbm.Booster
    library: str  # "xgboost" or "lightgbm"
    objective: str
    classifier: bool

    def _answers(self, rows: Any) -> np.ndarray:
        if self.library == "xgboost":
            import xgboost

            return np.asarray(self.booster.predict(xgboost.DMatrix(rows)))
        return np.asarray(self.booster.predict(rows))

    def predict_proba(self, rows: Any) -> np.ndarray:
        answers = self._answers(rows)
        return np.stack([1 - answers, answers], axis=1) if answers.ndim == 1 else answers

    def predict(self, rows: Any) -> np.ndarray:
        return np.argmax(self.predict_proba(rows), axis=1) if self.classifier else self._answers(rows)


def wrap(model: Any) -> Any:
    """A raw Booster as a `Booster`; any other model as it is."""
    library = type(model).__module__.partition(".")[0]
    if type(model).__name__ != "Booster" or library not in CLASSIFIER_OBJECTIVES:
        return model
    if library == "xgboost":
        objective = json.loads(model.save_config())["learner"]["objective"]["name"]
    else:
        objective = str(model.dump_model().get("objective", "")).split(" ")[0]
    if objective.startswith(REFUSED_OBJECTIVES):
        raise BadInput(f"a {library} Booster with objective {objective} answers margins, labels or ranks, not "
                       "probabilities or values; it is not converted")
    return Booster(model, library, objective, objective in CLASSIFIER_OBJECTIVES[library])


def convert(model: Booster, input_name: str, width: int) -> Any:
    """The ONNX ModelProto of a Booster (label and probabilities without ZipMap, or variable)."""
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial_types = [(input_name, FloatTensorType([None, width]))]
    if model.library == "lightgbm":
        return convert_lightgbm(model.booster, initial_types=initial_types, zipmap=False,
                                target_opset=ONNXMLTOOLS_OPSET)
    return convert_xgboost(model.booster, initial_types=initial_types, target_opset=ONNXMLTOOLS_OPSET)


@contextlib.contextmanager
def unnamed_features(booster: Any) -> Iterator[None]:
    """onnxmltools reads an XGBoost booster's features only as f0, f1, ...: the names a DataFrame gave it are set
    aside while converting (the ONNX input is positional) and given back for the check. Other models: nothing."""
    names = getattr(booster, "feature_names", None) if type(booster).__module__.startswith("xgboost") else None
    if names is None:
        yield
        return
    booster.feature_names = None
    try:
        yield
    finally:
        booster.feature_names = names
