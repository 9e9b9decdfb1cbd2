"""The kit knows no flow: it imports nothing of a project, names none of its flows or files.

Its modules also import each other without cycles, counting imports inside functions.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pyflow_kit
from conftest import TEMPLATE
from pyflow_kit import publish

PACKAGE = Path(pyflow_kit.__file__).parent
KIT_FILES = {
    publish.POINTER_FILE,
    publish.LEASE_FILE,
    publish.LOCK_FILE,
    publish.MANIFEST_FILE,
    publish.OWNER_FILE,
    "pyproject.toml",
}
"""The kit's own files, which a flow may name (the example reads latest.json to compare runs)."""
FILE_NAME = re.compile(r"[\w.-]+\.(?:csv|json|jsonl|parquet|toml|txt|xlsx)")


def module_name(path: Path) -> str:
    """Return a module's dotted name inside the kit: ``local``, ``commands``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str) -> set[str]:
    """Return every module a source imports anywhere in it, functions included, dotted in full."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def kit_graph() -> dict[str, set[str]]:
    """Return every module of the kit with the kit's modules it imports."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        imported = imported_modules(path.read_text(encoding="utf-8"))
        inside = {name.removeprefix("pyflow_kit.") for name in imported}
        graph[module_name(path)] = (inside & modules) - {module_name(path)}
    return graph


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


def template_package() -> str:
    """Return the package of the template project around the kit (``[tool.pyflow] package``)."""
    with (TEMPLATE / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["tool"]["pyflow"]["package"])


def flows_of(root: Path, package: str) -> dict[str, set[str]]:
    """Return each flow package of a project with the words that are its own.

    They are its package's path, its flows' names (from ``@flow(name=...)``) and the names of
    the files its code mentions (what it writes and reads, such as ``output.csv``), but for the
    kit's own files, which a flow may name (`KIT_FILES`).
    """
    found = {}
    for folder in sorted((root / package).iterdir()):
        if not (folder / "flow.py").is_file():
            continue
        words = {f"{package}.{folder.name}", f"{package}/{folder.name}"}
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    words |= set(FILE_NAME.findall(node.value))
                named = isinstance(node, ast.keyword) and node.arg == "name"
                if named and isinstance(node.value, ast.Constant):  # type: ignore[union-attr]
                    words.add(str(node.value.value))  # type: ignore[union-attr]
        found[folder.name] = words - KIT_FILES
    return found


def test_cycle_in_finds_a_cycle_through_function_level_imports() -> None:
    """The check sees a cycle, so that its passing on the kit means something."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) == []


def test_kit_graph_reads_imports_inside_functions() -> None:
    """The walk finds each form of import, inside functions and classes too."""
    graph = kit_graph()
    assert set(graph) == {module_name(path) for path in PACKAGE.rglob("*.py")}
    assert graph["local"] >= {"deploy", "server"}, "local imports deploy inside a function"
    snippets = {
        "from pyflow.x.flow import y": "pyflow.x.flow",
        "def f():\n    import pyflow.x\n": "pyflow.x",
        "class C:\n    def m(self):\n        from pyflow import x\n": "pyflow.x",
    }
    for snippet, module in snippets.items():
        assert module in imported_modules(snippet), snippet


def test_kit_has_no_import_cycle() -> None:
    """No module of the kit imports, directly or not, a module that imports it back."""
    assert cycle_in(kit_graph()) == []


def test_kit_imports_nothing_of_the_project() -> None:
    """No module of the kit imports the project's package, anywhere in it: it finds the flows."""
    package = template_package()
    for path in PACKAGE.rglob("*.py"):
        imported = imported_modules(path.read_text(encoding="utf-8"))
        assert not {name for name in imported if name.split(".")[0] == package}, path.name


def test_kit_names_none_of_the_projects_flows_or_their_files() -> None:
    """The kit's code mentions no flow package of the template, no flow's name, no file of theirs."""
    flows = flows_of(TEMPLATE, template_package())
    assert flows, "the template has flows, whose words the kit must not know"
    text = "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))
    for folder, words in flows.items():
        mentioned = {
            word for word in words if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)
        }
        assert not mentioned, f"the kit names the flow {folder}'s {sorted(mentioned)}"


def test_flows_of_finds_a_flows_names_and_files(tmp_path: Path) -> None:
    """The words of a flow are its package, its flows' names and the file names in its code."""
    folder = tmp_path / "pkg" / "report"
    folder.mkdir(parents=True)
    (folder / "flow.py").write_text('@flow(name="daily-report")\ndef f(): return "out/sum.csv"\n')
    (folder / "tasks.py").write_text('RULES = "rules.toml"\n')
    assert flows_of(tmp_path, "pkg") == {
        "report": {"pkg.report", "pkg/report", "daily-report", "sum.csv", "rules.toml"}
    }
