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
  context per CA file (`share_tls_contexts`).
- Dask's statistical profiler samples the running task 100 times a second for the dashboard's
  Profile page: about 3 % of a worker's time. It is off unless the cluster's Dask configuration
  turns it on (``distributed.worker.profile.enabled``).
"""

from __future__ import annotations

import functools
import ssl
import types
from typing import Any

import dask
import prefect.client.orchestration
import prefect.task_engine  # what a worker runs each task with: imported now, not on its first task
from prefect.plugins import load_prefect_collections

from pyflow_kit.project import find_root, flows


class SharedTLS(types.ModuleType):
    """The `ssl` module as Prefect's client module sees it, with one TLS context per CA file.

    Prefect hands a context made for a CA file to httpx as it is, and httpx sets only its ALPN
    protocols on it, the same for every Prefect client of a process (one
    ``PREFECT_API_ENABLE_HTTP2`` setting): so one context serves every client. A call without a
    CA file (Prefect's insecure option, which changes its context) still gets a new one.
    """

    def __init__(self) -> None:
        """Stand in for `ssl` under its own name."""
        super().__init__(ssl.__name__, ssl.__doc__)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the `ssl` module's own."""
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        """Return the context made for these arguments before, if it has a CA file to trust."""
        if cafile is None:
            return ssl.create_default_context(purpose, capath=capath, cadata=cadata)
        return _verified_context(purpose, cafile, capath, cadata)


@functools.cache
def _verified_context(
    purpose: ssl.Purpose, cafile: str, capath: str | None, cadata: str | bytes | None
) -> ssl.SSLContext:
    """Make a verifying TLS context for a CA file, once per set of arguments."""
    return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def share_tls_contexts() -> bool:
    """Make Prefect's API clients in this process share one TLS context per CA file.

    What PrefectHQ/prefect#19106 proposes upstream. Returns whether it applied: not if a Prefect
    release no longer makes its contexts in `prefect.client.orchestration`.
    """
    module = prefect.client.orchestration
    if getattr(module, "ssl", None) is not ssl:
        return isinstance(getattr(module, "ssl", None), SharedTLS)
    module.ssl = SharedTLS()  # type: ignore[attr-defined]
    return True


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
