"""The ONNX model's input, decided from the MLflow signature, and the conversion: skl2onnx for scikit-learn models
and pipelines, with onnxmltools' converters registered for the XGBoost and LightGBM estimators (alone or as a
pipeline's last step). Classifiers answer `label` and `probabilities` as plain tensors (no ZipMap); regressors
answer `variable`, skl2onnx's name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.convert import BadInput
from inference_server.convert import boosters
from inference_server.convert.boosters import Booster

log = logging.getLogger(__name__)

INPUT_NAME = "input"  # the one FP32 input of a model whose signature is columns (or unnamed)
NUMERIC_COLUMNS = ("double", "float", "long", "integer", "boolean")  # MLflow DataType names that fit in FP32
CLASSIFIER_OUTPUTS = ("label", "probabilities")
REGRESSOR_OUTPUTS = ("variable",)
# The newest opsets this skl2onnx and onnxmltools pair writes (ai.onnx.ml 3: tree ensembles), read by ORT >= 1.17.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class Layout:
    """The ONNX model's single FP32 input: `width` values per row, named `name`."""

    name: str
    width: int
    columns: tuple[str, ...] | None  # a column signature's columns in order (the original reads a DataFrame)
    column_types: tuple[str, ...] | None  # their MLflow types (double, long, boolean, ...)
    dtype: np.dtype | None  # a tensor signature's dtype (the original reads an ndarray of it)


def input_layout(signature: Any, example: Any) -> Layout:
    """Columns in the signature's order as one FP32 input (numeric columns only), or the signature's one 2-D
    tensor, by its name. Without a signature, the one MLflow infers from the input example."""
    if signature is None:
        from mlflow.models import infer_signature

        signature = infer_signature(example)
    inputs = signature.inputs
    if not inputs.is_tensor_spec():
        names = tuple(spec.name for spec in inputs.inputs)
        types = tuple(getattr(spec.type, "name", str(spec.type)) for spec in inputs.inputs)
        bad = [f"{n} ({t})" for n, t in zip(names, types, strict=True) if t not in NUMERIC_COLUMNS]
        if bad:
            raise BadInput(f"columns {', '.join(bad)} are not numeric; only numeric columns "
                           f"({', '.join(NUMERIC_COLUMNS)}) become the ONNX model's FP32 input")
        if any(n is None for n in names):
            raise BadInput("the signature's columns have no names")
        return Layout(INPUT_NAME, len(names), names, types, None)
    specs = inputs.inputs
    if len(specs) != 1:
        raise BadInput(f"the signature has {len(specs)} tensor inputs; one 2-D numeric tensor converts")
    spec = specs[0]
    shape, dtype = tuple(spec.shape), np.dtype(spec.type)
    if len(shape) != 2 or shape[1] < 1 or dtype.kind not in "fiub":
        raise BadInput(f"the signature's tensor is {dtype} of shape {shape}; a 2-D numeric tensor (-1, N) converts")
    return Layout(spec.name or INPUT_NAME, int(shape[1]), None, None, dtype)


def final_estimator(model: Any) -> Any:
    """The estimator that answers: a Pipeline's last step (nested pipelines followed down), or the model."""
    while hasattr(model, "steps"):
        model = model.steps[-1][1]
    return model


def is_classifier(model: Any) -> bool:
    from sklearn.base import is_classifier as sklearn_is_classifier

    if isinstance(model, Booster):
        return model.classifier

    return bool(sklearn_is_classifier(final_estimator(model)))


def register_boosters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM scikit-learn estimators, with onnxmltools' converters (skl2onnx's
    documented pattern), for whichever of the two is installed."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        log.debug("xgboost is not installed: its estimators are not registered with skl2onnx")
    else:
        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                    convert_xgboost, options=classifier_options)
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                    convert_xgboost)
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        log.debug("lightgbm is not installed: its estimators are not registered with skl2onnx")
    else:
        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm,
                                    options=classifier_options)
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                    convert_lightgbm, options={"split": None})


def convert(model: Any, layout: Layout) -> Any:
    """The ONNX ModelProto of `model` (an estimator, a pipeline or a wrapped Booster), reading `layout`'s input."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if not isinstance(model, Booster) and not hasattr(model, "predict"):
        raise BadInput(f"a {type(model).__module__}.{type(model).__name__} is not a scikit-learn estimator")
    final = model.booster if isinstance(model, Booster) else final_estimator(model)
    try:
        with boosters.unnamed_features(final.get_booster() if hasattr(final, "get_booster") else final):
            if isinstance(model, Booster):
                onnx_model = boosters.convert(model, layout.name, layout.width)
            else:
                register_boosters()
                options = {id(final): {"zipmap": False}} if is_classifier(model) else None
                onnx_model = convert_sklearn(
                    model, initial_types=[(layout.name, FloatTensorType([None, layout.width]))], options=options,
                    target_opset=TARGET_OPSET)
    except Exception as e:  # the converters raise RuntimeError, NameError, TypeError ... for what they cannot convert
        raise BadInput(f"{type(final).__name__} cannot be converted: {type(e).__name__}: {e}") from None
    outputs = tuple(o.name for o in onnx_model.graph.output)
    expected = CLASSIFIER_OUTPUTS if is_classifier(model) else REGRESSOR_OUTPUTS
    if outputs != expected:
        raise BadInput(f"the converted model answers {outputs}, not {expected}")
    return onnx_model
