"""Command line: ``python -m pyflow`` runs the example flow once, in this process."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from pyflow.errors import PyflowError, SettingsError, SourcesFailed

if TYPE_CHECKING:
    from pyflow.warn.etl import Summary

EXIT_FAILED = 1
EXIT_USAGE = 2
EXAMPLE = "warn-notices"
"""The example flow, which `python -m pyflow` runs unless told another with --flow."""
RESULT_CHARS = 200
"""How much of another flow's result is printed."""


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
            "Consolidate WARN Act layoff notices from many sources into notices.csv, "
            "rejects.csv and summary.json. Options override the PYFLOW_ settings (see .env.example)."
        ),
    )
    parser.add_argument(
        "--source",
        dest="sources",
        action="append",
        metavar="LOCATION[#key=value,...]",
        help=(
            "a file, URL or fsspec URL to read, with constants for fields the file lacks, "
            "such as data/ca.csv#state=CA; repeat for more (default: PYFLOW_SOURCES, "
            "else the bundled sample)"
        ),
    )
    parser.add_argument(
        "--output",
        metavar="DIR_OR_URL",
        help="folder or fsspec URL to write to (default: PYFLOW_OUTPUT, else data/output)",
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
        "--strict",
        action="store_true",
        default=None,
        help=(
            "all or nothing: if any source cannot be read or mapped, fail before writing "
            "anything (default: PYFLOW_STRICT, else publish the other sources and exit 1)"
        ),
    )
    parser.add_argument(
        "--flow",
        metavar="NAME",
        help="run another flow of FLOWS (pyflow/flow.py) with its default parameters and any "
        "--param (default: warn-notices, the example, with the options above)",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter of the --flow, its value as JSON or else as text; repeat for more",
    )
    parser.add_argument(
        "--keep-server",
        action="store_true",
        help="run on this project's Prefect server, starting it in the background if it is not "
        "running, so that the next runs start at once and the run's links keep working "
        "(default: use it if it runs, else a temporary server that stops with the run)",
    )
    parser.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="use a running Dask scheduler, such as tcp://127.0.0.1:8786 (default: PYFLOW_DASK_ADDRESS)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once with the options given; print a summary or one error message.

    Returns:
        The exit status: 0 on success, 1 if the run failed, 2 for invalid options or settings.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from pyflow import runtime
    from pyflow.config import get_settings

    if args.flow and args.flow.replace("_", "-") != EXAMPLE:
        return run_other(args, parser)
    if args.params:
        parser.error(f"--param is for other flows: {EXAMPLE} takes the options above")
    try:
        settings = get_settings(
            sources=args.sources,
            output=args.output,
            task_runner=args.runner,
            dask_workers=args.workers,
            dask_address=args.dask_address,
            strict=args.strict,
        )
        runtime.preflight(settings)
        runtime.quiet_logging()
        summary = runtime.run_flow(settings, keep_server=args.keep_server)
    except SettingsError as error:
        print(f"pyflow: invalid settings: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SourcesFailed as error:
        failed_run = cast("Summary", error.summary)
        report(failed_run)
        failed = failed_run.failures
        print(
            f"pyflow: {len(failed)} of {len(failed_run.sources)} sources failed; the others "
            "were published:",
            file=sys.stderr,
        )
        for entry in failed:
            print(f"  - {entry['error']}", file=sys.stderr)
        return EXIT_FAILED
    except PyflowError as error:
        print(f"pyflow: the run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    report(summary)
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


def run_other(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a flow other than the example with its parameters; print its result.

    Returns:
        The exit status: 0 on success, 1 if the run failed, 2 for invalid options.
    """
    from pyflow import runtime
    from pyflow.config import get_settings

    example_only = [
        option
        for option, value in (
            ("--source", args.sources),
            ("--output", args.output),
            ("--strict", args.strict),
            ("--runner", args.runner),
            ("--workers", args.workers),
            ("--dask-address", args.dask_address),
        )
        if value
    ]
    if example_only:
        parser.error(
            f"{', '.join(example_only)}: options of {EXAMPLE}; pass --param NAME=VALUE to "
            f"flow '{args.flow}'"
        )
    try:
        parameters = parse_params(args.params)
    except ValueError as error:
        parser.error(str(error))
    try:
        flow = runtime.find_flow(args.flow)
        settings = get_settings()
        runtime.quiet_logging()
        result = runtime.run_any(flow, parameters, settings, keep_server=args.keep_server)
    except SettingsError as error:
        print(f"pyflow: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PyflowError as error:
        print(f"pyflow: the run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    shown = repr(result)
    print(f"pyflow: flow '{flow.name}' completed; it returned {shown[:RESULT_CHARS]}")
    return 0


def report(summary: Summary) -> None:
    """Print a run's counts and where its outputs are."""
    print(
        f"pyflow: read {summary.rows_in:,} rows from {len(summary.sources)} sources: "
        f"{summary.rows_out:,} notices, {summary.rows_rejected:,} rejected, "
        f"{summary.rows_duplicate:,} duplicates dropped."
    )
    output = summary.notices.rsplit("/", 3)[0]
    from pyflow.publish import Store

    latest, _ = Store.of(output).read_pointer()
    if latest is None or latest["run"] == summary.run:
        print(
            f"pyflow: wrote {output}/notices.csv and {output}/rejects.csv "
            f"(run {summary.run}, which latest.json names)"
        )
    else:
        print(
            f"pyflow: wrote {summary.notices} and {summary.rejects}; run {latest['run']}, which "
            "started later, was published first, and latest.json names it"
        )


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
