"""What invoke needs before the environment exists: Poetry, pip's index, the project's .venv."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from pyflow_kit import bootstrap
from pyflow_kit.testing import require_tools


def test_activate_venv_puts_the_venv_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a .venv, its tools come first, as under `poetry run`; without one, nothing changes."""
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    venv = tmp_path / ".venv"
    assert bootstrap.activate_venv(venv) is False
    assert os.environ["PATH"] == "/usr/bin"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert bootstrap.activate_venv(venv) is True
    assert bootstrap.activate_venv(venv) is True
    assert os.environ["PATH"] == f"{venv / 'bin'}{os.pathsep}/usr/bin"
    assert os.environ["VIRTUAL_ENV"] == str(venv)


def test_find_poetry_finds_it_through_the_base_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no `poetry` on PATH, Poetry is run through a Python that can import it."""
    monkeypatch.setenv("PATH", "")
    base = Path(sys.executable).resolve()
    monkeypatch.setattr(bootstrap.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(bootstrap.sys, "_base_executable", str(base), raising=False)
    monkeypatch.setattr(
        bootstrap.subprocess,
        "run",
        lambda command, **kwargs: CompletedProcess(command, 0 if command[0] == str(base) else 1),
    )
    assert bootstrap.find_poetry(tmp_path) == f"{base} -m poetry", "no record in this venv"
    monkeypatch.setattr(
        bootstrap.subprocess, "run", lambda command, **kwargs: CompletedProcess(command, 1)
    )
    assert bootstrap.find_poetry(tmp_path) == ""


def real_poetry() -> str:
    """Return the command that runs the Poetry `invoke setup` used; skip (fail in CI) without one."""
    command = bootstrap.find_poetry()
    if not command:
        require_tools("poetry", hint="run `invoke setup`, which installs Poetry")
    return command


def test_find_poetry_runs_the_poetry_setup_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an activated .venv whose base Python has no Poetry, the recorded command is found.

    That is a user's shell after `. .venv/bin/activate`, when Poetry lives in a tools venv the
    activation took off PATH: `invoke lint` and the tests of a new flow failed there.
    """
    venv = tmp_path / ".venv"
    venv.mkdir()
    bootstrap.record_poetry(real_poetry(), venv)
    recorded = (venv / bootstrap.POETRY_RECORD).read_text().strip()
    assert Path(shlex.split(recorded)[0]).is_absolute(), "recorded by its full path"
    version = subprocess.run(
        [*shlex.split(recorded), "--version"],
        env={**os.environ, "PATH": os.defpath},
        capture_output=True,
        text=True,
    )
    assert version.returncode == 0 and "Poetry" in version.stdout
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(bootstrap.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(bootstrap.sys, "_base_executable", "/nonexistent/python", raising=False)
    assert bootstrap.find_poetry(venv) == recorded
    (venv / bootstrap.POETRY_RECORD).write_text("/nonexistent/python -m poetry\n")
    assert bootstrap.find_poetry(venv) == "", "a record whose Python is gone is not used"


PROJECT = """[project]
name = "probe"
version = "0.1.0"
requires-python = ">=3.11"
"""
"""The smallest Poetry project: enough for Poetry to say which environment it would use."""


def test_install_env_makes_poetry_install_into_the_projects_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another venv (or conda env) active, Poetry picks it; with `install_env`, .venv."""
    poetry = shlex.split(real_poetry())
    project, other = tmp_path / "project", tmp_path / "tools"
    project.mkdir()
    (project / "pyproject.toml").write_text(PROJECT)
    (project / "poetry.toml").write_text((bootstrap.root() / "poetry.toml").read_text())
    for venv in (project / ".venv", other):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setenv("VIRTUAL_ENV", str(other))
    for name in ("POETRY_VIRTUALENVS_IN_PROJECT", "POETRY_VIRTUALENVS_PATH"):
        monkeypatch.delenv(name, raising=False)  # set by `invoke test-kit --python`

    def env_path(env: dict[str, str]) -> str:
        found = subprocess.run(
            [*poetry, "env", "info", "--path"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return found.stdout.strip()

    assert env_path(dict(os.environ)) == str(other), "the defect this guards against"
    assert env_path(bootstrap.install_env({})) == str(project / ".venv")
    monkeypatch.delenv("VIRTUAL_ENV")
    monkeypatch.setenv("CONDA_PREFIX", str(other))
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "tools")
    assert env_path(dict(os.environ)) == str(other), "an active conda environment, the same"
    assert env_path(bootstrap.install_env({})) == str(project / ".venv")


def test_pip_index_url_prefers_pip_index_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIP_INDEX_URL, when set, is the index."""
    monkeypatch.setenv("PIP_INDEX_URL", "https://proxy.test/simple")
    assert bootstrap.pip_index_url() == "https://proxy.test/simple"


def test_pip_index_url_reads_pips_own_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PIP_INDEX_URL, the index in pip's configuration file; without one, pip's default."""
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    config = tmp_path / "pip.conf"
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    config.write_text("[global]\nindex-url = https://corp.test/simple\n")
    assert bootstrap.pip_index_url() == "https://corp.test/simple"
    config.write_text("[global]\n")
    assert bootstrap.pip_index_url() == bootstrap.default_pip_index()
    assert bootstrap.default_pip_index().startswith("https://")
    assert bootstrap.default_pip_index().endswith("/simple")


def test_poetry_env_points_poetry_at_the_index_only_when_there_is_one() -> None:
    """Poetry resolves through the mirror plugin with an index, and by its default without one."""
    assert bootstrap.poetry_env("https://corp.test/simple") == {
        "POETRY_PYPI_MIRROR_URL": "https://corp.test/simple"
    }
    assert bootstrap.poetry_env("") == {}


@pytest.mark.parametrize("module", ["bootstrap", "commands", "collection"])
def test_invoke_side_imports_only_the_standard_library_and_invoke(
    module: str, tmp_path: Path
) -> None:
    """tasks.py loads the kit's tasks with the Python that runs invoke, before any install.

    So what it imports needs nothing but the standard library and invoke: here they are the
    only things on the path (no site-packages, invoke alone in a folder), and the import works.
    """
    import invoke

    import pyflow_kit

    site = Path(invoke.__file__).parents[1]
    for found in [site / "invoke", *site.glob("invoke-*.dist-info")]:
        shutil.copytree(found, tmp_path / found.name)
    paths = [str(Path(pyflow_kit.__file__).parents[1]), str(tmp_path)]
    code = (
        f"import sys; sys.path[:0] = {paths!r}; before = set(sys.modules); "
        f"import pyflow_kit.{module}; "
        "extra = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names); "
        "print(sorted(extra - {'pyflow_kit', 'invoke'}))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
