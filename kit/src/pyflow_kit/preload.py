"""What Dask schedulers and workers preload (``--preload pyflow_kit.preload``): it warms them.

The scheduler unpickles each task it is sent, and so imports the flow's modules (Prefect among
them) on a run's first task; a worker's first task imports them too, and loads every installed
Prefect collection to rebuild the run's context. On a small machine that is about a second
before a run's work starts, on every new cluster. Preloading this module does it as the
process starts instead, before it takes work: every cluster pyflow starts preloads it
(`pyflow_kit.runners.PRELOAD`).

Two more costs of each task on a worker go, both measured with py-spy on these tasks:

- Prefect makes two API clients per task on a worker, and each loads its CA file into a new
  TLS context: 45 of the 75 ms Prefect spends on a task that does nothing. Here they share one
  context per CA file (`pyflow_kit.tls.share_tls_contexts`, which `python -m pyflow` applies
  too).
- Dask's statistical profiler samples the running task 100 times a second for the dashboard's
  Profile page: about 3 % of a worker's time. It is off unless the cluster's Dask configuration
  turns it on (``distributed.worker.profile.enabled``).
"""

from __future__ import annotations

from typing import Any

import dask
import prefect.task_engine  # noqa: F401  # what a worker runs each task with: imported now, not on its first task
from prefect.plugins import load_prefect_collections

from pyflow_kit.project import find_root, flows
from pyflow_kit.tls import SharedTLS, _verified_context, share_tls_contexts

__all__ = [
    "SharedTLS",
    "_verified_context",
    "dask_setup",
    "profiler_configured",
    "share_tls_contexts",
]


def profiler_configured() -> bool:
    """Whether this process's Dask configuration (its YAML files or DASK_* variables) sets the profiler."""
    found = dask.config.collect()
    return "enabled" in found.get("distributed", {}).get("worker", {}).get("profile", {})


# imported while the worker is made: before its first task, and before it starts its profiler
if find_root():  # a cluster of no project's (a bare `dask worker`) has no flows to warm
    flows()  # the project's flows, their tasks and everything they import
share_tls_contexts()
if not profiler_configured():
    dask.config.set({"distributed.worker.profile.enabled": False})


def dask_setup(server: Any) -> None:
    """Load Prefect's collections now (Dask calls this once the scheduler or worker is made)."""
    load_prefect_collections()
