"""The kit's invoke tasks: each runs its command with exactly the options the command declares.

What each command does is tested with its module (test_image, test_release, test_gcp,
test_deploy, test_local, ...); real `invoke` runs are in test_local, test_scaffold and
test_image. Here: how a declared command becomes a task and its command line, and the tasks
that run tools.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from invoke import Config, Exit, MockContext, Result

from pyflow_kit import bootstrap, collection, commands
from pyflow_kit.commands import COMMANDS, Command, Option

HOME = "/tmp/pyflow-home"
NAMESPACE = collection.namespace()
"""The tasks a project's tasks.py starts from."""


@pytest.fixture
def with_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the tasks as after `invoke setup`, whether or not this checkout has a .venv."""
    monkeypatch.setattr(bootstrap, "activate_venv", lambda: True)


def mock_context(poetry: str = "poetry") -> MockContext:
    """Return a MockContext with the kit's configuration; every command succeeds."""
    config = Config(overrides={"pyflow": {"poetry": poetry, "home": HOME}, "run": {"echo": True}})
    return MockContext(config=config, run=Result(), repeat=True)


def run_task(task: str, monkeypatch: pytest.MonkeyPatch, **flags: Any) -> list[str]:
    """Run a task of the kit with a MockContext; return the command line it ran (or became)."""
    replaced: list[list[str]] = []
    monkeypatch.setattr(collection.os, "execvpe", lambda program, argv, env: replaced.append(argv))
    c = mock_context()
    NAMESPACE[task](c, **flags)
    return replaced[0] if replaced else shlex.split(c.run.call_args.args[0])


def test_command_argv_quotes_values_repeats_lists_and_leaves_out_empty_ones() -> None:
    """A list repeats its flag, True is a bare flag, and empty values leave the command's defaults."""
    command = Command(
        "x",
        "X.",
        "m",
        ("word",),
        (
            Option("name", "n", positional=True, required=True),
            Option("secret", "s", kind="list"),
            Option("dry_run", "d", kind="flag"),
            Option("insecure", "i", kind="flag"),
            Option("port", "p", kind="count"),
            Option("base_image", "b"),
        ),
    )
    given = {"name": "a b", "secret": ["ca=/a b", "x=/y"], "dry_run": True, "insecure": False}
    assert collection.command_argv(command, {**given, "port": 0, "base_image": ""}) == [
        "word", "a b", "--secret", "ca=/a b", "--secret", "x=/y", "--dry-run",
    ]  # fmt: skip


@pytest.mark.usefixtures("with_venv")
@pytest.mark.parametrize("command", [c for c in COMMANDS if c.options], ids=lambda c: c.task)
def test_every_flag_of_a_task_reaches_its_command_as_given(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each task, every flag set, runs its module's command line, which parses each value back."""
    values: dict[str, Any] = {}
    for option in command.options:
        if option.name == commands.HOME:
            continue
        values[option.name] = {
            "flag": True,
            "list": ["one", "two"],
            "count": 3,
            "number": 3,
        }.get(option.kind, option.choices[0] if option.choices else "some-value")
    argv = run_task(command.task, monkeypatch, **values)
    assert argv[:3] == ["python", "-m", command.module]
    parsed = vars(commands.parser(command.module).parse_args(argv[3:]))
    for name, value in values.items():
        assert parsed[name] == value, (name, parsed)
    if command.takes_home:
        assert parsed[commands.HOME] == HOME, "the task passes invoke's pyflow.home"


def test_every_task_and_flag_is_documented() -> None:
    """Every task has a docstring, and every flag a help that states its default if it has one."""
    required = {(c.task, o.name) for c in COMMANDS for o in c.options if o.required}
    for name in NAMESPACE.task_names:
        task = NAMESPACE[name]
        assert task.__doc__, f"invoke {name} has no docstring"
        for flag in (p for p in inspect.signature(task.body).parameters if p != "c"):
            help_text = task.help.get(flag.replace("_", "-"))
            assert help_text, f"invoke {name} --{flag} has no help"
            if (name, flag) not in required:
                assert "default" in help_text, f"invoke {name} --{flag}: no default said"


def test_task_help_is_the_commands_own() -> None:
    """A task's docstring and help are its command's summary and options' help, word for word."""
    for command in COMMANDS:
        task = NAMESPACE[command.task]
        assert task.__doc__ == command.summary
        for option in command.options:
            if option.name != commands.HOME:
                assert task.help[option.name.replace("_", "-")] == option.help


@pytest.mark.usefixtures("with_venv")
def test_sh_runs_in_the_venv_from_the_project_folder_with_its_prefect_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from any folder, a task's command runs in the project folder, on its .venv."""
    monkeypatch.chdir(tmp_path)
    c = mock_context()
    NAMESPACE["check"](c)
    assert Path.cwd() == bootstrap.root()
    [call] = c.run.call_args_list
    assert call.args[0] == "python -m pyflow_kit.checks"
    assert call.kwargs["env"] == {"PREFECT_HOME": HOME}


@pytest.mark.usefixtures("without_venv")
def test_sh_without_a_venv_runs_through_poetry() -> None:
    """Before `invoke setup` made .venv, commands run through `poetry run`."""
    c = mock_context("/opt/python -m poetry")
    NAMESPACE["check"](c)
    assert c.run.call_args.args[0] == "/opt/python -m poetry run python -m pyflow_kit.checks"


@pytest.mark.usefixtures("with_venv")
def test_a_foreground_task_becomes_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """`invoke dev` and `invoke logs` become the command, so signals reach it directly."""
    replaced: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(collection.os, "execvpe", lambda *args: replaced.append(args))
    c = mock_context()
    NAMESPACE["dev"](c, port=4300)
    [(program, argv, env)] = replaced
    assert argv == ["python", "-m", "pyflow_kit.local", "dev", "--port", "4300", "--home", HOME]
    assert program == "python"
    assert env["PREFECT_HOME"] == HOME
    assert env["PATH"] == os.environ["PATH"]
    assert c.run.call_args_list == []


@pytest.mark.usefixtures("with_venv")
def test_run_keeps_the_projects_server_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """`invoke run` passes --keep-server; `invoke run --no-keep-server` does not."""
    assert "--keep-server" in run_task("run", monkeypatch)
    assert "--keep-server" not in run_task("run", monkeypatch, keep_server=False)


@pytest.mark.usefixtures("with_venv")
def test_production_commands_run_with_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """release, pool, preview, releases and rollback set PREFECT_FLOW_ENV=production."""
    for name in ("release", "pool", "releases"):
        c = mock_context()
        NAMESPACE[name](c)
        assert c.run.call_args.kwargs["env"]["PREFECT_FLOW_ENV"] == "production", name


@pytest.mark.usefixtures("without_venv")
def test_poetry_says_how_to_install_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that needs Poetry where there is none stops with one message and the fix."""
    monkeypatch.setattr(bootstrap, "find_poetry", lambda: "")
    with pytest.raises(Exit, match=r"Poetry is not installed: run `invoke setup`"):
        NAMESPACE["lint"](mock_context(""))


def test_setup_installs_poetry_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Poetry, `invoke setup` installs it into this Python, then the project with it.

    The install runs with no virtual environment active, so it lands in .venv, and the command
    that ran Poetry is recorded there for the tasks run later from an activated .venv.
    """
    monkeypatch.setattr(bootstrap, "find_poetry", lambda: "")
    monkeypatch.setattr(collection.shutil, "which", lambda name: None)
    monkeypatch.setenv("VIRTUAL_ENV", "/home/me/.venvs/tools")
    recorded: list[str] = []
    monkeypatch.setattr(bootstrap, "record_poetry", recorded.append)
    c = mock_context("")
    NAMESPACE["setup"](c, index_url="https://mirror.test/simple")
    run = [call.args[0] for call in c.run.call_args_list]
    poetry = f"{shlex.quote(sys.executable)} -m poetry"
    assert run[0] == bootstrap.install_poetry_command()
    assert run[1:3] == [f"{poetry} check --lock --quiet", f"{poetry} install"]
    install = c.run.call_args_list[2].kwargs
    assert install["env"]["POETRY_PYPI_MIRROR_URL"] == "https://mirror.test/simple"
    assert "VIRTUAL_ENV" not in install["env"]
    assert install["replace_env"] is True
    assert recorded == [poetry]


def stale_lock_context() -> MockContext:
    """Return a MockContext in which `poetry check --lock` fails and every other command works."""
    config = Config(overrides={"pyflow": {"poetry": "poetry", "home": HOME}})
    stale = Result(command="poetry check --lock --quiet", exited=1)
    return MockContext(
        config=config,
        run={re.compile(r".*check --lock.*"): stale, re.compile(".*"): Result()},
        repeat=True,
    )


def test_setup_locks_again_a_lock_that_pyproject_outgrew(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new or upgraded project's lock is locked again (versions kept) before the install."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(collection.bootstrap, "record_poetry", lambda command: None)
    c = stale_lock_context()
    NAMESPACE["setup"](c)
    run = [call.args[0] for call in c.run.call_args_list]
    assert run[:3] == ["poetry check --lock --quiet", "poetry lock", "poetry install"]


def test_setup_in_ci_refuses_a_lock_that_pyproject_outgrew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In CI a stale lock is an error that says to lock and commit; nothing is installed."""
    monkeypatch.setenv("CI", "true")
    c = stale_lock_context()
    with pytest.raises(Exit, match=r"poetry.lock does not match pyproject.toml: run `invoke lock`"):
        NAMESPACE["setup"](c)
    assert [call.args[0] for call in c.run.call_args_list] == ["poetry check --lock --quiet"]


def test_ci_runs_lint_check_and_test_in_order() -> None:
    """The default task is `ci`, and it runs lint, check and test before itself."""
    assert NAMESPACE.default == "ci"
    assert [t.name for t in NAMESPACE["ci"].pre] == ["lint", "check", "test"]


def test_remove_flow_updates_the_lock_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """`invoke remove-flow` runs `invoke lock` after it: the flow's dependencies went."""
    assert [t.name for t in NAMESPACE["remove-flow"].post] == ["lock"]


@pytest.mark.usefixtures("with_venv")
def test_sh_shows_commands_without_the_credentials_of_urls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source or index URL's user and token, or its signed query, is shown masked, never as given."""
    c = mock_context()
    NAMESPACE["run"](
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


def upgrade_context(changed: str, status: str = "") -> MockContext:
    """Return a MockContext for `invoke upgrade`: git shows ``status`` before, ``changed`` after."""
    config = Config(overrides={"pyflow": {"poetry": "poetry", "home": HOME}})
    return MockContext(
        config=config,
        run={
            re.compile(r"git status --porcelain"): Result(status),
            re.compile(r"git diff --name-only"): Result(changed),
            re.compile(".*"): Result("0.1.0\n"),
        },
        repeat=True,
    )


def test_upgrade_refuses_a_project_copier_did_not_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without .copier-answers.yml there is no template version to update from: it says so."""
    monkeypatch.setattr(collection.bootstrap, "root", lambda: tmp_path)
    with pytest.raises(Exit, match=r"\.copier-answers\.yml is missing: only a project made with"):
        NAMESPACE["upgrade"](upgrade_context(""))


def test_upgrade_refuses_uncommitted_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update merges into a clean tree only; nothing runs on a dirty one."""
    monkeypatch.setattr(collection.bootstrap, "root", lambda: tmp_path)
    (tmp_path / ".copier-answers.yml").write_text("_commit: v0.1.0\n")
    c = upgrade_context("", status=" M pyflow/config.py\n")
    with pytest.raises(Exit, match="The project has uncommitted changes: commit or stash them"):
        NAMESPACE["upgrade"](c)
    assert not [call for call in c.run.call_args_list if "copier" in call.args[0]]


def test_upgrade_stops_at_a_conflict_naming_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file with copier's conflict lines stops the upgrade before locking; a quote of them does not."""
    monkeypatch.setattr(collection.bootstrap, "root", lambda: tmp_path)
    monkeypatch.setattr(collection.bootstrap, "activate_venv", lambda: True)
    (tmp_path / ".copier-answers.yml").write_text("_commit: v0.1.0\n")
    (tmp_path / "Dockerfile").write_text(
        "<<<<<<< before updating\nFROM a\n=======\nFROM b\n>>>>>>> after updating\n"
    )
    (tmp_path / "README.md").write_text("Conflicts show as `<<<<<<< before updating`.\n")
    c = upgrade_context("Dockerfile\nREADME.md\n")
    with pytest.raises(Exit, match=r"changed the same lines of Dockerfile: each holds both"):
        NAMESPACE["upgrade"](c, to="v0.2.0")
    run = [call.args[0] for call in c.run.call_args_list]
    assert "copier update --trust --defaults --conflict inline --vcs-ref v0.2.0" in run
    assert not [command for command in run if "lock" in command]


def test_upgrade_pr_stops_when_it_cannot_read_origins_branches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote git cannot read (no token, no network) is an error, not a branch to push."""
    monkeypatch.setattr(collection.bootstrap, "root", lambda: tmp_path)
    (tmp_path / ".copier-answers.yml").write_text("_commit: v0.2.0\n")
    config = Config(overrides={"pyflow": {"poetry": "poetry", "home": HOME}})
    c = MockContext(
        config=config,
        run={
            re.compile(r"git status --porcelain"): Result(" M Dockerfile\n"),
            re.compile(r"git ls-remote .*"): Result(exited=128),
            re.compile(".*"): Result(),
        },
        repeat=True,
    )
    with pytest.raises(Exit, match=r"Cannot read origin's branches \(git ls-remote\)"):
        NAMESPACE["upgrade-pr"](c)
    run = [call.args[0] for call in c.run.call_args_list]
    assert run[:2] == ["git status --porcelain", "gh auth setup-git"]
    assert not [command for command in run if "push" in command or "pr create" in command]
