"""The command line, run as a user runs it: a real process with Prefect's temporary server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import run_cli
from pyflow_kit.project import flows
from pyflow_kit.testing import free_ports

FLOW_NAMES = ", ".join(flow.name for flow in flows())
"""Every flow's name, as the CLI lists them (a team's new flows included)."""


def test_cli_help_lists_the_options(isolated_settings: Path) -> None:
    """--help describes every option and exits 0."""
    result = run_cli(isolated_settings, "--help")
    assert result.returncode == 0
    for option in ("--source", "--output", "--runner", "--workers", "--dask-address", "--strict"):
        assert option in result.stdout


def test_cli_refuses_invalid_settings_before_starting(isolated_settings: Path) -> None:
    """Invalid options exit 2 with a message naming the variable, without starting Prefect."""
    (isolated_settings / ".env").write_text("PYFLOW_TASK_RUNNER=fork\n")
    result = run_cli(isolated_settings)
    assert result.returncode == 2
    assert result.stderr == (
        'pyflow: invalid settings: PYFLOW_TASK_RUNNER="fork" is invalid: Input should be '
        "'threads', 'dask' or 'dask-kubernetes'. Fix it in .env or the environment (see .env.example), or with the "
        "matching option.\n"
    )
    assert not (isolated_settings / ".prefect").exists()


def test_cli_flow_refuses_a_name_not_in_flows(isolated_settings: Path) -> None:
    """--flow with a name flows() lacks exits 2, naming the flows there are and the scaffold."""
    result = run_cli(isolated_settings, "--flow", "nope")
    assert result.returncode == 2
    assert result.stderr == (
        f"pyflow: there is no flow 'nope' in the project; there are: {FLOW_NAMES}. Scaffold a "
        "new one with `invoke new-flow NAME`\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "count"], "--param 'count' is not NAME=VALUE"),
        (
            ["--param", "no_such_parameter=3"],
            f"pyflow: the parameters of flow '{flows()[0].name}' do not fit:",
        ),
    ],
)
def test_cli_flow_options_refuse_what_does_not_fit(
    isolated_settings: Path, args: list[str], message: str
) -> None:
    """Malformed parameters, and parameters the flow does not take, exit 2 at once."""
    result = run_cli(isolated_settings, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_port_without_the_projects_server(isolated_settings: Path) -> None:
    """--port without --keep-server (a temporary server takes any port) exits 2 and says why."""
    result = run_cli(isolated_settings, "--port", "4300")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "error: --port is the port of this project's server, which only --keep-server uses: "
        "add --keep-server, or leave out --port (a temporary server takes a free port)\n"
    )


def test_parse_params_reads_json_else_text() -> None:
    """A parameter's value is JSON when it parses as JSON, else the text itself."""
    from pyflow_kit.cli import parse_params

    assert parse_params(["count=3", 'names=["a"]', "label=a b", "flag=true", "empty="]) == {
        "count": 3,
        "names": ["a"],
        "label": "a b",
        "flag": True,
        "empty": "",
    }


@pytest.mark.slow
def test_cli_keep_server_falls_back_to_a_temporary_server_when_the_port_is_taken(
    isolated_settings: Path,
) -> None:
    """With the project's port taken by another program, the run still completes, and says why."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        (isolated_settings / ".env").write_text(f"PYFLOW_SERVER_PORT={port}\n")
        result = run_cli(isolated_settings, "--keep-server")
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert (
        f"This project's Prefect server cannot start (port {port} on 127.0.0.1 is taken" in console
    )
    assert "so this run uses a temporary one, whose links stop working when the run ends" in console
    assert "Starting a temporary Prefect server" in console
    assert "Traceback" not in console


@pytest.mark.slow
def test_cli_port_starts_the_projects_server_there_and_moves_it(isolated_settings: Path) -> None:
    """`--keep-server --port A` starts the server on A; a later `--port B` moves it to B."""
    from pyflow_kit import local

    first, second = free_ports(2)
    try:
        started = run_cli(isolated_settings, "--keep-server", "--port", str(first))
        assert started.returncode == 0, started.stderr
        assert f"Started this project's Prefect server at http://127.0.0.1:{first}" in (
            started.stderr
        )
        moved = run_cli(isolated_settings, "--keep-server", "--port", str(second))
        assert moved.returncode == 0, moved.stderr
        assert f"Moving this project's Prefect server from port {first} to {second}" in (
            moved.stderr
        )
        server = local.read_state(isolated_settings / ".prefect")
        assert server is not None and server.port == second
        assert "Traceback" not in started.stderr + moved.stderr
    finally:
        local.stop_server(isolated_settings / ".prefect")
