"""The rooms of docs/architecture.md and what each may import, checked on every module's imports (module level,
inside functions and under TYPE_CHECKING alike).

- Layers: a room imports only rooms on its own layer or below, and never a sibling room of its layer.
- Protocol stacks: grpc only in grpc/ (its generated *_pb2_grpc service stubs included), protobuf only in
  grpc/ and protocol/ (the Triton config schema and the message stubs), the HTTP stack only in http/.
- Front ends reach the core only through the service's API and views, the error types, the protocol rules,
  the security state and their own settings.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "inference_server"

# Lowest first. A room is a subpackage or a module; the longest matching name wins (observability.metrics, the
# Prometheus exporter that reads every room's figures, sits above the rooms it reads).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("inference_server", "errors", "breaker"),  # the version string; error types; the circuit breaker
    ("config",),  # frozen settings, parsed from TOML and flags
    ("protocol", "security"),  # KServe v2 / Triton rules and schema; tokens and TLS
    ("observability",),  # statistics, logs, drift, prediction log, GPU gauges
    ("execution",),  # ONNX Runtime, the batcher, IO binding, CPUs
    ("cache",),  # response cache tiers
    ("lifecycle",),  # model sources, versions, the registry and manager
    ("observability.metrics",),  # the Prometheus exporter
    ("routing",),  # routes, canaries, shadows, fallbacks
    ("pod",),  # workers of one pod
    ("service",),  # the protocol-neutral API
    ("grpc", "http"),  # front ends
    ("app",),  # the composition root
    ("__main__",),  # python -m inference_server
    ("convert",),  # python -m inference_server.convert: a command beside the server, which never imports it
)
GRPC_STACK = ("grpc", "grpc_health")
PROTOBUF = ("google.protobuf",)
HTTP_STACK = ("starlette", "uvicorn", "httptools")
# What deserialises or runs a model's own code, and the converters: only the convert command (the user's trusted
# model, in their environment) uses them; the server loads ONNX files only and never unpickles.
MODEL_CODE = ("pickle", "cloudpickle", "joblib", "skops", "dill", "mlflow.pyfunc", "mlflow.sklearn", "mlflow.xgboost",
              "mlflow.lightgbm", "sklearn", "xgboost", "lightgbm", "skl2onnx", "onnxmltools")
# third-party stack -> the rooms that may import it
STACK_ROOMS = {GRPC_STACK: {"grpc"}, PROTOBUF: {"grpc", "protocol"}, HTTP_STACK: {"http"}, MODEL_CODE: {"convert"}}
FRONT_END_ALLOWED = {"service", "errors", "protocol", "security", "config", "inference_server"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, name: str | None = None) -> list[str]:
    """Every module a file imports, absolute: relative imports resolved, and `from x import y` counted as x and,
    where y is a module of the package, x.y. `name`: the file's module name (by default, from its path)."""
    name = name or module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")]
    return found


def room(module: str) -> str | None:
    """The room of an inference_server module ("inference_server" for the package itself), or None."""
    if module != "inference_server" and not module.startswith("inference_server."):
        return None
    rest = module.removeprefix("inference_server").removeprefix(".")
    if not rest:
        return "inference_server"
    names = [name for layer in LAYERS for name in layer]
    matches = [n for n in names if rest == n or rest.startswith(n + ".")]
    return max(matches, key=len) if matches else rest.split(".")[0]


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def is_generated(path: Path) -> bool:
    return "_generated" in path.parts


def test_every_room_is_placed_on_a_layer():
    rooms = {room(module_name(p)) for p in package_files()}
    unplaced = {r for r in rooms if r is not None and not any(r in names for names in LAYERS)}
    assert unplaced == set()


def test_rooms_import_only_their_layer_or_below_and_never_a_sibling():
    offenders = []
    for path in package_files():
        here = room(module_name(path))
        assert here is not None
        for module in imports(path):
            there = room(module)
            if there is None or there == here or module.startswith(module_name(path) + "."):
                continue
            if layer(there) > layer(here) or (layer(there) == layer(here) and there != "inference_server"):
                offenders.append(f"{module_name(path)} ({here}) imports {module} ({there})")
    assert offenders == []


def test_protocol_stacks_stay_in_their_rooms():
    offenders = []
    for path in package_files():
        here = room(module_name(path))
        for module in imports(path):
            for stack, rooms in STACK_ROOMS.items():
                if any(module == m or module.startswith(m + ".") for m in stack) and here not in rooms:
                    offenders.append(f"{module_name(path)} imports {module}")
    assert offenders == []


def test_the_server_never_imports_the_convert_command_which_imports_no_room_of_the_server():
    """The convert command runs the user's model code to convert it; nothing the server runs may reach it, and it
    stands alone (its dynamic `importlib.import_module(f"mlflow.{flavor}")` is checked in tests/integration)."""
    offenders = []
    for path in package_files():
        here = room(module_name(path))
        for module in imports(path):
            there = room(module)
            if (here == "convert") != (there == "convert") and there not in (None, "inference_server"):
                offenders.append(f"{module_name(path)} ({here}) imports {module} ({there})")
    assert offenders == []
    assert (PACKAGE / "convert" / "__main__.py").is_file()


def test_only_the_grpc_front_end_imports_the_grpc_stubs():
    offenders = [f"{module_name(p)} imports {m}" for p in package_files() if not is_generated(p)
                 for m in imports(p) if m.endswith("_pb2_grpc") and room(module_name(p)) != "grpc"]
    assert offenders == []


def test_front_ends_reach_the_core_only_through_the_service_its_views_and_the_shared_rules():
    """A front end renders what the service answers; it never reaches into versions, batchers or registries."""
    offenders = []
    for front_end in ("grpc", "http"):
        for path in (PACKAGE / front_end).rglob("*.py"):
            for module in imports(path):
                there = room(module)
                if there is not None and there != front_end and there not in FRONT_END_ALLOWED:
                    offenders.append(f"{module_name(path)} imports {module}")
    assert offenders == []


def test_the_checks_see_forbidden_imports(tmp_path):
    """The rules above pass vacuously if the parsing misses imports: relative, in functions, under TYPE_CHECKING."""
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..service import views\n"
                   "def f():\n    import grpc\n    from ..lifecycle.registry import ModelRegistry\n")
    found = imports(bad, "inference_server.config.bad")
    assert {"inference_server.service", "inference_server.service.views", "grpc",
            "inference_server.lifecycle.registry"} <= set(found)
    assert room("inference_server.lifecycle.registry") == "lifecycle"
    assert room("inference_server.observability.metrics") == "observability.metrics"
    assert room("inference_server.observability.stats") == "observability"
    assert layer("lifecycle") > layer("config") and layer("grpc") == layer("http")
    pickler = tmp_path / "pickler.py"
    pickler.write_text("import pickle\nfrom mlflow.sklearn import load_model\n")
    assert {"pickle", "mlflow.sklearn"} <= set(imports(pickler, "inference_server.lifecycle.pickler"))


def test_the_front_ends_and_the_core_exist_where_the_rules_look():
    for path in ("grpc/server.py", "http/server.py", "service/inference.py", "protocol/tensors.py", "app.py"):
        assert (PACKAGE / path).is_file(), path


def test_base_dependencies_carry_no_onnx_runtime():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]

    def runtimes(extra: str) -> list[str]:
        return [d.split(">")[0] for d in extras[extra] if d.startswith("onnxruntime")]

    assert runtimes("cpu") == ["onnxruntime"]
    assert runtimes("gpu") == ["onnxruntime-gpu"]  # beside nvidia-ml-py for the GPU gauges, never both ORTs
    assert runtimes("gpu-cuda12") == ["onnxruntime-gpu"]
