"""The package's modules import each other without cycles, counting imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "pyflow"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Return the package modules a module imports anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "pyflow":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyflow."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pyflow.")}
    return (found & modules) - {path.stem}


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """Return one import cycle of the graph, as the modules along it, or nothing."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            if found := visit(imported, [*path, module]):
                return found
        done.add(module)
        return []

    for module in sorted(graph):
        if found := visit(module, []):
            return found
    return []


def test_cycle_in_finds_a_cycle_through_function_level_imports() -> None:
    """The check sees a cycle, so that its passing on the package means something."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) == []


def test_pyflow_has_no_import_cycle() -> None:
    """No module of pyflow imports, directly or not, a module that imports it back."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {path.stem: imports_of(path, modules) for path in PACKAGE.glob("*.py")}
    assert graph["local"] >= {"deploy", "server"}, "the graph reads function-level imports"
    assert cycle_in(graph) == []
