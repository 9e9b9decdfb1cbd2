"""The kit's tests: a project to work on (the template with its flows swapped for a fixture flow).

The kit knows no flow, so its tests never use a project's: `PROJECT` is a copy of the template
project around this kit (its settings, deploy/, Dockerfile, poetry.lock), made once per session,
with every flow package it has left out and the fixture flow ``hello`` (``fixture/hello/``) in
their place, the default flow. Every test, and every process a test starts, works on it
(``PYFLOW_PROJECT``), importing its package before the template's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyflow_kit.scaffold import strip_marked, tidy
from pyflow_kit.testing import isolated_env

TEMPLATE = Path(__file__).resolve().parents[2]
"""The template project this kit is developed in: its files are the ones a project starts from."""

FIXTURE_FLOW = Path(__file__).resolve().parent / "fixture" / "hello"
VENV_BIN = Path(sys.executable).parent
"""The scripts of the environment the tests run in (the project's .venv)."""


def tracked_files(root: Path) -> list[str]:
    """Return the files of a checkout a commit would hold: tracked, or new and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def locked_version(package: str) -> str:
    """Return the version of a package the template's poetry.lock holds."""
    lock = tomllib.loads((TEMPLATE / "poetry.lock").read_text(encoding="utf-8"))
    [version] = [item["version"] for item in lock["package"] if item["name"] == package]
    return str(version)


def flow_names(root: Path) -> tuple[str, list[str]]:
    """Return a project's package and the names of its flows, by the kit's convention."""
    with (root / "pyproject.toml").open("rb") as handle:
        package = tomllib.load(handle)["tool"]["pyflow"]["package"]
    base = root / package
    return package, sorted(
        folder.name for folder in base.iterdir() if (folder / "flow.py").is_file()
    )


def copy_project(target: Path, source: Path = TEMPLATE) -> Path:
    """Copy the template project without its flows and with the fixture flow, as `PROJECT` is.

    The flows' marked lines leave tasks.py; their dependencies stay, so poetry.lock still fits.
    """
    package, names = flow_names(source)
    skipped = (*(f"{package}/{name}/" for name in names), *(f"tests/{name}/" for name in names))
    for name in tracked_files(source):
        if not name.startswith((*skipped, "kit/tests/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    tasks = target / "tasks.py"
    for name in names:
        tasks.write_text(
            strip_marked(tasks.read_text(encoding="utf-8"), f"flow: {name}"), encoding="utf-8"
        )
    tidy([tasks])
    shutil.copytree(
        FIXTURE_FLOW, target / package / "hello", ignore=shutil.ignore_patterns("__pycache__")
    )
    pyproject = target / "pyproject.toml"
    text = re.sub(
        r"(?m)^default-flow = .*$", 'default-flow = "hello"', pyproject.read_text(encoding="utf-8")
    )
    pyproject.write_text(text, encoding="utf-8")
    for command in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "test@example.org"],
        ["config", "user.name", "Test"],
        ["add", "-A"],
        ["commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *command], cwd=target, capture_output=True, check=True)
    (target / ".venv").symlink_to(VENV_BIN.parent)  # the project's environment is this one
    with (target / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".venv\n")
    return target


PROJECT = copy_project(Path(tempfile.mkdtemp(prefix="pyflow-kit-project-")) / "project")
"""The project every test works on: the template's files, the fixture flow."""
os.environ["PYFLOW_PROJECT"] = str(PROJECT)
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])
)
sys.path.insert(0, str(PROJECT))
os.chdir(PROJECT)  # what `python -m` puts first on sys.path, for processes started outside a test


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's project."""
    shutil.rmtree(PROJECT.parent, ignore_errors=True)


def project_env(**extra: str) -> dict[str, str]:
    """Return `isolated_env` for a process that works on `PROJECT` and imports its package."""
    return isolated_env(**{"PYFLOW_PROJECT": str(PROJECT), "PYTHONPATH": str(PROJECT), **extra})


def activated_venv_env(**extra: str) -> dict[str, str]:
    """Return the environment of a shell with .venv activated and no Poetry on PATH.

    Nothing of this session's Prefect or pyflow settings is kept.
    """
    folders = [
        folder
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and not (Path(folder) / "poetry").exists() and Path(folder) != VENV_BIN
    ]
    env = project_env(**extra)
    env.update(PATH=os.pathsep.join([str(VENV_BIN), *folders]), VIRTUAL_ENV=str(VENV_BIN.parent))
    assert shutil.which("poetry", path=env["PATH"]) is None
    return env


def run_invoke(
    env: dict[str, str], *args: str, cwd: Path = PROJECT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run an invoke task as a user does; fail the test with its output if it fails."""
    result = subprocess.run(
        ["invoke", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"invoke {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyflow`` in ``cwd`` with the project's prefect.toml and a fresh Prefect home."""
    shutil.copy(PROJECT / "prefect.toml", cwd / "prefect.toml")
    env = project_env()
    del env["PREFECT_HOME"]  # prefect.toml's, in ``cwd``
    return subprocess.run(
        [sys.executable, "-m", "pyflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def without_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run invoke's tasks as before `invoke setup` made .venv: through `poetry run`."""
    from pyflow_kit import collection

    monkeypatch.setattr(collection.bootstrap, "activate_venv", lambda: False)


FAKE_DOCKER = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["push"]:
    print(f"{args[1].rpartition(':')[2]}: digest: {os.environ['FAKE_DOCKER_DIGEST']} size: 1573")
elif args[:2] == ["image", "inspect"]:
    print(485000000)
elif args[:1] == ["run"]:
    options = [a for a in args[1:] if a.startswith("-")]
    image_and_command = [a for a in args[1:] if not a.startswith("-")]
    env = dict(os.environ)
    env.update(a.removeprefix("--env=").split("=", 1) for a in options if a.startswith("--env="))
    env["PYFLOW_OUTPUT"] = os.environ["FAKE_DOCKER_OUTPUT"]
    env["PATH"] = os.environ["FAKE_DOCKER_BIN"] + os.pathsep + env["PATH"]
    env["PYTHONPATH"] = os.environ["FAKE_DOCKER_WORKDIR"]
    env["PYFLOW_PROJECT"] = os.environ["FAKE_DOCKER_WORKDIR"]
    import subprocess
    sys.exit(subprocess.run(image_and_command[1:], env=env, cwd=os.environ["FAKE_DOCKER_WORKDIR"]).returncode)
sys.exit(int(os.environ.get("FAKE_DOCKER_EXIT_" + args[0].upper(), "0")))
"""
"""A stand-in for the docker CLI, which needs a Docker engine that cannot run here: it logs its
arguments, prints what `docker push` prints, fails a command when told to, and runs `docker run`'s
command on this machine, in a copy of the code with the project's tools, as the image would."""


@dataclass
class FakeDocker:
    """The fake docker CLI on PATH: its log, and the digest its pushes report."""

    log: Path
    digest: str = "sha256:" + "ab" * 32

    def calls(self) -> list[list[str]]:
        """Return the arguments of every docker command run so far, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    """Put a fake docker CLI first on PATH (the client boundary of a Docker engine)."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    fake = FakeDocker(tmp_path / "docker-calls.jsonl")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_DIGEST", fake.digest)
    monkeypatch.setenv("FAKE_DOCKER_OUTPUT", str(tmp_path / "container-output"))
    monkeypatch.setenv("FAKE_DOCKER_BIN", str(VENV_BIN))
    workdir = tmp_path / "image-workdir"  # what the image's WORKDIR holds: the code
    shutil.copytree(
        PROJECT / "pyflow", workdir / "pyflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("prefect.toml", "pyproject.toml"):
        shutil.copy(PROJECT / name, workdir)
    monkeypatch.setenv("FAKE_DOCKER_WORKDIR", str(workdir))
    return fake


def git(root: Path, *args: str) -> str:
    """Run git in a folder; fail the test if it fails."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return result.stdout


@pytest.fixture
def git_project(tmp_path: Path) -> Path:
    """A git repository with pyproject.toml at version 1.2.3 and code in pyflow/, committed."""
    root = tmp_path / "project"
    (root / "pyflow").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "1.2.3"\n\n[tool.pyflow]\npackage = "pyflow"\n'
    )
    (root / "pyflow" / "flow.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text(".prefect/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.org")
    git(root, "config", "user.name", "Test")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    return root
