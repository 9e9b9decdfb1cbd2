"""The flow on real Dask clusters: a scheduler and worker processes on loopback."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect_dask import DaskTaskRunner

from conftest import SAMPLE
from pyflow.warn import bench, etl
from pyflow.warn.flow import warn_notices
from pyflow_kit.runners import build_task_runner
from pyflow_kit.testing import HttpSources

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.usefixtures("prefect_server")]


@dataclass
class DaskCluster:
    """A real scheduler and worker processes, started by the test."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]


def worker_env() -> dict[str, str]:
    """Return the environment of the Dask processes: the test's Prefect API, quiet logs."""
    from prefect.settings import PREFECT_API_URL

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYFLOW_")},
        "PYFLOW_PROJECT": os.environ["PYFLOW_PROJECT"],
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "DASK_LOGGING__DISTRIBUTED": "error",
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill a process and its children at once (SIGKILL), as a lost machine would go."""
    try:
        family = [
            psutil.Process(process.pid),
            *psutil.Process(process.pid).children(recursive=True),
        ]
    except psutil.NoSuchProcess:
        return
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=10)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    """Start `dask scheduler` and two `dask worker` processes on loopback; stop them after."""
    address, processes = bench.start_cluster(2, tmp_path / "dask.log", worker_env())
    cluster = DaskCluster(address, processes[0], processes[1:])
    yield cluster
    for process in [*cluster.workers, cluster.scheduler]:
        stop(process)


def outputs(folder: Path) -> tuple[bytes, bytes]:
    """Return the bytes of notices.csv and rejects.csv."""
    return (folder / etl.NOTICES_FILE).read_bytes(), (folder / etl.REJECTS_FILE).read_bytes()


def test_scheduler_and_workers_are_warm_before_the_first_task(dask_cluster: DaskCluster) -> None:
    """The preload has imported the flows and loaded Prefect's collections before any task."""
    from distributed import Client

    def warm() -> tuple[bool, bool]:
        from prefect._internal.plugins import collections

        return "pyflow.warn.flow" in sys.modules, collections._collections is not None

    with Client(dask_cluster.address) as client:
        assert list(client.run(warm).values()) == [(True, True), (True, True)]
        assert client.run_on_scheduler(warm) == (True, True)


def test_preload_cuts_each_tasks_costs_on_the_workers(dask_cluster: DaskCluster) -> None:
    """Workers share one TLS context per CA file and run no profiler; their heartbeat still runs."""
    from distributed import Client

    def costs(dask_worker: Any) -> tuple[str, list[str]]:
        import prefect.client.orchestration

        return type(prefect.client.orchestration.ssl).__name__, sorted(
            dask_worker.periodic_callbacks
        )

    with Client(dask_cluster.address) as client:
        for tls, running in client.run(costs).values():
            assert tls == "SharedTLS"
            assert "heartbeat" in running
            assert "profile" not in running


def test_flow_on_a_running_cluster_matches_the_thread_runner(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """The sample run on two Dask worker processes writes the same bytes as on threads."""
    on_threads = warn_notices(output=str(tmp_path / "threads"))
    on_dask = warn_notices.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))(
        output=str(tmp_path / "dask")
    )
    assert outputs(tmp_path / "dask") == outputs(tmp_path / "threads")
    assert (on_dask.rows_in, on_dask.rows_out) == (on_threads.rows_in, on_threads.rows_out)


def test_flow_spreads_a_split_source_over_the_workers_with_the_same_output(
    dask_cluster: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large source split into partitions gives the same output as unsplit, on Dask."""
    sources = [str(s) for s in bench.generate(tmp_path / "in", 20_000, 2)]
    warn_notices(sources=sources, output=str(tmp_path / "whole"))
    flow = warn_notices.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    flow(sources=sources, output=str(tmp_path / "split"), partition_bytes=100_000)
    assert outputs(tmp_path / "split") == outputs(tmp_path / "whole")


def test_flow_survives_losing_a_worker(
    dask_cluster: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killing a worker process mid-run: Dask reschedules its tasks and the output is unchanged."""
    from distributed import Client

    sources = [str(s) for s in bench.generate(tmp_path / "in", 200_000, 4)]
    warn_notices(sources=sources, output=str(tmp_path / "expected"))
    flow = warn_notices.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    result: dict[str, object] = {}
    run = threading.Thread(  # in this context: the session's server, not a temporary one
        target=contextvars.copy_context().run,
        args=(
            lambda: result.update(
                summary=flow(
                    sources=sources, output=str(tmp_path / "dask"), partition_bytes=1_000_000
                )
            ),
        ),
        daemon=True,
    )
    run.start()
    with Client(dask_cluster.address, timeout=30) as client:
        deadline = time.monotonic() + 120
        while not any(client.processing().values()):
            assert time.monotonic() < deadline, "no task ever started"
            time.sleep(0.05)
        busy = [w for w, tasks in client.processing().items() if tasks]
        worker_pids = client.run(os.getpid, workers=busy[:1])
    killed = next(iter(worker_pids.values()))
    owner = next(
        p
        for p in dask_cluster.workers
        if killed in {p.pid, *(c.pid for c in psutil.Process(p.pid).children(recursive=True))}
    )
    assert "summary" not in result, "the run ended before a worker could be lost"
    stop(owner)
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    run.join(timeout=300)
    assert "summary" in result, "the run did not finish"
    assert outputs(tmp_path / "dask") == outputs(tmp_path / "expected")


def test_flow_reports_a_source_that_keeps_failing_and_publishes_the_others(
    dask_cluster: DaskCluster,
    tmp_path: Path,
    http_sources: HttpSources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A source that always fails is retried, reported, and the others published (Failed)."""
    url = http_sources.add("/down.csv", failures=10**6, status=503)
    flow = warn_notices.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    state = flow(
        sources=[url, f"{SAMPLE / 'tx.csv'}#state=TX"],
        output=str(tmp_path / "out"),
        fetch_backoff=0.05,
        fetch_retries=1,
        return_state=True,
    )
    assert state.is_failed()
    assert "answered HTTP 503" in state.message
    assert http_sources.routes["/down.csv"].hits == 2
    assert state.result(raise_on_failure=False).rows_out == 30


def test_local_cluster_workers_run_the_engine_on_their_own_threads() -> None:
    """A local cluster's workers run Polars on their Dask threads, not on every CPU each."""
    from distributed import Client, LocalCluster

    from pyflow_kit.settings import get_settings

    runner = build_task_runner(get_settings(task_runner="dask", dask_workers=2, dask_threads=1))
    with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        sizes = client.run(lambda: __import__("polars").thread_pool_size())
    assert list(sizes.values()) == [1, 1]
