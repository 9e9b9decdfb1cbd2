"""The real flow writing to Google Cloud Storage (a real emulator), as readers see it.

Runs are `python -m pyflow --output gs://...` processes against one local Prefect server:
published, run again, run two at a time with a reader polling throughout, and killed (SIGKILL)
at each step of publishing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import SAMPLE
from pyflow_kit.publish import Store
from pyflow_kit.testing import GcsEmulator, PrefectServer

pytestmark = pytest.mark.slow

RUN_FILES = [
    "changes.csv", "files.json", "integrated.csv", "notices.csv", "rejects.csv", "summary.json",
]  # fmt: skip
"""What a published run's folder holds: its five files, and the kit's list of them."""

RUN_TIMEOUT = 300
KILLER = """
import os, signal, sys
from pyflow_kit import publish
owner = {"replace_pointer": publish.Store, "copy_to_top": publish.Store, "clean_runs": publish}
step, count = sys.argv[1], int(sys.argv[2])
original, calls = getattr(owner[step], step), []
def killer(*args, **kwargs):
    calls.append(1)
    if len(calls) == count:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner[step], step, killer)
from pyflow_kit.cli import main
sys.exit(main(sys.argv[3:]))
"""
"""Runs the flow's command line, killing itself at the ``count``-th call of one publishing step."""


@dataclass
class Runs:
    """A local Prefect server and the environment of runs that write to the emulator."""

    env: dict[str, str]

    def start(self, output: str, *sources: str, **settings: str) -> subprocess.Popen[str]:
        """Start one run of the flow on some sample states; return the process."""
        args = [
            arg
            for state in sources
            for arg in ("--source", f"{SAMPLE / state}.csv#state={state.upper()}")
        ]
        return subprocess.Popen(
            [sys.executable, "-m", "pyflow", "--output", output, *args],
            env={**self.env, **settings},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, output: str, *sources: str, **settings: str) -> str:
        """Run the flow once to the end; fail the test if it fails; return its output."""
        process = self.start(output, *sources, **settings)
        out, _ = process.communicate(timeout=RUN_TIMEOUT)
        assert process.returncode == 0, out
        return out


@pytest.fixture
def runs(gcs_emulator: GcsEmulator, prefect_server: PrefectServer) -> Runs:
    """Runs on the session's Prefect server (each would otherwise start its own)."""
    return Runs(prefect_server.env(**gcs_emulator.env))


def notices_in(store: Store, path: str) -> int:
    """Return how many notices a notices.csv holds."""
    return store.fs.cat_file(path).count(b"\n") - 1


def consistent(output: str) -> tuple[str, int]:
    """Check what a reader sees now; return the latest run and its notices.

    The pointer's run has all its files, with the sizes it records, and its summary's count is
    the number of notices in its notices.csv; the top-level summary.json's count matches the
    notices.csv it names. (Until the first run's copies land, there is no top-level file yet.)
    """
    store = Store.of(output)
    store.fs.invalidate_cache()  # as a new reader: nothing listed before
    pointer, _ = store.read_pointer()
    assert pointer is not None
    for name, entry in pointer["files"].items():
        assert store.fs.size(store.path(entry["path"])) == entry["size"], name
    summary = json.loads(store.fs.cat_file(store.path(pointer["files"]["summary.json"]["path"])))
    notices = notices_in(store, store.path(pointer["files"]["notices.csv"]["path"]))
    assert summary["rows_out"] == notices == pointer["rows_out"]
    if store.fs.exists(store.path("summary.json")):  # after the very first publish's copies
        top = json.loads(store.fs.cat_file(store.path("summary.json")))
        assert top["rows_out"] == notices_in(store, Store.of(top["notices"]).root)
    return pointer["run"], notices


def run_folders(output: str) -> dict[str, list[str]]:
    """Return each run folder of the output and the files in it."""
    store = Store.of(output)
    store.fs.invalidate_cache()
    return {
        folder.rsplit("/", 1)[-1]: sorted(
            p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)
        )
        for folder in store.fs.ls(store.path("runs"), detail=False)
    }


def test_flow_publishes_to_gcs_and_a_rerun_replaces_it(
    runs: Runs, gcs_emulator: GcsEmulator
) -> None:
    """A run publishes to gs://; the next takes the pointer and the top-level files; both stay."""
    output = f"{gcs_emulator.bucket()}/warn"
    first_out = runs.run(output, "ca", "tx")

    first, first_notices = consistent(output)
    assert (
        f"pyflow: wrote {output}/notices.csv and {output}/rejects.csv (run {first}, which latest.json names)"
        in first_out
    )
    runs.run(output, "ny")
    second, second_notices = consistent(output)
    assert second > first and second_notices != first_notices
    folders = run_folders(output)
    assert sorted(folders) == [first, second]
    assert all(files == RUN_FILES for files in folders.values())
    store = Store.of(output)
    top = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.root, detail=False))
    assert top == [
        "cache", "changes.csv", "integrated.csv", "latest.json", "notices.csv", "rejects.csv",
        "runs", "summary.json",
    ]  # fmt: skip
    runs.run(output, "ca", "tx")  # the first run's sources again: reused from the bucket's cache
    third, third_notices = consistent(output)
    assert third > second
    summary = json.loads(store.fs.cat_file(store.path("summary.json")))
    assert [entry["reused_from"] for entry in summary["sources"]] == [first, first]
    assert third_notices == first_notices
    assert store.fs.cat_file(store.path("notices.csv")) == store.fs.cat_file(
        store.path("runs", first, "notices.csv")
    )


@dataclass
class Reader:
    """Polls an output as a reader would, in the background, recording every check."""

    output: str
    checks: int = 0
    failures: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        """Check what a reader sees until told to stop."""
        while not self.stop.is_set():
            if Store.of(self.output).read_pointer()[0] is None:
                time.sleep(0.02)
                continue  # nothing published yet
            try:
                run, _ = consistent(self.output)
                self.seen.add(run)
                self.checks += 1
            except AssertionError as error:
                self.failures.append(f"mixed set: {error}")
            except FileNotFoundError as error:
                self.failures.append(f"a file the reader was pointed to is gone: {error}")
            time.sleep(0.02)


@pytest.mark.heavy
def test_concurrent_runs_never_show_a_reader_a_mixed_set(
    runs: Runs, gcs_emulator: GcsEmulator
) -> None:
    """Ten pairs of runs at once: both of each pair complete, and the reader never sees a mix."""
    output = f"{gcs_emulator.bucket()}/warn"
    reader = Reader(output)
    thread = threading.Thread(target=reader.poll, daemon=True)
    thread.start()
    try:
        for _ in range(10):
            pair = [
                runs.start(output, "ca", "tx", PYFLOW_KEEP_RUNS="3"),
                runs.start(output, "ny", PYFLOW_KEEP_RUNS="3"),
            ]
            for process in pair:
                out, _ = process.communicate(timeout=RUN_TIMEOUT)
                assert process.returncode == 0, out
    finally:
        reader.stop.set()
        thread.join()
    assert reader.failures == [], reader.failures[:5]
    assert reader.checks > 100 and len(reader.seen) > 5
    latest, _ = consistent(output)
    folders = run_folders(output)
    assert len(folders) == 3 and latest in folders, "retention keeps exactly the last 3 runs"
    assert all(files == RUN_FILES for files in folders.values())


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("step", "count"),
    [
        ("replace_pointer", 1),  # its files written, the pointer not yet replaced
        ("copy_to_top", 1),  # the pointer replaced, no copy made
        ("copy_to_top", 3),  # notices.csv and rejects.csv copied, summary.json not
        ("clean_runs", 1),  # published and its lease dropped, nothing tidied
    ],
)
def test_a_run_killed_while_publishing_leaves_readers_a_whole_run(
    runs: Runs, gcs_emulator: GcsEmulator, tmp_path: Path, step: str, count: int
) -> None:
    """SIGKILL at each step: readers still see one whole run; the next run removes the leftovers."""
    output = f"{gcs_emulator.bucket()}/warn"
    runs.run(output, "ca")
    before, _ = consistent(output)
    args = ["--output", output, "--source", f"{SAMPLE / 'ny'}.csv#state=NY"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, step, str(count), *args],
        env={**runs.env, "PYFLOW_RUN_LEASE_SECONDS": "2"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    latest, _ = consistent(output)
    crashed = next(name for name in run_folders(output) if name != before)
    assert latest == (before if step == "replace_pointer" else crashed)
    assert ("lease.json" in run_folders(output)[crashed]) == (step != "clean_runs")
    time.sleep(2.5)  # the crashed run's lease runs out
    runs.run(output, "tx")
    consistent(output)
    folders = run_folders(output)
    assert folders[crashed] == RUN_FILES, "whole files stay"
    assert all("work" not in files and "lease.json" not in files for files in folders.values())


TRANSFORM_KILLER = """
import os, signal, sys, threading
from pyflow.warn import etl
original, calls, lock = etl.transform_batch, [], threading.Lock()
def killer(*args, **kwargs):
    with lock:
        calls.append(1)
        if len(calls) == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
etl.transform_batch = killer
from pyflow_kit.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""Runs the flow's command line, killing itself as it starts reading the ``count``-th source."""


def test_flow_killed_half_way_is_resumed_reading_only_the_rest(runs: Runs, tmp_path: Path) -> None:
    """Sources a killed run finished reading are reused by the next run; only the rest are read."""
    states = ["ca", "dc", "fl", "in", "mo", "tx"]
    output = str(tmp_path / "out")
    args = [
        arg
        for state in states
        for arg in ("--source", f"{SAMPLE / state}.csv#state={state.upper()}")
    ]
    killed = subprocess.run(
        [sys.executable, "-c", TRANSFORM_KILLER, "4", "--output", output, *args],
        env={**runs.env, "PYFLOW_TASK_RUNNER": "threads", "PYFLOW_THREAD_WORKERS": "1"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    crashed = next(iter(run_folders(output)))
    runs.run(output, *states)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [entry["reused_from"] for entry in summary["sources"]] == [crashed] * 3 + [""] * 3
    fresh = tmp_path / "fresh"
    runs.run(str(fresh), *states)
    assert (tmp_path / "out" / "notices.csv").read_bytes() == (fresh / "notices.csv").read_bytes()
    assert (tmp_path / "out" / "rejects.csv").read_bytes() == (fresh / "rejects.csv").read_bytes()
