"""The command line, run as a user runs it: a real process with Prefect's temporary server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PUBLISHED, ROOT
from pyflow.flow import FLOWS

FLOW_NAMES = ", ".join(flow.name for flow in FLOWS)
"""Every flow's name, as the CLI lists them (a team's new flows included)."""


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyflow`` in ``cwd`` with the project's prefect.toml and a fresh Prefect home."""
    shutil.copy(ROOT / "prefect.toml", cwd / "prefect.toml")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "PYFLOW_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pyflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_help_lists_the_options(isolated_settings: Path) -> None:
    """--help describes every option and exits 0."""
    result = run_cli(isolated_settings, "--help")
    assert result.returncode == 0
    for option in ("--source", "--output", "--runner", "--workers", "--dask-address", "--strict"):
        assert option in result.stdout


@pytest.mark.slow
def test_cli_runs_the_sample_with_a_clean_console(isolated_settings: Path) -> None:
    """A default run exits 0, writes the three files and prints no traceback or ERROR line."""
    result = run_cli(isolated_settings)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert sorted(p.name for p in (isolated_settings / "data" / "output").iterdir()) == PUBLISHED
    assert "Traceback" not in console
    assert "ERROR" not in console
    assert (
        "pyflow: read 274 rows from 9 sources: 247 notices, 1 rejected, 26 duplicates dropped."
        in result.stdout
    )
    assert (isolated_settings / ".prefect").is_dir(), "Prefect's state belongs in the project"


def test_cli_reports_a_missing_source_in_one_message(isolated_settings: Path) -> None:
    """A run whose only source is missing exits 1 with one message and the fix, at once."""
    result = run_cli(isolated_settings, "--source", "missing.csv#state=CA")
    assert result.returncode == 1
    assert result.stderr == (
        "pyflow: the run failed: source 'missing.csv' not found: check the path or URL given "
        "with --source or PYFLOW_SOURCES\n"
    )
    assert not (isolated_settings / ".prefect").exists()


@pytest.mark.slow
def test_cli_reports_an_unreachable_url_without_a_traceback(isolated_settings: Path) -> None:
    """A URL that cannot be fetched fails the run (exit 1) with its message last and no traceback."""
    (isolated_settings / ".env").write_text("PYFLOW_FETCH_RETRIES=0\n")
    result = run_cli(isolated_settings, "--source", "http://127.0.0.1:9/warn.csv#state=CA")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("pyflow:")]
    assert len(failures) == 1
    assert failures[0].startswith(
        "pyflow: the run failed: no source could be read, so nothing was written: "
        "source 'http://127.0.0.1:9/warn.csv' could not be fetched (ConnectError"
    )


@pytest.mark.slow
def test_cli_publishes_good_sources_and_exits_1_when_others_fail(isolated_settings: Path) -> None:
    """Good sources are written, bad ones listed with fixes, exit 1; with --strict, nothing."""
    (isolated_settings / "binary.csv").write_bytes(b"\x00\x01 not csv")
    (isolated_settings / "foo.csv").write_text("Foo,Bar\n1,2\n")
    sample = ROOT / "pyflow" / "warn" / "sample"
    sources = [
        "--source", f"{sample / 'tx.csv'}#state=TX", "--source", "binary.csv#state=OK",
        "--source", "foo.csv#state=OK", "--source", f"{sample / 'wi.csv'}#state=WI",
    ]  # fmt: skip
    result = run_cli(isolated_settings, *sources, "--output", "out")
    assert result.returncode == 1
    assert "pyflow: read 61 rows from 4 sources: 60 notices, 1 rejected" in result.stdout
    assert "pyflow: 2 of 4 sources failed; the others were published:" in result.stderr
    assert "  - source 'binary.csv' is not a CSV file (it holds binary data)" in result.stderr
    assert "  - source 'foo.csv' has no column for the company" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (isolated_settings / "out" / "notices.csv").read_text().count("\n") == 61
    strict = run_cli(isolated_settings, *sources, "--output", "strict", "--strict")
    assert strict.returncode == 1
    assert "strict mode writes nothing" in strict.stderr
    assert not (isolated_settings / "strict" / "notices.csv").exists()


def test_cli_refuses_invalid_settings_before_starting(isolated_settings: Path) -> None:
    """Invalid options exit 2 with a message naming the variable, without starting Prefect."""
    (isolated_settings / ".env").write_text("PYFLOW_TASK_RUNNER=fork\n")
    result = run_cli(isolated_settings)
    assert result.returncode == 2
    assert result.stderr == (
        'pyflow: invalid settings: PYFLOW_TASK_RUNNER="fork" is invalid: Input should be '
        "'threads' or 'dask'. Fix it in .env or the environment (see .env.example), or with the "
        "matching option.\n"
    )
    assert not (isolated_settings / ".prefect").exists()


def test_cli_refuses_an_unwritable_output_before_starting(isolated_settings: Path) -> None:
    """An output that cannot be written exits 1 with the fix, before a server is started."""
    (isolated_settings / "blocker").write_text("a file, not a folder")
    result = run_cli(isolated_settings, "--output", "blocker/out")
    assert result.returncode == 1
    assert "cannot be written" in result.stderr
    assert "--output or PYFLOW_OUTPUT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (isolated_settings / ".prefect").exists()


def test_cli_flow_refuses_a_name_not_in_flows(isolated_settings: Path) -> None:
    """--flow with a name FLOWS lacks exits 2, naming the flows there are and the scaffold."""
    result = run_cli(isolated_settings, "--flow", "nope")
    assert result.returncode == 2
    assert result.stderr == (
        f"pyflow: there is no flow 'nope' in FLOWS (pyflow/flow.py); there are: {FLOW_NAMES}. "
        "Scaffold a new one with `invoke new-flow NAME`\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--flow", "other", "--source", "a.csv"],
            "--source: options of warn-notices; pass --param NAME=VALUE to flow 'other'",
        ),
        (["--flow", "other", "--param", "count"], "--param 'count' is not NAME=VALUE"),
        (["--param", "count=3"], "--param is for other flows: warn-notices takes the options"),
    ],
)
def test_cli_flow_options_refuse_what_does_not_fit(
    isolated_settings: Path, args: list[str], message: str
) -> None:
    """Options of the example given to another flow, and malformed parameters, exit 2 at once."""
    result = run_cli(isolated_settings, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_parse_params_reads_json_else_text() -> None:
    """A parameter's value is JSON when it parses as JSON, else the text itself."""
    from pyflow.__main__ import parse_params

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
