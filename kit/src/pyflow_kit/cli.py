"""The command line ``python -m pyflow`` (`invoke run`): run one of the project's flows once, here.

Its options are `pyflow_kit.commands.RUN`'s. ``--source``, ``--strict`` and ``--output`` fill the
flow's parameters of those names (``sources``, ``strict``, ``output``) where it has them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pyflow_kit import commands
from pyflow_kit.errors import PyflowError, SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2
RESULT_CHARS = 200
"""How much of a result that does not report itself is printed."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once with the options given; print what it did or one error message.

    Returns:
        The exit status: 0 on success, 1 if the run failed, 2 for invalid options or settings.
    """
    parser = commands.parser("pyflow_kit.cli")
    parser.prog = "python -m pyflow"
    args = parser.parse_args(argv)
    if args.port and not args.keep_server:
        parser.error(
            "--port is the port of this project's server, which only --keep-server uses: add "
            "--keep-server, or leave out --port (a temporary server takes a free port)"
        )
    from pyflow_kit import runtime
    from pyflow_kit.settings import get_settings

    try:
        parameters = parse_params(args.param)
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
        found = runtime.find_flow(args.flow)
        flow = found.flow
        shorthands = {"sources": args.source or None, "strict": args.strict, "output": args.output}
        for name, value in shorthands.items():
            if value is not None and name not in flow.parameters.properties:
                parser.error(
                    f"--{name.removesuffix('s')}: flow '{flow.name}' has no parameter '{name}'; "
                    "pass its own with --param NAME=VALUE"
                )
        parameters.update({k: v for k, v in shorthands.items() if v is not None})
        if "output" in flow.parameters.properties:
            parameters.setdefault("output", settings.require_output())
        parameters = runtime.check_before_run(found, parameters)
        runtime.quiet_logging()
        result = runtime.run_flow(flow, parameters, settings, keep_server=bool(args.keep_server))
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
    from pyflow_kit.runtime import Reportable

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


def run() -> None:
    """Run the command line and exit with its status (the ``pyflow`` script, `python -m pyflow`)."""
    logging.captureWarnings(True)
    exit_now(main())


if __name__ == "__main__":
    run()
