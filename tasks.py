"""This project's invoke tasks: every task of pyflow-kit (`invoke --list`), then its own.

Each kit task runs one command of the kit in .venv (``invoke --help TASK`` for its flags). Add
this project's own tasks below, as the example's `bench` is: a `Command` declared once, made
into a task with `command_task`, or any `@task` function added to ``ns``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from invoke import Context, task  # template-only


def find_kit() -> None:
    """Put pyflow-kit on sys.path for an invoke outside .venv: its path, else a copy in .kit/."""
    root = Path(__file__).parent
    with (root / "pyproject.toml").open("rb") as handle:
        spec = tomllib.load(handle)["tool"]["poetry"]["dependencies"]["pyflow-kit"]
    if "path" in spec:
        sys.path.insert(0, str(root / spec["path"] / "src"))
        return
    ref = spec.get("tag") or spec.get("rev") if isinstance(spec, dict) else None
    if not ref:
        sys.exit(f"pyflow: pyflow-kit = {spec!r} in pyproject.toml: give a path, or git and a tag")
    url = f"git+{spec['git']}@{ref}#subdirectory={spec.get('subdirectory', 'kit')}"
    target = root / ".kit" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not target.is_dir():  # fetched once, whole or not at all
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
        if subprocess.run([*pip, str(partial), url], check=False).returncode:
            sys.exit(
                f"pyflow: cannot fetch pyflow-kit from {url}: check the network and its git URL"
            )
        partial.rename(target)
    sys.path.insert(0, str(target))


try:
    from pyflow_kit import collection
except ModuleNotFoundError:  # invoke runs outside .venv (before `invoke setup`, for one)
    find_kit()
    from pyflow_kit import collection

from pyflow.warn import BENCH  # noqa: E402  # flow: warn

ns = collection.namespace()
ns.add_task(collection.command_task(BENCH))  # flow: warn


# <template-only>
@task(help=collection.TEST_HELP)
def test_kit(
    c: Context, fast: bool = False, all: bool = False, python: str = "", opts: str = ""
) -> None:
    """Run pyflow-kit's own suite (this repository's, beside the project's `invoke test`)."""
    config = "-c kit/pyproject.toml --rootdir kit --cov-config kit/pyproject.toml"
    collection.pytest_command(c, "kit/tests", "pyflow_kit", fast, all, python, opts, config)


ns.add_task(test_kit, name="test-kit")
# </template-only>
