"""Tests of the invoke tasks in tasks.py: the exact commands they run, and their helpers."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from subprocess import CompletedProcess

import psutil
import pytest
from invoke import Config, Exit, MockContext, Result
from pytest_mock import MockerFixture

import tasks

pytestmark = pytest.mark.usefixtures("without_venv")
POETRY = "poetry"
ACTIVATE_VENV = tasks.activate_venv


def mock_context(**results: Result) -> MockContext:
    """Return a MockContext with the project's configuration and Poetry on PATH."""
    config = Config(
        overrides={
            "pyflow": {"poetry": POETRY, "home": str(tasks.PREFECT_HOME)},
            "run": {"echo": True},
        }
    )
    return MockContext(config=config, run=results or Result(), repeat=True)


def commands(c: MockContext) -> list[str]:
    """Return the commands a MockContext was asked to run, in order."""
    return [call.args[0] for call in c.run.call_args_list]


def test_run_passes_every_option_to_the_cli() -> None:
    """`invoke run` turns its flags into `python -m pyflow` options, quoted for the shell."""
    c = mock_context()
    tasks.run(
        c,
        source=["a b.csv#state=CA", "https://x.test/t.csv"],
        output="out",
        runner="dask",
        workers=2,
    )
    assert commands(c) == [
        "poetry run python -m pyflow --keep-server --source 'a b.csv#state=CA' "
        "--source https://x.test/t.csv --output out --runner dask --workers 2"
    ]


def test_run_without_flags_runs_the_defaults() -> None:
    """With no flags the example runs on its settings' defaults, on the project's server."""
    c = mock_context()
    tasks.run(c)
    assert commands(c) == ["poetry run python -m pyflow --keep-server"]
    assert c.run.call_args.kwargs["env"] == {"PREFECT_HOME": str(tasks.PREFECT_HOME)}


def test_run_passes_another_flow_and_its_parameters() -> None:
    """`invoke run --flow NAME --param K=V` runs another flow, on a temporary server if asked."""
    c = mock_context()
    tasks.run(c, flow="demo", param=["count=3", "label=a b"], temporary_server=True)
    assert commands(c) == [
        "poetry run python -m pyflow --flow demo --param count=3 --param 'label=a b'"
    ]


def test_lint_runs_ruff_and_checks_the_lock() -> None:
    """`invoke lint` runs ruff's linter and format check, then `poetry check --lock`."""
    c = mock_context()
    tasks.lint(c)
    assert commands(c) == [
        "poetry run ruff check .",
        "poetry run ruff format --check .",
        "poetry run mypy",
        "poetry check --lock",
    ]


def test_format_formats_then_fixes() -> None:
    """`invoke format` formats with ruff and applies its safe fixes."""
    c = mock_context()
    tasks.format_(c)
    assert commands(c) == ["poetry run ruff format .", "poetry run ruff check --fix ."]


def test_check_validates_the_flows() -> None:
    """`invoke check` runs the flow checks module."""
    c = mock_context()
    tasks.check(c)
    assert commands(c) == ["poetry run python -m pyflow.checks"]


def test_docs_regenerates_the_configuration_table() -> None:
    """`invoke docs` rewrites the README's table from the settings."""
    c = mock_context()
    tasks.docs(c)
    assert commands(c) == ["poetry run python -m pyflow.config readme"]


@pytest.mark.parametrize(
    ("fast", "opts", "command"),
    [
        (False, "", "poetry run pytest --cov=pyflow --cov-report=term --cov-fail-under=90"),
        (True, "", 'poetry run pytest --cov=pyflow --cov-report=term -m "not slow"'),
        (
            True,
            "-k flow -x",
            'poetry run pytest --cov=pyflow --cov-report=term -m "not slow" -k flow -x',
        ),
    ],
)
def test_test_passes_fast_and_opts_to_pytest(fast: bool, opts: str, command: str) -> None:
    """`invoke test --fast` leaves out slow tests; --opts reaches pytest as given."""
    c = mock_context()
    tasks.test(c, fast=fast, opts=opts)
    assert commands(c) == [command]


def test_setup_installs_the_project_through_pips_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """With Poetry present, `invoke setup` installs through pip's index and compiles bytecode."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: f"/usr/bin/{name}")
    c = mock_context()
    tasks.setup(c, index_url="https://mirror.test/simple")
    assert commands(c) == ["poetry install", f"poetry run {tasks.COMPILE_BYTECODE}"]
    assert c.run.call_args_list[0].kwargs["env"] == {
        "POETRY_PYPI_MIRROR_URL": "https://mirror.test/simple"
    }


def test_setup_installs_poetry_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Poetry, `invoke setup` installs it (with the mirror plugin) into this Python first."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    monkeypatch.setattr(tasks, "find_poetry", lambda: "")
    python = sys.executable
    config = Config(overrides={"pyflow": {"poetry": ""}})
    c = MockContext(
        config=config,
        run={
            f"{python} -m pip install --quiet {tasks.POETRY_PACKAGES}": Result(),
            f"{python} -m poetry install": Result(),
            f"{python} -m poetry run {tasks.COMPILE_BYTECODE}": Result(),
        },
    )
    tasks.setup(c, index_url="https://mirror.test/simple")
    assert commands(c) == [
        f"{python} -m pip install --quiet {tasks.POETRY_PACKAGES}",
        f"{python} -m poetry install",
        f"{python} -m poetry run {tasks.COMPILE_BYTECODE}",
    ]


def test_pip_index_url_prefers_pip_index_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIP_INDEX_URL, when set, is the index."""
    monkeypatch.setenv("PIP_INDEX_URL", "https://proxy.test/simple")
    assert tasks.pip_index_url() == "https://proxy.test/simple"


@pytest.mark.parametrize(
    ("returncode", "stdout", "expected"),
    [(0, "https://corp.test/simple\n", "https://corp.test/simple"), (1, "", None)],
)
def test_pip_index_url_reads_pip_config_then_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch,
    mocker: MockerFixture,
    returncode: int,
    stdout: str,
    expected: str | None,
) -> None:
    """Without PIP_INDEX_URL, pip's configured index is used, else pip's own default."""
    from pip._internal.models.index import PyPI

    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    run = mocker.patch.object(
        tasks.subprocess, "run", return_value=CompletedProcess([], returncode, stdout, "")
    )
    assert tasks.pip_index_url() == (expected or PyPI.simple_url)
    run.assert_called_once_with(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_ci_runs_lint_check_and_test_in_order() -> None:
    """The default task is `ci`, and it runs lint, check and test before itself."""
    assert tasks.ns.default == "ci"
    assert [t.name for t in tasks.ci.pre] == ["lint", "check", "test"]


def test_every_task_and_flag_is_documented() -> None:
    """Every task has a docstring and every flag a help entry."""
    for name in tasks.ns.task_names:
        task = tasks.ns[name]
        assert task.__doc__ and task.__doc__.strip(), name
        flags = [p for p in inspect.signature(task.body).parameters if p != "c"]
        assert {flag.replace("-", "_") for flag in task.help} == set(flags), name


HOME = tasks.shlex.quote(str(tasks.PREFECT_HOME))


@pytest.mark.parametrize(
    ("port", "stop", "command"),
    [
        (0, False, f"poetry run python -m pyflow.local server --home {HOME}"),
        (4300, False, f"poetry run python -m pyflow.local server --home {HOME} --port 4300"),
        (4300, True, f"poetry run python -m pyflow.local stop --home {HOME}"),
    ],
)
def test_server_starts_or_stops_the_projects_server(port: int, stop: bool, command: str) -> None:
    """`invoke server` starts (or with --stop, stops) the server with the project's Prefect home."""
    c = mock_context()
    tasks.server(c, port=port, stop=stop)
    assert commands(c) == [command]


def test_dev_runs_the_local_loop_in_the_foreground() -> None:
    """`invoke dev` runs the whole loop with the project's home and the chosen port."""
    c = mock_context()
    tasks.dev(c, port=4321)
    assert commands(c) == [f"poetry run python -m pyflow.local dev --home {HOME} --port 4321"]


def test_deploy_registers_the_development_deployments() -> None:
    """`invoke deploy` in development registers the process-pool deployments, no image needed."""
    settings = "poetry run python -m pyflow.config json"
    c = MockContext(
        config=Config(overrides={"pyflow": {"poetry": POETRY, "home": str(tasks.PREFECT_HOME)}}),
        run={settings: Result(stdout='{"env": "development"}'), tasks_deploy_command(): Result()},
    )
    tasks.deploy(c, env="development")
    assert commands(c) == [settings, tasks_deploy_command()]
    assert c.run.call_args.kwargs["env"] == {"PREFECT_FLOW_ENV": "development"}


def tasks_deploy_command() -> str:
    """Return the development registration command."""
    return f"poetry run python -m pyflow.deploy --home {HOME}"


def test_reset_deletes_local_state() -> None:
    """`invoke reset` stops the server and removes the project's Prefect state and outputs."""
    c = mock_context()
    tasks.reset(c)
    assert commands(c) == [f"poetry run python -m pyflow.local reset --home {HOME}"]


def test_bench_passes_its_sizes_to_the_benchmark() -> None:
    """`invoke bench` runs the benchmark module with the rows, files, workers and variants given."""
    c = mock_context()
    tasks.bench(c, rows=1000, files=2, workers=3, variants="a,d")
    assert commands(c) == [
        "poetry run python -m pyflow.bench --rows 1000 --files 2 --workers 3 --variants a,d"
    ]


def test_foreground_processes_leaves_out_other_sessions() -> None:
    """Ctrl-C goes to the command and what it runs in its session, not to what it started apart."""
    parent = subprocess.Popen(
        ["sh", "-c", "sleep 30 & setsid sleep 31 & wait"], start_new_session=False
    )
    try:
        deadline = time.monotonic() + 5
        while len(tasks.foreground_processes(os.getpid())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        found = tasks.foreground_processes(os.getpid())
        commands_found = {" ".join(psutil.Process(pid).cmdline()) for pid in found}
        assert parent.pid in found
        assert "sleep 30" in commands_found
        assert "sleep 31" not in commands_found
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_activate_venv_puts_the_venv_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a .venv, commands find its tools first, as under `poetry run`; without one, nothing changes."""
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = tmp_path / ".venv"
    assert activate(venv) is False
    assert os.environ["PATH"] == "/usr/bin"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert activate(venv) is True
    assert activate(venv) is True
    assert os.environ["PATH"] == f"{venv / 'bin'}{os.pathsep}/usr/bin"
    assert os.environ["VIRTUAL_ENV"] == str(venv)


def activate(venv: Path) -> bool:
    """Call the real `activate_venv` (this module's autouse fixture replaces it on `tasks`)."""
    return ACTIVATE_VENV(venv)


def test_find_poetry_finds_it_through_the_base_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no `poetry` on PATH, Poetry is run through the Python that can import it."""
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    monkeypatch.setattr(tasks.sys, "_base_executable", "/opt/base/python3", raising=False)
    tried = []

    def probe(command: list[str], **kwargs: object) -> CompletedProcess[str]:
        tried.append(command[0])
        return CompletedProcess(command, 0 if command[0] == "/opt/base/python3" else 1)

    monkeypatch.setattr(tasks.subprocess, "run", probe)
    assert tasks.find_poetry() == "/opt/base/python3 -m poetry"
    assert tried == [sys.executable, "/opt/base/python3"]
    monkeypatch.setattr(tasks.subprocess, "run", lambda command, **kw: CompletedProcess(command, 1))
    assert tasks.find_poetry() == ""


def test_poetry_says_how_to_install_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that needs Poetry where there is none stops with one message and the fix."""
    monkeypatch.setattr(tasks, "find_poetry", lambda: "")
    c = MockContext(config=Config(overrides={"pyflow": {"poetry": ""}}))
    with pytest.raises(Exit, match=r"Poetry is not installed: run `invoke setup`"):
        tasks.lint(c)
