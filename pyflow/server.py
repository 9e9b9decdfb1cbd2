"""This project's Prefect server as other processes see it: where it runs, and whether it is up.

`invoke server` and `invoke dev` start it (`pyflow.local`); runs, registrations and the other
commands find it here, through the ``server.json`` it leaves in the project's Prefect home.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from pyflow.errors import LocalError

HOST = "127.0.0.1"
STATE_FILE = "server.json"


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
