"""The kit's invoke tasks, which a project's ``tasks.py`` takes in one line and extends.

Each task of `pyflow_kit.commands.COMMANDS` runs its command (``python -m pyflow_kit.MODULE``)
in the project's ``.venv``, from the project's folder, with exactly the options the command
declares; `command_task` makes a project's own commands into tasks the same way. The others
(``setup``, ``tools``, ``lint``, ``format``, ``hooks``, ``test``, ``ci``, ``upgrade``,
``upgrade-pr``) run tools. Standard
library and invoke only: this loads with the Python that runs invoke, before ``.venv`` exists.
"""

from __future__ import annotations

import inspect
import os
import shlex
import shutil
import sys
import tomllib
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task, task

from pyflow_kit import bootstrap
from pyflow_kit.commands import COMMANDS, HOME, Command

DEFAULTS = {
    "run": {"echo": True},
    "pyflow": {
        "poetry": "",  # the command that runs Poetry; found on first use if empty
        "home": ".prefect",  # Prefect's state for this project: the server's database and logs
    },
}
"""invoke's settings for these tasks; `invoke.yaml` or ``INVOKE_*`` variables change them."""


def poetry(c: Context) -> str:
    """Return the command that runs Poetry, found once; raise Exit if it is nowhere."""
    c.config.pyflow.poetry = c.config.pyflow.poetry or bootstrap.find_poetry()
    if not c.config.pyflow.poetry:
        raise Exit("Poetry is not installed: run `invoke setup`, which installs it")
    return str(c.config.pyflow.poetry)


def sh(c: Context, command: str, foreground: bool = False, **env: str) -> None:
    """Run a command in .venv (else through `poetry run`) from the project folder.

    ``foreground`` replaces invoke with the command, so that signals reach it directly.
    """
    os.chdir(bootstrap.root())
    command = command if bootstrap.activate_venv() else f"{poetry(c)} run {command}"
    env = {"PREFECT_HOME": str(c.config.pyflow.home), **env}
    print(bootstrap.masked(command), flush=True)  # invoke's echo would show credentials
    if not foreground:
        c.run(command, env=env, echo=False)
        return
    argv = shlex.split(command)
    os.execvpe(argv[0], argv, {**os.environ, **env})  # noqa: S606 (a command of ours)


def command_argv(command: Command, given: dict[str, Any]) -> list[str]:
    """Return the command line of a command for the values an invoke task was given.

    A value left at its default (empty, 0, False, no items) is left out, so the command's own
    default holds; ``True`` gives the bare flag, a list one flag per item.
    """
    argv = list(command.words)
    for option in command.options:
        value = given.get(option.name)
        if option.positional:
            argv += [str(value)] if value not in (None, "") else []
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is True:
                argv.append(option.flag)
            elif item not in (None, False, "", 0):
                argv += [option.flag, str(item)]
    return argv


def command_task(command: Command) -> Task[Any]:
    """Make an invoke task of a command: its flags, help and positionals as the command declares."""

    def body(c: Context, **given: Any) -> None:
        given = {**command.task_defaults, **given}
        if command.takes_home:
            given[HOME] = given.get(HOME) or c.config.pyflow.home
        argv = command_argv(command, given)
        line = " ".join(["python", "-m", command.module, *map(shlex.quote, argv)])
        sh(c, line, foreground=command.foreground, **dict(command.env))

    options = [option for option in command.options if option.name != HOME]
    parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for option in options:
        default = command.task_defaults.get(option.name, _empty(option.kind))
        if option.positional:  # invoke's positional arguments are all required
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            parameters.append(inspect.Parameter(option.name, kind))
        else:
            parameters.append(
                inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default)
            )
    body.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    body.__doc__ = command.summary
    body.__name__ = command.task.replace("-", "_")
    return Task(
        body,
        name=command.task,
        help={option.name.replace("_", "-"): option.help for option in options},
        positional=[option.name for option in options if option.positional],
        iterable=[option.name for option in options if option.kind == "list"],
    )


def _empty(kind: str) -> object:
    """Return an invoke flag's default for what it takes: given, it is passed on."""
    return {"flag": False, "number": 0, "count": 0, "list": None}.get(kind, "")


@task(help={"index-url": "package index for Poetry (default: pip's configured one)"})
def setup(c: Context, index_url: str = "") -> None:
    """Install Poetry if it is missing, then the project and its tools into .venv."""
    if not c.config.pyflow.poetry and not bootstrap.find_poetry():
        c.run(bootstrap.install_poetry_command())
        c.config.pyflow.poetry = f"{shlex.quote(sys.executable)} -m poetry"
        if shutil.which("pyenv"):
            c.run("pyenv rehash", warn=True)
    os.chdir(bootstrap.root())
    extra = bootstrap.poetry_env(index_url or bootstrap.pip_index_url())
    env = bootstrap.install_env(extra)
    if not c.run(f"{poetry(c)} check --lock --quiet", env=env, replace_env=True, warn=True):
        if os.environ.get("CI"):
            raise Exit(
                "poetry.lock does not match pyproject.toml: run `invoke lock` and commit "
                "poetry.lock (CI installs only what the lock holds)"
            )
        print(
            "pyflow setup: poetry.lock does not match pyproject.toml (a new or upgraded project?)"
        )
        print("Locking it again, keeping the locked versions: commit poetry.lock afterwards.")
        c.run(f"{poetry(c)} lock", env=env, replace_env=True)
    c.run(f"{poetry(c)} install", env=env, replace_env=True)
    bootstrap.record_poetry(poetry(c))
    sh(c, bootstrap.COMPILE_BYTECODE)


@task
def tools(c: Context) -> None:
    """Install checkov, which the manifest tests run, into .tools/ (its pins clash with .venv's)."""
    os.chdir(bootstrap.root())
    c.run(bootstrap.install_tools_command())


@task
def lint(c: Context) -> None:
    """Check style and formatting (ruff), types (mypy, strict), the workflows (zizmor), poetry.lock."""
    for command in ("ruff check .", "ruff format --check .", "mypy"):
        sh(c, command)
    if (bootstrap.root() / ".github" / "workflows").is_dir():
        sh(c, "zizmor --offline .github/workflows")
    c.run(f"{poetry(c)} check --lock")


@task(name="format")
def format_(c: Context) -> None:
    """Format the code and apply ruff's safe fixes."""
    sh(c, "ruff format .")
    sh(c, "ruff check --fix .")


@task
def hooks(c: Context) -> None:
    """Run the pre-commit hooks (ruff and file hygiene) on every file, as a commit would."""
    sh(c, "pre-commit run --all-files --show-diff-on-failure")


TIERS = {"fast": '-m "not slow and not heavy"', "default": '-m "not heavy"', "all": ""}
"""Which tests each tier runs: `slow` ones start servers or processes; `heavy` ones take minutes
(clusters, benchmarks, processes killed on purpose) and run with --all, as CI does."""


TEST_HELP = {
    "fast": "only the quick tests: no server, process or network (default: all but heavy)",
    "all": "the heavy tests too: clusters, benchmarks, killed processes (default: all but heavy)",
    "python": "another Python to run them on, such as /usr/bin/python3.13, in an environment of "
    "its own (.venvs/): the versions requires-python promises (default: .venv's)",
    "opts": "extra pytest options, such as '-k flow -x' (default: none)",
}


def pytest_command(
    c: Context,
    where: str,
    cov: str,
    fast: bool,
    all_: bool,
    python: str,
    opts: str,
    config: str = "",
) -> None:
    """Run pytest on ``where`` with coverage of ``cov``, the tier chosen, on ``python`` if given.

    Another Python gets an environment of its own in ``.venvs/``, made and kept by Poetry from
    poetry.lock, so the suite runs on what the lock gives that Python.
    """
    tier = TIERS["fast" if fast else "all" if all_ else "default"]
    partial = " --cov-fail-under=0" if fast or opts else ""  # part of the suite covers less
    line = f"pytest {config} {where} --cov={cov} --cov-report=term{partial} {tier} {opts}"
    line = " ".join(line.split())
    if not python:
        sh(c, line)
        return
    os.chdir(bootstrap.root())
    env = bootstrap.install_env(
        {
            **bootstrap.poetry_env(bootstrap.pip_index_url()),
            "POETRY_VIRTUALENVS_IN_PROJECT": "false",
            "POETRY_VIRTUALENVS_PATH": str(bootstrap.root() / ".venvs"),
        }
    )
    for step in (f"env use {shlex.quote(python)}", "install --quiet", f"run {line}"):
        c.run(f"{poetry(c)} {step}", env=env, replace_env=True)


@task(help=TEST_HELP)
def test(
    c: Context, fast: bool = False, all: bool = False, python: str = "", opts: str = ""
) -> None:
    """Run the project's tests with coverage of its package; the whole suite must reach fail_under."""
    package = project_package()
    pytest_command(c, "", package, fast, all, python, opts)


def project_package() -> str:
    """Return the package that holds the project's flows (``[tool.pyflow] package``)."""
    with (bootstrap.root() / "pyproject.toml").open("rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("pyflow", {})
    return str(table.get("package", "pyflow"))


@task
def lock(c: Context) -> None:
    """Update poetry.lock to pyproject.toml, after a dependency was added or removed."""
    os.chdir(bootstrap.root())
    extra = bootstrap.poetry_env(bootstrap.pip_index_url())
    c.run(f"{poetry(c)} lock", env=bootstrap.install_env(extra), replace_env=True)


CHECK = command_task(next(command for command in COMMANDS if command.task == "check"))

ANSWERS_FILE = ".copier-answers.yml"
"""Where copier records the template version a project was made from, and its answers."""

CONFLICT = "<<<<<<< before updating"
"""How copier marks, inside a file, lines that both the team and the template changed: a line
that is only this (the README quotes it, inside a line)."""


def template_version() -> str:
    """Return the template version the project is at (``_commit`` in its answers file)."""
    text = (bootstrap.root() / ANSWERS_FILE).read_text(encoding="utf-8")
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("_commit:")
        ),
        "unknown",
    )


def kit_version(c: Context) -> str:
    """Return the version of pyflow-kit installed in .venv."""
    found = c.run(
        f"{shlex.quote(str(bootstrap.venv_dir() / 'bin' / 'python'))} -c "
        '"import pyflow_kit; print(pyflow_kit.__version__)"',
        hide=True,
        warn=True,
    )
    return found.stdout.strip() if found and found.ok else "not installed"


def git_lines(c: Context, command: str) -> list[str]:
    """Return the lines a git command prints in the project's folder."""
    found = c.run(f"git {command}", hide=True, warn=True)
    return found.stdout.splitlines() if found and found.ok else []


PULL_REQUEST_BODY = (
    "`invoke upgrade`: the pyflow template's changes since this project's last version, and "
    "pyflow-kit's (README, Updating from the template). Read the diff; CI runs `invoke`."
)
BOT = ("github-actions[bot]", "41898282+github-actions[bot]@users.noreply.github.com")
"""Who commits an update where git knows nobody (the template-update workflow's runner)."""


@task
def upgrade_pr(c: Context) -> None:
    """Commit an upgrade on a branch of its own, push it, and open its pull request (gh)."""
    os.chdir(bootstrap.root())
    if not git_lines(c, "status --porcelain"):
        print("pyflow upgrade-pr: nothing to propose: the project is at that version already")
        return
    version = template_version()
    branch = shlex.quote(f"template-update/{version}")
    c.run("gh auth setup-git")
    found = c.run(f"git ls-remote --exit-code --heads origin {branch}", hide=True, warn=True)
    if found is not None and found.exited == 0:
        print(f"pyflow upgrade-pr: {branch} is on origin already, with its pull request")
        return
    if found is None or found.exited != 2:  # 2: no such branch
        raise Exit(
            "Cannot read origin's branches (git ls-remote): check the remote and the token "
            "gh uses (GH_TOKEN), then run `invoke upgrade-pr` again"
        )
    title = shlex.quote(f"Update from the pyflow template {version}")
    known = c.run("git config user.name", hide=True, warn=True)
    who = "" if known else f"-c user.name={shlex.quote(BOT[0])} -c user.email={BOT[1]} "
    for command in (
        f"git switch --quiet --create {branch}",
        "git add --all",
        f"git {who}commit --quiet --message {title}",
        f"git push --quiet origin {branch}",
        f"gh pr create --head {branch} --title {title} --body {shlex.quote(PULL_REQUEST_BODY)}",
    ):
        c.run(command)


@task(help={"to": "the template version (a git tag) to update to (default: its latest)"})
def upgrade(c: Context, to: str = "") -> None:
    """Update the project to a newer template and kit: copier update, lock, install, check."""
    os.chdir(bootstrap.root())
    if not (bootstrap.root() / ANSWERS_FILE).is_file():
        raise Exit(
            f"{ANSWERS_FILE} is missing: only a project made with `copier copy` of the pyflow "
            "template can be upgraded (README, Starting a project)"
        )
    if git_lines(c, "status --porcelain"):
        raise Exit(
            "The project has uncommitted changes: commit or stash them, then run "
            "`invoke upgrade` again (the update merges into a clean tree, so that its diff is "
            "all the template's)"
        )
    before = template_version(), kit_version(c)
    ref = f" --vcs-ref {shlex.quote(to)}" if to else ""
    sh(c, f"copier update --trust --defaults --conflict inline{ref}")
    conflicted = [
        path
        for path in git_lines(c, "diff --name-only")
        if (bootstrap.root() / path).is_file()
        and CONFLICT in (bootstrap.root() / path).read_text(errors="replace").splitlines()
    ]
    if conflicted:
        raise Exit(
            f"The update and the project changed the same lines of {', '.join(conflicted)}: "
            f"each holds both, from `{CONFLICT}` to `>>>>>>> after updating`. Keep what is "
            "right, then run `invoke lock`, `invoke setup` and `invoke`"
        )
    lock(c)
    setup(c)
    CHECK(c)
    after = template_version(), kit_version(c)
    changed = git_lines(c, "status --short")
    print(
        f"pyflow upgrade: template {before[0]} -> {after[0]}, pyflow-kit {before[1]} -> "
        f"{after[1]}; {len(changed)} files changed:"
    )
    for line in changed:
        print(f"  {line}")
    print("Next: read `git diff`, run `invoke`, then commit (or `invoke upgrade-pr`).")


@task(pre=[lint, CHECK, test], default=True)
def ci(c: Context) -> None:
    """Run everything CI runs, in order: lint, check, test (the default task)."""


def namespace() -> Collection:
    """Return a new collection of every task of the kit, for a project's tasks.py to extend."""
    found = Collection(
        setup, tools, lock, lint, format_, hooks, test, ci, CHECK, upgrade, upgrade_pr
    )
    for command in COMMANDS:
        if command.task != "check":
            made = command_task(command)
            if command.task == "remove-flow":
                made.post = [lock]  # type: ignore[list-item]  # (tasks, as invoke takes them)
            found.add_task(made)
    found.configure(DEFAULTS)
    return found
