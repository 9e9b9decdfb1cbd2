"""Scaffold a new flow: ``python -m pyflow.scaffold NAME`` (what `invoke new-flow NAME` runs).

It writes ``pyflow/NAME.py`` (the flow and its tasks), ``tests/test_NAME.py`` (a test of each
task and of the flow on Prefect) and adds the flow to ``FLOWS`` in ``pyflow/flow.py``, so that
`invoke check`, `invoke test`, `invoke run --flow NAME` and `invoke dev` pick it up at once.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from pyflow.errors import ScaffoldError

PROJECT_DIR = Path(__file__).resolve().parent.parent
TASK_NAMES = ("load_items", "summarise_items")
"""The tasks every scaffolded flow starts with: a flow may not take their names."""

FLOW_TEMPLATE = '''"""The {flow_name} flow: a starting point scaffolded by `invoke new-flow {name}`.

Replace the tasks with your own steps: each task small, typed and doing one thing; the flow
only composes them. Its test is tests/test_{name}.py.
"""

from __future__ import annotations

from prefect import flow, task


@task
def load_items(count: int) -> list[int]:
    """Return the items to work on: here, the numbers from 1 to ``count``."""
    return list(range(1, count + 1))


@task
def summarise_items(items: list[int]) -> int:
    """Return one figure for the items: here, their sum."""
    return sum(items)


@flow(name="{flow_name}")
def {name}(count: int = 3) -> int:
    """Load some items and summarise them.

    Args:
        count: How many items to load.
    """
    return summarise_items(load_items(count))
'''

TEST_TEMPLATE = '''"""Tests of the {flow_name} flow: each task on its own, then the whole flow on Prefect."""

from __future__ import annotations

import pytest

from pyflow.{name} import {name}, load_items, summarise_items


def test_load_items_returns_count_items() -> None:
    """The task loads as many items as asked for."""
    assert load_items.fn(4) == [1, 2, 3, 4]


def test_summarise_items_adds_them_up() -> None:
    """The task sums its items."""
    assert summarise_items.fn([2, 5]) == 7


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_{name}_runs_on_prefect() -> None:
    """The flow composes its tasks and completes on a Prefect server."""
    state = {name}(count=4, return_state=True)
    assert state.is_completed()
    assert state.result() == 10
'''


@dataclass(frozen=True)
class Scaffold:
    """The files of a new flow, and the new text of the module that lists every flow."""

    module: Path
    test: Path
    flows_module: Path
    flows_text: str


def plan(name: str, root: Path = PROJECT_DIR) -> Scaffold:
    """Check the name and return what scaffolding the flow writes; write nothing yet.

    Raises:
        ScaffoldError: If the name is not a module name, or is taken, with what to do instead.
    """
    if not name.isidentifier() or not name.islower() or keyword.iskeyword(name):
        raise ScaffoldError(
            f"'{name}' is not a flow name: use lower-case letters, digits and _ (not first), "
            "such as daily_report"
        )
    module = root / "pyflow" / f"{name}.py"
    test = root / "tests" / f"test_{name}.py"
    flows_module = root / "pyflow" / "flow.py"
    for taken in (module, module.with_suffix(""), test):
        if taken.exists():
            raise ScaffoldError(
                f"{taken.relative_to(root)} already exists: choose another name, or remove it"
            )
    source = flows_module.read_text(encoding="utf-8")
    tree = ast.parse(source)
    if name in TASK_NAMES or name in module_names(tree):
        raise ScaffoldError(
            f"'{name}' is already a name in pyflow/flow.py or the scaffold's tasks: choose another"
        )
    return Scaffold(module, test, flows_module, add_to_flows(source, tree, name))


def module_names(tree: ast.Module) -> set[str]:
    """Return the names a module defines or imports at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def add_to_flows(source: str, tree: ast.Module, name: str) -> str:
    """Return the flows module with the new flow imported and appended to ``FLOWS``.

    Raises:
        ScaffoldError: If the module has no ``FLOWS = (...)`` tuple of names.
    """
    flows = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "FLOWS" for t in node.targets)
        ),
        None,
    )
    if flows is None or not isinstance(flows.value, ast.Tuple | ast.List):
        raise ScaffoldError(
            "pyflow/flow.py has no FLOWS = (...) tuple: restore it, listing every flow"
        )
    members = [ast.get_source_segment(source, element) or "" for element in flows.value.elts]
    lines = source.splitlines(keepends=True)
    value = flows.value
    assert value.end_lineno is not None and value.end_col_offset is not None
    before = "".join(lines[: value.lineno - 1]) + lines[value.lineno - 1][: value.col_offset]
    after = lines[value.end_lineno - 1][value.end_col_offset :] + "".join(lines[value.end_lineno :])
    names = [*members, name]
    tuple_text = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
    updated = before + tuple_text + after
    last_import = max(
        node.end_lineno or node.lineno
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    )
    updated_lines = updated.splitlines(keepends=True)
    updated_lines.insert(last_import, f"from pyflow.{name} import {name}\n")
    return "".join(updated_lines)


def write(scaffold: Scaffold, name: str) -> None:
    """Write the new files, then the updated flows module; on any failure, write nothing."""
    flow_name = name.replace("_", "-")
    written: list[Path] = []
    try:
        for path, template in ((scaffold.module, FLOW_TEMPLATE), (scaffold.test, TEST_TEMPLATE)):
            path.write_text(template.format(name=name, flow_name=flow_name), encoding="utf-8")
            written.append(path)
        scaffold.flows_module.write_text(scaffold.flows_text, encoding="utf-8")
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise ScaffoldError(f"cannot write the new flow's files: {error}") from None


def tidy(paths: list[Path]) -> None:
    """Sort the imports and format the files as `invoke lint` wants them, if ruff is here."""
    if find_spec("ruff") is None:
        return
    files = [str(path) for path in paths]
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--quiet", "--fix", "--select", "I", *files], check=False)
    subprocess.run([*ruff, "format", "--quiet", *files], check=False)


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line of ``python -m pyflow.scaffold``."""
    parser = argparse.ArgumentParser(prog="python -m pyflow.scaffold", description=__doc__)
    parser.add_argument("name", help="the flow's module and function name, such as daily_report")
    parser.add_argument(
        "--root", type=Path, default=PROJECT_DIR, help="the project folder (default: this one)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Scaffold the flow named on the command line; print what was written and what to do next."""
    args = build_parser().parse_args(argv)
    try:
        scaffold = plan(args.name, args.root.resolve())
        write(scaffold, args.name)
    except ScaffoldError as error:
        print(f"pyflow new-flow: {error}", file=sys.stderr)
        return 1
    tidy([scaffold.module, scaffold.test, scaffold.flows_module])
    root = args.root.resolve()
    print(
        f"pyflow new-flow: wrote {scaffold.module.relative_to(root)} and {scaffold.test.relative_to(root)}"
    )
    print(
        f"pyflow new-flow: added {args.name} to FLOWS in {scaffold.flows_module.relative_to(root)}"
    )
    print(
        f"Next: `invoke check`, `invoke test`, `invoke run --flow {args.name}`; "
        "`invoke dev` registers its deployment."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
