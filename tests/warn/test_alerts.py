"""The example's alerts, end to end, on a real Prefect server and a webhook on loopback.

`pyflow_kit.deploy` creates them, flow runs emit their event, and the server's automations post
to the receiver. The server is this module's own (the project's server, as `invoke server` starts it, in a Prefect
home of its own), so that no other test's failed runs reach the receiver.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, SAMPLE
from pyflow_kit import local
from pyflow_kit.testing import free_ports, isolated_env

pytestmark = pytest.mark.slow

WAIT = 60.0
"""Seconds to wait for the server's automations to post (they act within a few seconds)."""


class Receiver:
    """An HTTP server on loopback that records the JSON of each POST it gets."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[str]:
        """Wait until ``count`` posts arrived, then a little more for any extra; return texts."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # an extra notification would come within this
        return [post["text"] for post in self.posts]


@pytest.fixture(scope="module")
def alert_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server of this module's own; its API URL."""
    home = tmp_path_factory.mktemp("alerts") / ".prefect"
    server, _ = local.start_server(home, free_ports(1)[0], move=False)
    try:
        yield server.api_url
    finally:
        local.stop_server(home)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The webhook's receiver."""
    found = Receiver()
    yield found
    found.server.shutdown()


def run(args: list[str], api_url: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a Python module of the project against the alert server."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=isolated_env(PREFECT_API_URL=api_url, PYFLOW_PROJECT=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def deploy(api_url: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Register the project's deployments and alerts with the alert server."""
    return run(["pyflow_kit.deploy", "register", "--home", str(home)], api_url, ROOT, **env)


def flow_run(sources: Path, output: Path, api_url: str) -> subprocess.CompletedProcess[str]:
    """Run the example flow over a folder of sample files."""
    args = ["pyflow", "--output", str(output)]
    for path in sorted(sources.glob("*.csv")):
        args += ["--source", f"{path}#state={path.stem.upper()},name={path.name}"]
    return run(args, api_url, output.parent)


def test_alerts_tell_once_of_new_notices_and_once_of_a_failed_source(
    alert_server: str, receiver: Receiver, tmp_path: Path
) -> None:
    deployed = deploy(alert_server, tmp_path / ".prefect", PYFLOW_ALERT_WEBHOOK=receiver.url)
    assert deployed.returncode == 0, deployed.stderr
    assert "created alert 'flow run failed'" in deployed.stdout
    assert "created alert 'new WARN notices'" in deployed.stdout
    assert "secret" not in deployed.stdout + deployed.stderr
    again = deploy(alert_server, tmp_path / ".prefect", PYFLOW_ALERT_WEBHOOK=receiver.url)
    assert "updated alert 'flow run failed'" in again.stdout, again.stderr
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("ca.csv", "wi.csv"):
        shutil.copy(SAMPLE / name, sources / name)
    output = tmp_path / "out"
    first = flow_run(sources, output, alert_server)
    assert first.returncode == 0, first.stderr
    assert receiver.wait_for(0, timeout=0) == []  # the first run lists no changes

    with (sources / "wi.csv").open("a", encoding="utf-8") as handle:
        handle.write("Newcomer Mills,Oshkosh,44,12/01/2026,WR,01/15/2027,Mills,Winnebago,Fox\n")
    second = flow_run(sources, output, alert_server)
    assert second.returncode == 0, second.stderr
    texts = receiver.wait_for(1)
    assert len(texts) == 1
    assert texts[0].startswith("*WARN notices: 1 added, 0 amended*\n")
    assert "0 removed, 0 sources failed. Companies: Newcomer Mills" in texts[0]

    (sources / "wi.csv").write_text("not,a,warn,file\n1,2,3,4\n", encoding="utf-8")
    third = flow_run(sources, output, alert_server)
    assert third.returncode == 1
    texts = receiver.wait_for(2)
    assert len(texts) == 2
    assert texts[1].startswith("*warn-notices: run ")
    assert "failed*\n1 of 2 sources failed" in texts[1]
    assert "wi.csv" in texts[1]


def test_alerts_without_a_webhook_attempt_nothing_and_say_so(
    alert_server: str, receiver: Receiver, tmp_path: Path
) -> None:
    deployed = deploy(alert_server, tmp_path / ".prefect")
    assert deployed.returncode == 0, deployed.stderr
    assert "pyflow deploy: alerts are off: PYFLOW_ALERT_WEBHOOK is not set" in deployed.stdout
    sources = tmp_path / "sources"
    sources.mkdir()
    shutil.copy(SAMPLE / "wi.csv", sources / "wi.csv")
    output = tmp_path / "out"
    assert flow_run(sources, output, alert_server).returncode == 0
    with (sources / "wi.csv").open("a", encoding="utf-8") as handle:
        handle.write("Newcomer Mills,Oshkosh,44,12/01/2026,WR,01/15/2027,Mills,Winnebago,Fox\n")
    assert flow_run(sources, output, alert_server).returncode == 0
    (sources / "wi.csv").write_text("not,a,warn,file\n", encoding="utf-8")
    assert flow_run(sources, output, alert_server).returncode == 1
    assert receiver.wait_for(1, timeout=10) == []
