"""The README's three steps to replace the example, done in a copy of the project: checks pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

NEW_FLOWS = '''"""Flow assembly: the flows compose the tasks of `pyflow.tasks` and do no work themselves."""

from __future__ import annotations

from pyflow.daily_report import daily_report

FLOWS = (daily_report,)
"""Every flow of the project: what `invoke check` validates and `invoke deploy` registers."""
'''


def project_copy(target: Path) -> Path:
    """Copy the project's tracked files (as a clone has them) into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def run_in(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the copy, importing the copy's package; fail with its output."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(root)}
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_replacing_the_example_leaves_a_project_that_passes_its_checks(tmp_path: Path) -> None:
    """New flow, example deleted (pyflow/warn, tests/warn, its tasks and flow): all checks pass."""
    root = project_copy(tmp_path / "project")
    python = sys.executable
    run_in(root, python, "-m", "pyflow.scaffold", "daily_report")
    shutil.rmtree(root / "pyflow" / "warn")
    shutil.rmtree(root / "tests" / "warn")
    (root / "pyflow" / "flow.py").write_text(NEW_FLOWS)
    (root / "pyflow" / "tasks.py").write_text('"""Prefect tasks: one step each."""\n')
    checked = run_in(root, python, "-m", "pyflow.checks")
    assert "ok: flow 'daily-report' (parameters: count)" in checked.stdout
    run_in(root, python, "-m", "ruff", "check", ".")
    run_in(root, python, "-m", "ruff", "format", "--check", ".")
    run_in(root, python, "-m", "mypy")
    tested = run_in(
        root, python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
        "--ignore", "tests/test_image.py",
    )  # fmt: skip
    assert " passed" in tested.stdout
