"""Tests of `pyflow.scaffold` (`invoke new-flow`): names checked, files written whole, flows listed."""

from __future__ import annotations

import ast
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, activated_venv_env, run_invoke
from pyflow import local, scaffold

FLOWS_MODULE = '''"""Flows."""

from prefect import flow

from pyflow import etl
from pyflow.tasks import clean_up


@flow(name="first")
def first() -> None:
    """Run."""


FLOWS = (first,)
"""Every flow."""
'''


def project(tmp_path: Path) -> Path:
    """Return a minimal project folder: pyflow/flow.py with one flow, and tests/."""
    (tmp_path / "pyflow").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyflow" / "flow.py").write_text(FLOWS_MODULE)
    (tmp_path / "pyflow" / "etl.py").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Daily", "'Daily' is not a flow name: use lower-case letters"),
        ("1st", "'1st' is not a flow name"),
        ("class", "'class' is not a flow name"),
        ("etl", "pyflow/etl.py already exists: choose another name, or remove it"),
        ("clean_up", "'clean_up' is already a name in pyflow/flow.py"),
        ("load_items", "'load_items' is already a name in pyflow/flow.py or the scaffold's tasks"),
    ],
)
def test_plan_refuses_bad_or_taken_names(tmp_path: Path, name: str, message: str) -> None:
    """A name that is not a module name, or is taken, is refused with what to do instead."""
    root = project(tmp_path)
    with pytest.raises(scaffold.ScaffoldError) as raised:
        scaffold.plan(name, root)
    assert str(raised.value).startswith(message)
    assert sorted(p.name for p in (root / "pyflow").iterdir()) == ["etl.py", "flow.py"]


def test_plan_adds_the_import_and_the_flow_to_flows(tmp_path: Path) -> None:
    """The flows module gains the import and the flow, and keeps everything else."""
    root = project(tmp_path)
    text = scaffold.plan("daily_report", root).flows_text
    assert "from pyflow.daily_report import daily_report\n" in text
    assert "FLOWS = (first, daily_report)\n" in text
    assert (
        text.replace("from pyflow.daily_report import daily_report\n", "").replace(
            "(first, daily_report)", "(first,)"
        )
        == FLOWS_MODULE
    )
    ast.parse(text)


def test_write_leaves_nothing_when_a_file_cannot_be_written(tmp_path: Path) -> None:
    """If the test file cannot be written, the flow module is removed and FLOWS is not touched."""
    root = project(tmp_path)
    plan = scaffold.plan("demo", root)
    shutil.rmtree(root / "tests")
    with pytest.raises(scaffold.ScaffoldError, match="cannot write the new flow's files"):
        scaffold.write(plan, "demo")
    assert not plan.module.exists()
    assert (root / "pyflow" / "flow.py").read_text() == FLOWS_MODULE


def copy_project(destination: Path) -> Path:
    """Copy the project's tracked files, as a fresh clone has them, sharing this .venv."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / ".venv").symlink_to(ROOT / ".venv")
    return destination


@pytest.mark.slow
def test_new_flow_passes_check_lint_and_test_then_runs(tmp_path: Path) -> None:
    """`invoke new-flow demo`, then `check`, `lint`, `test` and `run --flow demo` pass, no edit."""
    root = copy_project(tmp_path / "project")
    home, port = tmp_path / ".prefect", local_port()
    env = activated_venv_env(INVOKE_PYFLOW_HOME=str(home), PYFLOW_SERVER_PORT=str(port))
    made = run_invoke(env, "new-flow", "demo", cwd=root)
    assert "wrote pyflow/demo.py and tests/test_demo.py" in made.stdout
    checked = run_invoke(env, "check", cwd=root)
    assert "ok: flow 'demo' (parameters: count)" in checked.stdout
    run_invoke(env, "lint", cwd=root)
    tested = run_invoke(env, "test", "--opts", "tests/test_demo.py", cwd=root)
    assert "3 passed" in tested.stdout
    try:
        ran = run_invoke(env, "run", "--flow", "demo", "--param", "count=4", cwd=root)
        assert "pyflow: flow 'demo' completed; it returned 10" in ran.stdout
        link = re.search(r"View at (\S+)", ran.stdout + ran.stderr)
        assert link, ran.stderr
        page = httpx.get(link[1], headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200, "the printed link must answer after the run"
    finally:
        local.stop_server(home)


def local_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
