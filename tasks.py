"""This project's invoke tasks: every task of pyflow-kit (`invoke --list`), then its own.

Each kit task runs one command of the kit in .venv (``invoke --help TASK`` for its flags). Add
this project's own tasks below, as the example's `bench` is: a `Command` declared once, made
into a task with `command_task`, or any `@task` function added to ``ns``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pyflow_kit import collection
except ModuleNotFoundError:  # invoke runs outside .venv: this project takes the kit from kit/
    sys.path.insert(0, str(Path(__file__).parent / "kit" / "src"))
    from pyflow_kit import collection

from invoke import Context, task

from pyflow.warn import BENCH  # flow: warn

ns = collection.namespace()
ns.add_task(collection.command_task(BENCH))  # flow: warn


@task(help=collection.TEST_HELP)
def test_kit(
    c: Context, fast: bool = False, all: bool = False, python: str = "", opts: str = ""
) -> None:
    """Run pyflow-kit's own suite (this repository's, beside the project's `invoke test`)."""
    config = "-c kit/pyproject.toml --rootdir kit --cov-config kit/pyproject.toml"
    collection.pytest_command(c, "kit/tests", "pyflow_kit", fast, all, python, opts, config)


ns.add_task(test_kit, name="test-kit")
