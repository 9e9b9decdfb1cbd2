"""The project is wired: its flows are found and valid, deploy to a real server, and run.

Checks of the project as a whole, whatever its flows: they stay true as flows come and go.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.client.orchestration import get_client

from pyflow_kit import deploy, project
from pyflow_kit.checks import check_flows
from pyflow_kit.settings import get_settings, project_settings


def test_project_flows_are_found_and_pass_the_checks() -> None:
    """Every flow package is found (nothing to list), and each flow passes `invoke check`."""
    found = project.flows()
    assert found, "the project has at least one flow"
    assert check_flows(found) == []
    assert [flow.name for flow in found] == sorted(
        (flow.name for flow in found), key=lambda name: (name != found[0].name, name)
    ), "the default flow first, then the others by name"


def test_project_settings_are_the_projects_own() -> None:
    """The kit reads the project's settings class, which extends the kit's."""
    settings = get_settings()
    assert type(settings) is project_settings()
    assert type(settings).__module__.split(".")[0] == project.current().package


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_project_deploys_every_flow_to_a_real_server() -> None:
    """`invoke deploy` makes the pool and one deployment per flow, each loading it through the kit."""
    registered = deploy.deploy_local(get_settings(work_pool="project-test"))
    names = [flow.name for flow in project.flows()]
    assert [item.name for item in registered] == [f"{name}/development" for name in names]
    with get_client(sync_client=True) as client:
        for name in names:
            found = client.read_deployment_by_name(f"{name}/development")
            assert found.entrypoint == f"pyflow_kit.flows:{name.replace('-', '_')}"


@pytest.mark.slow
def test_project_default_flow_runs_once(run_flow: object) -> None:
    """The default flow, with its defaults, completes on a real Prefect server."""
    state = run_flow(project.flows()[0])  # type: ignore[operator]
    assert state.is_completed(), state.message


def test_project_command_line_is_the_kits() -> None:
    """`python -m pyflow` is the kit's command line, with its options, from any folder."""
    root = project.current().root
    result = subprocess.run(
        [sys.executable, "-m", project.current().package, "--help"],
        env={**os.environ, "PYTHONPATH": str(root)},  # this checkout's package, wherever it is
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--flow", "--param", "--source", "--output", "--strict", "--keep-server"):
        assert option in result.stdout
