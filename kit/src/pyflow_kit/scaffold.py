"""Add or remove a flow: ``python -m pyflow_kit.scaffold new|remove NAME`` (`invoke new-flow`, ...).

``new`` writes a flow's package as every flow has one, ``PACKAGE/NAME/`` with ``flow.py`` (the
flow, which only composes tasks) and ``tasks.py`` (its tasks), and its tests in ``tests/NAME/``.
The kit finds flows by that layout, so `invoke check`, `invoke test`, `invoke run --flow NAME`
and `invoke dev` pick it up at once, with nothing to list. Nothing is written if a file is taken.

``remove`` takes a flow out whole: its package, its tests, and every line of the project's other
files that is its own, marked ``# flow: NAME`` at the line's end (its dependencies in
pyproject.toml, its tasks in tasks.py), and every block of a Markdown file between
``<!-- flow: NAME -->`` and ``<!-- /flow: NAME -->`` (its README section), or of another file
between the lines ``# <flow: NAME>`` and ``# </flow: NAME>``.
"""

from __future__ import annotations

import keyword
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from pyflow_kit import commands
from pyflow_kit.errors import PyflowError, ScaffoldError
from pyflow_kit.project import Project, current

FLOW_TEMPLATE = '''"""The {flow_name} flow: a starting point scaffolded by `invoke new-flow {name}`.

The flow only composes the tasks of `{package}.{name}.tasks`; replace them with your own steps.
Its tests are in tests/{name}/.
"""

from __future__ import annotations

from prefect import flow

from {package}.{name}.tasks import load_items, summarise_items


@flow(name="{flow_name}")
def {name}(count: int = 3) -> int:
    """Load some items and summarise them.

    Args:
        count: How many items to load.
    """
    return summarise_items(load_items(count))
'''

TASKS_TEMPLATE = '''"""The {flow_name} flow's tasks: each one small, typed, and one step."""

from __future__ import annotations

from prefect import task


@task
def load_items(count: int) -> list[int]:
    """Return the items to work on: here, the numbers from 1 to ``count``."""
    return list(range(1, count + 1))


@task
def summarise_items(items: list[int]) -> int:
    """Return one figure for the items: here, their sum."""
    return sum(items)
'''

PACKAGE_TEMPLATE = '''"""The {flow_name} flow: its assembly (``flow.py``) and its tasks (``tasks.py``)."""
'''

TASKS_TEST_TEMPLATE = '''"""Tests of the {flow_name} flow's tasks, each called as a plain function."""

from __future__ import annotations

from {package}.{name}.tasks import load_items, summarise_items


def test_load_items_returns_count_items() -> None:
    """The task loads as many items as asked for."""
    assert load_items.fn(4) == [1, 2, 3, 4]


def test_summarise_items_adds_them_up() -> None:
    """The task sums its items."""
    assert summarise_items.fn([2, 5]) == 7
'''

FLOW_TEST_TEMPLATE = '''"""Tests of the {flow_name} flow: its tasks composed, on a real Prefect server."""

from __future__ import annotations

import pytest

from {package}.{name}.flow import {name}


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
    """The files of a new flow, each with its text."""

    files: dict[Path, str]


def plan(name: str, project: Project | None = None) -> Scaffold:
    """Check the name and return what scaffolding the flow writes; write nothing yet.

    Raises:
        ScaffoldError: If the name is not a package name, or is taken, with what to do instead.
    """
    check_name(name)
    project = project or current()
    package, tests = project.package_dir / name, project.root / "tests" / name
    for taken in (package, package.with_suffix(".py"), tests):
        if taken.exists():
            raise ScaffoldError(
                f"{taken.relative_to(project.root)} already exists: choose another name, or "
                "remove it"
            )
    return files(name, project)


def check_name(name: str) -> None:
    """Raise ScaffoldError, saying what a flow name is, if ``name`` is not one."""
    if not name.isidentifier() or not name.islower() or keyword.iskeyword(name):
        raise ScaffoldError(
            f"'{name}' is not a flow name: use lower-case letters, digits and _ (not first), "
            "such as daily_report"
        )


def files(name: str, project: Project) -> Scaffold:
    """Return the files of a new flow named ``name`` (checked by `plan`), whatever is there."""
    package, tests = project.package_dir / name, project.root / "tests" / name
    values = {"name": name, "flow_name": name.replace("_", "-"), "package": project.package}
    templates = {
        package / "__init__.py": PACKAGE_TEMPLATE,
        package / "flow.py": FLOW_TEMPLATE,
        package / "tasks.py": TASKS_TEMPLATE,
        tests / f"test_{name}_tasks.py": TASKS_TEST_TEMPLATE,
        tests / f"test_{name}_flow.py": FLOW_TEST_TEMPLATE,
    }
    return Scaffold({path: text.format(**values) for path, text in templates.items()})


def write(scaffold: Scaffold) -> None:
    """Write the new files; on any failure, remove what was written."""
    written: list[Path] = []
    try:
        for path, text in scaffold.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in {path.parent for path in scaffold.files}:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise ScaffoldError(f"cannot write the new flow's files: {error}") from None


def tidy(paths: list[Path]) -> None:
    """Sort the imports and format the files as `invoke lint` wants them, if ruff is here."""
    if find_spec("ruff") is None:
        return
    files = [str(path) for path in paths]
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--quiet", "--fix", "--select", "I", *files], check=False)
    subprocess.run([*ruff, "format", "--quiet", *files], check=False)


MARKED_FILES = (
    *("*.py", "*.toml", "*.yaml", "*.yml", "*.md"),
    *(".env.example", "Dockerfile", ".dockerignore", ".gitignore"),
)
"""Where a flow's own lines may be, in the project's folder and its .github/ (not in packages)."""


def strip_marked(text: str, mark: str) -> str:
    """Return a file's text without the lines and blocks marked ``mark`` (such as ``flow: warn``).

    A marked line ends with ``# MARK`` (``<!-- MARK -->`` in Markdown); a Markdown block runs
    from a line ``<!-- MARK -->`` to
    ``<!-- /MARK -->``, and a block of any file with ``#`` comments from a line ``# <MARK>`` to
    a line ``# </MARK>`` (for a Dockerfile, where a comment cannot end a line).
    """
    pattern = r"\s*".join(map(re.escape, mark.split()))
    line = re.compile(rf"^.*(?:#\s*{pattern}|<!-- {pattern} -->)[ \t]*(?:\n|\Z)", re.MULTILINE)
    block = re.compile(
        rf"^<!-- {pattern} -->\n.*?^<!-- /{pattern} -->\n?|^[ \t]*# <{pattern}>\n.*?^[ \t]*# </{pattern}>[ \t]*(?:\n|\Z)",
        re.MULTILINE | re.DOTALL,
    )
    return line.sub("", block.sub("", text))


def marked_files(root: Path) -> list[Path]:
    """Return the project's files that may hold a flow's marked lines."""
    found: set[Path] = set()
    for pattern in MARKED_FILES:
        found |= {path for path in root.glob(pattern) if path.is_file()}
        found |= {path for path in root.glob(f".github/**/{pattern}") if path.is_file()}
    return sorted(found)


ANSWERS_FILE = ".copier-answers.yml"
"""What copier recorded of the project: its template version and answers."""


def forget_example(name: str, root: Path) -> list[Path]:
    """Record in copier's answers that the project has no example, if ``name`` is the example.

    The example is the flow ``[tool.pyflow] example-flow`` names; with ``example: false`` an
    update leaves its lines out of the template's files, as the project did.
    """
    answers = root / ANSWERS_FILE
    if not answers.is_file():
        return []
    with (root / "pyproject.toml").open("rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("pyflow", {})
    if table.get("example-flow") != name:
        return []
    text = answers.read_text(encoding="utf-8")
    answers.write_text(re.sub(r"(?m)^example: true$", "example: false", text), encoding="utf-8")
    return [answers]


def remove(name: str, project: Project | None = None) -> list[Path]:
    """Take a flow out of the project: its package, its tests, and its marked lines.

    Returns:
        What was removed or changed.

    Raises:
        ScaffoldError: If the project has no such flow package.
    """
    project = project or current()
    package = project.package_dir / name
    if not (package / "flow.py").is_file():
        raise ScaffoldError(
            f"{package.relative_to(project.root)} is not a flow's package (no flow.py): name one "
            f"of the folders of {project.package}/ that hold a flow"
        )
    changed = [package, *forget_example(name, project.root)]
    shutil.rmtree(package)
    tests = project.root / "tests" / name
    if tests.is_dir():
        shutil.rmtree(tests)
        changed.append(tests)
    for path in marked_files(project.root):
        text = path.read_text(encoding="utf-8")
        stripped = strip_marked(text, f"flow: {name}")
        if stripped != text:
            path.write_text(stripped, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Add or remove the flow named on the command line; print what changed and what is next."""
    args = commands.parser("pyflow_kit.scaffold").parse_args(argv)
    if args.command == "remove":
        return run_remove(args.name)
    try:
        project = current()
        scaffold = plan(args.name, project)
        write(scaffold)
    except PyflowError as error:
        print(f"pyflow new-flow: {error}", file=sys.stderr)
        return 1
    tidy(list(scaffold.files))
    shown = ", ".join(str(path.relative_to(project.root)) for path in scaffold.files)
    print(f"pyflow new-flow: wrote {shown}")
    print(
        f"Next: `invoke check`, `invoke test`, `invoke run --flow {args.name}`; "
        "`invoke dev` registers its deployment."
    )
    return 0


def run_remove(name: str) -> int:
    """Remove a flow, printing what went; one message naming the problem if it cannot."""
    try:
        project = current()
        changed = remove(name, project)
    except PyflowError as error:
        print(f"pyflow remove-flow: {error}", file=sys.stderr)
        return 1
    tidy([path for path in changed if path.suffix == ".py" and path.is_file()])
    shown = ", ".join(str(path.relative_to(project.root)) for path in changed)
    print(f"pyflow remove-flow: removed or changed {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
