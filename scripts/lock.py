"""Write the images' Python lock files: requirements/{cpu,cuda13,cuda12}.txt, one `name==version` line for every
distribution the image installs besides the project itself, resolved by pip for the images' Python (CPython 3.12 on
manylinux x86_64) from pyproject.toml's dependencies and the image's extras (mlflow included, so that an image built
with EXTRAS=...,mlflow is locked too). The Dockerfiles install with `--constraint=` their file, so a rebuild gets the
same versions until this script is run again; the GPU locks take onnxruntime-gpu at the pin of Dockerfile.gpu's
variant stage. tests/deploy/test_lock.py checks the files against pyproject.toml and the Dockerfiles.

    python scripts/lock.py            # re-resolve all three (needs the package index; about a minute)
    python scripts/lock.py cpu        # only one

pip evaluates environment markers with the Python that runs it: run this with Python 3.12 where you can. With another
one a dependency marked for a Python other than 3.12 may be pinned needlessly (a constraint on a package that is not
installed does nothing) or left unpinned.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
PYTHON = "3.12"  # python:3.12-slim (Dockerfile) and Ubuntu 24.04's python3 (Dockerfile.gpu)
GLIBC_MINOR = 39  # Ubuntu 24.04's glibc 2.39 (Debian trixie, the CPU image's, has 2.41)
# image -> (the extras it is locked for, the Dockerfile whose variant stage pins onnxruntime-gpu, or None)
IMAGES = {
    "cpu": (("cpu", "tracing", "mlflow"), None),
    "cuda13": (("gpu", "tracing", "mlflow"), "cuda13"),
    "cuda12": (("gpu-cuda12", "tracing", "mlflow"), "cuda12"),
}
TARGET = default_environment() | {"python_version": PYTHON, "python_full_version": f"{PYTHON}.0",
                                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                                  "implementation_name": "cpython", "platform_python_implementation": "CPython",
                                  "os_name": "posix"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's dependencies and those of `extras` that apply to the images' Python and platform."""
    meta = project()
    name = canonicalize_name(meta["name"])
    found = []
    for text in [*meta["dependencies"], *(r for extra in extras for r in meta["optional-dependencies"][extra])]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == name:
            raise SystemExit(f"{text}: an extra naming the project itself; list its extras in IMAGES instead")
        if requirement.marker is None or requirement.marker.evaluate(TARGET):
            found.append(requirement)
    return found


def variant_pin(stage: str) -> str:
    """ORT_GPU_VERSION as Dockerfile.gpu's variant stage `stage` sets it."""
    current = None
    for line in (REPO / "Dockerfile.gpu").read_text().splitlines():
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = match[1]
        elif current == stage and (match := re.search(r"\bORT_GPU_VERSION=(\S+)", line)):
            return match[1]
    raise SystemExit(f"Dockerfile.gpu: no ORT_GPU_VERSION in a stage named {stage}")


def resolve(requirements: list[str]) -> dict[str, str]:
    """pip's resolution for the images' Python and platform, from wheels only: {name: version}."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)] + ["manylinux2014_x86_64"]
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), "--target", str(Path(work) / "target"), "--only-binary=:all:",
                   "--implementation", "cp", "--python-version", PYTHON,
                   *(f"--platform={p}" for p in platforms), *requirements]
        subprocess.run(command, check=True)
        installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def write_lock(image: str) -> Path:
    extras, stage = IMAGES[image]
    requirements = [str(r) for r in direct_requirements(extras)]
    if stage is not None:
        requirements.append(f"onnxruntime-gpu=={variant_pin(stage)}")
    pins = resolve(requirements)
    dockerfile = "Dockerfile" if stage is None else f"Dockerfile.gpu, CUDA_MAJOR={stage.removeprefix('cuda')}"
    lines = [f"# The {image} image's Python lock ({dockerfile}): pyproject.toml's dependencies and these extras,",
             f"# resolved for CPython {PYTHON} on manylinux x86_64. Written by `python scripts/lock.py`; do not edit.",
             f"# extras: {','.join(extras)}",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    path = LOCKS / f"{image}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help=f"any of {', '.join(IMAGES)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := set(args.images) - set(IMAGES):
        parser.error(f"unknown images {sorted(unknown)}: choose from {', '.join(IMAGES)}")
    for image in args.images or IMAGES:
        path = write_lock(image)
        count = sum(1 for line in path.read_text().splitlines() if not line.startswith("#"))
        sys.stderr.write(f"{path.relative_to(REPO)}: {count} pins\n")


if __name__ == "__main__":
    main()
