"""The shape of the house (design.md): layers point one way, no import cycles, no function too long to read.

Read from the source with `ast`, counting imports inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"maebench": "maebench", "upstream": "maebench.upstream", "downstream": "maebench.downstream"}
# Small utilities every layer above the models may use; they import only each other and the models.
CORE = {"maebench", "maebench.errors", "maebench.atomic", "maebench.paths", "maebench.audio", "maebench.settings",
        "maebench.progress", "maebench.tables"}
MAX_FUNCTION_LINES = 80


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _module_files()


def _imports(module: str, path: Path) -> set[str]:
    """Every maebench module `module` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` depends on the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(_owner(name) for name in names if name == "maebench" or name.startswith("maebench."))
    # importing pkg.sub from outside pkg runs pkg/__init__.py first: that is a dependency too
    found.update(parent for target in list(found) for parent in _packages_above(target)
                 if not _in(module, parent))
    found.discard(module)
    return found


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _owner(name: str) -> str:
    """The longest known module that `name` is, or lies in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}



def test_the_module_list_is_complete():
    assert {"maebench.upstream.mae_ast", "maebench.downstream.evaluate", "maebench.trainer"} <= set(MODULES)
    assert "maebench.upstream.frontend" in MODULES, "the filterbank is model state: upstream/frontend.py"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "maebench.upstream")))
def test_models_import_nothing_from_the_tool(module):
    allowed = {"maebench", "maebench.errors"}
    bad = sorted(t for t in GRAPH[module] if not _in(t, "maebench.upstream") and t not in allowed)
    assert not bad, f"{module} imports the tool layer: {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _in(m, "maebench.downstream")))
def test_downstream_imports_only_models_and_core(module):
    bad = sorted(t for t in GRAPH[module]
                 if not (_in(t, "maebench.upstream") or _in(t, "maebench.downstream") or t in CORE))
    assert not bad, f"{module} imports the tool layer: {bad}"


@pytest.mark.parametrize("module", sorted(CORE & set(MODULES)))
def test_core_utilities_import_only_core_and_models(module):
    bad = sorted(t for t in GRAPH[module] if not (t in CORE or _in(t, "maebench.upstream")))
    assert not bad, f"{module} is a core utility but imports {bad}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_no_function_longer_than_80_lines():
    long = []
    for path in [*MODULES.values(), ROOT / "hubconf.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + "; ".join(long)
