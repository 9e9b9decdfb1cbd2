"""What Dask schedulers and workers preload (``--preload pyflow.preload``): it warms them.

The scheduler unpickles each task it is sent, and so imports the flow's modules (Prefect among
them) on a run's first task; a worker's first task imports them too, and loads every installed
Prefect collection to rebuild the run's context. On a small machine that is about a second
before a run's work starts, on every new cluster. Preloading this module does it as the
process starts instead, before it takes work: every cluster pyflow starts preloads it
(`pyflow.runners.PRELOAD`).
"""

from __future__ import annotations

from typing import Any

import prefect.task_engine  # noqa: F401  (what a worker runs each task with)
from prefect.plugins import load_prefect_collections

import pyflow.flow  # noqa: F401  (the flows, their tasks and everything they import)


def dask_setup(server: Any) -> None:
    """Load Prefect's collections now (Dask calls this once the scheduler or worker is made)."""
    load_prefect_collections()
