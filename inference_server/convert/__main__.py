"""python -m inference_server.convert SOURCE --register NAME [--alias ALIAS] [--rtol RTOL]

Exit codes: 0 registered, 1 refused (the ONNX model does not answer like the original), 2 bad input (the source,
its model, the registry's answer or the options), 3 internal error (the converted model does not run in ONNX
Runtime, or anything unexpected: the converter's failure, not the input's). Only the check's verdict exits 1."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from pathlib import Path

from inference_server.convert import BadInput, ConversionFailed

REGISTERED, REFUSED, BAD_INPUT, INTERNAL_ERROR = 0, 1, 2, 3
log = logging.getLogger(__name__)


def tolerance(text: str) -> float:
    """--rtol: a finite number >= 0 (nan would refuse every model, inf accept every one)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m inference_server.convert",
        description="Convert an MLflow sklearn, xgboost or lightgbm model to ONNX, check that it answers like the "
                    "original, and register it as a new version of a model (MLFLOW_TRACKING_URI and "
                    "MLFLOW_REGISTRY_URI name the registry). Loading the original runs its code: convert only "
                    "models you trust. Exit codes: 0 registered, 1 refused (the check failed), 2 bad input (the "
                    "source, its model, the registry's answer or the options), 3 internal error (the converted "
                    "model does not run in ONNX Runtime, or an unexpected error: report it).")
    p.add_argument("source", metavar="SOURCE",
                   help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a local MLflow model "
                        "directory")
    p.add_argument("--register", metavar="NAME", required=True, help="the registered model to add a version to")
    p.add_argument("--alias", metavar="ALIAS", help="point this alias of NAME at the new version")
    p.add_argument("--rtol", type=tolerance, default=1e-4,
                   help="refuse when a value differs by more than RTOL x max(1, |original|) (default: 1e-4); "
                        "labels must be equal")
    p.add_argument("-v", "--verbose", action="store_true", help="log diagnostics (INFO) on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    from inference_server.convert import boosters, check, onnx_export, register, source

    source.check_registry_env()
    with tempfile.TemporaryDirectory(prefix="inference-server-convert-") as tmp:
        described = source.describe(args.source, source.fetch(args.source, Path(tmp)))
        layout = onnx_export.input_layout(described.signature, described.example)  # refused before any code runs
        print(source.TRUST_WARNING.format(source=args.source, flavor=described.flavor), file=sys.stderr, flush=True)
        model = boosters.wrap(source.load(described))
        onnx_model = onnx_export.convert(model, layout)
        rows = check.check_rows(described.example, layout)
        result = check.compare(model, onnx_model, rows, args.rtol)
        print(f"check {result.summary()}", flush=True)
        if not result.passed:
            print(f"refused: the ONNX model does not answer like {args.source}; nothing was registered",
                  file=sys.stderr)
            return REFUSED
        version = register.register(onnx_model, args.register, args.alias, layout, rows, result, args.source)
    served = f"models:/{args.register}@{args.alias}" if args.alias else f"models:/{args.register}/{version}"
    print(f"registered version {version} of model '{args.register}': serve it as {served} "
          f"(input '{layout.name}', FP32 [-1, {layout.width}])")
    return REGISTERED


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # bad options: argparse's usage error, exit code 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except ImportError as e:
        print(f"error: {e}: install the convert extra: pip install 'inference_server[convert]'", file=sys.stderr)
        return BAD_INPUT
    except ConversionFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return INTERNAL_ERROR
    except Exception as e:  # never exit code 1, which says the check refused the model
        if type(e).__name__ == "MlflowException":  # the registry refused or did not answer
            print(f"error: MLflow: {e}", file=sys.stderr)
            return BAD_INPUT
        if args.verbose:
            log.exception("internal error")
        hint = "" if args.verbose else " (run with -v for the traceback)"
        print(f"error: internal error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
