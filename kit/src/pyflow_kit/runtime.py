"""Running a flow from the command line: checks first, readable logs, one error per failure."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from pyflow_kit.errors import LocalError, PyflowError, SettingsError
from pyflow_kit.runners import build_task_runner
from pyflow_kit.server import ServerState
from pyflow_kit.settings import Settings

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import State

    from pyflow_kit.project import FoundFlow

logger = logging.getLogger(__name__)

NOISY_LOGGERS = ("distributed", "bokeh", "tornado")
"""Libraries whose INFO lines drown the flow's own; the CLI shows only their warnings."""


class HideExpectedTracebacks(logging.Filter):
    """Drop the traceback from log records about a `PyflowError`: its message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record; strip its traceback when the error is an expected one."""
        if record.exc_info and isinstance(record.exc_info[1], PyflowError):
            record.exc_info = None
            record.exc_text = None
        return True


class HideDrainNotices(logging.Filter):
    """Drop Prefect's "Still processing items" warning, printed when a short run ends.

    Its services print it while they send the run's last events at exit, which they then do;
    nothing is lost and there is nothing for the user to do.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but that one."""
        return not record.getMessage().startswith("Still processing items")


def project_package() -> str:
    """Return the package of the project's flows, whose INFO lines the command line shows."""
    from pyflow_kit.project import current

    try:
        return current().package
    except PyflowError:
        return "__main__"


def quiet_logging() -> None:
    """Set up Prefect's logging, hide tracebacks of expected errors, and quiet Dask's INFO lines.

    Dask worker processes read ``DASK_LOGGING__DISTRIBUTED`` when they start, so the variable is
    set here, for the processes this one starts.
    """
    import prefect.main  # noqa: F401  (importing it configures Prefect's logging)

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for name in ("pyflow_kit", project_package()):
        logging.getLogger(name).setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        for kind in (HideExpectedTracebacks, HideDrainNotices):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())


@contextmanager
def _using_api(api_url: str) -> Iterator[str]:
    """Point this process, and every process it starts meanwhile, at one Prefect API."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
            APILogWorker.drain_all(timeout=5)
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def _project_server(home: Path, keep_port: int | None, move: bool) -> ServerState | None:
    """Return this project's running server; with ``keep_port``, start it there if it is not running.

    With ``move`` (the port was asked for), a server running on another port is started again
    on ``keep_port``. A server that cannot start (its port is taken by another program) is
    reported as a warning and the run falls back to a temporary server.
    """
    from pyflow_kit.local import start_server
    from pyflow_kit.server import running_server

    running = running_server(home)
    if running and (keep_port is None or running.port == keep_port or not move):
        logger.info("Using this project's Prefect server at %s", running.url)
        return running
    if keep_port is None:
        return None
    try:
        started, _ = start_server(home, keep_port, move)
    except LocalError as error:
        logger.warning(
            "This project's Prefect server cannot start (%s), so this run uses a temporary one, "
            "whose links stop working when the run ends",
            error,
        )
        return None
    logger.info(
        "Started this project's Prefect server at %s in the background: the next runs reuse it, "
        "and its links keep working (`invoke server --stop` stops it)",
        started.url,
    )
    return started


@contextmanager
def prefect_api(keep_port: int | None = None, move: bool = False) -> Iterator[str]:
    """Use the configured Prefect API, this project's server, or a temporary one.

    Prefect would start a temporary server by itself, but one per process: every Dask worker
    process would start its own. This starts one, gives its URL to every process started inside
    the block, and stops it only after the run's logs have been sent to it. The server's own
    output goes to ``temporary-server.log`` in Prefect's home, not to the console, and it stops
    by itself if this process dies without stopping it (killed, say). When this project's
    server runs (`invoke server`, `invoke dev`), the run uses it, and shows in its UI; with
    ``keep_port``, it is started on that port if it does not run (`invoke run`), and with
    ``move`` too, moved there if it runs on another port (`invoke run --port`). Nothing of
    Prefect's server is imported here: a run on a running server does not pay for it.

    Yields:
        The API URL in use.

    Raises:
        PyflowError: If the temporary server does not start, with the end of its log.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    home = Path(PREFECT_HOME.value()).expanduser().resolve()
    project = _project_server(home, keep_port, move)
    if project:
        with _using_api(project.api_url) as api_url:
            yield api_url
        return
    with _temporary_server(home) as server, _using_api(server.api_url) as api_url:
        yield api_url


def temporary_startup_timeout() -> float:
    """Return how long a temporary server may take to start, in seconds.

    Prefect's ephemeral startup timeout (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``)
    when it is set longer, else the project server's: Prefect's default of 20 s is about what a
    new server's database set-up alone takes on a busy two-core machine.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from pyflow_kit.local import STARTUP_TIMEOUT

    return max(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), STARTUP_TIMEOUT)


@contextmanager
def _temporary_server(home: Path) -> Iterator[ServerState]:
    """Run a temporary server on a free loopback port for the block; its log goes to ``home``.

    Raises:
        PyflowError: If it does not start within `temporary_startup_timeout`.
    """
    import subprocess

    from pyflow_kit.local import free_port, stop_tree, wait_until_healthy
    from pyflow_kit.server import ServerState, temporary_server_command, temporary_server_env

    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "temporary-server.log"
    port = free_port()
    logger.info("Starting a temporary Prefect server (its log: %s)", log_path)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            temporary_server_command(port),
            env=temporary_server_env(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        state = ServerState(process.pid, port)
        try:
            wait_until_healthy(state, process, log_path, temporary_startup_timeout())
        except LocalError as error:
            raise PyflowError(f"Prefect's temporary server did not start: {error}") from None
        yield state
    finally:
        stop_tree(process.pid, timeout=5.0)


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Run flows in this process without heartbeats.

    Heartbeats tell a server that a worker's flow run has crashed; a run started from the
    command line reports its own end. Prefect's heartbeat thread sleeps in one-second steps and
    holds every run's end until its step is over: up to a second per run, for nothing here.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@runtime_checkable
class Reportable(Protocol):
    """A flow's result that describes itself for the command line (the example's summary does)."""

    def report_lines(self) -> list[str]:
        """Return what the command line prints about the run, one line each."""
        ...


class RunFailed(PyflowError):
    """A flow run ended Failed but returned a result: what it did before it failed."""

    def __init__(self, result: object, message: str) -> None:
        super().__init__(message)
        self.result = result


def find_flow(name: str | None = None) -> FoundFlow:
    """Return the project's flow of this name (``my_flow`` finds ``my-flow``).

    Args:
        name: The flow's name; none for the project's default flow.

    Raises:
        SettingsError: If there is none, with the names there are.
    """
    from pyflow_kit.project import current, found_flows

    found = found_flows()
    if not found:
        raise SettingsError(
            f"the project has no flow yet (no {current().package}/NAME/flow.py): scaffold one "
            "with `invoke new-flow NAME`"
        )
    if name is None:
        return found[0]
    wanted = name.replace("_", "-")
    for candidate in found:
        if candidate.flow.name == wanted:
            return candidate
    names = ", ".join(candidate.flow.name for candidate in found)
    raise SettingsError(
        f"there is no flow '{name}' in the project; there are: {names}. Scaffold a new one with "
        "`invoke new-flow NAME`"
    )


def check_before_run(found: FoundFlow, parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate a run's parameters, then run the flow's own check (``check_parameters``) if any.

    Returns:
        The validated parameters, with the flow's defaults filled in.

    Raises:
        SettingsError: If the parameters do not fit the flow's signature.
        PyflowError: If the flow's check refuses them.
    """
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    flow = found.flow
    flows_logger = logging.getLogger("prefect.flows")
    flows_logger.disabled = True  # it logs the same error at ERROR level before raising it
    try:
        validated = flow.validate_parameters(parameters)
    except (ParameterTypeError, SignatureMismatchError) as error:
        raise SettingsError(f"the parameters of flow '{flow.name}' do not fit: {error}") from None
    finally:
        flows_logger.disabled = False
    if found.check is not None:
        found.check(validated)
    return validated


def run_flow(
    flow: Flow[Any, Any], parameters: dict[str, Any], settings: Settings, keep_server: bool = False
) -> Any:
    """Run a flow once, in this process, with the task runner the settings choose; return its result.

    Args:
        flow: The flow to run.
        parameters: Its parameters; the ones left out take the flow's defaults.
        settings: The settings: task runner, server port.
        keep_server: Run on this project's server, starting it in the background if needed.

    Raises:
        RunFailed: If the run ended Failed with a result (such as the example's summary when
            some sources failed and the others were published).
        PyflowError: The run's own error if it failed on bad input, else one naming its state.
    """
    from pyflow_kit.local import port_asked
    from pyflow_kit.tls import share_tls_contexts

    share_tls_contexts()  # the run's API clients load their CA file once, not once each
    chosen = flow.with_options(task_runner=build_task_runner(settings))
    keep_port = settings.server_port if keep_server else None
    with prefect_api(keep_port, port_asked(settings)), without_heartbeats():
        state = cast("State[Any]", chosen(**parameters, return_state=True))
    if state.is_completed():
        return state.result()
    result = state.result(raise_on_failure=False)
    if isinstance(result, PyflowError):
        raise result
    if isinstance(result, BaseException) or result is None:
        raise PyflowError(f"the run of flow '{flow.name}' ended {state.name}: {state.message}")
    raise RunFailed(result, state.message or f"the run of flow '{flow.name}' failed")
