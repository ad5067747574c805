"""Convert an MLflow sklearn, XGBoost or LightGBM model to ONNX, check it answers like the original, register it.

`python -m inference_server.convert SOURCE --register NAME [--alias ALIAS]` (the `convert` extra), run by the
user in their own environment on a model they trust. This is the one place in the package that loads a model
with MLflow's own loaders, which unpickle (or skops-load) it and so run the model's code; the server never
imports this package (tests/unit/test_architecture.py checks it) and serves only the ONNX model it registers.

Modules, in the order the command uses them: `source` (SOURCE to a local MLflow model: flavor, signature, input
example, the loaded model), `onnx_export` (the ONNX input layout and the conversion), `check` (the original and
the ONNX model on the same rows), `register` (the ONNX model as a new version, its tags and the alias).
"""

from __future__ import annotations


class BadInput(Exception):
    """The source, its flavor, its signature or its model cannot be converted (exit code 2); the message says why."""


class ConversionFailed(Exception):
    """The converter's own failure, not the input's: ONNX Runtime cannot load or run the model the converters
    produced (exit code 3, as for any unexpected error); the message says why."""
