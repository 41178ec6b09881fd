"""The import graph of src/rankwise, read from the source (every import statement, also those inside
functions and under TYPE_CHECKING): no circle, nothing imports the package root, and the layers
(adapters, backbones, scenarios) never import each other or the engine."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rankwise"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The rankwise modules `name` imports, resolved to modules (``from a import b`` -> ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rankwise")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "rankwise":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each one an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_scanner_sees_a_circle_and_function_level_imports() -> None:
    """The checks below can fail: a made-up graph with a circle is found, and an import inside a
    function of a real module is in the graph."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    # registry.Entry imports its references inside a method; plugins are imported at module level
    assert "rankwise.plugins" in GRAPH["rankwise.registry"]


def test_no_import_circle() -> None:
    # a package's __init__ importing its own submodules is not a circle unless a submodule imports
    # the package back, which the graph records as an edge to the package.
    assert strongly_connected(GRAPH) == []


def test_nothing_imports_the_package_root() -> None:
    offenders = sorted(name for name, deps in GRAPH.items() if "rankwise" in deps and name != "rankwise")
    assert offenders == [], f"modules importing the package root (use the submodule): {offenders}"


def test_layers_never_import_each_other_or_the_engine() -> None:
    layers = ("adapters", "backbones", "scenarios")
    for name, deps in GRAPH.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in layers:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) > 1 and dparts[1] != parts[1] and dparts[1] in (*layers, "engine", "cli"):
                raise AssertionError(f"{name} imports {dep}: the engine joins the layers, they never meet")
