"""The local loop with real processes on loopback: server, work pool, deployments, worker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from pyflow import local

READY_TIMEOUT = 180
RUN_TIMEOUT = 180


def free_port() -> int:
    """Return a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_using(home: Path) -> list[psutil.Process]:
    """Return the live processes whose PREFECT_HOME is ``home``: everything the loop started."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT_HOME") == str(home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class Console:
    """A process's merged output, read in the background, with a way to wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        """Everything printed so far."""
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        """Wait until ``needle`` is printed; fail with the output if the process exits first."""
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never printed {needle!r}; output:\n{self.text}")
            time.sleep(0.2)


def pyflow_local(home: Path, *args: str) -> list[str]:
    """Return the command line of ``python -m pyflow.local`` for a test's Prefect home."""
    return [sys.executable, "-m", "pyflow.local", *args, "--home", str(home)]


def local_env(output: Path) -> dict[str, str]:
    """Return the environment for the loop: outputs in the test's folder, no outside API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYFLOW_"))}
    env["PYFLOW_OUTPUT"] = str(output)
    return env


@pytest.fixture(scope="module")
def loop_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Prefect home shared by this module's loop tests (its database is created once)."""
    home = tmp_path_factory.mktemp("loop") / ".prefect"
    yield home
    local.stop_server(home)


def start_dev(home: Path, port: int, output: Path) -> tuple[subprocess.Popen[str], Console]:
    """Start ``python -m pyflow.local dev`` and wait until it says it is ready."""
    process = subprocess.Popen(
        pyflow_local(home, "dev", "--port", str(port)),
        env=local_env(output),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console = Console(process)
    console.wait_for("pyflow dev: ready in", READY_TIMEOUT)
    return process, console


def trigger_and_wait(api_url: str, deployment: str) -> str:
    """Create a run of a deployment through Prefect's client and wait for its final state."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        found = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(found.id)
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                return state.type.value
            time.sleep(0.5)
    pytest.fail(f"the run of {deployment} did not finish within {RUN_TIMEOUT} s")


def wait_for_run(api_url: str, run_id: str) -> str:
    """Wait for a flow run to reach a final state; return the state's type."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + RUN_TIMEOUT
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return state.type.value
            time.sleep(0.5)
    pytest.fail(f"flow run {run_id} did not finish within {RUN_TIMEOUT} s")


def stop_and_check(process: subprocess.Popen[str], console: Console) -> None:
    """Send SIGINT (Ctrl-C) and wait for a clean exit."""
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, console.text
    console.thread.join(timeout=5)
    assert "pyflow dev: stopped everything it started" in console.text


@pytest.mark.slow
def test_dev_runs_a_deployment_and_leaves_nothing_behind(loop_home: Path, tmp_path: Path) -> None:
    """`dev` gets ready, runs a triggered deployment to completion, and stops all it started."""
    port, output = free_port(), tmp_path / "out"
    process, console = start_dev(loop_home, port, output)
    assert "started the Prefect server" in console.text
    assert (
        f"PREFECT_API_URL=http://127.0.0.1:{port}/api poetry run prefect deployment run warn-notices/development"
        in console.text
    )
    state = trigger_and_wait(f"http://127.0.0.1:{port}/api", "warn-notices/development")
    assert state == "COMPLETED", console.text
    printed = next(line.strip() for line in console.lines if "prefect deployment run" in line)
    triggered = subprocess.run(
        ["bash", "-c", printed],
        cwd=ROOT,
        env=local_env(output),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert triggered.returncode == 0, triggered.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout)
    assert run_id, triggered.stdout
    assert wait_for_run(f"http://127.0.0.1:{port}/api", run_id[1]) == "COMPLETED", console.text
    summary = json.loads((output / "summary.json").read_text())
    assert (
        summary["rows_in"]
        == summary["rows_out"] + summary["rows_rejected"] + summary["rows_duplicate"]
    )
    assert (output / "notices.csv").read_text().count("\n") == summary["rows_out"] + 1
    stop_and_check(process, console)
    assert processes_using(loop_home) == []
    assert not (loop_home / local.STATE_FILE).exists()


@pytest.mark.slow
def test_dev_reuses_a_running_server_and_leaves_it_running(loop_home: Path, tmp_path: Path) -> None:
    """With this project's server already up, `dev` reuses it and, on Ctrl-C, leaves it up."""
    port, output = free_port(), tmp_path / "out"
    started = subprocess.run(
        pyflow_local(loop_home, "server", "--port", str(port)),
        env=local_env(output),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    server = local.read_state(loop_home)
    assert server is not None and server.port == port
    cli = subprocess.run(
        [sys.executable, "-m", "pyflow", "--output", str(output)],
        env={**local_env(output), "PREFECT_HOME": str(loop_home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"Using this project's Prefect server at {server.url}" in cli.stderr
    assert "Starting a temporary Prefect server" not in cli.stderr
    process, console = start_dev(loop_home, port, output)
    assert "reusing the Prefect server" in console.text
    stop_and_check(process, console)
    assert [p.pid for p in processes_using(loop_home)] == [server.pid]
    assert local.is_healthy(server.api_url)
    stopped = subprocess.run(
        pyflow_local(loop_home, "stop"), capture_output=True, text=True, check=False
    )
    assert stopped.stdout == "pyflow: stopped the Prefect server\n"
    assert processes_using(loop_home) == []


@pytest.mark.slow
def test_dev_refuses_a_port_taken_by_another_program(tmp_path: Path) -> None:
    """When something else listens on the port, `dev` says so, exits 1 and starts nothing."""
    home = tmp_path / ".prefect"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run(
            pyflow_local(home, "dev", "--port", str(port)),
            env=local_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert (
        f"port {port} on 127.0.0.1 is taken by another program: stop it, or choose a free port with --port"
        in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert processes_using(home) == []
    assert not (home / local.STATE_FILE).exists()


def test_start_server_shows_the_end_of_the_log_when_it_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that exits during start-up is reported with its status and the end of its log."""
    crash = [sys.executable, "-c", "import sys; print('database is locked'); sys.exit(3)"]
    monkeypatch.setattr(local, "prefect_command", lambda *args: crash)
    with pytest.raises(local.LocalError) as raised:
        local.start_server(tmp_path, free_port())
    message = str(raised.value)
    assert message.startswith("the Prefect server exited with status 3. The end of its log")
    assert "  database is locked" in message
    assert not (tmp_path / local.STATE_FILE).exists()


def test_read_state_ignores_a_server_that_is_gone(tmp_path: Path) -> None:
    """A recorded server counts only while its very process (ID and start time) still runs."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / local.STATE_FILE).write_text(json.dumps({"pid": gone.pid, "port": 4200}))
    assert local.read_state(tmp_path) is None
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "server"])
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(alive.pid).cmdline() and time.monotonic() < deadline:
            time.sleep(0.01)  # right after exec, the kernel may show an empty command line
        started = psutil.Process(alive.pid).create_time()
        state = {"pid": alive.pid, "port": 4321, "started": started}
        (tmp_path / local.STATE_FILE).write_text(json.dumps(state))
        assert local.read_state(tmp_path) == local.ServerState(alive.pid, 4321, started)
        (tmp_path / local.STATE_FILE).write_text(json.dumps({**state, "started": started - 3600}))
        assert local.read_state(tmp_path) is None, "a reused process ID is not this server"
    finally:
        alive.kill()
        alive.wait()
    (tmp_path / local.STATE_FILE).write_text(
        json.dumps({"pid": os.getpid(), "port": 1, "started": psutil.Process().create_time()})
    )
    assert local.read_state(tmp_path) is None, "a process that is not a server is not taken for one"


def test_reset_deletes_only_pyflows_files(tmp_path: Path) -> None:
    """`reset` removes Prefect's state and the run's outputs, and nothing else in the folder."""
    home, output = tmp_path / ".prefect", tmp_path / "out"
    home.mkdir()
    (home / "prefect.db").write_text("db")
    output.mkdir()
    for name in ("notices.csv", "rejects.csv", "summary.json", "keep-me.txt"):
        (output / name).write_text(name)
    (output / ".pyflow-work" / "abc").mkdir(parents=True)
    removed = local.reset(home, output)
    assert not home.exists()
    assert sorted(p.name for p in output.iterdir()) == ["keep-me.txt"]
    assert len(removed) == 5


def test_stop_tree_stops_a_process_and_its_descendants() -> None:
    """Children and grandchildren are stopped with their parent, even ones that ignore SIGTERM."""
    parent = subprocess.Popen(
        ["sh", "-c", "sleep 300 & (trap '' TERM; sleep 300) & wait"], start_new_session=True
    )
    time.sleep(0.5)
    family = [psutil.Process(parent.pid), *psutil.Process(parent.pid).children(recursive=True)]
    assert len(family) >= 3
    local.stop_tree(parent.pid, timeout=2)
    parent.wait(timeout=5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_port_is_free_sees_a_listener() -> None:
    """A port with a listener is taken; after it closes, it is free."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not local.port_is_free(port)
    assert local.port_is_free(port)


def test_deploy_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    """`python -m pyflow.deploy` with no API and no local server exits 1 with the fix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYFLOW_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pyflow.deploy", "--home", str(tmp_path / ".prefect")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "pyflow deploy: there is no Prefect server to register with: PREFECT_API_URL is not set "
        "and this project's server is not running. Start it with `invoke server` (or `invoke "
        "dev`), or set PREFECT_API_URL in .env\n"
    )


@pytest.mark.slow
def test_invoke_dev_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """`invoke dev` (through invoke and Poetry, as a user runs it) stops all it started on SIGTERM."""
    home, port = tmp_path / ".prefect", free_port()
    env = {**local_env(tmp_path / "out"), "INVOKE_PYFLOW_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console = Console(process)
    console.wait_for("pyflow dev: ready in", READY_TIMEOUT)
    assert processes_using(home), "the server and worker should be running"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    console.thread.join(timeout=5)
    deadline = time.monotonic() + 30
    while processes_using(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_using(home) == [], console.text
    assert "pyflow dev: stopped everything it started" in console.text
