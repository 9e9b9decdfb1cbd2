"""Invoke tasks: each one runs one command of the package, in the project's environment.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for a task's flags. Each task's
behaviour lives in the module it runs: ``python -m pyflow.MODULE --help`` says more.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from invoke import Context, Exit, task

from pyflow import bootstrap


def poetry(c: Context) -> str:
    """Return the command that runs Poetry, found once; raise Exit if it is nowhere."""
    c.config.pyflow.poetry = c.config.pyflow.poetry or bootstrap.find_poetry()
    if not c.config.pyflow.poetry:
        raise Exit("Poetry is not installed: run `invoke setup`, which installs it")
    return str(c.config.pyflow.poetry)


def options(**flags: object) -> str:
    """Turn flags into ``--name VALUE`` (per list item), ``--name`` for True; leave empty ones out."""
    parts = []
    for name, value in flags.items():
        option = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                parts.append(option)
            elif item not in (None, False, "", 0):
                parts.append(f"{option} {shlex.quote(str(item))}")
    return "".join(f" {part}" for part in parts)


def sh(c: Context, command: str, foreground: bool = False, **env: str) -> None:
    """Run a command in .venv (else through `poetry run`) from the project folder.

    ``foreground`` replaces invoke with the command, so that signals reach it directly.
    """
    os.chdir(bootstrap.ROOT)
    command = command if bootstrap.activate_venv() else f"{poetry(c)} run {command}"
    env = {"PREFECT_HOME": str(c.config.pyflow.home), **env}
    print(bootstrap.masked(command), flush=True)  # invoke's echo would show credentials
    if not foreground:
        c.run(command, env=env, echo=False)
        return
    argv = shlex.split(command)
    os.execvpe(argv[0], argv, {**os.environ, **env})  # noqa: S606 (a command of ours)


@task(help={"index-url": "package index for Poetry (default: pip's configured one)"})
def setup(c: Context, index_url: str = "") -> None:
    """Install Poetry if it is missing, then the project and its tools into .venv."""
    if not c.config.pyflow.poetry and not bootstrap.find_poetry():
        c.run(bootstrap.install_poetry_command())
        c.config.pyflow.poetry = f"{shlex.quote(sys.executable)} -m poetry"
        if shutil.which("pyenv"):
            c.run("pyenv rehash", warn=True)
    extra = bootstrap.poetry_env(index_url or bootstrap.pip_index_url())
    c.run(f"{poetry(c)} install", env=bootstrap.install_env(extra), replace_env=True)
    bootstrap.record_poetry(poetry(c))
    sh(c, bootstrap.COMPILE_BYTECODE)


@task(
    iterable=["source", "param"],
    help={
        "source": "a file or URL to read, LOCATION[#key=value,...]; repeat for more (default: the bundled sample)",
        "output": "folder or fsspec URL for the outputs (default: PYFLOW_OUTPUT, else data/output)",
        "runner": "task runner, threads or dask (default: PYFLOW_TASK_RUNNER, else threads)",
        "workers": "worker processes of a local Dask cluster (default: the CPUs available)",
        "strict": "all or nothing: if a source fails, write nothing (default: publish the others, then fail)",
        "flow": "the flow of FLOWS to run, such as one `invoke new-flow` made (default: the first, warn-notices)",
        "param": "a parameter of --flow, NAME=VALUE with the value as JSON or text; repeat for more (default: the flow's defaults)",
        "temporary-server": "run on a temporary Prefect server that stops with the run (default: this project's server, started in the background if it is not running)",
        "port": "port of this project's server, started or moved there (default: PYFLOW_SERVER_PORT, else the port it runs on, else 4200)",
    },
)
def run(
    c: Context,
    source: list[str] | None = None,
    output: str = "",
    runner: str = "",
    workers: int = 0,
    strict: bool = False,
    flow: str = "",
    param: list[str] | None = None,
    temporary_server: bool = False,
    port: int = 0,
) -> None:
    """Run a flow once (the example by default), on this project's Prefect server."""
    flags = options(keep_server=not temporary_server, source=source, output=output, runner=runner)
    flags += options(workers=workers, strict=strict, flow=flow, param=param, port=port)
    sh(c, f"python -m pyflow{flags}")


@task(positional=["flow"], help={"flow": "its name", "wait": "follow the run to its end"})
def trigger(c: Context, flow: str, wait: bool = False) -> None:
    """Start a run of a flow's deployment on the project's server; `invoke dev`'s worker runs it."""
    flags = options(wait=wait, home=c.config.pyflow.home)
    sh(c, f"python -m pyflow.local trigger {shlex.quote(flow)}{flags}")


@task
def status(c: Context) -> None:
    """Show what runs: the server, the work pool's workers, the deployments and the last runs."""
    sh(c, f"python -m pyflow.local status{options(home=c.config.pyflow.home)}")


@task(help={"follow": "print new lines until Ctrl-C", "lines": "last lines to show (20)"})
def logs(c: Context, follow: bool = False, lines: int = 20) -> None:
    """Show the local server's and worker's logs (from `invoke server` and `invoke dev`)."""
    flags = options(home=c.config.pyflow.home, lines=lines, follow=follow)
    sh(c, f"python -m pyflow.local logs{flags}", foreground=True)


@task(
    name="new-flow", help={"name": "the new flow's module and function name, such as daily_report"}
)
def new_flow(c: Context, name: str) -> None:
    """Scaffold a flow with its tasks and a test, and add it to FLOWS."""
    sh(c, f"python -m pyflow.scaffold {shlex.quote(name)}")


@task(help={"port": "default: PYFLOW_SERVER_PORT, else 4200", "stop": "stop it instead"})
def server(c: Context, port: int = 0, stop: bool = False) -> None:
    """Start this project's Prefect server (API and UI) in the background, or reuse it."""
    command = "stop" if stop else f"server{options(port=port)}"
    sh(c, f"python -m pyflow.local {command}{options(home=c.config.pyflow.home)}")


@task(help={"port": "port of the local server (default: PYFLOW_SERVER_PORT, else 4200)"})
def dev(c: Context, port: int = 0) -> None:
    """Start the server, register the deployments and run a worker in the foreground (Ctrl-C stops all)."""
    flags = options(home=c.config.pyflow.home, port=port)
    sh(c, f"python -m pyflow.local dev{flags}", foreground=True)


@task
def reset(c: Context) -> None:
    """Stop this project's server and delete its state (.prefect) and the outputs (data/output)."""
    sh(c, f"python -m pyflow.local reset{options(home=c.config.pyflow.home)}")


@task(
    help={
        "env": "environment to register, development or production (default: PREFECT_FLOW_ENV)",
        "image": "production: the pushed image, REPO:TAG@sha256:DIGEST (default: the image `invoke push` pushed from here for this version and commit)",
    }
)
def deploy(c: Context, env: str = "", image: str = "") -> None:
    """Register every flow's deployment with the Prefect API the environment points at."""
    variables = {"PREFECT_FLOW_ENV": env} if env else {}
    sh(c, f"python -m pyflow.deploy{options(home=c.config.pyflow.home, image=image)}", **variables)


@task
def pool(c: Context) -> None:
    """Create or update the production Kubernetes work pool from deploy/kubernetes-job-template.json."""
    flags = options(pool_only=True, home=c.config.pyflow.home)
    sh(c, f"python -m pyflow.deploy{flags}", PREFECT_FLOW_ENV="production")


IMAGE_HELP = {
    "engine": "docker or podman (default: PYFLOW_CONTAINER_ENGINE, else docker)",
    "registry": "name the image REGISTRY/IMAGE instead of its Artifact Registry path, such as 127.0.0.1:5000/test (default: the PYFLOW_GCP_ settings)",
    "version": "the version tag (default: the version in pyproject.toml)",
    "base-image": "the Python base image (default: the Dockerfile's, python:3.11-slim-bookworm)",
    "secret": "a build secret ID=PATH, such as ca=/etc/ssl/certs/ca-certificates.crt for a proxy's CA; repeat for more (default: none)",
    "index-url": "package index for the build (default: pip's configured index, else pip's default)",
    "isolation": "podman's --isolation, such as chroot where no container runtime works (default: podman's own)",
    "cache-from": "docker buildx --cache-from, such as type=gha (default: none)",
    "cache-to": "docker buildx --cache-to, such as type=gha,mode=max (default: none)",
}


@task(iterable=["secret"], help=IMAGE_HELP)
def build(
    c: Context,
    engine: str = "",
    base_image: str = "",
    secret: list[str] | None = None,
    index_url: str = "",
    isolation: str = "",
    registry: str = "",
    version: str = "",
    cache_from: str = "",
    cache_to: str = "",
) -> None:
    """Build the production image, tagged with the version and the git commit; report its size."""
    flags = options(engine=engine, registry=registry, version=version, base_image=base_image)
    flags += options(secret=secret, index_url=index_url, isolation=isolation)
    sh(c, f"python -m pyflow.image build{flags}{options(cache_from=cache_from, cache_to=cache_to)}")


@task(
    help={
        **{flag: IMAGE_HELP[flag] for flag in ("engine", "registry", "version")},
        "insecure": "push over plain HTTP without TLS checks, for a test registry on loopback; podman only (default: verify TLS)",
    }
)
def push(
    c: Context, engine: str = "", registry: str = "", version: str = "", insecure: bool = False
) -> None:
    """Push the image's version and commit tags, record and print the digest the registry stored."""
    flags = options(engine=engine, registry=registry, version=version, insecure=insecure)
    sh(c, f"python -m pyflow.image push{flags}{options(home=c.config.pyflow.home)}")


@task(
    iterable=["secret"],
    help={
        **{flag: IMAGE_HELP[flag] for flag in ("engine", "base-image", "secret", "isolation")},
        "dry-run": "run the checks and print every step of the release without building, pushing or registering anything (default: release)",
    },
)
def release(
    c: Context,
    engine: str = "",
    dry_run: bool = False,
    base_image: str = "",
    secret: list[str] | None = None,
    isolation: str = "",
) -> None:
    """Release the tagged commit: check everything, then build, push and deploy to production."""
    flags = options(engine=engine, dry_run=dry_run, base_image=base_image, secret=secret)
    flags += options(isolation=isolation, home=c.config.pyflow.home)
    sh(c, f"python -m pyflow.release{flags}", PREFECT_FLOW_ENV="production")


@task
def releases(c: Context) -> None:
    """List the releases recorded on the Prefect server, newest first, the current one marked."""
    sh(c, "python -m pyflow.history list", PREFECT_FLOW_ENV="production")


@task(help={"version": "default: the one before the current", "dry-run": "change nothing"})
def rollback(c: Context, version: str = "", dry_run: bool = False) -> None:
    """Register every deployment again on an earlier release's image, by its digest."""
    target = f" {shlex.quote(version)}" if version else ""
    command = f"python -m pyflow.history rollback{target}{options(dry_run=dry_run)}"
    sh(c, command, PREFECT_FLOW_ENV="production")


@task(
    help={
        "pr": "the pull request's number",
        "remove": "delete the pull request's deployments instead (default: build, push, register)",
        "engine": IMAGE_HELP["engine"],
    }
)
def preview(c: Context, pr: int, remove: bool = False, engine: str = "") -> None:
    """Deploy a pull request as paused FLOW/pr-N deployments on its own image, or remove them."""
    flags = options(pr=pr, remove=remove, engine=engine, home=c.config.pyflow.home)
    sh(c, f"python -m pyflow.preview{flags}", PREFECT_FLOW_ENV="production")


@task(
    name="gcp-setup",
    help={
        "dry-run": "print every gcloud command with your values and run none (default: run them)"
    },
)
def gcp_setup(c: Context, dry_run: bool = False) -> None:
    """Set up Google Cloud once for releases: service account, Workload Identity, repository, IAM."""
    sh(c, f"python -m pyflow.gcp{options(dry_run=dry_run)}")


@task(
    help={
        "rows": "rows of synthetic input to generate (default: 1,000,000)",
        "files": "files to spread the rows over (default: 20)",
        "workers": "Dask worker processes for the Dask variants (default: 2)",
        "variants": "comma-separated, of 0 (csv module), a (plain), b (threads), a1 (plain, one engine thread), p (a plain process per worker), c (temporary Dask), d (running Dask), d1 (running Dask, one worker), e (the real state files), r (a second `invoke run`) (default: all)",
    }
)
def bench(
    c: Context, rows: int = 1_000_000, files: int = 20, workers: int = 2, variants: str = ""
) -> None:
    """Benchmark the csv module, plain Python, the flow on threads and on Dask, and real data."""
    flags = options(rows=rows, files=files, workers=workers, variants=variants)
    sh(c, f"python -m pyflow.warn.bench{flags}")


@task
def tools(c: Context) -> None:
    """Install checkov, which the manifest tests run, into .tools/ (its pins clash with .venv's)."""
    c.run(bootstrap.install_tools_command())


@task
def lint(c: Context) -> None:
    """Check style and formatting (ruff), types (mypy, strict), the workflows (zizmor), poetry.lock."""
    for command in (
        "ruff check .",
        "ruff format --check .",
        "mypy",
        "zizmor --offline .github/workflows",
    ):
        sh(c, command)
    c.run(f"{poetry(c)} check --lock")


@task(name="format")
def format_(c: Context) -> None:
    """Format the code and apply ruff's safe fixes."""
    sh(c, "ruff format .")
    sh(c, "ruff check --fix .")


@task
def check(c: Context) -> None:
    """Import every flow and validate it without running it: names, parameters, defaults."""
    sh(c, "python -m pyflow.checks")


@task
def hooks(c: Context) -> None:
    """Run the pre-commit hooks (ruff and file hygiene) on every file, as a commit would."""
    sh(c, "pre-commit run --all-files --show-diff-on-failure")


@task
def docs(c: Context) -> None:
    """Regenerate the README's configuration table from the settings in pyflow/config.py."""
    sh(c, "python -m pyflow.docs")


@task(
    help={
        "fast": "leave out the slow tests (server, processes, network); default: run all",
        "opts": "extra pytest options, such as '-k flow -x' (default: none)",
    }
)
def test(c: Context, fast: bool = False, opts: str = "") -> None:
    """Run the tests, with coverage; the whole suite fails below pyproject.toml's fail_under."""
    partial = " --cov-fail-under=0" if fast or opts else ""  # part of the suite covers less
    selection = ' -m "not slow"' if fast else ""
    sh(c, f"pytest --cov=pyflow --cov-report=term{partial}{selection} {opts}".rstrip())


@task(pre=[lint, check, test], default=True)
def ci(c: Context) -> None:
    """Run everything CI runs, in order: lint, check, test (the default task)."""
