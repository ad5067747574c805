"""The dependency direction of design.md §8.3: only grpc/ (and app.py, the composition root) may import
grpc or the generated stubs; the leaf modules import nothing from the package."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "inference_server"
PROTOCOL_MODULES = ("grpc", "grpc_health", "google.protobuf")
LEAVES = {"errors.py", "tensors.py", "config.py", "model_config.py"}
LEAF_ALLOWED = {"errors", "model_config"}  # leaves may use the error types; config uses model_config


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute-ish module name, relative level) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
            if node.level and not node.module:
                found += [(alias.name, node.level) for alias in node.names]
    return found


def core_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "grpc" not in p.relative_to(PACKAGE).parts[:-1]]


def test_core_never_imports_grpc_or_generated_stubs():
    offenders = []
    for path in core_modules():
        if path.name == "app.py":
            continue
        for module, level in imports(path):
            top = module.split(".")[0]
            if (level == 0 and (top in ("grpc", "grpc_health") or module.startswith("google.protobuf")
                                or module.startswith("inference_server.grpc"))) or (level and top == "grpc"):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {'.' * level}{module}")
    assert offenders == []


def test_leaf_modules_import_nothing_else_from_the_package():
    offenders = []
    for path in core_modules():
        if path.name not in LEAVES:
            continue
        for module, level in imports(path):
            internal = level > 0 or module.startswith("inference_server")
            name = module.removeprefix("inference_server.").split(".")[0] if internal else ""
            if internal and name not in LEAF_ALLOWED:
                offenders.append(f"{path.name} imports {'.' * level}{module}")
    assert offenders == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom .grpc import codec\nfrom . import service\n")
    assert ("grpc", 0) in imports(bad) and ("grpc", 1) in imports(bad) and ("service", 1) in imports(bad)



def test_base_dependencies_carry_no_onnx_runtime():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    def runtimes(extra: str) -> list[str]:
        return [d.split(">")[0] for d in extras[extra] if d.startswith("onnxruntime")]

    assert runtimes("cpu") == ["onnxruntime"]
    assert runtimes("gpu") == ["onnxruntime-gpu"]  # beside nvidia-ml-py for the GPU gauges, never both ORTs


FRONT_END_ALLOWED = {"service", "views", "errors", "tensors", "stats", "model_config", "config"}


def test_front_ends_reach_the_core_only_through_the_service_and_its_views():
    """A front end renders what the service answers; it never reaches into versions, batchers or registries."""
    offenders = []
    for path in (PACKAGE / "grpc").glob("*.py"):
        for module, level in imports(path):
            if level >= 2 or module.startswith("inference_server."):
                name = module.removeprefix("inference_server.").split(".")[0]
                if name not in FRONT_END_ALLOWED:
                    offenders.append(f"grpc/{path.name} imports {'.' * level}{module}")
    assert offenders == []
