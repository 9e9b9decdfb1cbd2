"""The project's flows, each on the task runner the settings choose: what deployments run.

A deployment's entrypoint is ``pyflow_kit.flows:NAME`` (the flow's name, ``-`` as ``_``): the
process that runs it (a worker's flow run, a Kubernetes Job) gets the flow from the project,
with the task runner its own settings choose (``PYFLOW_TASK_RUNNER``, ...). So every flow runs
on Dask in production, a new one included, without a word about runners in its code.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow


def entrypoint(flow: Flow[Any, Any]) -> str:
    """Return the entrypoint that hands out a flow on the configured runner."""
    return f"{__name__}:{flow.name.replace('-', '_')}"


def with_configured_runner(flow: Flow[Any, Any]) -> Flow[Any, Any]:
    """Return the flow on the task runner this process's settings choose."""
    from pyflow_kit.runners import build_task_runner
    from pyflow_kit.settings import get_settings

    return flow.with_options(task_runner=build_task_runner(get_settings()))


def __getattr__(name: str) -> Flow[Any, Any]:
    """Return the project's flow of this name, on the configured task runner."""
    if name.startswith("__"):  # Python's own probes, such as __path__ on `from ... import`
        raise AttributeError(name)
    from pyflow_kit.project import found_flows

    for found in found_flows():
        if found.attribute == name:
            return with_configured_runner(found.flow)
    raise AttributeError(f"the project has no flow named '{name.replace('_', '-')}'")
