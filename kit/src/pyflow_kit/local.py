"""The local orchestration loop: this project's Prefect server, its process work pool and a worker.

``python -m pyflow_kit.local server|dev|reset|trigger|status|logs`` (what the invoke tasks of
the same names run). The server's state (SQLite database, logs, its process ID) lives in the
project's ``.prefect/`` folder, so two projects never share a server. Every process started here
runs in a session of its own and gets ``PREFECT_API_URL``, and everything started is stopped
again: on Ctrl-C, on SIGTERM, and when a step fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pyflow_kit import bootstrap, commands
from pyflow_kit.errors import LocalError, PyflowError
from pyflow_kit.server import (
    HOST,
    STATE_FILE,
    ServerState,
    api_url_for,
    guarded_env,
    is_healthy,
    read_state,
    running_server,
)
from pyflow_kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import Worker

logger = logging.getLogger(__name__)

SERVER_LOG = "server.log"
WORKER_LOG = "worker.log"
STARTUP_TIMEOUT = 90.0
LOG_TAIL_LINES = 20
LAST_RUNS = 5
"""How many of the latest flow runs `invoke status` lists."""


def free_port() -> int:
    """Return a loopback TCP port that is free now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Return whether nothing listens on the loopback port."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def child_env(home: Path, api_url: str | None) -> dict[str, str]:
    """Return the environment of a process started here: this project, its home, API and tools.

    This environment's own scripts come first on PATH, so a process started here (and the flow
    runs a worker starts) finds them even when the virtual environment is not activated.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "PATH": path,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYFLOW_PROJECT": str(bootstrap.root()),  # flow runs may work in a folder of their own
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def server_env(home: Path, port: int) -> dict[str, str]:
    """Return the server's environment: the UI must call the API on the port it is served on.

    `prefect server start --port` serves on that port, but its UI reads the API's address from
    the settings (port 4200 unless told), so on any other port every page would fail or, worse,
    show another server's data.
    """
    api_url = ServerState(0, port).api_url
    return {
        **child_env(home, None),
        **guarded_env(port),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,
    }


def prefect_command(*args: str) -> list[str]:
    """Return the command line of the Prefect CLI in this environment."""
    return [sys.executable, "-m", "prefect", *args]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last lines of a log file, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text)


def stop_tree(pid: int, first: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process and every descendant: ``first`` to it, then SIGTERM to the rest, then SIGKILL.

    The process is asked first, alone, so that it can stop its children in order (a worker
    cancels its flow runs); whatever is still alive after ``timeout`` seconds is killed.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.send_signal(first)
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=2.0)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def start_server(home: Path, port: int, move: bool = True) -> tuple[ServerState, bool]:
    """Start this project's server on ``port``, or reuse it if it already runs.

    A server already running on another port is reused when ``move`` is false (the port was
    only the default), else stopped and started again on ``port`` (the port was asked for).

    Returns:
        The server, and whether this call started it.

    Raises:
        LocalError: If the port is taken by another program, or the server does not start.
    """
    home.mkdir(parents=True, exist_ok=True)
    running = read_state(home)
    if running and is_healthy(running.api_url):
        if running.port == port or not move:
            return running, False
        attached = attached_workers(running.api_url)
        if attached:
            raise LocalError(
                f"this project's server runs on port {running.port}, and a worker on this machine "
                f"uses it ({', '.join(attached)}, as `invoke dev` starts): stop it first (Ctrl-C "
                f"in its terminal), or leave out --port (and PYFLOW_SERVER_PORT) to use the "
                f"server on port {running.port}"
            )
        logger.info("Moving this project's Prefect server from port %s to %s", running.port, port)
    if running:
        stop_tree(running.pid)
    if not port_is_free(port):
        raise LocalError(
            f"port {port} on {HOST} is taken by another program: stop it, or choose a free "
            "port with --port (or PYFLOW_SERVER_PORT in .env)"
        )
    log_path = home / SERVER_LOG
    with log_path.open("w") as log:
        process = subprocess.Popen(
            prefect_command("server", "start", "--host", HOST, "--port", str(port)),
            env=server_env(home, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = ServerState(process.pid, port, psutil.Process(process.pid).create_time())
    (home / STATE_FILE).write_text(json.dumps(asdict(state)))
    try:
        wait_until_healthy(state, process, log_path)
    except BaseException:
        stop_tree(process.pid)
        (home / STATE_FILE).unlink(missing_ok=True)
        raise
    return state, True


def port_asked(settings: Settings) -> bool:
    """Return whether the server's port was asked for (--port, PYFLOW_SERVER_PORT), not defaulted."""
    return "server_port" in settings.model_fields_set


def wait_until_healthy(
    state: ServerState,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Wait for a starting server's health check to pass.

    Raises:
        LocalError: If it exits or does not answer in time, with the end of its log.
    """
    deadline = time.monotonic() + timeout
    while not is_healthy(state.api_url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with status {process.returncode}"
                if process.poll() is not None
                else f"did not answer within {timeout:.0f} s"
            )
            raise LocalError(
                f"the Prefect server {reason}. The end of its log ({log_path}):\n"
                f"{log_tail(log_path)}"
            )
        time.sleep(0.2)


def stop_server(home: Path) -> bool:
    """Stop this project's server if it runs; return whether it did."""
    state_path = home / STATE_FILE
    state = read_state(home)
    if state:
        stop_tree(state.pid)
    state_path.unlink(missing_ok=True)
    return state is not None


def wait_for_worker(
    api_url: str, pool: str, name: str, worker: subprocess.Popen[bytes], since: float
) -> None:
    """Wait until this worker polls the pool: a heartbeat of its name, sent after ``since``.

    Raises:
        LocalError: If the worker exits or does not poll within the startup timeout.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + STARTUP_TIMEOUT
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise LocalError(
                    f"the worker exited with status {worker.returncode}; see its log above"
                )
            for found in pool_workers(client, pool):
                heartbeat = found.last_heartbeat_time
                if found.name == name and heartbeat and heartbeat.timestamp() >= since:
                    return
            time.sleep(0.2)
    raise LocalError(f"the worker did not poll work pool '{pool}' within {STARTUP_TIMEOUT:.0f} s")


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Raise KeyboardInterrupt on SIGINT (Ctrl-C) or SIGTERM inside the block, so cleanup runs.

    SIGINT is set explicitly because a process started in the background may inherit it ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not interrupt the cleanup
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def dev(settings: Settings, home: Path) -> int:
    """Start (or reuse) the server, register the deployments, and run a worker until stopped.

    Returns:
        The exit status: 0 after Ctrl-C or SIGTERM, 1 if the worker stopped on its own.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pyflow_kit.deploy import ensure_work_pool, register

    started_at = time.monotonic()
    worker_name = f"pyflow-dev-{socket.gethostname()}"
    server: ServerState | None = None
    started_server = False
    worker: subprocess.Popen[bytes] | None = None
    with interrupt_on_stop_signals():
        try:
            server, started_server = start_server(home, settings.server_port, port_asked(settings))
            print(
                f"pyflow dev: {'started' if started_server else 'reusing'} the Prefect server at {server.url}",
                flush=True,
            )
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                with get_client(sync_client=True) as client:
                    ensure_work_pool(client, settings.pool, "process")
                worker_started = time.time() - 1
                worker = subprocess.Popen(
                    prefect_command(
                        "worker",
                        "start",
                        "--pool",
                        settings.pool,
                        "--type",
                        "process",
                        "--name",
                        worker_name,
                    ),
                    env=child_env(home, server.api_url),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                copy_output(worker, home / WORKER_LOG)
                registered = register(settings)
            wait_for_worker(server.api_url, settings.pool, worker_name, worker, worker_started)
            print(
                ready_message(server, [r.name for r in registered], time.monotonic() - started_at),
                flush=True,
            )
            while (status := worker.poll()) is None:
                time.sleep(0.2)  # not worker.wait(): a stop signal another thread takes waits on it
            print(f"pyflow dev: the worker stopped with status {status}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if worker is not None:
                stop_tree(worker.pid, first=signal.SIGINT)
            if started_server:
                stop_server(home)
            print("pyflow dev: stopped everything it started", flush=True)


def copy_output(process: subprocess.Popen[bytes], log_path: Path) -> threading.Thread:
    """Copy a process's output to this console and to a log file (`invoke logs` reads it)."""

    def copy() -> None:
        assert process.stdout is not None
        with log_path.open("wb") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()

    thread = threading.Thread(target=copy, name="worker-output", daemon=True)
    thread.start()
    return thread


def ready_message(server: ServerState, deployments: list[str], seconds: float) -> str:
    """Tell the user where the UI is and how to trigger a run."""
    flows = sorted({name.partition("/")[0] for name in deployments})
    runs = "\n".join(f"  invoke trigger {flow}" for flow in flows)
    return (
        f"pyflow dev: ready in {seconds:.1f} s: server healthy, "
        f"{len(deployments)} deployment(s) registered, worker polling.\n"
        f"  UI: {server.url}/deployments\n"
        f"Trigger a run from the UI (Deployments, then Run), or from another terminal:\n{runs}\n"
        "See what runs with `invoke status`, the logs with `invoke logs -f`.\n"
        "Press Ctrl-C to stop the worker and everything this command started."
    )


def ui_link(api_url: str, path: str) -> str:
    """Return the UI's address of an API object, such as ``runs/flow-run/ID``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return f"{PREFECT_UI_URL.value()}/{path}"


def online_workers(client: SyncPrefectClient, pool: str) -> list[str]:
    """Return the names of the workers polling a work pool now."""
    return sorted(
        worker.name
        for worker in pool_workers(client, pool)
        if str(worker.status).upper().endswith("ONLINE")
    )


def attached_workers(api_url: str) -> list[str]:
    """Return the worker processes on this machine that poll a server now, as ``pid N``.

    The server's own record of its workers is no guide: it shows one as online for a while
    after it stopped. A worker `invoke dev` starts has the server's API in its environment.
    """
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = process.info["cmdline"] or []
        if "worker" not in command or "start" not in command:
            continue
        try:
            if process.environ().get("PREFECT_API_URL") == api_url:
                found.append(f"pid {process.pid}")
        except psutil.Error:
            continue
    return found


def pool_workers(client: SyncPrefectClient, pool: str) -> list[Worker]:
    """Return the workers a work pool has seen (none if there is no such pool yet)."""
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        return client.read_workers_for_work_pool(pool)
    except (ObjectNotFound, PrefectHTTPStatusError):
        return []


def trigger(api_url: str, deployment: str, pool: str, wait: bool) -> int:
    """Start a run of a deployment; with ``wait``, follow it to its end.

    Returns:
        The exit status: 0 once started (or, with ``wait``, completed), 1 if the run did not complete.

    Raises:
        LocalError: If the deployment does not exist, with the ones that do.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            known = ", ".join(deployment_names(client)) or "none"
            raise LocalError(
                f"there is no deployment {deployment} at {api_url} (there are: {known}): start "
                "`invoke dev`, which registers every flow of the project, or name another flow"
            ) from None
        run = client.create_flow_run_from_deployment(found.id)
        print(f"pyflow trigger: started {deployment} as '{run.name}'", flush=True)
        print(f"  {ui_link(api_url, f'runs/flow-run/{run.id}')}", flush=True)
        if not online_workers(client, found.work_pool_name or pool):
            print(
                f"pyflow trigger: no worker polls work pool '{found.work_pool_name}', so the run "
                "waits until one does: start one with `invoke dev`",
                file=sys.stderr,
            )
        if not wait:
            return 0
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                print(f"pyflow trigger: '{run.name}' ended {state.name}", flush=True)
                return 0 if state.is_completed() else 1
            time.sleep(0.5)


def flow_names(client: SyncPrefectClient) -> dict[Any, str]:
    """Return every flow's name, by its id."""
    return {flow.id: flow.name for flow in client.read_flows()}


def deployment_names(client: SyncPrefectClient, flows: dict[Any, str] | None = None) -> list[str]:
    """Return every deployment's full name, ``FLOW/DEPLOYMENT``, sorted."""
    flows = flow_names(client) if flows is None else flows
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in client.read_deployments())


def status_report(home: Path, pool: str) -> str:
    """Describe what runs: the server, the work pool and its workers, deployments, last runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = running_server(home)
    lines = []
    if server:
        uptime = (time.time() - server.started) / 60
        lines.append(
            f"server:      running at {server.url} (pid {server.pid}, up {uptime:.0f} min; "
            f"log: {home / SERVER_LOG})"
        )
    else:
        lines.append("server:      not running: start it with `invoke server` or `invoke dev`")
    try:
        api_url = api_url_for(home)
    except LocalError:
        return "\n".join(lines)
    if not server:
        lines.append(f"API:         {api_url} (PREFECT_API_URL)")
    if not is_healthy(api_url):
        lines.append(f"API:         {api_url} does not answer its health check")
        return "\n".join(lines)
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        workers = online_workers(client, pool)
        online = (
            f"{len(workers)} worker(s) online: {', '.join(workers)}"
            if workers
            else "no worker online (`invoke dev` starts one)"
        )
        lines.append(f"work pool:   {pool}: {online}")
        flows = flow_names(client)
        lines.append(
            f"deployments: {', '.join(deployment_names(client, flows)) or 'none (`invoke dev` registers them)'}"
        )
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=LAST_RUNS)
        lines.append(
            "last runs:" + ("" if runs else "   none yet (`invoke run` or `invoke trigger`)")
        )
        for run in runs:
            when = run.expected_start_time or run.created
            took = f"{run.total_run_time.total_seconds():.1f} s"
            lines.append(
                f"  {when:%Y-%m-%d %H:%M:%S}  {flows.get(run.flow_id, '?')}  '{run.name}'  "
                f"{run.state_name}  {took}  {ui_link(api_url, f'runs/flow-run/{run.id}')}"
            )
    return "\n".join(lines)


def log_files(home: Path) -> dict[str, Path]:
    """Return the logs `invoke logs` shows, by name: the server's and the worker's."""
    return {"server": home / SERVER_LOG, "worker": home / WORKER_LOG}


def show_logs(home: Path, lines: int, follow: bool, poll: float = 0.3) -> None:
    """Print the end of the server's and the worker's logs; with ``follow``, keep printing them.

    Raises:
        LocalError: If there is no log yet.
    """
    files = {name: path for name, path in log_files(home).items() if path.exists()}
    if not files:
        raise LocalError(
            f"there are no logs in {home} yet: `invoke server` or `invoke dev` writes them"
        )
    positions = {}
    for name, path in files.items():
        print(f"==> {name}: {path} <==")
        print(log_tail(path, lines) if path.stat().st_size else "  (empty)", flush=True)
        positions[name] = path.stat().st_size
    while follow:
        for name, path in log_files(home).items():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            start = positions.get(name, 0) if size >= positions.get(name, 0) else 0
            if size > start:
                with path.open("rb") as log:
                    log.seek(start)
                    chunk = log.read(size - start)
                complete = chunk.rfind(b"\n") + 1
                for line in chunk[:complete].decode(errors="replace").splitlines():
                    print(f"{name} | {line}", flush=True)
                positions[name] = start + complete
            else:
                positions[name] = start
        time.sleep(poll)


def reset(home: Path, output: Path) -> list[Path]:
    """Stop this project's server; delete its state, and pyflow's own files in the output folder.

    Only the files a run writes are deleted from the output folder (whatever PYFLOW_OUTPUT
    names may hold other things too), and the folder itself only if that leaves it empty.
    """
    from pyflow_kit import publish

    stop_server(home)
    removed = []
    if home.exists():
        shutil.rmtree(home)
        removed.append(home)
    copies: tuple[str, ...] = ()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pointer, _ = publish.Store.of(str(output)).read_pointer()
        copies = tuple(pointer["files"]) if pointer else ()  # the copies at the top
    names = (*copies, publish.RUNS_DIR, publish.POINTER_FILE, publish.LOCK_FILE)
    for name in names:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    return removed


def default_flow() -> str:
    """Return the name of the project's first flow, the one `invoke trigger` runs by default."""
    from pyflow_kit.project import flows

    return flows()[0].name


def show_own_logs() -> None:
    """Print what this module logs (such as a server moved to another port) as its own lines."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("pyflow: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one of the local loop's commands for this project."""
    args = commands.parser("pyflow_kit.local").parse_args(argv)
    home = Path(args.home).resolve()
    show_own_logs()
    try:
        settings = get_settings(server_port=getattr(args, "port", None))
        if args.command == "server" and args.stop:
            stopped = stop_server(home)
            print(
                "pyflow: stopped the Prefect server" if stopped else "pyflow: no server was running"
            )
        elif args.command == "server":
            server, started = start_server(home, settings.server_port, port_asked(settings))
            print(
                f"pyflow: {'started' if started else 'already running:'} the Prefect server at {server.url} (log: {home / SERVER_LOG})"
            )
            print(f"pyflow: use it from this shell with: export PREFECT_API_URL={server.api_url}")
        elif args.command == "reset":
            removed = reset(home, Path(settings.output or "data/output").resolve())
            print(f"pyflow: removed {', '.join(map(str, removed)) or 'nothing'}")
        elif args.command == "trigger":
            deployment = f"{args.flow or default_flow()}/{settings.env}"
            return trigger(api_url_for(home), deployment, settings.pool, bool(args.wait))
        elif args.command == "status":
            print(status_report(home, settings.pool))
        elif args.command == "logs":
            with interrupt_on_stop_signals(), contextlib.suppress(KeyboardInterrupt):
                show_logs(home, args.lines or LOG_TAIL_LINES, bool(args.follow))
        else:
            return dev(settings, home)
    except PyflowError as error:
        print(f"pyflow {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
