"""Publishing a run's outputs so that readers only ever see whole runs, on any fsspec store.

An output location holds::

    runs/<run id>/notices.csv, rejects.csv, summary.json   one folder per run, never changed after
    runs/<run id>/work/, lease.json                        only while the run runs
    latest.json                                            the pointer: the published run, its files
    notices.csv, rejects.csv, summary.json                 copies of the published run's files

A run writes its files into its own folder, then replaces ``latest.json`` in one write, which
names the run and its files (with their sizes, and on Google Cloud Storage their generations).
Readers follow the pointer: a run's files never change once written, so what it names is always
one complete run. Two runs racing to publish compare-and-swap the pointer (a generation
precondition on GCS, a lock file on a local disk), and the run that started last wins; the
other's folder is kept. The copies at the top are for people who just want the file: each is a
whole file, and ``summary.json`` names the run's own ``notices.csv`` under ``runs/``.

A running run renews its ``lease.json``; a folder whose lease has run out belongs to a run that
crashed, and the next run to end removes its leftovers. Only the last ``keep`` complete runs
are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pyflow.errors import OutputError

logger = logging.getLogger("pyflow")

RUNS_DIR = "runs"
POINTER_FILE = "latest.json"
LEASE_FILE = "lease.json"
WORK_DIR = "work"
LOCK_FILE = ".latest.lock"
OUTPUT_FILES = ("notices.csv", "rejects.csv", "summary.json")
"""A run's files, in the order they are copied to the top: data first, the summary last."""
PUBLISH_ATTEMPTS = 20
"""How often a run tries to swap the pointer while other runs keep swapping it first."""


class PointerMoved(Exception):
    """Another run replaced the pointer between our read and our write."""


def new_run_id(now: datetime | None = None) -> str:
    """Return a run's id: its start time (so ids sort by start) and a random suffix."""
    return f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with forward slashes."""
    return "/".join([base.rstrip("/"), *parts])


def run_dir(output: str, run_id: str) -> str:
    """Return the folder of one run's files."""
    return join(output, RUNS_DIR, run_id)


def work_dir(run_folder: str, shared: bool) -> str:
    """Return the folder of a run's intermediate files, removed when it ends.

    They stay on this machine's disk, where the engine reads them fastest, unless the run's
    tasks run on other machines (a Dask cluster of its own): then they must be ``shared``, and
    go in the run's folder in the output location.
    """
    if shared:
        return join(run_folder, WORK_DIR)
    return tempfile.mkdtemp(prefix=f"pyflow-{run_folder.rstrip('/').rsplit('/', 1)[-1]}-")


@dataclass(frozen=True)
class Store:
    """An output location and the file system that holds it."""

    fs: AbstractFileSystem
    root: str

    @classmethod
    def of(cls, output: str) -> Store:
        """Return the store of an output location (a folder or fsspec URL)."""
        fs, root = url_to_fs(output)
        return cls(fs, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        """Whether this is a local disk."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_gcs(self) -> bool:
        """Whether this is Google Cloud Storage (or its emulator)."""
        return "gs" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def path(self, *parts: str) -> str:
        """Return a path inside the output location."""
        return join(self.root, *parts)

    @contextlib.contextmanager
    def pointer_lock(self) -> Iterator[None]:
        """Hold the local lock file while the pointer is read and replaced (local disks only).

        Object stores need none: their writes are conditional on the pointer's generation.
        """
        if not self.is_local:
            yield
            return
        with Path(self.path(LOCK_FILE)).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read_pointer(self) -> tuple[dict[str, Any] | None, int | None]:
        """Return the pointer and its generation (0 if there is none yet; None off GCS)."""
        path = self.path(POINTER_FILE)
        if not self.is_gcs:
            try:
                return json.loads(self.fs.cat_file(path)), None
            except FileNotFoundError:
                return None, None
        while True:
            self.fs.invalidate_cache(path)
            try:
                generation = int(self.fs.info(path)["generation"])
            except FileNotFoundError:
                return None, 0
            try:
                return json.loads(self.fs.cat_file(path, generation=generation)), generation
            except FileNotFoundError:
                continue  # replaced between the two requests: read the new one

    def replace_pointer(self, data: bytes, generation: int | None) -> None:
        """Write the pointer in one write, only if it still has ``generation`` (on GCS).

        Raises:
            PointerMoved: If another run replaced it meanwhile.
        """
        path = self.path(POINTER_FILE)
        if self.is_gcs and generation is not None:
            try:
                _gcs_conditional_write(self.fs, path, data, generation)
            except FileExistsError:  # GCS answers 412 Precondition Failed
                raise PointerMoved from None
        elif self.is_local:
            temporary = f"{path}.{uuid.uuid4().hex}.tmp"
            with Path(temporary).open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temporary).replace(path)
        else:
            self.fs.pipe_file(path, data)
        self.fs.invalidate_cache(path)

    def copy_to_top(self, source: str, name: str) -> None:
        """Replace the top-level copy of one file in one step (a hard link or rename locally)."""
        target = self.path(name)
        if self.is_local:
            temporary = f"{target}.{uuid.uuid4().hex}.tmp"
            try:
                os.link(source, temporary)
            except OSError:
                self.fs.cp_file(source, temporary)
            Path(temporary).replace(target)
        else:
            self.fs.cp_file(source, target)


def _gcs_conditional_write(fs: Any, path: str, data: bytes, generation: int) -> None:
    """Upload an object only if its generation is still ``generation`` (0: only if absent).

    gcsfs's own writes can only ask for "absent"; this is the same multipart upload it makes,
    with the precondition Cloud Storage documents for compare-and-swap.
    """
    bucket, key, _ = fs.split_path(path)
    metadata = json.dumps({"name": key, "contentType": "application/json"})
    body = (
        (
            f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{metadata}\n"
            "--==0==\nContent-Type: application/json\n\n"
        ).encode()
        + data
        + b"\n--==0==--"
    )
    fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="multipart",
        headers={"Content-Type": 'multipart/related; boundary="==0=="'},
        data=body,
        json_out=True,
        ifGenerationMatch=str(generation),
    )


def file_facts(store: Store, path: str) -> dict[str, Any]:
    """Return what the pointer records of a file: its size, and its generation where there is one."""
    info = store.fs.info(path)
    facts: dict[str, Any] = {"size": int(info["size"])}
    if info.get("generation"):
        facts["generation"] = str(info["generation"])
    return facts


def pointer_record(store: Store, run_id: str, rows_out: int) -> dict[str, Any]:
    """Return the pointer naming one run and its files."""
    files = {
        name: {
            "path": f"{RUNS_DIR}/{run_id}/{name}",
            **file_facts(store, store.path(RUNS_DIR, run_id, name)),
        }
        for name in OUTPUT_FILES
    }
    return {
        "run": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows_out": rows_out,
        "files": files,
    }


@dataclass(frozen=True)
class Published:
    """What publishing did: whether this run is now the latest, and which run is."""

    run: str
    latest: str

    @property
    def is_latest(self) -> bool:
        """Whether the pointer names this run."""
        return self.run == self.latest


def publish(output: str, run_id: str, rows_out: int) -> Published:
    """Make a run the latest, unless a run that started later already is.

    Raises:
        OutputError: If the pointer cannot be replaced, naming the location and the fix.
    """
    store = Store.of(output)
    record = None
    with store.pointer_lock():
        for _ in range(PUBLISH_ATTEMPTS):
            current, generation = store.read_pointer()
            if current and current["run"] > run_id:
                latest = current["run"]
                break
            record = record or pointer_record(store, run_id, rows_out)
            try:
                store.replace_pointer(json.dumps(record, indent=2).encode() + b"\n", generation)
            except PointerMoved:
                continue
            latest = run_id
            break
        else:
            raise OutputError(
                f"the pointer {store.path(POINTER_FILE)} kept changing under {PUBLISH_ATTEMPTS} "
                "other runs' publishes: this run's files are kept in its folder; run it again"
            )
        if latest == run_id:
            copy_latest_to_top(store, run_id)
    return Published(run_id, latest)


def copy_latest_to_top(store: Store, run_id: str) -> None:
    """Copy a run's files to the top, data first; stop if a later run takes the pointer meanwhile."""
    for name in OUTPUT_FILES:
        current, _ = store.read_pointer()
        if not current or current["run"] != run_id:
            return
        store.copy_to_top(store.path(RUNS_DIR, run_id, name), name)


def write_lease(store: Store, run_folder: str, seconds: float) -> None:
    """Record that a run is alive for ``seconds`` more."""
    lease = {"expires_at": time.time() + seconds}
    store.fs.pipe_file(join(run_folder, LEASE_FILE), json.dumps(lease).encode())


@contextlib.contextmanager
def leased(run_folder: str, seconds: float) -> Iterator[None]:
    """Hold a run's lease while the block runs, renewing it in the background; drop it after."""
    store = Store.of(run_folder)
    folder = store.root
    store.fs.makedirs(folder, exist_ok=True)
    write_lease(store, folder, seconds)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 4):
            with contextlib.suppress(Exception):  # a missed renewal is retried; the lease has slack
                write_lease(store, folder, seconds)

    thread = threading.Thread(target=renew, name="pyflow-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish_run(output: str, run_id: str, work: str, published: bool, keep: int) -> list[str]:
    """End a run: remove its intermediate files and its lease, then tidy the output's runs.

    A run that did not publish is removed whole. Tidying comes after the lease is gone, so of
    two runs ending together, the one that tidies last counts both. Returns the folders removed.
    """
    work_store = Store.of(work)
    _remove(work_store, work_store.root)
    store = Store.of(output)
    folder = store.path(RUNS_DIR, run_id)
    if not published:
        _remove(store, folder)
        return []
    _remove(store, join(folder, LEASE_FILE))
    return clean_runs(store, keep)


def _remove(store: Store, path: str) -> None:
    """Delete a file or folder; one that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(path, recursive=True)


def clean_runs(store: Store, keep: int, now: float | None = None) -> list[str]:
    """Remove what crashed runs left, and complete runs beyond the last ``keep``.

    A run whose lease has run out crashed: its work files go, and its whole folder if it never
    wrote its summary. A live run is left alone. The pointer's run is always kept. Returns the
    folders removed.
    """
    now = time.time() if now is None else now
    runs_root = store.path(RUNS_DIR)
    store.fs.invalidate_cache()  # listings cached earlier in this process may be out of date
    try:
        names = sorted(
            path.rstrip("/").rsplit("/", 1)[-1] for path in store.fs.ls(runs_root, detail=False)
        )
    except FileNotFoundError:
        return []
    pointer, _ = store.read_pointer()
    latest = pointer["run"] if pointer else None
    complete, removed = [], []
    for name in names:
        folder = store.path(RUNS_DIR, name)
        try:
            contents = {p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)}
        except FileNotFoundError:
            continue  # another run removed it since the listing above
        if LEASE_FILE in contents:
            try:
                lease = json.loads(store.fs.cat_file(join(folder, LEASE_FILE)))
            except (FileNotFoundError, ValueError):
                continue  # being written or removed right now: leave it to the next run
            if lease["expires_at"] > now:
                continue  # a live run
            if "summary.json" not in contents and name != latest:
                _remove(store, folder)
                removed.append(name)
                continue
            _remove(store, join(folder, WORK_DIR))
            _remove(store, join(folder, LEASE_FILE))
        if "summary.json" in contents:
            complete.append(name)
    for name in complete[:-keep] if keep > 0 else []:
        if name != latest:
            _remove(store, store.path(RUNS_DIR, name))
            removed.append(name)
    return removed
