"""Invoke tasks: set up, run, lint, format, check and test the project.

Run ``invoke --list`` for the tasks and ``invoke --help TASK`` for a task's flags. Tasks only
build and run commands; every decision worth testing is a small helper function below.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

ROOT = Path(__file__).resolve().parent
PREFECT_HOME = ROOT / ".prefect"
"""Prefect's state for this project: the local server's database, logs and process ID."""
POETRY_PACKAGES = "'poetry>=2.2,<3' 'poetry-plugin-pypi-mirror>=0.6'"
"""What `invoke setup` installs when Poetry is missing."""


COMPILE_BYTECODE = (
    'python -c "import compileall, sysconfig; '
    "compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)\""
)
"""Compiles the environment's bytecode once, so every command starts fast, even where Python is
told not to write it (PYTHONDONTWRITEBYTECODE, as in some containers and CI machines)."""


VENV = ROOT / ".venv"
"""The project's virtual environment (poetry.toml keeps it in the project)."""


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


def run_options(
    sources: list[str],
    output: str,
    runner: str,
    workers: int,
    flow: str = "",
    params: list[str] | None = None,
) -> str:
    """Turn `invoke run` flags into `python -m pyflow` options."""
    options = [f"--source {shlex.quote(source)}" for source in sources]
    if output:
        options.append(f"--output {shlex.quote(output)}")
    if runner:
        options.append(f"--runner {shlex.quote(runner)}")
    if workers:
        options.append(f"--workers {workers}")
    if flow:
        options.append(f"--flow {shlex.quote(flow)}")
    options += [f"--param {shlex.quote(param)}" for param in params or []]
    return " ".join(options)


def port_option(port: int) -> str:
    """Return the ``--port`` option, or nothing to use the setting's default."""
    return f" --port {port}" if port else ""


def prefect_home(c: Context) -> str:
    """Return this project's Prefect home, quoted (invoke setting ``pyflow.home``)."""
    return shlex.quote(str(c.config.pyflow.home))


def local_command(c: Context, command: str, port: int = 0) -> str:
    """Return a ``python -m pyflow.local`` command for this project's Prefect home."""
    return f"python -m pyflow.local {command} --home {prefect_home(c)}{port_option(port)}"


COVERAGE_FLOOR = 90
"""The whole suite fails if it covers less of pyflow/ than this, in percent."""


def pytest_options(fast: bool, opts: str) -> str:
    """Return pytest options: coverage of pyflow/ always, its floor on the whole suite only.

    ``--fast`` leaves out tests marked slow; ``opts`` is passed on. Either runs part of the
    suite, which covers less, so neither is held to the floor.
    """
    options = ["--cov=pyflow --cov-report=term"]
    if not fast and not opts:
        options.append(f"--cov-fail-under={COVERAGE_FLOOR}")
    if fast:
        options.append('-m "not slow"')
    if opts:
        options.append(opts)
    return " ".join(options)


def foreground_processes(pid: int) -> list[int]:
    """Return a process's children, and their descendants in the same session (Linux /proc).

    Processes that started a session of their own (the server and worker `invoke dev` starts)
    are left out: the command that started them stops them in order.
    """
    parents: dict[int, list[tuple[int, int]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), int(fields[3])))
    found = []
    for child, session in parents.get(pid, []):
        queue = [child]
        found.append(child)
        while queue:
            for grandchild, its_session in parents.get(queue.pop(), []):
                if its_session == session:
                    found.append(grandchild)
                    queue.append(grandchild)
    return found


def forward_interrupt(signum: int, frame: object) -> None:
    """Pass SIGINT or SIGTERM on as SIGINT (Ctrl-C) to the command running, which stops cleanly.

    Invoke itself would write Ctrl-C to the command's input, which does nothing unless the
    command runs in a terminal; this works whether or not the output is a terminal.
    """
    for pid in foreground_processes(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)


def poetry(c: Context) -> str:
    """Return the command that runs Poetry (found once, then kept in invoke's configuration).

    Raises:
        Exit: If Poetry is nowhere to be found.
    """
    if not c.config.pyflow.poetry:
        c.config.pyflow.poetry = find_poetry()
    if not c.config.pyflow.poetry:
        raise Exit("Poetry is not installed: run `invoke setup`, which installs it")
    return c.config.pyflow.poetry


def in_env(c: Context, command: str) -> str:
    """Return a command that runs in the project's .venv: directly, else through `poetry run`."""
    return command if activate_venv() else f"{poetry(c)} run {command}"


def run_in_foreground(c: Context, command: str) -> None:
    """Run a long-running command until it ends; SIGINT or SIGTERM stop it cleanly."""
    previous = {
        sig: signal.signal(sig, forward_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        c.run(command, pty=sys.stdout.isatty())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the image: invoke build, invoke push --------------------------------------------------

ENGINES = ("docker", "podman")
PLACEHOLDER_PROJECT = "your-project-id"
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SECRET_ID = re.compile(r"[A-Za-z0-9_.-]+")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
SEMVER_TAG = re.compile(r"v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)")
"""A release tag: ``1.2.3`` or ``v1.2.3`` (a pre-release suffix such as ``-rc.1`` is allowed)."""


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Return the project's version, from pyproject.toml."""
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]


def container_engine(flag: str, settings: dict[str, Any]) -> str:
    """Return the engine to use: the flag, else PYFLOW_CONTAINER_ENGINE, else docker.

    Raises:
        ValueError: If it is neither docker nor podman.
    """
    engine = flag or settings.get("container_engine") or "docker"
    if engine not in ENGINES:
        source = "--engine" if flag else "PYFLOW_CONTAINER_ENGINE"
        raise ValueError(f"{source}={engine!r} is not an engine: use docker or podman")
    return engine


def image_repository(settings: dict[str, Any], registry: str = "") -> str:
    """Return ``REGISTRY/IMAGE`` with ``registry``, else the Artifact Registry path.

    Raises:
        ValueError: If the Artifact Registry path still holds the template's placeholder project.
    """
    if registry:
        return f"{registry.rstrip('/')}/{settings['image_name']}"
    repository = settings["image_repository"]
    if PLACEHOLDER_PROJECT in repository.split("/"):
        raise ValueError(
            f"the image repository {repository} still names the placeholder project: set "
            "PYFLOW_GCP_PROJECT in .env (see .env.example), or pass --registry"
        )
    return repository


def image_tags(repository: str, version: str, commit: str) -> list[str]:
    """Return the image's names: the repository tagged with the version and with the commit.

    Raises:
        ValueError: If a tag is not a valid image tag.
    """
    for tag, source in ((version, "the version"), (commit, "the git commit")):
        if not TAG.fullmatch(tag):
            raise ValueError(
                f"{source}, {tag!r}, is not a valid image tag: use letters, digits, '_', '.' "
                "and '-' only (not '+'), at most 128 characters, not starting with '.' or '-'"
            )
    return [f"{repository}:{version}", f"{repository}:{commit}"]


def release_version(tag: str) -> str:
    """Return the version a release tag names (``v1.2.3`` gives ``1.2.3``).

    Raises:
        ValueError: If the tag is not a semantic version.
    """
    match = SEMVER_TAG.fullmatch(tag)
    if not match:
        raise ValueError(
            f"the tag '{tag}' is not a semantic version: tag the release 1.2.3 or v1.2.3 "
            "(GitHub: Releases, Draft a new release, Choose a tag)"
        )
    return match[1]


def parse_secret(spec: str) -> tuple[str, Path]:
    """Turn ``--secret ID=PATH`` into its id and file.

    Raises:
        ValueError: If it is not ID=PATH or the file does not exist.
    """
    secret_id, sep, path = spec.partition("=")
    if not sep or not SECRET_ID.fullmatch(secret_id) or not path:
        raise ValueError(
            f"--secret {spec!r} is not ID=PATH, such as ca=/etc/ssl/certs/ca-certificates.crt"
        )
    if not Path(path).is_file():
        raise ValueError(f"--secret {spec!r}: the file {path} does not exist")
    return secret_id, Path(path)


def build_command(
    engine: str,
    tags: list[str],
    base_image: str = "",
    secrets: list[tuple[str, Path]] | None = None,
    index_url: str = "",
    isolation: str = "",
    labels: dict[str, str] | None = None,
    cache: tuple[str, str] = ("", ""),
    context: Path = ROOT,
) -> str:
    """Return the command that builds the image with ``engine``.

    Raises:
        ValueError: If a podman-only option (isolation) is given to docker, or a cache to podman.
    """
    options = []
    if isolation:
        if engine != "podman":
            raise ValueError("--isolation is a podman option: docker has none")
        options.append(f"--isolation {shlex.quote(isolation)}")
    if base_image:
        options.append(f"--build-arg BASE_IMAGE={shlex.quote(base_image)}")
    if index_url:
        options.append(f"--build-arg PIP_INDEX_URL={shlex.quote(index_url)}")
    for secret_id, path in secrets or []:
        options.append(f"--secret {shlex.quote(f'id={secret_id},src={path}')}")
    for key, value in (labels or {}).items():
        options.append(f"--label {shlex.quote(f'{key}={value}')}")
    options.extend(f"--tag {shlex.quote(tag)}" for tag in tags)
    command = f"{engine} build"
    if any(cache):
        if engine != "docker":
            raise ValueError("--cache-from and --cache-to are docker buildx options")
        command = "docker buildx build --load"
        options += [
            f"--cache-{kind} {shlex.quote(value)}"
            for kind, value in zip(("from", "to"), cache, strict=True)
            if value
        ]
    return f"{command} {' '.join(options)} {shlex.quote(str(context))}"


def push_command(
    engine: str, tag: str, digest_file: Path | None = None, insecure: bool = False
) -> str:
    """Return the command that pushes one tag; podman writes the pushed digest to ``digest_file``.

    Raises:
        ValueError: If ``insecure`` is asked of docker, which takes it from its daemon's settings.
    """
    if engine == "docker":
        if insecure:
            raise ValueError(
                "--insecure is a podman option: docker already pushes to 127.0.0.0/8 over plain "
                "HTTP, and reads other insecure registries from its daemon.json"
            )
        return f"docker push {shlex.quote(tag)}"
    options = " --tls-verify=false" if insecure else ""
    if digest_file:
        options += f" --digestfile {shlex.quote(str(digest_file))}"
    return f"podman push{options} {shlex.quote(tag)}"


def pushed_digest(output: str) -> str:
    """Return the digest in `docker push` output (``TAG: digest: sha256:... size: N``).

    Raises:
        ValueError: If the output holds no digest.
    """
    found = DIGEST.findall(output)
    if not found:
        raise ValueError(
            "the push printed no digest: check the registry with `docker manifest inspect`"
        )
    return found[-1]


def image_labels(version: str, commit: str) -> dict[str, str]:
    """Return the OCI labels that say which version and commit an image was built from."""
    return {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": commit,
    }


def masked(command: str) -> str:
    """Hide the credentials of any URL in a command (``https://user:token@host`` shows ``***``)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", command)


def human_size(size: int) -> str:
    """Return a size in bytes as megabytes, such as ``485 MB``."""
    return f"{size / 1e6:,.0f} MB"


def settings_of(c: Context, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the project's resolved settings, as `python -m pyflow.config json` prints them."""
    result = c.run(in_env(c, "python -m pyflow.config json"), hide=True, warn=True, env=env or {})
    if result.failed:
        raise Exit(result.stderr.strip() or "the settings cannot be read")
    return json.loads(result.stdout)


def git_commit(c: Context) -> str:
    """Return the short commit of HEAD, with ``-dirty`` when tracked files have changes."""
    commit = c.run("git rev-parse --short=7 HEAD", hide=True).stdout.strip()
    dirty = c.run("git status --porcelain --untracked-files=no", hide=True).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


def image_names(
    c: Context,
    engine: str,
    registry: str,
    version: str = "",
    settings: dict[str, Any] | None = None,
    require_engine: bool = True,
) -> tuple[str, list[str]]:
    """Check the engine and the settings, and return the engine and the image's two tags.

    Raises:
        Exit: If the engine is unknown or missing, the registry path a placeholder, or a tag malformed.
    """
    settings = settings or settings_of(c)
    try:
        engine = container_engine(engine, settings)
        if require_engine and shutil.which(engine) is None:
            raise ValueError(
                f"{engine} is not installed (or not on PATH): install it, or pass --engine"
            )
        repository = image_repository(settings, registry)
        return engine, image_tags(repository, version or project_version(), git_commit(c))
    except ValueError as error:
        raise Exit(str(error)) from None


def image_build_command(c: Context, engine: str, tags: list[str], options: dict[str, Any]) -> str:
    """Return the build command for the image's tags and the build flags given.

    Raises:
        Exit: If a flag is invalid for the engine, or a secret file is missing.
    """
    version, commit = (tag.rpartition(":")[2] for tag in tags)
    podman_default = c.config.pyflow.get("podman_isolation", "") if engine == "podman" else ""
    try:
        return build_command(
            engine,
            tags,
            base_image=options.get("base_image", ""),
            secrets=[parse_secret(spec) for spec in options.get("secret") or []],
            index_url=options.get("index_url") or pip_index_url(),
            isolation=options.get("isolation") or podman_default,
            labels=image_labels(version, commit),
            cache=(options.get("cache_from", ""), options.get("cache_to", "")),
        )
    except ValueError as error:
        raise Exit(str(error)) from None


def build_image(c: Context, engine: str, tags: list[str], options: dict[str, Any]) -> None:
    """Build and tag the image, then report its size and the build time."""
    command = image_build_command(c, engine, tags, options)
    print(masked(command))
    started = time.monotonic()
    c.run(command, echo=False, env={"DOCKER_BUILDKIT": "1"} if engine == "docker" else {})
    seconds = time.monotonic() - started
    inspect = f"{engine} image inspect --format '{{{{.Size}}}}' {shlex.quote(tags[0])}"
    size = int(c.run(inspect, hide=True).stdout.strip() or 0)
    print(f"Built {' and '.join(tags)}: {human_size(size)} in {seconds:.0f} s")


PUSHED_FILE = "pushed-images.json"
"""Where `invoke push` records, in the project's Prefect home, the digest of each tag it pushed."""


def pushed_image(c: Context, engine: str, settings: dict[str, Any]) -> str:
    """Return the image `invoke push` pushed for this version and commit, by tag and digest.

    Raises:
        Exit: If it was not pushed from here.
    """
    _, tags = image_names(c, engine, "", settings=settings, require_engine=False)
    record = Path(c.config.pyflow.home) / PUSHED_FILE
    pushed = json.loads(record.read_text()) if record.is_file() else {}
    if tags[0] not in pushed:
        raise Exit(
            f"{tags[0]} has not been pushed from here: run `invoke build` and `invoke push`, "
            "or pass --image REPO:TAG@sha256:DIGEST"
        )
    return f"{tags[0]}@{pushed[tags[0]]}"


def push_image(c: Context, engine: str, tags: list[str], insecure: bool = False) -> str:
    """Push the commit tag, then the version tag; record, print and return the digest stored.

    The version tag goes last, so that a version tag in the registry always means a complete
    push (`invoke release` relies on it when it is run again).
    """
    folder = Path(tempfile.mkdtemp(prefix="pyflow-push-"))
    record = Path(c.config.pyflow.home) / PUSHED_FILE
    digest = ""
    try:
        for tag in reversed(tags):
            digest_file = folder / "digest" if engine == "podman" else None
            try:
                result = c.run(push_command(engine, tag, digest_file, insecure))
                digest = (
                    digest_file.read_text(encoding="utf-8").strip()
                    if digest_file
                    else pushed_digest(result.stdout)
                )
            except (ValueError, OSError) as error:
                raise Exit(f"pushing {tag} failed: {error}") from None
            print(f"Pushed {tag} as {tag.rpartition(':')[0]}@{digest}")
            pushed = json.loads(record.read_text()) if record.is_file() else {}
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({**pushed, tag: digest}, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return digest


@task(
    help={
        "index-url": "package index for Poetry (default: pip's own index, as `pip config` shows it)",
    }
)
def setup(c: Context, index_url: str = "") -> None:
    """Install Poetry if it is missing, then the project and its tools into .venv."""
    if not c.config.pyflow.poetry and not find_poetry():
        c.run(f"{shlex.quote(sys.executable)} -m pip install --quiet {POETRY_PACKAGES}")
        c.config.pyflow.poetry = f"{shlex.quote(sys.executable)} -m poetry"
        if shutil.which("pyenv"):
            c.run("pyenv rehash", warn=True)
    env = poetry_env(index_url or pip_index_url())
    c.run(f"{poetry(c)} install", env=env)
    c.run(in_env(c, COMPILE_BYTECODE))


@task(
    iterable=["source", "param"],
    help={
        "source": "a file or URL to read, LOCATION[#key=value,...]; repeat for more (default: PYFLOW_SOURCES, else the bundled sample)",
        "output": "folder or fsspec URL for the outputs (default: PYFLOW_OUTPUT, else data/output)",
        "runner": "task runner, threads or dask (default: PYFLOW_TASK_RUNNER, else threads)",
        "workers": "worker processes of a local Dask cluster (default: the CPUs available)",
        "flow": "another flow of FLOWS to run, such as one `invoke new-flow` made (default: warn-notices, the example)",
        "param": "a parameter of --flow, NAME=VALUE with the value as JSON or text; repeat for more (default: the flow's defaults)",
        "temporary-server": "run on a temporary Prefect server that stops with the run (default: this project's server, started in the background if it is not running)",
    },
)
def run(
    c: Context,
    source: list[str] | None = None,
    output: str = "",
    runner: str = "",
    workers: int = 0,
    flow: str = "",
    param: list[str] | None = None,
    temporary_server: bool = False,
) -> None:
    """Run a flow once (the example by default), on this project's Prefect server."""
    options = run_options(source or [], output, runner, workers, flow, param)
    if not temporary_server:
        options = f"--keep-server {options}"
    c.run(
        in_env(c, f"python -m pyflow {options}".strip()),
        env={"PREFECT_HOME": str(c.config.pyflow.home)},
    )


@task(
    positional=["flow"],
    help={
        "flow": "the flow to run, by name, such as warn-notices (`invoke status` lists the deployments)",
        "wait": "follow the run until it ends, and fail if it does not complete (default: start it and return)",
    },
)
def trigger(c: Context, flow: str, wait: bool = False) -> None:
    """Start a run of a flow's deployment on the project's server; `invoke dev`'s worker runs it."""
    command = local_command(c, f"trigger {shlex.quote(flow)}")
    c.run(in_env(c, command + (" --wait" if wait else "")))


@task
def status(c: Context) -> None:
    """Show what runs: the server, the work pool's workers, the deployments and the last runs."""
    c.run(in_env(c, local_command(c, "status")))


@task(
    help={
        "follow": "keep printing new lines until Ctrl-C (default: print the end and return)",
        "lines": "how many of the last lines of each log to print (default: 20)",
    }
)
def logs(c: Context, follow: bool = False, lines: int = 20) -> None:
    """Show the local server's and worker's logs (from `invoke server` and `invoke dev`)."""
    command = local_command(c, "logs") + f" --lines {lines}" + (" --follow" if follow else "")
    run_in_foreground(c, in_env(c, command))


@task(
    name="new-flow", help={"name": "the new flow's module and function name, such as daily_report"}
)
def new_flow(c: Context, name: str) -> None:
    """Scaffold a flow with its tasks and a test, and add it to FLOWS."""
    c.run(in_env(c, f"python -m pyflow.scaffold {shlex.quote(name)}"))


@task(
    help={
        "port": "port to serve on (default: PYFLOW_SERVER_PORT, else 4200)",
        "stop": "stop this project's server instead of starting it (default: start)",
    }
)
def server(c: Context, port: int = 0, stop: bool = False) -> None:
    """Start this project's Prefect server (API and UI) in the background, or reuse it."""
    c.run(in_env(c, local_command(c, "stop" if stop else "server", 0 if stop else port)))


@task(
    help={
        "env": "environment to register, development or production (default: PREFECT_FLOW_ENV)",
        "image": "production: the pushed image, REPO:TAG@sha256:DIGEST (default: the image `invoke push` pushed from here)",
        "engine": "production: the engine that pushed the image (default: PYFLOW_CONTAINER_ENGINE, else docker)",
    }
)
def deploy(c: Context, env: str = "", image: str = "", engine: str = "") -> None:
    """Register every flow's deployment with the Prefect API the environment points at."""
    variables = {"PREFECT_FLOW_ENV": env} if env else {}
    command = f"python -m pyflow.deploy --home {prefect_home(c)}"
    settings = settings_of(c, variables)
    if settings["env"] == "production":
        image = image or pushed_image(c, engine, settings)
        command += f" --image {shlex.quote(image)} --version {shlex.quote(project_version())}"
    c.run(in_env(c, command), env=variables)


@task(help={"port": "port of the local server (default: PYFLOW_SERVER_PORT, else 4200)"})
def dev(c: Context, port: int = 0) -> None:
    """Start the server, register the deployments and run a worker in the foreground (Ctrl-C stops all)."""
    run_in_foreground(c, in_env(c, local_command(c, "dev", port)))


@task
def reset(c: Context) -> None:
    """Stop this project's server and delete its state (.prefect) and the outputs (data/output)."""
    c.run(in_env(c, local_command(c, "reset")))


@task
def lint(c: Context) -> None:
    """Check style and formatting with ruff, types with mypy (strict), and poetry.lock."""
    c.run(in_env(c, "ruff check ."))
    c.run(in_env(c, "ruff format --check ."))
    c.run(in_env(c, "mypy"))
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


IMAGE_HELP = {
    "engine": "docker or podman (default: PYFLOW_CONTAINER_ENGINE, else docker)",
    "registry": "name the image REGISTRY/IMAGE instead of its Artifact Registry path, such as 127.0.0.1:5000/test (default: the PYFLOW_GCP_ settings)",
    "version": "the version tag (default: the version in pyproject.toml)",
}


@task(
    iterable=["secret"],
    help={
        **IMAGE_HELP,
        "base-image": "the Python base image (default: the Dockerfile's, python:3.11-slim-bookworm)",
        "secret": "a build secret ID=PATH, such as ca=/etc/ssl/certs/ca-certificates.crt for a proxy's CA; repeat for more (default: none)",
        "index-url": "package index for the build (default: pip's own index, as `pip config` shows it)",
        "isolation": "podman's --isolation, such as chroot where no container runtime works (default: invoke's pyflow.podman_isolation, else podman's own)",
        "cache-from": "docker buildx --cache-from, such as type=gha (default: none)",
        "cache-to": "docker buildx --cache-to, such as type=gha,mode=max (default: none)",
    },
)
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
    engine, tags = image_names(c, engine, registry, version)
    options = {
        "base_image": base_image,
        "secret": secret,
        "index_url": index_url,
        "isolation": isolation,
        "cache_from": cache_from,
        "cache_to": cache_to,
    }
    build_image(c, engine, tags, options)


@task(
    help={
        **IMAGE_HELP,
        "insecure": "push over plain HTTP without TLS checks, for a test registry on loopback; podman only (default: verify TLS)",
    }
)
def push(
    c: Context, engine: str = "", registry: str = "", version: str = "", insecure: bool = False
) -> None:
    """Push the image's version and commit tags, and print the digest the registry stored."""
    engine, tags = image_names(c, engine, registry, version)
    push_image(c, engine, tags, insecure)


@task
def pool(c: Context) -> None:
    """Create or update the production Kubernetes work pool from deploy/kubernetes-job-template.json."""
    home = prefect_home(c)
    c.run(
        in_env(c, f"python -m pyflow.deploy --pool-only --home {home}"),
        env={"PREFECT_FLOW_ENV": "production"},
    )


# --- releasing ------------------------------------------------------------------------------


def check_step(c: Context, what: str, command: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one release check; stop the release with its message if it fails."""
    print(f"check: {what}")
    result = c.run(command, hide="stdout", warn=True, env=env)
    if result.failed:
        raise Exit(f"release stopped at the check '{what}': nothing was built or pushed")
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}


@task(
    help={
        "engine": "docker or podman (default: PYFLOW_CONTAINER_ENGINE, else docker)",
        "dry-run": "run the checks and print every command of the release without building, pushing or registering anything (default: release)",
        "base-image": "the Python base image (default: the Dockerfile's)",
        "secret": "a build secret ID=PATH, for a proxy's CA; repeat for more (default: none)",
        "isolation": "podman's --isolation (default: invoke's pyflow.podman_isolation)",
    },
    iterable=["secret"],
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
    env = {"PREFECT_FLOW_ENV": "production"}
    print("check: the git working tree is clean")
    if c.run("git status --porcelain --untracked-files=no", hide=True).stdout.strip():
        raise Exit(
            "the working tree has uncommitted changes: commit or stash them; a release builds "
            "exactly what its tag points at"
        )
    print("check: HEAD is tagged with a semantic version")
    described = c.run("git describe --exact-match --tags HEAD", hide=True, warn=True)
    try:
        version = release_version(described.stdout.strip()) if described.ok else ""
    except ValueError as error:
        raise Exit(str(error)) from None
    if not version and not dry_run:
        raise Exit("HEAD has no tag: tag the release (1.2.3 or v1.2.3) and publish it on GitHub")
    if not version:
        version = project_version()
        print(f"dry run: HEAD has no tag, so this plans version {version} from pyproject.toml")
    elif version != project_version():
        raise Exit(
            f"the tag says {version} but pyproject.toml says {project_version()}: set the version "
            f"with `poetry version {version}`, commit, and tag that commit"
        )
    check_step(
        c, "every production setting is set", in_env(c, "python -m pyflow.release settings"), env
    )
    settings = settings_of(c, env)
    engine, tags = image_names(c, engine, "", version, settings, require_engine=not dry_run)
    commit = tags[1].rpartition(":")[2]
    plan = check_step(
        c,
        f"Artifact Registry can take {tags[0]}",
        in_env(
            c,
            f"python -m pyflow.release registry --version {shlex.quote(version)} "
            f"--commit {shlex.quote(commit)}" + (" --dry-run" if dry_run else ""),
        ),
        env,
    )
    prefect = check_step(
        c,
        "the Prefect API answers and accepts the key",
        in_env(c, "python -m pyflow.release prefect"),
        env,
    )
    repository = tags[0].rpartition(":")[0]
    options = {"base_image": base_image, "secret": secret, "isolation": isolation}
    if plan.get("action") == "reuse":
        digest = plan["digest"]
        print(
            f"{tags[0]} was pushed by an earlier attempt of this release ({digest}): not building it again"
        )
    elif dry_run:
        print("dry run: the release would now run")
        digest = "sha256:<pushed digest>"
        c.run(masked(image_build_command(c, engine, tags, options)), dry=True)
        for tag in reversed(tags):
            c.run(push_command(engine, tag), dry=True)
    else:
        build_image(c, engine, tags, options)
        digest = push_image(c, engine, tags)
    image = f"{tags[0]}@{digest}"
    home = prefect_home(c)
    deploy_command = in_env(
        c,
        f"python -m pyflow.deploy --home {home} --image {shlex.quote(image)} --version {shlex.quote(version)}",
    )
    c.run(deploy_command, env=env, dry=dry_run)
    print(
        f"\n{'Planned' if dry_run else 'Released'} {version}:\n"
        f"  image:       {repository}:{version} ({digest})\n"
        f"  deployments: registered on work pool '{settings['work_pool']}'\n"
        f"  Prefect UI:  {prefect.get('ui_url', '')}"
    )


# --- one-time Google Cloud set-up: invoke gcp-setup -----------------------------------------

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GCP_APIS = (
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "sts.googleapis.com",
)
WORKLOAD_IDENTITY_POOL = "github-actions"
WORKLOAD_IDENTITY_PROVIDER = "pyflow"
ATTRIBUTE_MAPPING = (
    "google.subject=assertion.sub,attribute.repository=assertion.repository,"
    "attribute.repository_owner=assertion.repository_owner,attribute.ref=assertion.ref"
)
GITHUB_REPOSITORY = re.compile(r"[A-Za-z0-9-]+/[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class GcpStep:
    """One resource of the set-up: the command that finds it, and the one that makes it."""

    what: str
    create: str
    describe: str | None = None


def gcp_values(settings: dict[str, Any]) -> dict[str, str]:
    """Return the set-up's names from the settings.

    Raises:
        ValueError: If the project or GitHub repository is still a placeholder, or malformed.
    """
    problems = []
    if settings["gcp_project"] == PLACEHOLDER_PROJECT:
        problems.append("PYFLOW_GCP_PROJECT is still 'your-project-id'")
    if not GITHUB_REPOSITORY.fullmatch(settings["github_repository"]) or settings[
        "github_repository"
    ].startswith("your-org/"):
        problems.append(
            f"PYFLOW_GITHUB_REPOSITORY='{settings['github_repository']}' is not this project's "
            "GitHub repository, OWNER/REPO"
        )
    if problems:
        raise ValueError("; ".join(problems) + ": set them in .env (see .env.example)")
    project = settings["gcp_project"]
    return {
        "project": project,
        "region": settings["gcp_region"],
        "repository": settings["artifact_repository"],
        "github": settings["github_repository"],
        "account": settings["release_service_account"],
        "email": f"{settings['release_service_account']}@{project}.iam.gserviceaccount.com",
    }


def project_number_command(project: str) -> str:
    """Return the command that prints a project's number (Workload Identity names use it)."""
    return f"gcloud projects describe {shlex.quote(project)} --format='value(projectNumber)'"


def gcp_plan(values: dict[str, str], project_number: str) -> list[GcpStep]:
    """Return the set-up's steps in order: each `describe` is skipped-if-exists for its `create`."""
    q = shlex.quote
    p = f"--project={q(values['project'])}"
    email = q(values["email"])
    pool = f"{WORKLOAD_IDENTITY_POOL} {p} --location=global"
    provider = f"{WORKLOAD_IDENTITY_PROVIDER} {p} --location=global --workload-identity-pool={WORKLOAD_IDENTITY_POOL}"
    repository = f"{q(values['repository'])} {p} --location={q(values['region'])}"
    principal = (
        f"principalSet://iam.googleapis.com/projects/{project_number}/locations/global/"
        f"workloadIdentityPools/{WORKLOAD_IDENTITY_POOL}/attribute.repository/{values['github']}"
    )
    condition = f"\"assertion.repository=='{values['github']}'\""
    return [
        GcpStep("the APIs it needs", f"gcloud services enable {' '.join(GCP_APIS)} {p}"),
        GcpStep(
            f"service account {values['email']}",
            f"gcloud iam service-accounts create {q(values['account'])} {p} --display-name='pyflow releases (GitHub Actions)'",
            f"gcloud iam service-accounts describe {email} {p}",
        ),
        GcpStep(
            f"Artifact Registry Docker repository {values['repository']} in {values['region']}",
            f"gcloud artifacts repositories create {repository} --repository-format=docker --description='pyflow images, one tag per release'",
            f"gcloud artifacts repositories describe {repository}",
        ),
        GcpStep(
            f"Workload Identity pool {WORKLOAD_IDENTITY_POOL}",
            f"gcloud iam workload-identity-pools create {pool} --display-name='GitHub Actions'",
            f"gcloud iam workload-identity-pools describe {pool}",
        ),
        GcpStep(
            f"OIDC provider {WORKLOAD_IDENTITY_PROVIDER}, for {values['github']} only",
            f"gcloud iam workload-identity-pools providers create-oidc {provider} "
            f"--issuer-uri={GITHUB_ISSUER} --attribute-mapping={q(ATTRIBUTE_MAPPING)} "
            f"--attribute-condition={condition}",
            f"gcloud iam workload-identity-pools providers describe {provider}",
        ),
        GcpStep(
            f"{values['github']}'s workflows may act as the service account",
            f"gcloud iam service-accounts add-iam-policy-binding {email} {p} "
            f"--role=roles/iam.workloadIdentityUser --member={q(principal)}",
        ),
        GcpStep(
            f"the service account may push to {values['repository']} (and nothing else)",
            f"gcloud artifacts repositories add-iam-policy-binding {repository} "
            f"--role=roles/artifactregistry.writer --member=serviceAccount:{email}",
        ),
    ]


def github_variables(values: dict[str, str], project_number: str) -> dict[str, str]:
    """Return the GitHub repository variables the release workflow reads."""
    return {
        "GCP_WORKLOAD_IDENTITY_PROVIDER": (
            f"projects/{project_number}/locations/global/workloadIdentityPools/"
            f"{WORKLOAD_IDENTITY_POOL}/providers/{WORKLOAD_IDENTITY_PROVIDER}"
        ),
        "GCP_SERVICE_ACCOUNT": values["email"],
        "PYFLOW_GCP_PROJECT": values["project"],
        "PYFLOW_GCP_REGION": values["region"],
        "PYFLOW_ARTIFACT_REPOSITORY": values["repository"],
    }


@task(
    name="gcp-setup",
    help={
        "dry-run": "print every gcloud command with your values and run none (default: run them)"
    },
)
def gcp_setup(c: Context, dry_run: bool = False) -> None:
    """Set up Google Cloud once for releases: service account, Workload Identity, repository, IAM."""
    try:
        values = gcp_values(settings_of(c))
    except ValueError as error:
        raise Exit(str(error)) from None
    if not dry_run and not shutil.which("gcloud"):
        raise Exit(
            "gcloud is not installed: install the Google Cloud CLI, then `gcloud auth login`"
        )
    number_command = project_number_command(values["project"])
    if dry_run:
        print(number_command)
        number = "PROJECT_NUMBER"
    else:
        number = c.run(number_command, hide=True).stdout.strip()
    for step in gcp_plan(values, number):
        if dry_run:
            print(f"{step.describe} || {step.create}" if step.describe else step.create)
        elif step.describe and c.run(step.describe, hide=True, warn=True).ok:
            print(f"exists, skipped: {step.what}")
        else:
            c.run(step.create)
            print(f"done: {step.what}")
    print("\nSet these in GitHub (Settings, Secrets and variables, Actions), as variables:")
    for name, value in github_variables(values, number).items():
        print(f"  {name}={value}")
    print(
        "  PYFLOW_IMAGE_NAME, PYFLOW_OUTPUT (gs://BUCKET/PATH) and PREFECT_API_URL, as in .env\n"
        "and as a secret:\n  PREFECT_API_KEY (a Prefect Cloud API key; none for a server without auth)"
    )


@task(
    help={
        "rows": "rows of synthetic input to generate (default: 1,000,000)",
        "files": "files to spread the rows over (default: 20)",
        "workers": "Dask worker processes for the Dask variants (default: 2)",
        "variants": "comma-separated, of 0 (csv module), a (plain), b (threads), a1 (plain, one engine thread), c (temporary Dask), d (running Dask), e (the real state files) (default: all)",
    }
)
def bench(
    c: Context, rows: int = 1_000_000, files: int = 20, workers: int = 2, variants: str = ""
) -> None:
    """Benchmark the csv module, plain Python, the flow on threads and on Dask, and real data."""
    options = f"--rows {rows} --files {files} --workers {workers}"
    if variants:
        options += f" --variants {shlex.quote(variants)}"
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
    setup,
    run,
    trigger,
    status,
    logs,
    new_flow,
    server,
    deploy,
    dev,
    reset,
    build,
    push,
    pool,
    release,
    gcp_setup,
    bench,
    lint,
    format_,
    check,
    hooks,
    docs,
    test,
    ci,
)
ns.configure(
    {
        "pyflow": {"poetry": "", "podman_isolation": "", "home": str(PREFECT_HOME)},
        "run": {"echo": True},
    }
)
