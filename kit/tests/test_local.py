"""The local loop with real processes on loopback: server, work pool, deployments, worker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import PROJECT, activated_venv_env, run_invoke
from pyflow_kit import local
from pyflow_kit.local import free_port
from pyflow_kit.project import flows
from pyflow_kit.testing import HttpSources, free_ports, isolated_env, require_tools

FIRST = flows()[0].name
"""The project's default flow (the fixture flow, hello), which `dev` registers first."""
READY_TIMEOUT = 180
RUN_TIMEOUT = 180


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
    """Return the command line of ``python -m pyflow_kit.local`` for a test's Prefect home."""
    return [sys.executable, "-m", "pyflow_kit.local", *args, "--home", str(home)]


def local_env(output: Path) -> dict[str, str]:
    """Return the environment for the loop: outputs in the test's folder, no outside API."""
    return isolated_env(PYFLOW_OUTPUT=str(output))


@pytest.fixture(scope="module")
def loop_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Prefect home shared by this module's loop tests (its database is created once)."""
    home = tmp_path_factory.mktemp("loop") / ".prefect"
    yield home
    local.stop_server(home)


def start_dev(home: Path, port: int, output: Path) -> tuple[subprocess.Popen[str], Console]:
    """Start ``python -m pyflow_kit.local dev`` and wait until it says it is ready."""
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


@dataclass
class DevLoop:
    """A running `python -m pyflow_kit.local dev` and what the tests need of it."""

    process: subprocess.Popen[str]
    console: Console
    home: Path
    port: int
    output: Path

    @property
    def api_url(self) -> str:
        """The API of its server."""
        return f"http://127.0.0.1:{self.port}/api"


@pytest.fixture(scope="module")
def dev_loop(loop_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevLoop]:
    """One `dev` loop for this module's tests; the last test stops it with Ctrl-C."""
    port, output = free_port(), tmp_path_factory.mktemp("dev") / "out"
    process, console = start_dev(loop_home, port, output)
    yield DevLoop(process, console, loop_home, port, output)
    if process.poll() is None:
        local.stop_tree(process.pid, first=signal.SIGINT)


@pytest.mark.slow
def test_dev_runs_a_triggered_deployment(dev_loop: DevLoop) -> None:
    """`dev` gets ready, and its worker runs a deployment triggered through Prefect's client."""
    assert "started the Prefect server" in dev_loop.console.text
    assert f"  invoke trigger {FIRST}\n" in dev_loop.console.text
    state = trigger_and_wait(dev_loop.api_url, f"{FIRST}/development")
    assert state == "COMPLETED", dev_loop.console.text
    pointer = json.loads((dev_loop.output / "latest.json").read_text())
    assert pointer["rows_out"] == 1, "the fixture flow greets the world, published"
    assert (dev_loop.output / "greetings.csv").read_text() == "greeting\nHello, world!\n"


@pytest.mark.slow
def test_dev_printed_trigger_works_in_a_venv_without_poetry(dev_loop: DevLoop) -> None:
    """The trigger command `dev` prints runs the flow from an activated .venv with no Poetry."""
    printed = next(line.strip() for line in dev_loop.console.lines if "invoke trigger" in line)
    env = activated_venv_env(
        INVOKE_PYFLOW_HOME=str(dev_loop.home), PYFLOW_OUTPUT=str(dev_loop.output)
    )
    assert shlex.split(printed)[:2] == ["invoke", "trigger"]
    triggered = run_invoke(env, *shlex.split(printed)[1:], "--wait", timeout=RUN_TIMEOUT)
    link = re.search(r"(http://127.0.0.1:\d+/runs/flow-run/([0-9a-f-]{36}))", triggered.stdout)
    assert link, triggered.stdout
    assert wait_for_run(dev_loop.api_url, link[2]) == "COMPLETED"
    assert "ended Completed" in triggered.stdout
    page = httpx.get(link[1], headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200, "the printed link must answer"


@pytest.mark.slow
def test_status_shows_server_worker_deployments_and_runs(dev_loop: DevLoop) -> None:
    """`status` names the server, the polling worker, the deployment and the last runs."""
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # the test harness sets it
        report = local.status_report(dev_loop.home, "pyflow-local")
    lines = report.splitlines()
    assert lines[0].startswith(f"server:      running at http://127.0.0.1:{dev_loop.port} (pid ")
    assert lines[1] == (
        f"work pool:   pyflow-local: 1 worker(s) online: pyflow-dev-{socket.gethostname()}"
    )
    expected = sorted(f"{flow.name}/development" for flow in flows())
    assert lines[2] == f"deployments: {', '.join(expected)}"
    assert lines[3] == "last runs:"
    runs = lines[4:]
    assert 1 <= len(runs) <= local.LAST_RUNS
    assert all(f"  {FIRST}  '" in run and "  Completed  " in run for run in runs), report


@pytest.mark.slow
def test_logs_show_the_server_and_worker_logs(
    dev_loop: DevLoop, capsys: pytest.CaptureFixture[str]
) -> None:
    """`logs` prints the end of the server's log and of the worker's, which `dev` also shows."""
    local.show_logs(dev_loop.home, 200, follow=False)
    printed = capsys.readouterr().out
    assert f"==> server: {dev_loop.home / 'server.log'} <==" in printed
    assert f"==> worker: {dev_loop.home / 'worker.log'} <==" in printed
    worker_log = (dev_loop.home / "worker.log").read_text()
    assert "Worker 'pyflow-dev-" in worker_log or "Submitting flow run" in worker_log
    assert worker_log.splitlines()[-1].strip() in printed
    assert worker_log.splitlines()[-1] in dev_loop.console.text


ATTACK_PAGE = """<!doctype html><html><body><pre id="out">started</pre><script>
const api = "API";
const out = document.getElementById("out");
const log = (line) => { out.textContent += "\\n" + line; };
(async () => {
  try {
    const answer = await fetch(api + "/flows/", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: "planted-json"})});
    log("json answered " + answer.status);
  } catch (error) { log("json blocked"); }
  try {
    const token = await fetch(api + "/csrf-token?client=page");
    log("token read " + (await token.text()));
  } catch (error) { log("token blocked"); }
  log("done");
})();
</script></body></html>"""
"""A web page on another origin that tries to write to the local server, as a hostile site could."""


@pytest.fixture
def foreign_page(dev_loop: DevLoop, http_sources: HttpSources) -> str:
    """Serve ATTACK_PAGE aimed at the dev loop's API from another loopback origin; its URL."""
    page = ATTACK_PAGE.replace("API", dev_loop.api_url)
    return http_sources.add("/", page, content_type="text/html")


@pytest.mark.slow
def test_dev_server_refuses_a_foreign_pages_writes(dev_loop: DevLoop, foreign_page: str) -> None:
    """A page from another origin, in a real browser, can neither write to the server nor read a token.

    With Prefect's defaults (CORS `*`, no CSRF protection) its JSON POST got 201, and the
    flow it named existed: a page could register what `invoke dev`'s worker then runs. (A
    request a browser sends without asking first, which CORS does not stop, needs the token:
    test_server shows the server refuses it.)
    """
    from prefect.client.orchestration import get_client

    page = rendered_page(foreign_page)
    assert "done" in page, page
    assert "json blocked" in page
    assert "token blocked" in page
    with (
        temporary_settings(updates={PREFECT_API_URL: dev_loop.api_url}),
        get_client(sync_client=True) as client,
    ):
        names = {flow.name for flow in client.read_flows()}
    assert FIRST in names
    assert "planted-json" not in names


@pytest.mark.slow
def test_start_server_never_moves_a_server_a_worker_uses(dev_loop: DevLoop) -> None:
    """Asked for another port while `dev`'s worker uses the server, it refuses and moves nothing."""
    [other] = free_ports(1)
    with pytest.raises(local.LocalError) as refused:
        local.start_server(dev_loop.home, other, move=True)
    [worker] = [p for p in processes_using(dev_loop.home) if "worker" in p.cmdline()]
    assert str(refused.value) == (
        f"this project's server runs on port {dev_loop.port}, and a worker on this machine uses "
        f"it (pid {worker.pid}, as `invoke dev` starts): stop it first (Ctrl-C in its "
        f"terminal), or leave out --port (and PYFLOW_SERVER_PORT) to use the server on port "
        f"{dev_loop.port}"
    )
    server = local.read_state(dev_loop.home)
    assert server is not None and server.port == dev_loop.port
    assert local.is_healthy(dev_loop.api_url)


@pytest.mark.slow
def test_dev_stops_everything_on_ctrl_c(dev_loop: DevLoop) -> None:
    """Ctrl-C stops the worker and the server `dev` started, and nothing is left running."""
    stop_and_check(dev_loop.process, dev_loop.console)
    assert processes_using(dev_loop.home) == []
    assert not (dev_loop.home / local.STATE_FILE).exists()


def start_server_command(home: Path, port: int, output: Path) -> local.ServerState:
    """Start the project's server as `invoke server --port PORT` does; return it, running."""
    started = subprocess.run(
        pyflow_local(home, "server", "--port", str(port)),
        env=local_env(output),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    server = local.read_state(home)
    assert server is not None and server.port == port
    return server


@pytest.mark.slow
def test_dev_reuses_a_running_server_and_leaves_it_running(loop_home: Path, tmp_path: Path) -> None:
    """With this project's server already up, `dev` reuses it and, on Ctrl-C, leaves it up."""
    port, output = free_port(), tmp_path / "out"
    server = start_server_command(loop_home, port, output)
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
        pyflow_local(loop_home, "server", "--stop"), capture_output=True, text=True, check=False
    )
    assert stopped.stdout == "pyflow: stopped the Prefect server\n"
    assert processes_using(loop_home) == []


@pytest.mark.slow
def test_dev_moves_the_projects_server_to_the_port_asked_for(
    loop_home: Path, tmp_path: Path
) -> None:
    """`dev --port B` while the server runs on A (as after `invoke run`) moves it to B; no --port reuses A."""
    (first, second), output = free_ports(2), tmp_path / "out"
    old = start_server_command(loop_home, first, output)
    assert local.start_server(loop_home, second, move=False) == (old, False), (
        "the default reuses it"
    )
    process, console = start_dev(loop_home, second, output)
    assert f"pyflow: Moving this project's Prefect server from port {first} to {second}" in (
        console.text
    )
    assert f"started the Prefect server at http://127.0.0.1:{second}" in console.text
    assert not psutil.pid_exists(old.pid)
    stop_and_check(process, console)
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


FILES = ("data.csv", "summary.json")
"""The files of a published run, as latest.json names them."""


def test_reset_deletes_only_pyflows_files(tmp_path: Path) -> None:
    """`reset` removes Prefect's state and the run's outputs, and nothing else in the folder."""
    home, output = tmp_path / ".prefect", tmp_path / "out"
    home.mkdir()
    (home / "prefect.db").write_text("db")
    output.mkdir()
    for name in ("data.csv", "summary.json", "keep-me.txt"):
        (output / name).write_text(name)
    (output / "runs" / "20261129T000000000000Z-abc" / "work").mkdir(parents=True)
    files = {name: {"path": f"runs/20261129T000000000000Z-abc/{name}"} for name in FILES}
    pointer = {"run": "20261129T000000000000Z-abc", "files": files}
    (output / "latest.json").write_text(json.dumps(pointer))
    removed = local.reset(home, output)
    assert not home.exists()
    assert sorted(p.name for p in output.iterdir()) == ["keep-me.txt"], "what the pointer names"
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
    """`python -m pyflow_kit.deploy` with no API and no local server exits 1 with the fix."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyflow_kit.deploy",
            "register",
            "--home",
            str(tmp_path / ".prefect"),
        ],
        env=isolated_env(),
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


def start_invoke_dev(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `invoke dev` as a user in an activated .venv does, its output to a file."""
    env = activated_venv_env(INVOKE_PYFLOW_HOME=str(home), PYFLOW_OUTPUT=str(home.parent / "out"))
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["invoke", "dev", "--port", str(port)],
            cwd=PROJECT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while "pyflow dev: ready in" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"`invoke dev` never got ready; output:\n{log.read_text()}")
        time.sleep(0.2)
    return process


def stopped_within(home: Path, seconds: float) -> list[psutil.Process]:
    """Wait up to ``seconds`` for every process of a Prefect home to end; return those left."""
    deadline = time.monotonic() + seconds
    while processes_using(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_using(home)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Names Chromium goes by: Debian's package, Ubuntu's, and Google's build (on GitHub's runners)."""


def browser() -> str:
    """Return the Chromium on PATH; skip the test (fail it in CI) when there is none."""
    found = next((name for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        require_tools("chromium", hint="apt-get install -y chromium")
    return found or "chromium"


def rendered_page(url: str) -> str:
    """Return a page's DOM after headless Chromium ran its scripts."""
    result = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_invoke_dev_ui_on_another_port_shows_the_deployments(tmp_path: Path) -> None:
    """On any port, the UI calls that server's API: Chromium renders the deployment's name.

    Then Ctrl-C (SIGINT) to `invoke dev`, whose output goes to a file, not a terminal, stops
    everything within 10 s.
    """
    browser()
    home, port, log = tmp_path / ".prefect", free_port(), tmp_path / "dev.log"
    process = start_invoke_dev(home, port, log)
    try:
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        page = rendered_page(f"http://127.0.0.1:{port}/deployments")
        assert FIRST in page
        assert "Can't connect to Server API" not in page
    finally:
        process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0, log.read_text()
    assert stopped_within(home, 10) == [], log.read_text()
    assert "pyflow dev: stopped everything it started" in log.read_text()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_invoke_dev_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """`invoke dev` (through invoke, as a user runs it) stops all it started on SIGTERM."""
    home, port, log = tmp_path / ".prefect", free_port(), tmp_path / "dev.log"
    process = start_invoke_dev(home, port, log)
    assert processes_using(home), "the server and worker should be running"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert stopped_within(home, 30) == [], log.read_text()
    assert "pyflow dev: stopped everything it started" in log.read_text()


@pytest.mark.slow
def test_invoke_run_keeps_the_projects_server_for_the_next_runs(tmp_path: Path) -> None:
    """The first `invoke run` starts the server in the background; the next reuse it; links work."""
    home, port, output = tmp_path / ".prefect", free_port(), tmp_path / "out"
    env = activated_venv_env(
        INVOKE_PYFLOW_HOME=str(home), PYFLOW_SERVER_PORT=str(port), PYFLOW_OUTPUT=str(output)
    )
    consoles = []
    try:
        for _ in range(2):
            result = run_invoke(env, "run", timeout=RUN_TIMEOUT)
            consoles.append(result.stdout + result.stderr)
        assert f"Started this project's Prefect server at http://127.0.0.1:{port}" in consoles[0]
        assert f"Using this project's Prefect server at http://127.0.0.1:{port}" in consoles[1]
        assert "temporary" not in consoles[1]
        server = local.read_state(home)
        assert server is not None and server.port == port
        for console in consoles:
            assert "Traceback" not in console and "ERROR" not in console
            link = re.search(r"View at (\S+)", console)
            assert link, console
            page = httpx.get(link[1], headers={"Accept": "text/html"}, timeout=10)
            assert page.status_code == 200, f"{link[1]} must answer after the run"
    finally:
        stopped = run_invoke(env, "server", "--stop")
    assert "pyflow: stopped the Prefect server" in stopped.stdout
    assert stopped_within(home, 10) == []


def test_status_report_without_a_server_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no server and no PREFECT_API_URL, `status` says so and how to start one."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        report = local.status_report(tmp_path, "pyflow-local")
    assert report == "server:      not running: start it with `invoke server` or `invoke dev`"


def test_show_logs_without_logs_says_where_they_come_from(tmp_path: Path) -> None:
    """`logs` before any server or worker ran names the commands that write them."""
    with pytest.raises(local.LocalError, match=r"there are no logs in .* yet: `invoke server`"):
        local.show_logs(tmp_path, 20, follow=False)


def test_logs_follow_prints_new_lines_until_ctrl_c(tmp_path: Path) -> None:
    """`logs --follow` prints each log's end, then every new line with its log's name."""
    (tmp_path / "server.log").write_text("old server line\n")
    (tmp_path / "worker.log").write_text("")
    process = subprocess.Popen(
        pyflow_local(tmp_path, "logs", "--follow", "--lines", "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console = Console(process)
    console.wait_for("old server line", 30)
    with (tmp_path / "worker.log").open("a") as log:
        log.write("a new worker line\nhalf a li")
    console.wait_for("worker | a new worker line", 10)
    with (tmp_path / "worker.log").open("a") as log:
        log.write("ne\n")
    console.wait_for("worker | half a line", 10)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    assert "Traceback" not in console.text
