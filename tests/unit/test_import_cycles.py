"""No import cycles among the project's modules: inference_server, benchmarks, clients and tests.

Every import counts, wherever it is written: at module level, inside a function (a late import is still a
dependency, only a hidden one) and under `if TYPE_CHECKING:`. The graph's strongly connected components (Tarjan)
of more than one module are its cycles."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("inference_server", "benchmarks", "clients", "tests")
SKIP = {"_generated", ".work", "__pycache__"}  # generated stubs; the benchmarks' scratch folder

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if not SKIP & set(path.relative_to(ROOT).parts):
                files[module_name(path)] = path
    return files


def imported_names(path: Path, name: str) -> Iterable[str]:
    """Every module name an import in the file may refer to, absolute, most specific first per import."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield f"{module}.{alias.name}"  # `from package import module`
            yield module


def resolve(candidate: str, importer: str, modules: set[str]) -> str | None:
    """The project module `candidate` names: itself or its nearest enclosing module; for a script in clients/ (run
    with its own folder on sys.path), a bare name may be a module beside it."""
    if importer.startswith("clients."):
        sibling = importer.rsplit(".", 1)[0] + "." + candidate
        if sibling.split(".")[:-1] == importer.split(".")[:-1] and sibling in modules:
            return sibling
    parts = candidate.split(".")
    while parts:
        if ".".join(parts) in modules and parts[0] in PACKAGES:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for candidate in imported_names(path, name):
            target = resolve(candidate, name, modules)
            if target is not None and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the graph's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    return [frozenset(c) for c in strongly_connected(graph) if len(c) > 1]


def test_tarjan_finds_the_cycles_of_a_small_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d", "e"]]


def test_the_graph_sees_late_type_checking_and_relative_imports():
    graph = import_graph()
    assert "benchmarks.points" in graph["benchmarks.http"]  # the helpers scenarios.py once exported late
    assert "clients.python.loadgen" in graph["clients.python.load_test"]  # a script's bare import of its neighbour
    assert "tests.support.server_process" in graph["tests.support.redis_server"]
    assert len(graph) > 100


def test_no_import_cycles():
    found = [" <-> ".join(sorted(c)) for c in cycles(import_graph())]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_benchmarks_import_only_tests_support_and_clients_import_no_other_part():
    """The benchmarks share tests/support/ with the tests, never a test module; the clients run on their own (as
    scripts, beside each other), without the benchmarks, the tests or the server's package."""
    graph = import_graph()
    offenders = [f"{m} imports {t}" for m, targets in graph.items() for t in targets
                 if (m.startswith("benchmarks.") and t.startswith("tests.") and not t.startswith("tests.support"))
                 or (m.startswith("clients.") and not t.startswith("clients."))]
    assert sorted(offenders) == []
