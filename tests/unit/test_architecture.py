"""The dependency direction of design.md §8.3: only the front ends, grpc/ and http/ (and app.py, the composition
root), may import their protocol stacks (grpc and the generated stubs; starlette, uvicorn, httptools); the leaf
modules import nothing from the package."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "inference_server"
GRPC_MODULES = ("grpc", "grpc_health", "google.protobuf")
HTTP_MODULES = ("starlette", "uvicorn", "httptools")
PROTOCOL_MODULES = GRPC_MODULES + HTTP_MODULES
FRONT_ENDS = {"grpc": GRPC_MODULES, "http": HTTP_MODULES}  # package folder -> the protocol stack it may use
LEAVES = {"errors.py", "tensors.py", "config.py", "model_config.py", "auth.py", "tls.py"}
# Leaves may use the error types; config uses model_config and the routes' config (itself a leaf, routing/config.py).
LEAF_ALLOWED = {"errors", "model_config", "routing.config"}


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
    return [p for p in PACKAGE.rglob("*.py") if not FRONT_ENDS.keys() & set(p.relative_to(PACKAGE).parts[:-1])]


def is_protocol(module: str, level: int, stacks: tuple[str, ...], packages: set[str]) -> bool:
    """An import of one of the third-party `stacks`, or of one of the package's front-end `packages`."""
    if level:
        return module.split(".")[0] in packages
    parts = module.split(".")
    return (any(module == m or module.startswith(f"{m}.") for m in stacks)
            or (parts[0] == "inference_server" and len(parts) > 1 and parts[1] in packages))


def test_core_never_imports_a_protocol_stack_or_a_front_end():
    offenders = []
    for path in core_modules():
        if path.name == "app.py":
            continue
        for module, level in imports(path):
            if is_protocol(module, level, PROTOCOL_MODULES, set(FRONT_ENDS)):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {'.' * level}{module}")
    assert offenders == []


def test_front_ends_never_import_each_other_or_the_others_stack():
    offenders = []
    for front_end, own in FRONT_ENDS.items():
        others = tuple(m for m in PROTOCOL_MODULES if m not in own)
        for path in (PACKAGE / front_end).rglob("*.py"):
            if "_generated" in path.parts:
                continue
            for module, level in imports(path):
                siblings = set(FRONT_ENDS) - {front_end}
                if (level >= 2 and module.split(".")[0] in siblings) or (
                        level == 0 and is_protocol(module, 0, others, siblings)):
                    offenders.append(f"{front_end}/{path.name} imports {'.' * level}{module}")
    assert offenders == []


def test_leaf_modules_import_nothing_else_from_the_package():
    offenders = []
    for path in core_modules():
        if path.name not in LEAVES:
            continue
        for module, level in imports(path):
            internal = level > 0 or module.startswith("inference_server")
            module = module.removeprefix("inference_server.")
            if internal and module.split(".")[0] not in LEAF_ALLOWED and module not in LEAF_ALLOWED:
                offenders.append(f"{path.name} imports {'.' * level}{module}")
    assert offenders == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom .grpc import codec\nfrom . import service\n")
    assert ("grpc", 0) in imports(bad) and ("grpc", 1) in imports(bad) and ("service", 1) in imports(bad)


def test_the_check_sees_http_stack_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import uvicorn\nfrom starlette.requests import Request\nfrom .http.server import HttpFrontEnd\n"
                   "import inference_server.http.codec\nfrom httptools import HttpRequestParser\n")
    found = [(m, lvl) for m, lvl in imports(bad) if is_protocol(m, lvl, PROTOCOL_MODULES, set(FRONT_ENDS))]
    assert found == [("uvicorn", 0), ("starlette.requests", 0), ("http.server", 1), ("inference_server.http.codec", 0),
                     ("httptools", 0)]
    # The standard library's http (urllib, http.client) is not the front end.
    stdlib = tmp_path / "stdlib.py"
    stdlib.write_text("import http.client\nfrom http import HTTPStatus\nimport startlette_like\n")
    assert [m for m, lvl in imports(stdlib) if is_protocol(m, lvl, PROTOCOL_MODULES, set(FRONT_ENDS))] == []



def test_base_dependencies_carry_no_onnx_runtime():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    def runtimes(extra: str) -> list[str]:
        return [d.split(">")[0] for d in extras[extra] if d.startswith("onnxruntime")]

    assert runtimes("cpu") == ["onnxruntime"]
    assert runtimes("gpu") == ["onnxruntime-gpu"]  # beside nvidia-ml-py for the GPU gauges, never both ORTs


# auth: the bearer-token decision and the scope of each operation, a leaf both front ends translate (one table
# for gRPC and HTTP, so the two cannot disagree on what a token may do). tls: PEM files read and checked once for
# both front ends (a leaf on the standard library's ssl), so both refuse the same bad certificate the same way.
FRONT_END_ALLOWED = {"service", "views", "errors", "tensors", "stats", "model_config", "config", "auth", "tls"}


def test_front_ends_reach_the_core_only_through_the_service_and_its_views():
    """A front end renders what the service answers; it never reaches into versions, batchers or registries."""
    offenders = []
    for front_end in FRONT_ENDS:
        for path in (PACKAGE / front_end).glob("*.py"):
            for module, level in imports(path):
                if level >= 2 or module.startswith("inference_server."):
                    name = module.removeprefix("inference_server.").split(".")[0]
                    if name not in FRONT_END_ALLOWED:
                        offenders.append(f"{front_end}/{path.name} imports {'.' * level}{module}")
    assert offenders == []


def test_the_http_front_end_exists_and_is_checked():
    """The rules above pass vacuously on a folder that is not there."""
    assert (PACKAGE / "http" / "server.py").is_file()
    assert "http" not in {p.relative_to(PACKAGE).parts[0] for p in core_modules()}
