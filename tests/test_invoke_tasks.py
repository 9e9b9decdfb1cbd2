"""The invoke tasks: each runs one package command, which accepts every flag the task passes.

What each command does is tested with its module (test_image, test_release, test_gcp,
test_deploy, test_local, ...); real `invoke` runs are in test_local, test_scaffold and
test_image. Here: the three helpers, and the contract between each task and its module.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import shlex
from pathlib import Path

import pytest
from invoke import Collection, Config, Exit, MockContext, Result

import tasks

HOME = "/tmp/pyflow-home"
NAMESPACE = Collection.from_module(tasks)
"""The tasks as invoke finds them in tasks.py."""


@pytest.fixture
def with_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the tasks as after `invoke setup`, whether or not this checkout has a .venv."""
    monkeypatch.setattr(tasks.bootstrap, "activate_venv", lambda: True)


def mock_context(poetry: str = "poetry") -> MockContext:
    """Return a MockContext with the project's configuration; every command succeeds."""
    config = Config(overrides={"pyflow": {"poetry": poetry, "home": HOME}, "run": {"echo": True}})
    return MockContext(config=config, run=Result(), repeat=True)


def test_options_turn_flags_into_quoted_options_and_leave_out_empty_ones() -> None:
    """Values are quoted, lists repeat the flag, True is a bare flag, empty values are left out."""
    flags = tasks.options(
        engine="podman",
        secret=["ca=/a b", "x=/y"],
        dry_run=True,
        insecure=False,
        port=0,
        base_image="",
    )
    assert shlex.split(flags) == [
        "--engine", "podman", "--secret", "ca=/a b", "--secret", "x=/y", "--dry-run",
    ]  # fmt: skip


@pytest.mark.usefixtures("with_venv")
def test_sh_runs_in_the_venv_from_the_project_folder_with_its_prefect_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from any folder, a task's command runs in the project folder, on its .venv."""
    monkeypatch.chdir(tmp_path)
    c = mock_context()
    tasks.check(c)
    assert Path.cwd() == tasks.bootstrap.ROOT
    [call] = c.run.call_args_list
    assert call.args[0] == "python -m pyflow.checks"
    assert call.kwargs["env"] == {"PREFECT_HOME": HOME}


@pytest.mark.usefixtures("without_venv")
def test_sh_without_a_venv_runs_through_poetry() -> None:
    """Before `invoke setup` made .venv, commands run through `poetry run`."""
    c = mock_context("/opt/python -m poetry")
    tasks.check(c)
    assert c.run.call_args.args[0] == "/opt/python -m poetry run python -m pyflow.checks"


@pytest.mark.usefixtures("with_venv")
def test_sh_in_the_foreground_replaces_invoke_with_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`invoke dev` and `invoke logs` become the command, so signals reach it directly."""
    replaced: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(tasks.os, "execvpe", lambda *args: replaced.append(args))
    c = mock_context()
    tasks.dev(c, port=4300)
    [(program, argv, env)] = replaced
    assert argv == ["python", "-m", "pyflow.local", "dev", "--home", HOME, "--port", "4300"]
    assert program == "python"
    assert env["PREFECT_HOME"] == HOME
    assert env["PATH"] == os.environ["PATH"]
    assert c.run.call_args_list == []


@pytest.mark.usefixtures("without_venv")
def test_poetry_says_how_to_install_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that needs Poetry where there is none stops with one message and the fix."""
    monkeypatch.setattr(tasks.bootstrap, "find_poetry", lambda: "")
    with pytest.raises(Exit, match=r"Poetry is not installed: run `invoke setup`"):
        tasks.lint(mock_context(""))


def test_setup_installs_poetry_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Poetry, `invoke setup` installs it into this Python, then the project with it.

    The install runs with no virtual environment active, so it lands in .venv, and the command
    that ran Poetry is recorded there for the tasks run later from an activated .venv.
    """
    monkeypatch.setattr(tasks.bootstrap, "find_poetry", lambda: "")
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    monkeypatch.setenv("VIRTUAL_ENV", "/home/me/.venvs/tools")
    recorded: list[str] = []
    monkeypatch.setattr(tasks.bootstrap, "record_poetry", recorded.append)
    c = mock_context("")
    tasks.setup(c, index_url="https://mirror.test/simple")
    run = [call.args[0] for call in c.run.call_args_list]
    poetry = f"{shlex.quote(tasks.sys.executable)} -m poetry"
    assert run[0] == tasks.bootstrap.install_poetry_command()
    assert run[1] == f"{poetry} install"
    install = c.run.call_args_list[1].kwargs
    assert install["env"]["POETRY_PYPI_MIRROR_URL"] == "https://mirror.test/simple"
    assert "VIRTUAL_ENV" not in install["env"]
    assert install["replace_env"] is True
    assert recorded == [poetry]


def test_ci_runs_lint_check_and_test_in_order() -> None:
    """The default task is `ci`, and it runs lint, check and test before itself."""
    assert NAMESPACE.default == "ci"
    assert [t.name for t in tasks.ci.pre] == ["lint", "check", "test"]


def test_every_task_and_flag_is_documented() -> None:
    """Every task has a docstring and every flag a help entry."""
    for name in NAMESPACE.task_names:
        task = NAMESPACE[name]
        assert task.__doc__, f"invoke {name} has no docstring"
        flags = [p for p in inspect.signature(task.body).parameters if p != "c"]
        for flag in flags:
            assert flag.replace("_", "-") in task.help, f"invoke {name} --{flag} has no help"


EVERY_FLAG = {
    "run": {"source": ["a.csv#state=CA"], "output": "out", "runner": "dask", "workers": 2,
            "strict": True, "flow": "demo", "param": ["n=1"], "temporary_server": True,
            "port": 4300},
    "trigger": {"flow": "warn-notices", "wait": True},
    "status": {},
    "logs": {"follow": True, "lines": 5},
    "new_flow": {"name": "daily_report"},
    "server": {"port": 4300},
    "dev": {"port": 4300},
    "reset": {},
    "deploy": {"env": "production", "image": "r/i:1@sha256:0"},
    "pool": {},
    "build": {"engine": "podman", "base_image": "b", "secret": ["ca=/c"], "index_url": "u",
              "isolation": "chroot", "registry": "r", "version": "1.0.0", "cache_from": "f",
              "cache_to": "t"},
    "push": {"engine": "podman", "registry": "r", "version": "1.0.0", "insecure": True},
    "release": {"engine": "podman", "dry_run": True, "base_image": "b", "secret": ["ca=/c"],
                "isolation": "chroot"},
    "gcp_setup": {"dry_run": True},
    "releases": {},
    "rollback": {"version": "1.0.0", "dry_run": True},
    "preview": {"pr": 7, "remove": True, "engine": "podman"},
    "check": {},
}  # fmt: skip
"""Every package-running task, with every flag set."""


def parser_of(module: str) -> argparse.ArgumentParser:
    """Return the command-line parser of a package module."""
    imported = importlib.import_module("pyflow.__main__" if module == "pyflow" else module)
    build_parser = getattr(imported, "build_parser", None)
    if build_parser is None:  # modules whose command line takes no options
        return argparse.ArgumentParser(prog=module)
    parser: argparse.ArgumentParser = build_parser()
    parser.exit_on_error = False
    return parser


@pytest.mark.usefixtures("with_venv")
@pytest.mark.parametrize("name", sorted(EVERY_FLAG))
def test_task_command_is_accepted_by_its_module(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flag a task passes on is one its module's command line accepts, with that value."""
    replaced: list[list[str]] = []
    monkeypatch.setattr(tasks.os, "execvpe", lambda program, argv, env: replaced.append(argv))
    c = mock_context()
    getattr(tasks, name)(c, **EVERY_FLAG[name])
    argv = replaced[0] if replaced else shlex.split(c.run.call_args.args[0])
    assert argv[:2] == ["python", "-m"]
    parsed = vars(parser_of(argv[2]).parse_args(argv[3:]))
    given = {flag: value for flag, value in EVERY_FLAG[name].items() if flag not in {"c"}}
    for flag, value in given.items():
        if flag in parsed and not isinstance(value, bool):
            assert parsed[flag] == value or parsed[flag] == str(value), (flag, parsed)


def test_tasks_file_stays_thin() -> None:
    """tasks.py orchestrates: at most 350 lines, and no function but the tasks and 3 helpers."""
    import ast

    source = Path(tasks.__file__).read_text(encoding="utf-8")
    functions = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]
    helpers = [f.name for f in functions if not any(_is_task(d) for d in f.decorator_list)]
    assert len(source.splitlines()) <= 350
    assert helpers == ["poetry", "options", "sh"]


def _is_task(decorator: object) -> bool:
    """Return whether a decorator is invoke's @task (bare or called)."""
    import ast

    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "task"


@pytest.mark.usefixtures("with_venv")
def test_sh_shows_commands_without_the_credentials_of_urls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A source or index URL's user and token, or its signed query, is shown masked, never as given."""
    c = mock_context()
    tasks.run(
        c,
        source=[
            "https://user:s3cret@data.example/ca.csv",
            "https://data.example/tx.csv?X-Goog-Signature=abc123#state=TX",
        ],
    )
    shown = capsys.readouterr().out
    assert "https://***@data.example/ca.csv" in shown
    assert "https://data.example/tx.csv?***#state=TX" in shown
    assert "s3cret" not in shown and "abc123" not in shown
    assert c.run.call_args.kwargs["echo"] is False
    assert "user:s3cret@" in c.run.call_args.args[0], "the command itself keeps the URL"
