"""Publishing a run's outputs so that readers only ever see whole runs, on any fsspec store.

An output location holds, for a flow that writes the files ``a.csv`` and ``b.json``::

    runs/<run id>/a.csv, b.json, files.json   one folder per run, never changed once published
    runs/<run id>/work/, lease.json           only while the run runs
    latest.json                               the pointer: the published run, its files
    a.csv, b.json                             copies of the published run's files

A flow writes its files into its run's folder (`run_dir`) and hands their names to `publish`,
which lists them in the folder (``files.json``: the run is complete), then replaces
``latest.json`` in one write, naming the run and its files (with their sizes, and on Google
Cloud Storage their generations). Readers follow the pointer: a run's files never change once
written, so what it names is always one complete run. Two runs racing to publish
compare-and-swap the pointer (a generation precondition on GCS, a lock file on a local disk),
and the run that started last wins; the other's folder is kept. The copies at the top are for
people who just want the file: each is a whole file, copied in the order the flow named them.

A running run renews its ``lease.json``; a folder whose lease has run out belongs to a run that
crashed, and the next run to end removes its leftovers. Only the last ``keep`` complete runs
are kept. A run's folder of intermediate files on this machine (``work_dir``) records the
process that owns it; the next run removes those whose process is gone.

On a local disk, a run's files and folder are flushed to the disk (fsync) before the pointer
names them, and the pointer and the copies at the top are flushed once in place. An error of
the disk (full, read-only, no permission) stops the run with one `OutputError` naming the file
and the fix, and leaves the previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pyflow_kit.bootstrap import redact_url
from pyflow_kit.errors import OutputError

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
POINTER_FILE = "latest.json"
LEASE_FILE = "lease.json"
WORK_DIR = "work"
CACHE_DIR = "cache"
"""What later runs reuse (`pyflow_kit.reuse`)."""
LOCK_FILE = ".latest.lock"
SAME_TIME = 1.0
"""Seconds within which two readings of a boot or process start time are the same moment."""
OWNER_FILE = "owner.json"
"""In a local work folder: the process that owns it (host, boot, process id and start time)."""
WORK_PREFIX = "pyflow-"
"""Name prefix of local work folders, in the system's temporary folder."""
OUTPUT_FIX = "choose another location with --output or PYFLOW_OUTPUT"
"""What to do when the output location cannot be written, whatever the cause."""
TEMP_FIX = "point TMPDIR at a folder on a larger disk"
"""What to do when a run's folder of intermediate files (in TMPDIR) cannot be written."""
UNTOUCHED = "the previous outputs are as they were"
"""What a run that fails before its pointer is written leaves: the published run, whole."""
MANIFEST_FILE = "files.json"
"""In a run's folder: the files the run published, written before the pointer names the run."""
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
    go in the run's folder in the output location. A local folder records the process that
    owns it, and the folders of processes that are gone (killed runs) are removed first.

    Raises:
        OutputError: If the system's temporary folder cannot be written.
    """
    if shared:
        return join(run_folder, WORK_DIR)
    removed = remove_stale_work_dirs()
    if removed:
        logger.info(
            "Removed %s work folder(s) of runs that ended without removing them: %s",
            len(removed),
            ", ".join(removed),
        )
    name = run_folder.rstrip("/").rsplit("/", 1)[-1]
    temporary = tempfile.gettempdir()
    with writing(temporary, TEMP_FIX):
        folder = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{name}-")
        try:
            Path(folder, OWNER_FILE).write_text(json.dumps(process_identity()))
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return folder


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """Return what tells a process apart from any other, even one given its id later."""
    pid = os.getpid() if pid is None else pid
    return {
        "host": socket.gethostname(),
        "boot": psutil.boot_time(),
        "pid": pid,
        "started": psutil.Process(pid).create_time(),
    }


def is_gone(owner: dict[str, Any]) -> bool:
    """Whether the process an owner record names has ended (False when it cannot be told).

    A process of another host is never judged; one of an earlier boot is gone; a process id
    now held by a process that started at another time was reused, so its owner is gone.
    """
    if owner.get("host") != socket.gethostname():
        return False
    boot, pid, started = owner.get("boot"), owner.get("pid"), owner.get("started")
    if isinstance(boot, int | float) and abs(boot - psutil.boot_time()) > SAME_TIME:
        return True
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        now = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False  # another user's process, which cannot be looked at: alive
    return isinstance(started, int | float) and abs(now - started) > SAME_TIME


def remove_stale_work_dirs(root: str | None = None) -> list[str]:
    """Remove the local work folders whose owning process is gone; return their names.

    A folder without an owner record is left alone (it may be a moment old, its record not yet
    written), as is any folder whose owner is alive or on another host.
    """
    base = Path(root or tempfile.gettempdir())
    removed = []
    for folder in sorted(base.glob(f"{WORK_PREFIX}*")):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def storage_error(
    error: OSError, path: str, fix: str = OUTPUT_FIX, outcome: str = UNTOUCHED
) -> OutputError:
    """Describe an error of the disk while writing ``path`` in one line, with the fix.

    Args:
        error: The operating system's error.
        path: The file or folder being written.
        fix: What to do besides the cause's own remedy.
        outcome: What the outputs are now.
    """
    causes = {
        errno.ENOSPC: "no space is left on its disk: free some space, or ",
        errno.EDQUOT: "its disk quota is used up: free some space, or ",
        errno.EROFS: "its file system is read-only: ",
        errno.EACCES: "permission denied: fix its permissions, or ",
        errno.EPERM: "the operation is not permitted: fix its permissions, or ",
    }
    cause = causes.get(error.errno or 0, f"{error.strerror or error}: ")
    return OutputError(f"cannot write {path}: {cause}{fix}; {outcome}")


def work_fix(path: str) -> str:
    """Return what to do when a run's intermediate file cannot be written where ``path`` is.

    They are in TMPDIR, unless the run's tasks run on other machines: then in the output.
    """
    return TEMP_FIX if Store.of(path).is_local else OUTPUT_FIX


@contextlib.contextmanager
def writing(path: str, fix: str = OUTPUT_FIX) -> Iterator[None]:
    """Turn an error of the disk while the block writes ``path`` into one `OutputError`.

    Raises:
        OutputError: Naming the path, the cause (a full disk, no permission) and the fix.
    """
    try:
        yield
    except OSError as error:
        raise storage_error(error, path, fix) from None


def fsync(path: str, directory: bool = False) -> None:
    """Flush a local file, or a folder's entries, to the disk.

    A file system that cannot flush a folder (some network ones) is let be.
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if not directory or error.errno not in {errno.EINVAL, errno.ENOTSUP, errno.EBADF}:
            raise
    finally:
        os.close(descriptor)


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
            try:
                with Path(temporary).open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(temporary).replace(path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            fsync(self.root, directory=True)
        else:
            self.fs.pipe_file(path, data)
        self.fs.invalidate_cache(path)

    def copy_to_top(self, source: str, name: str) -> None:
        """Replace the top-level copy of one file in one step (a hard link or rename locally).

        Locally, a copy that fails (a full disk) leaves the previous copy whole and no
        temporary file behind; one that lands is flushed to the disk with its folder.
        """
        target = self.path(name)
        if self.is_local:
            temporary = f"{target}.{uuid.uuid4().hex}.tmp"
            try:
                try:
                    os.link(source, temporary)
                except OSError:  # no hard links here (another file system, or none at all)
                    shutil.copyfile(source, temporary)
                    fsync(temporary)
                Path(temporary).replace(target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            fsync(self.root, directory=True)
        else:
            self.fs.cp_file(source, target)

    def sync_run(self, run_id: str, files: Sequence[str]) -> None:
        """Flush a run's files, its folder's entries and its folder's own entry (local disks).

        So after a power cut, the pointer never names a run whose files did not reach the disk.
        """
        if not self.is_local:
            return
        folder = self.path(RUNS_DIR, run_id)
        for name in (*files, MANIFEST_FILE):
            fsync(join(folder, name))
        fsync(folder, directory=True)
        fsync(self.path(RUNS_DIR), directory=True)


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


def pointer_record(
    store: Store, run_id: str, files: Sequence[str], facts: dict[str, Any]
) -> dict[str, Any]:
    """Return the pointer naming one run, its files and what the flow says of it (``facts``)."""
    named = {
        name: {
            "path": f"{RUNS_DIR}/{run_id}/{name}",
            **file_facts(store, store.path(RUNS_DIR, run_id, name)),
        }
        for name in files
    }
    return {
        "run": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **facts,
        "files": named,
    }


def check_files(files: Sequence[str]) -> None:
    """Refuse file names a run cannot publish: none, a path, or the output's own names.

    Raises:
        OutputError: Naming the file and what to do.
    """
    reserved = {RUNS_DIR, POINTER_FILE, LOCK_FILE, MANIFEST_FILE, LEASE_FILE, WORK_DIR, CACHE_DIR}
    if not files:
        raise OutputError("a run publishes at least one file: hand `publish` the files it wrote")
    for name in files:
        if "/" in name or name in reserved or name.startswith("."):
            raise OutputError(
                f"'{name}' cannot be published: name a file of the run's folder, not a path, "
                f"and none of {', '.join(sorted(reserved))}"
            )


@dataclass(frozen=True)
class Published:
    """What publishing did: whether this run is now the latest, and which run is."""

    run: str
    latest: str

    @property
    def is_latest(self) -> bool:
        """Whether the pointer names this run."""
        return self.run == self.latest


def publish(output: str, run_id: str, files: Sequence[str], **facts: Any) -> Published:
    """Make a run the latest, unless a run that started later already is.

    Args:
        output: The output location.
        run_id: The run, whose folder (`run_dir`) holds its files.
        files: The names of the files the run wrote there, in the order they are copied to the
            top (data first, a summary last).
        **facts: What the pointer says of the run besides its files, such as a count of rows.

    Raises:
        OutputError: If the pointer cannot be replaced, or a file name cannot be published,
            naming the location and the fix.
    """
    check_files(files)
    store = Store.of(output)
    record = None
    pointer = store.path(POINTER_FILE)
    manifest = store.path(RUNS_DIR, run_id, MANIFEST_FILE)
    try:
        with writing(manifest):
            store.fs.pipe_file(manifest, json.dumps({"files": list(files)}).encode())
    except OutputError:
        _remove(store, manifest)  # half of it, on a full disk
        raise
    with writing(pointer), store.pointer_lock():
        store.sync_run(run_id, files)
        for _ in range(PUBLISH_ATTEMPTS):
            current, generation = store.read_pointer()
            if current and current["run"] > run_id:
                latest = current["run"]
                break
            record = record or pointer_record(store, run_id, files, facts)
            try:
                store.replace_pointer(json.dumps(record, indent=2).encode() + b"\n", generation)
            except PointerMoved:
                continue
            latest = run_id
            break
        else:
            raise OutputError(
                f"the pointer {pointer} kept changing under {PUBLISH_ATTEMPTS} "
                "other runs' publishes: this run's files are kept in its folder; run it again"
            )
        if latest == run_id:
            try:
                copy_latest_to_top(store, run_id)
            except OSError as error:
                raise storage_error(
                    error,
                    store.root,
                    outcome=f"latest.json names this run ({run_id}), whose files are whole in "
                    f"{RUNS_DIR}/{run_id}/; the copies at the top that did not fit are still the "
                    "previous run's, whole",
                ) from None
    return Published(run_id, latest)


def copy_latest_to_top(store: Store, run_id: str) -> None:
    """Copy a run's files to the top, in order; stop if a later run takes the pointer meanwhile."""
    current, _ = store.read_pointer()
    for name in list(current["files"]) if current else []:
        if not current or current["run"] != run_id:
            return
        store.copy_to_top(store.path(RUNS_DIR, run_id, name), name)
        current, _ = store.read_pointer()


ASSET_KEY_LENGTH = 512
ASSET_UNSAFE = re.compile(r"[\s#?&%\"'<>\[\]{}|\\^`\x00]")
"""Characters a Prefect asset key may not hold (`prefect.types.names`)."""


def asset_key(output: str, name: str) -> str:
    """Return the Prefect asset key of a file published at the top of an output location.

    The key is the file's URL (``file:///...`` for a folder), without credentials or query;
    characters an asset key may not hold become ``-``, and a key too long for Prefect is
    shortened to the location's hash, so that any output location has one, always the same.
    """
    protocol = output.split("://", 1)[0] if "://" in output else "file"
    base = output if "://" in output else f"file://{Path(output).resolve()}"
    key = ASSET_UNSAFE.sub("-", join(redact_url(base, mark=""), name))
    if len(key) > ASSET_KEY_LENGTH:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        key = f"{protocol.lower()}://pyflow-output-{digest}/{ASSET_UNSAFE.sub('-', name)}"
    return key


def write_lease(store: Store, run_folder: str, seconds: float) -> None:
    """Record that a run is alive for ``seconds`` more."""
    lease = {"expires_at": time.time() + seconds}
    store.fs.pipe_file(join(run_folder, LEASE_FILE), json.dumps(lease).encode())


@contextlib.contextmanager
def leased(run_folder: str, seconds: float) -> Iterator[None]:
    """Hold a run's lease while the block runs, renewing it in the background; drop it after.

    It is dropped once the renewals have stopped, so none writes it again afterwards: end the
    run (`finish_run`) after the block.
    """
    store = Store.of(run_folder)
    folder = store.root
    try:
        store.fs.makedirs(folder, exist_ok=True)
        write_lease(store, folder, seconds)
    except OSError as error:
        _remove(store, folder)
        raise storage_error(error, run_folder) from None
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
        with contextlib.suppress(OSError):
            _remove(store, join(folder, LEASE_FILE))


def finish_run(output: str, run_id: str, work: str, published: bool, keep: int) -> list[str]:
    """End a run: remove its intermediate files and its lease, then tidy the output's runs.

    A run that did not publish is removed whole, unless the pointer names it all the same (its
    copies to the top failed). Tidying comes after the lease is gone, so of two runs ending
    together, the one that tidies last counts both. Returns the folders removed.
    """
    work_store = Store.of(work)
    _remove(work_store, work_store.root)
    store = Store.of(output)
    folder = store.path(RUNS_DIR, run_id)
    if not published and (store.read_pointer()[0] or {}).get("run") != run_id:
        _remove(store, folder)
        return []
    _remove(store, join(folder, LEASE_FILE))
    return clean_runs(store, keep)


def _remove(store: Store, path: str) -> None:
    """Delete a file or folder; one that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(path, recursive=True)


def remove(location: str) -> None:
    """Delete a file or folder, local or in an fsspec store; one that is already gone is fine."""
    store = Store.of(location)
    _remove(store, store.root)


def clean_runs(store: Store, keep: int, now: float | None = None) -> list[str]:
    """Remove what crashed runs left, and complete runs beyond the last ``keep``.

    A run whose lease has run out crashed: its work files go, and its whole folder if it never
    came to publish (no ``files.json``). A live run is left alone; every other is complete. The pointer's run is always kept. Returns the
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
            if MANIFEST_FILE not in contents and name != latest:
                _remove(store, folder)
                removed.append(name)
                continue
            _remove(store, join(folder, WORK_DIR))
            _remove(store, join(folder, LEASE_FILE))
        complete.append(name)
    for name in complete[:-keep] if keep > 0 else []:
        if name != latest:
            _remove(store, store.path(RUNS_DIR, name))
            removed.append(name)
    return removed
