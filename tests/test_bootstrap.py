"""What invoke needs before the environment exists: Poetry, pip's index, the project's .venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from pyflow import bootstrap


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


def test_find_poetry_finds_it_through_the_base_python(monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert bootstrap.find_poetry() == f"{base} -m poetry"
    monkeypatch.setattr(
        bootstrap.subprocess, "run", lambda command, **kwargs: CompletedProcess(command, 1)
    )
    assert bootstrap.find_poetry() == ""


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


def test_bootstrap_imports_only_the_standard_library() -> None:
    """tasks.py imports this module with the Python that runs invoke, before any install."""
    code = (
        "import sys; sys.path.insert(0, '.'); before = set(sys.modules); "
        "import pyflow.bootstrap; "
        "extra = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names); "
        "print(sorted(extra - {'pyflow'}))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=bootstrap.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
