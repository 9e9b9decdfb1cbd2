"""The servers pyflow starts, on loopback: guarded against other web origins, gone with their parent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pyflow_kit import local
from pyflow_kit.server import ServerState, is_healthy
from pyflow_kit.testing import isolated_env

FOREIGN = "http://127.0.0.1:1"
"""A web origin other than the server's own: a page the developer happens to have open."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Prefect home of this module's project server, which runs while the tests do."""
    home = tmp_path_factory.mktemp("server") / ".prefect"
    local.start_server(home, local.free_port())
    yield home
    local.stop_server(home)


@pytest.fixture
def project_server(server_home: Path) -> ServerState:
    """This project's server as `invoke server` starts it, on a free port and its own home."""
    server = local.read_state(server_home)
    assert server is not None
    return server


def test_project_server_refuses_writes_from_another_origin(project_server: ServerState) -> None:
    """A POST with another page's Origin is refused (it got 201 with Prefect's defaults)."""
    refused = httpx.post(
        f"{project_server.api_url}/flows/",
        json={"name": "planted-by-a-web-page"},
        headers={"Origin": FOREIGN},
        timeout=10,
    )
    assert refused.status_code == 403
    assert refused.json() == {"detail": "Missing CSRF token."}
    found = httpx.post(f"{project_server.api_url}/flows/filter", json={}, timeout=10)
    assert found.status_code == 403, "even reads made as POST need the token"


def test_project_server_lets_only_its_own_origin_read_across_origins(
    project_server: ServerState,
) -> None:
    """A browser's preflight from another origin gets no CORS grant; from the server's own, it does.

    Its own are its address and the same port on `localhost`, where users often open the UI.
    """
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,prefect-csrf-token,prefect-csrf-client",
    }
    foreign = httpx.options(
        f"{project_server.api_url}/flows/",
        headers={"Origin": FOREIGN, **preflight},
        timeout=10,
    )
    assert "access-control-allow-origin" not in foreign.headers
    for own in (project_server.url, f"http://localhost:{project_server.port}"):
        granted = httpx.options(
            f"{project_server.api_url}/flows/", headers={"Origin": own, **preflight}, timeout=10
        )
        assert granted.headers["access-control-allow-origin"] == own
    token = httpx.get(
        f"{project_server.api_url}/csrf-token",
        params={"client": "page"},
        headers={"Origin": FOREIGN},
        timeout=10,
    )
    assert "access-control-allow-origin" not in token.headers, "a page cannot read a token"


def test_project_server_still_serves_prefects_own_client(project_server: ServerState) -> None:
    """Prefect's client fetches a CSRF token by itself: it registers and reads a flow as before."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: project_server.api_url}),
        get_client(sync_client=True) as client,
    ):
        created = client.create_flow_from_name("written-by-prefects-client")
        assert client.read_flow(created).name == "written-by-prefects-client"


def test_cli_run_on_a_running_server_imports_none_of_prefects_server(
    project_server: ServerState, server_home: Path, tmp_path: Path
) -> None:
    """`python -m pyflow` on a running server never imports Prefect's server (seconds of imports)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pyflow", "--keep-server"],
        cwd=tmp_path,
        env=isolated_env(
            PREFECT_HOME=str(server_home),
            PYFLOW_OUTPUT=str(tmp_path / "out"),
            PYFLOW_SERVER_PORT=str(project_server.port),
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Using this project's Prefect server at {project_server.url}" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "prefect.flows" in imported, "the import log must list what was imported"
    assert "prefect.server.api.server" not in imported
    assert "uvicorn" not in imported


def test_temporary_server_stops_when_the_run_is_killed(tmp_path: Path) -> None:
    """A run's temporary server stops by itself within seconds of the run's process being killed."""
    code = (
        "import sys, time\n"
        "from pyflow_kit.runtime import prefect_api\n"
        "with prefect_api() as url:\n"
        "    print(url, flush=True)\n"
        "    time.sleep(600)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=isolated_env(PREFECT_HOME=str(tmp_path / ".prefect")),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        api_url = run.stdout.readline().strip()
        assert is_healthy(api_url), f"the temporary server should answer at {api_url!r}"
        servers = psutil.Process(run.pid).children()
        assert len(servers) == 1
    finally:
        run.kill()
    run.wait(timeout=10)
    _, alive = psutil.wait_procs(servers, timeout=20)
    assert alive == [], "the temporary server outlived the run that started it"
    deadline = time.monotonic() + 5
    while is_healthy(api_url, timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not is_healthy(api_url, timeout=0.5)


def test_temporary_server_waits_as_long_as_the_project_server_unless_told_longer() -> None:
    """Prefect's 20 s default is too short for a new server here; a longer setting is kept."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from pyflow_kit.runtime import temporary_startup_timeout

    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 20}):
        assert temporary_startup_timeout() == local.STARTUP_TIMEOUT
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300}):
        assert temporary_startup_timeout() == 300
