"""The KServe serving runtime in k8s/kserve as KServe would run it: the container's args with `{{.Name}}` templated
to the InferenceService's name and an InferenceService's own args appended (KServe concatenates them), shared by
the manifest checks (tests/deploy) and the runs of the real server (tests/system)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "k8s" / "kserve"
RUNTIME = KSERVE / "cluster-serving-runtime.yaml"
EXAMPLES = KSERVE / "examples"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer (and its multi-model agent) put the models
CONTAINER = "kserve-container"  # the container KServe merges an InferenceService's predictor into

Doc = dict[str, Any]


def runtime() -> Doc:
    return yaml.safe_load(RUNTIME.read_text())


def examples() -> list[Doc]:
    """Every object of every example manifest."""
    return [d for path in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def server_container(doc: Doc | None = None) -> Doc:
    (container,) = (doc or runtime())["spec"]["containers"]
    return container


def container_args(name: str, extra: Sequence[str] = (), values: Mapping[str, str] | None = None) -> list[str]:
    """The server's args in the pod of InferenceService `name`: the runtime's, `{{.Name}}` templated, then `extra`
    (the predictor's own args). `values` replaces the value of `--flag=value` args by flag (a temporary
    directory for /mnt/models, free ports for the fixed ones) and fails on a flag the args do not have."""
    args = [a.replace("{{.Name}}", name) for a in [*server_container()["args"], *extra]]
    for flag, value in (values or {}).items():
        found = [i for i, a in enumerate(args) if a.startswith(f"{flag}=")]
        assert found, f"the runtime's args have no {flag}=: {args}"
        for i in found:
            args[i] = f"{flag}={value}"
    return args


def flag_value(args: Sequence[str], flag: str) -> str:
    """The value of the last `--flag=value` (a later flag wins, as in argparse)."""
    (*_, value) = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    return value
