"""The README's way to remove the example, done in a copy: a project that passes its checks.

`invoke new-flow my_flow`, so the project keeps a flow, then `invoke remove-flow warn`: the
example's package, tests, dependencies, tasks, README section and tool settings go, and
`invoke check`, `invoke lint` and `invoke test` pass with nothing else to edit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pyflow_kit.scaffold import strip_marked
from pyflow_kit.testing import isolated_env

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

EXAMPLE_WORDS = ("pyflow.warn", "pyflow/warn", "warn-notices", "warn_notices", "polars", "WARN")
"""What would show the example is still there, in any file of the project it leaves."""


def project_copy(target: Path) -> Path:
    """Copy the project's files as a commit would hold them, sharing this environment."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file() and not name.startswith("kit/tests/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    (target / ".venv").symlink_to(Path(sys.executable).parents[1])
    return target


def invoke(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an invoke task in the copy as a user does; fail the test with its output if it fails."""
    env = isolated_env(PYFLOW_PROJECT=str(root), INVOKE_PYFLOW_HOME=str(root / ".prefect"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"invoke {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_removing_the_example_leaves_a_project_that_passes_its_checks(tmp_path: Path) -> None:
    """New flow, then `remove-flow warn`: no trace of the example; check, lint and test pass."""
    root = project_copy(tmp_path / "project")
    invoke(root, "new-flow", "my_flow")
    removed = invoke(root, "remove-flow", "warn")
    assert "pyflow/warn" in removed.stdout and "tasks.py" in removed.stdout
    assert not (root / "pyflow" / "warn").exists() and not (root / "tests" / "warn").exists()
    leftovers = {  # in what a project has: not the template's own files and lines
        str(path.relative_to(root)): [word for word in EXAMPLE_WORDS if word in text]
        for path in root.rglob("*")
        if path.is_file()
        and not path.is_relative_to(root / "kit")
        and ".venv" not in path.parts
        and path.name not in ("poetry.lock", "copier.yml")
        and (text := strip_marked(path.read_text(errors="replace"), "template-only"))
    }
    assert {name: words for name, words in leftovers.items() if words} == {}
    assert 'name = "polars"' not in (root / "poetry.lock").read_text(), "its dependencies went"
    checked = invoke(root, "check")
    assert "ok: flow 'my-flow' (parameters: count)" in checked.stdout
    invoke(root, "lint")
    tested = invoke(root, "test")
    assert " passed" in tested.stdout and " failed" not in tested.stdout
