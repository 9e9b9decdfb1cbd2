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

PROJECT_MARK = "[tool.pyflow]"
"""What a project's pyproject.toml holds (see `pyflow_kit.project`)."""


def find_project_root(start: Path | None = None) -> Path:
    """Return the project folder: the nearest with a pyproject.toml that has ``[tool.pyflow]``.

    Searched from ``start`` (the working folder) up, as invoke searches for ``tasks.py``;
    ``PYFLOW_PROJECT`` names it outright; where there is none, the working folder.
    """
    named = os.environ.get("PYFLOW_PROJECT")
    if named and start is None:
        return Path(named).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and PROJECT_MARK in candidate.read_text(encoding="utf-8"):
            return folder
    return here


def root() -> Path:
    """Return the project folder, as found now (`find_project_root`)."""
    return find_project_root()


def venv_dir() -> Path:
    """Return the project's virtual environment (poetry.toml keeps it in the project)."""
    return root() / ".venv"


ACTIVE_ENV_VARIABLES = ("VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV")
"""What tells Poetry that an environment is active, which it would then install into."""

POETRY_RECORD = "pyflow-poetry"
"""The file in .venv where `invoke setup` records the command that ran Poetry, so later tasks
find it from any shell: an activated .venv, whose base Python may not have Poetry, included."""

TOOLS = ".tools"
"""The project's folder of test tools whose pinned dependencies clash with poetry.lock's."""


def tools_path() -> Path:
    """Return the folder of the tools' commands alone (not their venv's python), for PATH."""
    return root() / TOOLS / "path"


TOOL_PACKAGES = ("checkov==3.3.30",)
"""What `invoke tools` installs: checkov, which the manifest tests run on every manifest."""

POETRY_PACKAGES = ("poetry==2.5.1", "poetry-plugin-pypi-mirror==0.6.5")
"""What `invoke setup` installs when Poetry is missing: the mirror plugin lets Poetry resolve
through pip's simple index, which some indexes and proxies serve without Poetry's JSON API."""

COMPILE_BYTECODE = (
    'python -c "import compileall, sysconfig; '
    "compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)\""
)
"""Compiles the environment's bytecode once, so every command starts fast, even where Python is
told not to write it (PYTHONDONTWRITEBYTECODE, as in some containers and CI machines)."""


def find_poetry(venv: Path | None = None) -> str:
    """Return a command that runs Poetry: on PATH, else the one `invoke setup` ran, else a Python's.

    From an activated .venv, this Python is the venv's, which has no Poetry, and the Python the
    venv was made from may have none either (Poetry installed in a tools venv that the
    activation took off PATH): the command `invoke setup` recorded in the .venv still runs it.
    """
    if shutil.which("poetry"):
        return "poetry"
    recorded = recorded_poetry(venv or venv_dir())
    if recorded:
        return recorded
    base = getattr(sys, "_base_executable", sys.executable)
    for python in dict.fromkeys([sys.executable, base]):
        if _imports_poetry(python):
            return f"{shlex.quote(python)} -m poetry"
    return ""


def _imports_poetry(python: str) -> bool:
    """Return whether a Python can import Poetry (false for one that is not there)."""
    try:
        probe = subprocess.run([python, "-c", "import poetry.console"], capture_output=True)
    except OSError:
        return False
    return probe.returncode == 0


def recorded_poetry(venv: Path | None = None) -> str:
    """Return the Poetry command recorded in the .venv, if it still runs Poetry."""
    try:
        parts = shlex.split(((venv or venv_dir()) / POETRY_RECORD).read_text())
    except (OSError, ValueError):
        return ""
    if len(parts) == 3 and parts[1:] == ["-m", "poetry"] and _imports_poetry(parts[0]):
        return shlex.join(parts)
    if len(parts) == 1 and Path(parts[0]).is_absolute() and os.access(parts[0], os.X_OK):
        return shlex.quote(parts[0])
    return ""


def record_poetry(command: str, venv: Path | None = None) -> None:
    """Record, in the .venv, the command that runs Poetry, by full path (see `find_poetry`)."""
    if command == "poetry":
        command = shlex.quote(shutil.which("poetry") or "poetry")
    folder = venv or venv_dir()
    if folder.is_dir():
        (folder / POETRY_RECORD).write_text(command + "\n")


def install_env(extra: dict[str, str]) -> dict[str, str]:
    """Return the environment of `poetry install`: this one with no virtual environment active.

    Poetry installs into an active virtual environment (VIRTUAL_ENV, or a conda environment's
    CONDA_PREFIX) instead of the project's .venv; one a user activated for invoke and Poetry
    themselves must not receive the project.
    """
    env = {key: value for key, value in os.environ.items() if key not in ACTIVE_ENV_VARIABLES}
    return {**env, **extra}


def install_poetry_command() -> str:
    """Return the command that installs Poetry and its mirror plugin into this Python."""
    packages = " ".join(shlex.quote(package) for package in POETRY_PACKAGES)
    return f"{shlex.quote(sys.executable)} -m pip install --quiet {packages}"


def install_tools_command() -> str:
    """Return the command that installs the test tools into .tools/ and links their commands."""
    venv, path = root() / TOOLS / "venv", tools_path()
    packages = " ".join(shlex.quote(package) for package in TOOL_PACKAGES)
    links = " && ".join(
        f"ln -sf {shlex.quote(str(venv / 'bin' / name))} {shlex.quote(str(path / name))}"
        for name in (package.split("==")[0] for package in TOOL_PACKAGES)
    )
    return (
        f"{shlex.quote(sys.executable)} -m venv {shlex.quote(str(venv))} && "
        f"{shlex.quote(str(venv / 'bin' / 'python'))} -m pip install --quiet "
        f"--disable-pip-version-check {packages} && mkdir -p {shlex.quote(str(path))} && "
        f"{links}"
    )


def activate_venv(venv: Path | None = None) -> bool:
    """Put the project's .venv first on PATH for the commands run from here, as `poetry run` does.

    Returns:
        Whether the project has a .venv (before `invoke setup`, it has none).
    """
    venv = venv or venv_dir()
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


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
"""A URL inside a text: a scheme, ``://``, and everything up to white space or a quote."""


def redact_url(url: str, mark: str = "***") -> str:
    """Replace a URL's credentials (``user:pass@``) and query string (a signature) by ``mark``.

    With no ``mark`` they are left out altogether. A fragment (``#state=TX`` in a source) stays.
    Plain string work, so that a URL ``urllib`` would refuse (a bad IPv6 host) is still redacted.

    Args:
        url: A URL, or any text without ``://`` (returned as it is).
        mark: What stands in for each secret part.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    rest, hashed, fragment = rest.partition("#")
    address, asked, _ = rest.partition("?")
    netloc, slash, path = address.partition("/")
    _, at, host = netloc.rpartition("@")
    shown = f"{scheme}://{mark + '@' if at and mark else ''}{host}{slash}{path}"
    shown += f"?{mark}" if asked and mark else ""
    return shown + (f"#{fragment}" if hashed else "")


def masked(text: str) -> str:
    """Hide the credentials and query string of every URL in a text (``https://***@host``)."""
    return URL.sub(lambda found: redact_url(found.group()), text)
