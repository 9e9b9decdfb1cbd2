"""Tests of `pyflow_kit.scaffold`: a flow added (`invoke new-flow`) or taken out (`remove-flow`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import PROJECT, activated_venv_env, copy_project, run_invoke
from pyflow_kit import local, scaffold
from pyflow_kit.project import Project
from pyflow_kit.testing import free_ports


def project(root: Path) -> Project:
    """Return a minimal project: its package, one flow ``first`` and a module, and tests/."""
    (root / "pkg" / "first").mkdir(parents=True)
    (root / "pkg" / "first" / "flow.py").write_text('"""First."""\n')
    (root / "pkg" / "etl.py").write_text("")
    (root / "tests").mkdir()
    return Project(root, "pkg", "pyflow_kit.settings:Settings", None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Daily", "'Daily' is not a flow name: use lower-case letters"),
        ("1st", "'1st' is not a flow name"),
        ("class", "'class' is not a flow name"),
        ("etl", "pkg/etl.py already exists: choose another name, or remove it"),
        ("first", "pkg/first already exists: choose another name, or remove it"),
    ],
)
def test_plan_refuses_bad_or_taken_names(tmp_path: Path, name: str, message: str) -> None:
    """A name that is not a package name, or is taken, is refused with what to do instead."""
    found = project(tmp_path)
    with pytest.raises(scaffold.ScaffoldError) as raised:
        scaffold.plan(name, found)
    assert str(raised.value).startswith(message)


def test_plan_writes_a_flow_package_by_the_convention(tmp_path: Path) -> None:
    """The flow's package holds its assembly and tasks; its tests have a folder of their own."""
    found = project(tmp_path)
    planned = scaffold.plan("daily_report", found)
    assert sorted(str(path.relative_to(tmp_path)) for path in planned.files) == [
        "pkg/daily_report/__init__.py",
        "pkg/daily_report/flow.py",
        "pkg/daily_report/tasks.py",
        "tests/daily_report/test_daily_report_flow.py",
        "tests/daily_report/test_daily_report_tasks.py",
    ]
    flow = planned.files[tmp_path / "pkg" / "daily_report" / "flow.py"]
    assert '@flow(name="daily-report")' in flow
    assert "from pkg.daily_report.tasks import load_items, summarise_items" in flow


def test_write_leaves_nothing_when_a_file_cannot_be_written(tmp_path: Path) -> None:
    """If one file cannot be written, those written are removed: the project is as it was."""
    found = project(tmp_path)
    planned = scaffold.plan("demo", found)
    (tmp_path / "tests").rmdir()
    (tmp_path / "tests").write_text("a file where the folder should be")
    with pytest.raises(scaffold.ScaffoldError, match="cannot write the new flow's files"):
        scaffold.write(planned)
    assert not (tmp_path / "pkg" / "demo").exists()


def test_strip_marked_removes_a_flows_lines_and_blocks_only() -> None:
    """Marked lines, Markdown blocks and `# <MARK>` blocks go; nothing else, not a longer mark."""
    text = (
        "keep\n"
        "import x  # flow: report\n"
        'dep = "y"  # flow: reporting\n'
        "<!-- flow: report -->\n## Report\nabout it\n<!-- /flow: report -->\n"
        "# <flow: report>\nCOPY report/ ./report/\n  # </flow: report>\n"
        "# <flow: reporting>\nkept\n# </flow: reporting>\n"
        "keep too\n"
    )
    assert scaffold.strip_marked(text, "flow: report") == (
        'keep\ndep = "y"  # flow: reporting\n# <flow: reporting>\nkept\n# </flow: reporting>\n'
        "keep too\n"
    )


def test_remove_takes_out_the_package_tests_and_marked_lines(tmp_path: Path) -> None:
    """`remove-flow` deletes the flow's package and tests, and its lines in the project's files."""
    found = project(tmp_path)
    (tmp_path / "tests" / "first").mkdir()
    (tmp_path / "tests" / "first" / "test_x.py").write_text("")
    (tmp_path / "tasks.py").write_text("ns = 1\nns.add(2)  # flow: first\n")
    (tmp_path / "README.md").write_text("# P\n<!-- flow: first -->\nIt.\n<!-- /flow: first -->\n")
    changed = scaffold.remove("first", found)
    assert not (tmp_path / "pkg" / "first").exists() and not (tmp_path / "tests" / "first").exists()
    assert (tmp_path / "tasks.py").read_text() == "ns = 1\n"
    assert (tmp_path / "README.md").read_text() == "# P\n"
    assert len(changed) == 4
    with pytest.raises(scaffold.ScaffoldError, match="pkg/etl is not a flow's package"):
        scaffold.remove("etl", found)


def test_remove_of_the_example_tells_copier_the_project_has_none(tmp_path: Path) -> None:
    """Removing the flow `example-flow` names sets `example: false` in copier's answers."""
    found = project(tmp_path)
    (tmp_path / "pkg" / "second").mkdir()
    (tmp_path / "pkg" / "second" / "flow.py").write_text('"""Second."""\n')
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pyflow]\npackage = "pkg"\nexample-flow = "first"  # flow: first\n'
    )
    answers = tmp_path / ".copier-answers.yml"
    answers.write_text("_commit: v0.2.0\nexample: true\nproject_name: acme\n")
    scaffold.remove("second", found)
    assert "example: true" in answers.read_text(), "another flow is not the example"
    assert answers in scaffold.remove("first", found)
    assert answers.read_text() == "_commit: v0.2.0\nexample: false\nproject_name: acme\n"
    assert "example-flow" not in (tmp_path / "pyproject.toml").read_text()


LOAD_DEPLOYED = """
import sys
from prefect.flows import load_flow_from_entrypoint
flow = load_flow_from_entrypoint(sys.argv[1])
print(flow.name, type(flow.task_runner).__name__)
"""
"""Prints the name and task runner of the flow a deployment's entrypoint gives, as a worker loads it."""


@pytest.mark.slow
def test_new_flow_passes_check_lint_and_test_then_runs(tmp_path: Path) -> None:
    """`invoke new-flow demo`: `check`, `lint`, `test` and `run` pass, no edit; Dask in production."""
    root = copy_project(tmp_path / "project")
    [port] = free_ports(1)
    home = tmp_path / ".prefect"
    env = activated_venv_env(
        INVOKE_PYFLOW_HOME=str(home), PYFLOW_SERVER_PORT=str(port), PYFLOW_PROJECT=str(root)
    )
    env["PYTHONPATH"] = str(root)
    made = run_invoke(env, "new-flow", "demo", cwd=root)
    assert "wrote pyflow/demo/__init__.py, pyflow/demo/flow.py" in made.stdout
    checked = run_invoke(env, "check", cwd=root)
    assert "ok: flow 'demo' (parameters: count)" in checked.stdout
    production = subprocess.run(
        [sys.executable, "-c", LOAD_DEPLOYED, "pyflow_kit.flows:demo"],
        cwd=root, env={**env, "PREFECT_FLOW_ENV": "production", "PYFLOW_OUTPUT": "gs://b/out"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert production.stdout.split() == ["demo", "DaskTaskRunner"], production.stderr
    run_invoke(env, "lint", cwd=root)
    tested = run_invoke(env, "test", "--opts", "tests/demo", cwd=root)
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


def test_project_copy_has_the_fixture_flow_as_its_only_flow() -> None:
    """The kit's tests work on the template's files with only the fixture flow in them."""
    flows = sorted(p.parent.name for p in (PROJECT / "pyflow").glob("*/flow.py"))
    assert flows == ["hello"]
    assert 'default-flow = "hello"' in (PROJECT / "pyproject.toml").read_text()
