"""What `invoke` needs before the project's environment exists: Poetry, pip's index, the .venv.

Standard library only: `tasks.py` imports this module with whatever Python runs invoke, which
has none of the project's dependencies until `invoke setup` has run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The project folder."""

VENV = ROOT / ".venv"
"""The project's virtual environment (poetry.toml keeps it in the project)."""

POETRY_PACKAGES = ("poetry>=2.2,<3", "poetry-plugin-pypi-mirror>=0.6")
"""What `invoke setup` installs when Poetry is missing: the mirror plugin lets Poetry resolve
through pip's simple index, which some indexes and proxies serve without Poetry's JSON API."""

COMPILE_BYTECODE = (
    'python -c "import compileall, sysconfig; '
    "compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)\""
)
"""Compiles the environment's bytecode once, so every command starts fast, even where Python is
told not to write it (PYTHONDONTWRITEBYTECODE, as in some containers and CI machines)."""


def find_poetry() -> str:
    """Return a command that runs Poetry: on PATH, else through this Python or its base Python.

    From an activated .venv, this Python is the venv's, which has no Poetry; the Python the venv
    was made from has it when `invoke setup` installed it there without a script on PATH.
    """
    if shutil.which("poetry"):
        return "poetry"
    base = getattr(sys, "_base_executable", sys.executable)
    for python in dict.fromkeys([sys.executable, base]):
        probe = subprocess.run([python, "-c", "import poetry.console"], capture_output=True)
        if probe.returncode == 0:
            return f"{shlex.quote(python)} -m poetry"
    return ""


def install_poetry_command() -> str:
    """Return the command that installs Poetry and its mirror plugin into this Python."""
    packages = " ".join(shlex.quote(package) for package in POETRY_PACKAGES)
    return f"{shlex.quote(sys.executable)} -m pip install --quiet {packages}"


def activate_venv(venv: Path = VENV) -> bool:
    """Put the project's .venv first on PATH for the commands run from here, as `poetry run` does.

    Returns:
        Whether the project has a .venv (before `invoke setup`, it has none).
    """
    bin_dir = venv / "bin"
    if not (bin_dir / "python").exists():
        return False
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != str(bin_dir):
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), path])
    os.environ["VIRTUAL_ENV"] = str(venv)
    os.environ.pop("PYTHONHOME", None)
    return True


def pip_index_url() -> str:
    """Return the package index pip uses: PIP_INDEX_URL, else its configuration, else its default.

    Poetry and the image build are pointed at the same index (Poetry through its mirror
    plugin, which reads the index's simple API), so they work wherever pip does: behind a proxy,
    with a private mirror, or where a proxy serves the default index without Poetry's JSON API.
    pip's default is read from pip itself, the one place that states it (`default_pip_index`).
    """
    configured = os.environ.get("PIP_INDEX_URL")
    if configured:
        return configured
    found = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    return default_pip_index()


def default_pip_index() -> str:
    """Return pip's built-in default index, or nothing if this pip does not say.

    pip has no public API for it: its value lives in ``pip._internal``, which may move in a
    later pip. This is its only use, and it fails safe: without it, Poetry and the build use
    their own defaults, which are the same index. (The project keeps the index's address out of
    its files, so it is read, not written here.)
    """
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        return ""
    return str(PyPI.simple_url)


def poetry_env(index_url: str) -> dict[str, str]:
    """Return the environment Poetry needs to resolve through ``index_url`` (none: its default)."""
    return {"POETRY_PYPI_MIRROR_URL": index_url} if index_url else {}


def masked(text: str) -> str:
    """Hide the credentials of any URL in a text (``https://user:token@host`` shows ``***``)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)
