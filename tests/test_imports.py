"""The package's modules import each other without cycles, counting imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "pyflow"


def module_name(path: Path) -> str:
    """Return a module's dotted name inside the package: ``config``, ``warn.etl``, ``warn``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str) -> set[str]:
    """Return every ``pyflow`` module a source imports anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pyflow":
            base = (node.module or "").removeprefix("pyflow").lstrip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("pyflow.") for a in node.names if a.name.startswith("pyflow.")
            }
    return found - {""}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Return the package modules a module imports anywhere in it, functions included."""
    return (imported_names(path.read_text(encoding="utf-8")) & modules) - {module_name(path)}


def package_graph() -> dict[str, set[str]]:
    """Return every module of the package, subpackages included, with the modules it imports."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


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


def example_imports(source: str) -> set[str]:
    """Return the modules of the example (``pyflow.warn``) a source imports, anywhere in it."""
    return {name for name in imported_names(source) if name.split(".")[0] == "warn"}


def test_cycle_in_finds_a_cycle_through_function_level_imports() -> None:
    """The check sees a cycle, so that its passing on the package means something."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) == []


def test_package_graph_walks_subpackages_and_function_level_imports() -> None:
    """The graph has every module, those of subpackages too, and imports made inside functions."""
    graph = package_graph()
    assert set(graph) == {module_name(path) for path in PACKAGE.rglob("*.py")}
    assert module_name(PACKAGE / "warn" / "etl.py") == "warn.etl"
    assert module_name(PACKAGE / "warn" / "__init__.py") == "warn"
    assert graph["local"] >= {"deploy", "server"}, "the graph reads function-level imports"
    assert imported_names("def f():\n    from pyflow.warn import etl\n") >= {"warn", "warn.etl"}


def test_pyflow_has_no_import_cycle() -> None:
    """No module of pyflow imports, directly or not, a module that imports it back."""
    assert cycle_in(package_graph()) == []


def test_example_imports_sees_every_form_of_import() -> None:
    """The walker finds the example in each way a module can import it, inside functions too."""
    snippets = [
        "from pyflow.warn.schema import Source",
        "from pyflow.warn import etl",
        "import pyflow.warn.columns",
        "def f():\n    from pyflow import warn\n",
        "class C:\n    def m(self):\n        import pyflow.warn\n",
    ]
    for snippet in snippets:
        assert example_imports(snippet), snippet
    assert example_imports("from pyflow import config\nimport warnings") == set()


def test_config_imports_nothing_of_the_example() -> None:
    """Settings are the template's: config.py imports no module of pyflow/warn, anywhere in it."""
    assert example_imports((PACKAGE / "config.py").read_text(encoding="utf-8")) == set()
