"""Tests of `pyflow_kit.checks`: flows are validated without being run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import flow

from conftest import project_env
from pyflow_kit.checks import check_flow, check_flows
from pyflow_kit.project import flows


def test_check_flows_accepts_the_projects_flows() -> None:
    """Every flow of the project passes its own checks."""
    assert check_flows(flows()) == []


def test_check_flow_names_each_problem() -> None:
    """A flow with a bad name, no docstring and an untyped parameter gets one message each."""

    @flow(name="My Flow")
    def bad(count, label: str = "x"):  # type: ignore[no-untyped-def]
        return count

    problems = check_flow(bad)
    assert problems[:5] == [
        "flow 'My Flow': the name must be kebab-case, such as 'daily-report'",
        "flow 'My Flow': add a docstring; the UI shows it as the description",
        "flow 'My Flow': parameter 'count' needs a type annotation, so that Prefect can validate it",
        "flow 'My Flow': describe parameter 'count' in the docstring's Args",
        "flow 'My Flow': describe parameter 'label' in the docstring's Args",
    ]
    assert problems[5].startswith("flow 'My Flow': its parameters do not validate:")
    assert "count" in problems[5]
    assert len(problems) == 6


def test_check_flows_refuses_duplicate_names_and_non_flows() -> None:
    """Two flows with one name, or something that is not a flow, are reported."""

    @flow(name="same-name")
    def first() -> None:
        """First."""

    @flow(name="same-name")
    def second() -> None:
        """Second."""

    assert check_flows([first, second, print]) == [
        f"{print!r} is not a Prefect flow: decorate it with @flow",
        "flow name 'same-name' is used twice",
    ]


def test_checks_main_reports_the_flows_and_settings(isolated_settings: Path) -> None:
    """`python -m pyflow_kit.checks` lists what it validated and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "pyflow_kit.checks"],
        capture_output=True,
        text=True,
        check=False,
        cwd=isolated_settings,
    )
    assert result.returncode == 0, result.stderr
    for listed in flows():
        parameters = ", ".join(listed.parameters.properties) or "none"
        assert f"ok: flow '{listed.name}' (parameters: {parameters})" in result.stdout
    assert "ok: settings for development (output data/output)" in result.stdout


def test_checks_main_fails_on_invalid_settings(isolated_settings: Path) -> None:
    """Invalid settings make the check fail with the settings message."""
    result = subprocess.run(
        [sys.executable, "-m", "pyflow_kit.checks"],
        capture_output=True,
        text=True,
        check=False,
        env=project_env(PREFECT_FLOW_ENV="staging"),
    )
    assert result.returncode == 1
    assert result.stderr.startswith('pyflow check: PREFECT_FLOW_ENV="staging" is invalid')
