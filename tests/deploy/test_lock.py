"""The images' Python locks (requirements/*.txt, written by scripts/lock.py) against pyproject.toml and the
Dockerfiles, offline: each image installs with `--constraint=` its own lock; each lock pins, with a version its
specifier allows, every dependency of pyproject.toml and of the extras it is locked for (the image's, and mlflow);
a GPU lock takes onnxruntime-gpu at its variant's pin and never the CPU onnxruntime, the CPU lock the reverse."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.test_images import CPU, CUDA_MAJORS, GPU, REPO, Stage, built

IMAGES = {"cpu": built(CPU), **{f"cuda{m}": built(GPU, CUDA_MAJOR=str(m)) for m in CUDA_MAJORS}}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix"}  # the images' Python (both Dockerfiles)
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def read_lock(image: str) -> tuple[set[str], dict[str, str]]:
    """(the extras its header names, {canonical name: version}); every other line is a comment."""
    extras: set[str] = set()
    pins: dict[str, str] = {}
    for number, line in enumerate((REPO / "requirements" / f"{image}.txt").read_text().splitlines(), 1):
        if line.startswith("# extras: "):
            extras = set(line.removeprefix("# extras: ").split(","))
        elif not line.startswith("#"):
            match = PIN.fullmatch(line)
            assert match, f"requirements/{image}.txt:{number}: not name==version: {line!r}"
            name = canonicalize_name(match[1])
            assert name not in pins, f"requirements/{image}.txt:{number}: {name} twice"
            pins[name] = match[2]
    assert extras, f"requirements/{image}.txt names no extras"
    return extras, pins


def direct(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for e in sorted(extras) for r in project["optional-dependencies"][e])]
    return [r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate(TARGET)]


def install_run(build: Stage) -> list[str]:
    """The words of the build stage's `pip install`, build arguments and ENV expanded."""
    [run] = [r for r in build.all("RUN") if "pip install" in r.args]
    return shlex.split(build.expand(run.args))


@pytest.mark.parametrize("image", IMAGES)
def test_a_lock_pins_every_dependency_of_pyproject_and_its_extras(image):
    extras, pins = read_lock(image)
    for requirement in direct(extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{image}.txt does not pin {requirement} (run scripts/lock.py)"
        assert Version(pins[name]) in requirement.specifier, \
            f"requirements/{image}.txt pins {name}=={pins[name]}, outside {requirement} (run scripts/lock.py)"


@pytest.mark.parametrize("image", IMAGES)
def test_an_image_installs_with_its_own_lock_which_covers_its_extras(image):
    build, _ = IMAGES[image]
    words = install_run(build)
    assert [w for w in words if w.startswith("--constraint")] == [f"--constraint=requirements/{image}.txt"]
    [project] = [w for w in words if w.startswith(".[")]
    extras, pins = read_lock(image)
    installed = set(project[2:-1].split(","))
    assert installed <= extras, f"the image installs {installed - extras}, which {image}.txt is not locked for"
    assert "mlflow" in extras, "EXTRAS=...,mlflow builds are locked too"
    if image == "cpu":
        assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins
    else:
        assert "onnxruntime" not in pins, "the CPU wheel would take the CUDA provider away"
        assert pins["onnxruntime-gpu"] == build.env()["ORT_GPU_VERSION"], "the lock and the variant's pin differ"


def test_the_lock_script_writes_every_lock_for_the_extras_they_name():
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    assert spec and spec.loader
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert set(lock.IMAGES) == set(IMAGES) == {p.stem for p in (REPO / "requirements").glob("*.txt")}
    for image, (extras, stage) in lock.IMAGES.items():
        assert set(extras) == read_lock(image)[0]
        if stage is not None:
            assert lock.variant_pin(stage) == IMAGES[image][0].env()["ORT_GPU_VERSION"]
        assert sorted(map(str, lock.direct_requirements(extras))) == sorted(map(str, direct(set(extras))))
