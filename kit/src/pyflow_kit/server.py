"""This project's Prefect server as other processes see it: where it runs, and whether it is up.

`invoke server` and `invoke dev` start it (`pyflow_kit.local`); runs, registrations and the other
commands find it here, through the ``server.json`` it leaves in the project's Prefect home.
Every server pyflow starts on loopback refuses writes from other web origins
(`guarded_env`). ``python -m pyflow_kit.server --port N --parent PID`` is a temporary server that
stops when the process that started it dies (`pyflow_kit.runtime` starts one for a run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from pyflow_kit.errors import LocalError

HOST = "127.0.0.1"
STATE_FILE = "server.json"
ORPHAN_POLL_SECONDS = 0.5
"""How often a temporary server checks that the process that started it is alive."""
ORPHAN_GRACE_SECONDS = 10.0
"""How long an orphaned temporary server may take to shut down in order before it just exits."""


@dataclass(frozen=True)
class ServerState:
    """This project's running server: what `server.json` records."""

    pid: int
    port: int
    started: float = 0.0
    """The process's start time (psutil's create_time), so a reused process ID is not taken for it."""

    @property
    def url(self) -> str:
        """The server's address (the UI)."""
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        """The server's API address, for ``PREFECT_API_URL``."""
        return f"{self.url}/api"


def guarded_env(port: int) -> dict[str, str]:
    """Return the settings that make a server on ``port`` refuse writes from other web origins.

    A Prefect server on loopback answers any web page the developer opens: with Prefect's
    defaults (CORS ``*``, no CSRF protection) a page's script could create deployments that the
    local worker then runs. With these, a write needs a CSRF token that only a client which can
    read the server's answers obtains (Prefect's client and UI do it by themselves), and browsers
    let only the server's own origins read them (the UI opened as ``localhost`` included).
    """
    return {
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ",".join(own_origins(port)),
    }


def own_origins(port: int) -> tuple[str, ...]:
    """Return the web origins of a server on ``port``: its address, and ``localhost``'s."""
    return (ServerState(0, port).url, f"http://localhost:{port}")


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Return whether a Prefect API answers its health check."""
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def read_state(home: Path) -> ServerState | None:
    """Return this project's server if its very process is still alive, else None.

    The process must have the recorded start time and be a Prefect server: after a reboot, its
    process ID may belong to another program, which must not be taken for it (or stopped).
    """
    try:
        state = ServerState(**json.loads((home / STATE_FILE).read_text()))
        process = psutil.Process(state.pid)
        alive = abs(process.create_time() - state.started) < 1 and "server" in process.cmdline()
    except (OSError, ValueError, TypeError, psutil.Error):
        return None
    return state if alive else None


def running_server(home: Path) -> ServerState | None:
    """Return this project's server if it runs and answers its health check, else None."""
    state = read_state(home)
    return state if state and is_healthy(state.api_url) else None


def api_url_for(home: Path) -> str:
    """Return the Prefect API to talk to: ``PREFECT_API_URL``, else this project's running server.

    Raises:
        LocalError: If neither is there, with how to start the server.
    """
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        return str(configured)
    server = running_server(home)
    if server is None:
        raise LocalError(
            "there is no Prefect server to talk to: PREFECT_API_URL is not set and this "
            "project's server is not running. Start it with `invoke server` (or `invoke dev`), "
            "or set PREFECT_API_URL in .env"
        )
    return server.api_url


def exit_when_orphaned(parent: int, poll: float = ORPHAN_POLL_SECONDS) -> threading.Thread:
    """Stop this process (SIGTERM to itself) once ``parent`` is no longer its parent.

    A killed parent cannot stop its children; its orphans are adopted by another process, which
    is how this notices. SIGTERM lets the server shut down in order; if that hangs, the process
    exits anyway after ``ORPHAN_GRACE_SECONDS``.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(1)

    thread = threading.Thread(target=watch, name="pyflow-orphan-watch", daemon=True)
    thread.start()
    return thread


def serve(port: int, parent: int) -> None:
    """Serve Prefect's API (no UI) on loopback until stopped, or until ``parent`` dies."""
    import uvicorn

    exit_when_orphaned(parent)
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host=HOST,
        port=port,
        log_level="error",
        lifespan="on",
    )


def temporary_server_command(port: int) -> list[str]:
    """Return the command line of a temporary server that stops when this process dies."""
    return [
        sys.executable,
        "-m",
        "pyflow_kit.server",
        "--port",
        str(port),
        "--parent",
        str(os.getpid()),
    ]


def temporary_server_env(port: int) -> dict[str, str]:
    """Return a temporary server's environment: no UI, guarded, marked temporary as Prefect's own."""
    return {
        **os.environ,
        **guarded_env(port),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run a temporary server: ``python -m pyflow_kit.server --port N --parent PID``."""
    parser = argparse.ArgumentParser(prog="python -m pyflow_kit.server", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the loopback port to serve on")
    parser.add_argument("--parent", type=int, required=True, help="stop when this process is gone")
    args = parser.parse_args(argv)
    serve(args.port, args.parent)


if __name__ == "__main__":
    main()
