"""Command line: ``python -m pyflow`` runs a flow of FLOWS once (the first, the example), here."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pyflow.errors import PyflowError, SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2
RESULT_CHARS = 200
"""How much of a result that does not report itself is printed."""


def positive(text: str) -> int:
    """Parse a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pyflow",
        description=(
            "Run a flow of FLOWS (pyflow/flow.py) once, in this process: the first one unless "
            "--flow names another (the example, warn-notices, consolidates WARN Act layoff "
            "notices into notices.csv, rejects.csv and summary.json). --output, --runner, "
            "--workers and --dask-address override the PYFLOW_ settings (see .env.example); "
            "--param, --source and --strict are the flow's parameters."
        ),
    )
    parser.add_argument(
        "--flow",
        metavar="NAME",
        help="the flow of FLOWS (pyflow/flow.py) to run (default: the first, warn-notices)",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter of the flow, its value as JSON or else as text, such as "
        "partition_bytes=0; repeat for more (default: the flow's defaults)",
    )
    parser.add_argument(
        "--source",
        dest="sources",
        action="append",
        metavar="LOCATION[#key=value,...]",
        help=(
            "the flow's sources parameter, one item each: a file, URL or fsspec URL to read, with "
            "constants for fields the file lacks, such as data/ca.csv#state=CA; repeat for more "
            "(default: the flow's, for the example the bundled sample)"
        ),
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help=(
            "the flow's strict parameter: all or nothing, if any source cannot be read or mapped, "
            "fail before writing anything (default: the flow's, for the example publish the "
            "other sources and exit 1)"
        ),
    )
    parser.add_argument(
        "--output",
        metavar="DIR_OR_URL",
        help="folder or fsspec URL to write to, for a flow with an output parameter "
        "(default: PYFLOW_OUTPUT, else data/output)",
    )
    parser.add_argument(
        "--runner",
        choices=["threads", "dask"],
        help="task runner (default: PYFLOW_TASK_RUNNER, else threads in development)",
    )
    parser.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="worker processes of a local Dask cluster (default: PYFLOW_DASK_WORKERS, else CPUs)",
    )
    parser.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="use a running Dask scheduler, such as tcp://127.0.0.1:8786 (default: PYFLOW_DASK_ADDRESS)",
    )
    parser.add_argument(
        "--port",
        type=positive,
        metavar="N",
        help="with --keep-server: the port of this project's server, which is started (or moved) "
        "there (default: PYFLOW_SERVER_PORT, else the port it runs on, else 4200)",
    )
    parser.add_argument(
        "--keep-server",
        action="store_true",
        help="run on this project's Prefect server, starting it in the background if it is not "
        "running, so that the next runs start at once and the run's links keep working "
        "(default: use it if it runs, else a temporary server that stops with the run)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once with the options given; print what it did or one error message.

    Returns:
        The exit status: 0 on success, 1 if the run failed, 2 for invalid options or settings.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port and not args.keep_server:
        parser.error(
            "--port is the port of this project's server, which only --keep-server uses: add "
            "--keep-server, or leave out --port (a temporary server takes a free port)"
        )
    from pyflow import runtime
    from pyflow.config import get_settings

    try:
        parameters = parse_params(args.params)
    except ValueError as error:
        parser.error(str(error))
    try:
        settings = get_settings(
            output=args.output,
            task_runner=args.runner,
            dask_workers=args.workers,
            dask_address=args.dask_address,
            server_port=args.port,
        )
    except SettingsError as error:
        print(f"pyflow: invalid settings: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        flow = runtime.find_flow(args.flow)
        shorthands = {"sources": args.sources, "strict": args.strict, "output": args.output}
        for name, value in shorthands.items():
            if value is not None and name not in flow.parameters.properties:
                parser.error(
                    f"--{name.removesuffix('s')}: flow '{flow.name}' has no parameter '{name}'; "
                    "pass its own with --param NAME=VALUE"
                )
        parameters.update({k: v for k, v in shorthands.items() if v is not None})
        if "output" in flow.parameters.properties:
            parameters.setdefault("output", settings.require_output())
        parameters = runtime.check_before_run(flow, parameters)
        runtime.quiet_logging()
        result = runtime.run_flow(flow, parameters, settings, keep_server=args.keep_server)
    except SettingsError as error:
        print(f"pyflow: {error}", file=sys.stderr)
        return EXIT_USAGE
    except runtime.RunFailed as error:
        if isinstance(error.result, runtime.Reportable):
            report(error.result, flow.name)
        print(f"pyflow: the run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except PyflowError as error:
        print(f"pyflow: the run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    report(result, flow.name)
    return 0


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``NAME=VALUE`` pairs into parameters: each value as JSON, else as text.

    Raises:
        ValueError: If a pair has no ``=`` or no name.
    """
    parameters: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--param '{pair}' is not NAME=VALUE, such as count=3")
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    return parameters


def report(result: Any, flow_name: str) -> None:
    """Print what a run did: the lines its result reports, else the start of its value."""
    from pyflow.runtime import Reportable

    if isinstance(result, Reportable):
        for line in result.report_lines():
            print(f"pyflow: {line}")
        return
    print(f"pyflow: flow '{flow_name}' completed; it returned {repr(result)[:RESULT_CHARS]}")


def exit_now(code: int) -> None:
    """Exit once Prefect's exit handlers have sent the run's last logs and events.

    A normal interpreter exit then spends most of a second tearing down native libraries
    (the engine's thread pools among them) for nothing: the process is ending anyway.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    logging.captureWarnings(True)
    exit_now(main())
