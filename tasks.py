"""Invoke tasks: set up, run, lint, format, check and test the project.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for a task's flags. Tasks only
build and run commands; every decision worth testing is a small helper function below.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Context, task

ROOT = Path(__file__).resolve().parent
PREFECT_HOME = ROOT / ".prefect"
"""Prefect's state for this project: the local server's database, logs and process ID."""
POETRY_PACKAGES = "'poetry>=2.2,<3' 'poetry-plugin-pypi-mirror>=0.6'"
"""What `invoke setup` installs when Poetry is missing."""


def default_poetry() -> str:
    """Return the command that runs Poetry: on PATH, else through this Python."""
    return "poetry" if shutil.which("poetry") else f"{shlex.quote(sys.executable)} -m poetry"


def pip_index_url() -> str:
    """Return the package index pip uses here: its configuration, else its default.

    Poetry is pointed at the same index (through poetry-plugin-pypi-mirror), so it works
    wherever pip does: behind a proxy, with a private mirror, or with the public default.
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
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def poetry_env(index_url: str) -> dict[str, str]:
    """Return the environment Poetry commands need to resolve through pip's index."""
    return {"POETRY_PYPI_MIRROR_URL": index_url}


def run_options(sources: list[str], output: str, runner: str, workers: int) -> str:
    """Turn `invoke run` flags into `python -m pyflow` options."""
    options = [f"--source {shlex.quote(source)}" for source in sources]
    if output:
        options.append(f"--output {shlex.quote(output)}")
    if runner:
        options.append(f"--runner {shlex.quote(runner)}")
    if workers:
        options.append(f"--workers {workers}")
    return " ".join(options)


def port_option(port: int) -> str:
    """Return the ``--port`` option, or nothing to use the setting's default."""
    return f" --port {port}" if port else ""


def local_command(command: str, port: int = 0) -> str:
    """Return a ``python -m pyflow.local`` command for this project's Prefect home."""
    return f"python -m pyflow.local {command} --home {shlex.quote(str(PREFECT_HOME))}{port_option(port)}"


def pytest_options(fast: bool, opts: str) -> str:
    """Return pytest options: ``--fast`` leaves out tests marked slow; ``opts`` is passed on."""
    options = []
    if fast:
        options.append('-m "not slow"')
    if opts:
        options.append(opts)
    return " ".join(options)


def poetry(c: Context) -> str:
    """Return the configured Poetry command."""
    return c.config.pyflow.poetry


def in_env(c: Context, command: str) -> str:
    """Return a command that runs inside the project's virtual environment."""
    return f"{poetry(c)} run {command}"


@task(
    help={
        "index-url": "package index for Poetry (default: pip's own index, as `pip config` shows it)",
    }
)
def setup(c: Context, index_url: str = "") -> None:
    """Install Poetry if it is missing, then the project and its tools into .venv."""
    if not shutil.which("poetry") and c.run(f"{poetry(c)} --version", warn=True, hide=True).failed:
        c.run(f"{shlex.quote(sys.executable)} -m pip install --quiet {POETRY_PACKAGES}")
        c.config.pyflow.poetry = f"{shlex.quote(sys.executable)} -m poetry"
    env = poetry_env(index_url or pip_index_url())
    c.run(f"{poetry(c)} install", env=env)


@task(
    iterable=["source"],
    help={
        "source": "a file or URL to read, LOCATION[#key=value,...]; repeat for more (default: PYFLOW_SOURCES, else the bundled sample)",
        "output": "folder or fsspec URL for the outputs (default: PYFLOW_OUTPUT, else data/output)",
        "runner": "task runner, threads or dask (default: PYFLOW_TASK_RUNNER, else threads)",
        "workers": "worker processes of a local Dask cluster (default: the CPUs available)",
    },
)
def run(
    c: Context,
    source: list[str] | None = None,
    output: str = "",
    runner: str = "",
    workers: int = 0,
) -> None:
    """Run the example flow once, on Prefect's temporary local server."""
    options = run_options(source or [], output, runner, workers)
    c.run(in_env(c, f"python -m pyflow {options}".strip()))


@task(
    help={
        "port": "port to serve on (default: PYFLOW_SERVER_PORT, else 4200)",
        "stop": "stop this project's server instead of starting it (default: start)",
    }
)
def server(c: Context, port: int = 0, stop: bool = False) -> None:
    """Start this project's Prefect server (API and UI) in the background, or reuse it."""
    c.run(in_env(c, local_command("stop" if stop else "server", 0 if stop else port)))


@task(
    help={"env": "environment to register, development or production (default: PREFECT_FLOW_ENV)"}
)
def deploy(c: Context, env: str = "") -> None:
    """Register every flow's deployment with the Prefect API the environment points at."""
    variables = {"PREFECT_FLOW_ENV": env} if env else {}
    home = shlex.quote(str(PREFECT_HOME))
    c.run(in_env(c, f"python -m pyflow.deploy --home {home}"), env=variables)


@task(help={"port": "port of the local server (default: PYFLOW_SERVER_PORT, else 4200)"})
def dev(c: Context, port: int = 0) -> None:
    """Start the server, register the deployments and run a worker in the foreground (Ctrl-C stops all)."""
    c.run(in_env(c, local_command("dev", port)), pty=sys.stdout.isatty())


@task
def reset(c: Context) -> None:
    """Stop this project's server and delete its state (.prefect) and the outputs (data/output)."""
    c.run(in_env(c, local_command("reset")))


@task
def lint(c: Context) -> None:
    """Check style and formatting with ruff, and that poetry.lock matches pyproject.toml."""
    c.run(in_env(c, "ruff check ."))
    c.run(in_env(c, "ruff format --check ."))
    c.run(f"{poetry(c)} check --lock")


@task(name="format")
def format_(c: Context) -> None:
    """Format the code and apply ruff's safe fixes."""
    c.run(in_env(c, "ruff format ."))
    c.run(in_env(c, "ruff check --fix ."))


@task
def check(c: Context) -> None:
    """Import every flow and validate it without running it: names, parameters, defaults."""
    c.run(in_env(c, "python -m pyflow.checks"))


@task(
    help={
        "rows": "rows of synthetic input to generate (default: 1,000,000)",
        "files": "files to spread the rows over (default: 8)",
        "workers": "Dask worker processes for the Dask variants (default: 2)",
        "variants": "which of a (plain), b (threads), c (temporary Dask), d (running Dask) to run (default: abcd)",
    }
)
def bench(
    c: Context, rows: int = 1_000_000, files: int = 8, workers: int = 2, variants: str = "abcd"
) -> None:
    """Benchmark plain Python against the flow on threads and on Dask, and check the outputs agree."""
    options = (
        f"--rows {rows} --files {files} --workers {workers} --variants {shlex.quote(variants)}"
    )
    c.run(in_env(c, f"python -m pyflow.bench {options}"))


@task
def hooks(c: Context) -> None:
    """Run the pre-commit hooks (ruff and file hygiene) on every file, as a commit would."""
    c.run(in_env(c, "pre-commit run --all-files --show-diff-on-failure"))


@task
def docs(c: Context) -> None:
    """Regenerate the README's configuration table from the settings in pyflow/config.py."""
    c.run(in_env(c, "python -m pyflow.config readme"))


@task(
    help={
        "fast": "leave out the slow tests (server, processes, network); default: run all",
        "opts": "extra pytest options, such as '-k flow -x' (default: none)",
    }
)
def test(c: Context, fast: bool = False, opts: str = "") -> None:
    """Run the test suite with pytest."""
    c.run(in_env(c, f"pytest {pytest_options(fast, opts)}".strip()))


@task(pre=[lint, check, test], default=True)
def ci(c: Context) -> None:
    """Run everything CI runs, in order: lint, check, test (the default task)."""


ns = Collection(
    setup, run, server, deploy, dev, reset, bench, lint, format_, check, hooks, docs, test, ci
)
ns.configure({"pyflow": {"poetry": default_poetry()}, "run": {"echo": True}})
