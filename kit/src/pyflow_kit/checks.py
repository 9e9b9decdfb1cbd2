"""Validate every flow without running it: ``python -m pyflow_kit.checks`` (`invoke check`)."""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterable

from prefect import Flow

from pyflow_kit.errors import PyflowError

FLOW_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
"""Flow names are stable kebab-case: deployments and the UI refer to flows by name."""


def check_flow(candidate: object) -> list[str]:
    """Return the problems with one flow: its name, docstring, parameters and their defaults."""
    if not isinstance(candidate, Flow):
        return [f"{candidate!r} is not a Prefect flow: decorate it with @flow"]
    name = candidate.name
    problems = []
    if not FLOW_NAME.fullmatch(name):
        problems.append(f"flow '{name}': the name must be kebab-case, such as 'daily-report'")
    if not candidate.description:
        problems.append(f"flow '{name}': add a docstring; the UI shows it as the description")
    schema = candidate.parameters.model_dump()
    for parameter in inspect.signature(candidate.fn).parameters.values():
        if parameter.annotation is inspect.Parameter.empty:
            problems.append(
                f"flow '{name}': parameter '{parameter.name}' needs a type annotation, "
                "so that Prefect can validate it"
            )
        if not schema["properties"].get(parameter.name, {}).get("description"):
            problems.append(
                f"flow '{name}': describe parameter '{parameter.name}' in the docstring's Args"
            )
    try:
        json.dumps(schema)
        candidate.validate_parameters({})
    except Exception as error:  # any failure here is the flow author's to fix
        problems.append(f"flow '{name}': its parameters do not validate: {error}")
    return problems


def check_flows(flows: Iterable[object]) -> list[str]:
    """Return the problems with a set of flows, including names used twice."""
    flows = list(flows)
    problems = [problem for candidate in flows for problem in check_flow(candidate)]
    names = [candidate.name for candidate in flows if isinstance(candidate, Flow)]
    problems += [
        f"flow name '{n}' is used twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    return problems


def main() -> int:
    """Check the settings and every flow; print what was checked or what is wrong."""
    try:
        from pyflow_kit.deploy import deployment_parameters
        from pyflow_kit.project import flows
        from pyflow_kit.settings import get_settings

        settings = get_settings()
        found = flows()
        deployment_parameters(settings, found)
    except PyflowError as error:
        print(f"pyflow check: {error}", file=sys.stderr)
        return 1
    problems = check_flows(found)
    for problem in problems:
        print(f"pyflow check: {problem}", file=sys.stderr)
    if problems:
        return 1
    for flow in found:
        parameters = ", ".join(flow.parameters.properties) or "none"
        print(f"ok: flow '{flow.name}' (parameters: {parameters})")
    print(f"ok: settings for {settings.env} (output {settings.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
