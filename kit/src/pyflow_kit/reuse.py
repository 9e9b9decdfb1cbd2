"""Reuse: a task's result is taken from an earlier run when what it reads did not change.

This is Prefect's own task caching, with a key the flow computes (`key`: the hash of the
input's bytes, the rules that read it and the code's version) rather than Prefect's default,
which holds the run's id and so never matches across runs. Results are persisted under the
output location, ``cache/results/KEY``, beside any files a task writes for later runs in
``cache/files/KEY/`` (`files_dir`); `prune` removes entries no recent run used.

A task takes part by declaring ``cache_key_fn=reuse.by_key`` and a ``reuse_key`` parameter,
and the flow gives it the output's storage: ``task.with_options(**reuse.options(output, key))``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from pyflow_kit import publish

CACHE_DIR = publish.CACHE_DIR
RESULTS_DIR = "results"
FILES_DIR = "files"
USED_DIR = "used"
T = TypeVar("T")
KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
"""What a reuse key looks like (`key`)."""
KEEP_SECONDS = 24 * 3600.0
"""An entry no run used is kept this long (a run may be using it at the time), then pruned."""


def key(*parts: object) -> str:
    """Return a reuse key: the SHA-256 of the parts' text, in hex."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_digest(location: str) -> str:
    """Return the SHA-256 of a file's bytes (a path or fsspec URL), in hex."""
    with fsspec.open(location, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@cache
def code_version(folder: Path) -> str:
    """Return the hash of a package folder's code and data files: its version, for reuse."""
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts
    )
    return key(*((str(path.relative_to(folder)), path.read_bytes()) for path in paths))


def by_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's ``cache_key_fn``: the task's ``reuse_key`` parameter (none given: no caching)."""
    return str(parameters["reuse_key"]) or None


def cache_root(output: str) -> str:
    """Return where the output keeps what later runs reuse: a folder, or a URL like the output's."""
    return publish.join(output, CACHE_DIR)


def files_dir(output: str, reuse_key: str) -> str:
    """Return the folder for the files a task writes for later runs, under its key."""
    return publish.join(cache_root(output), FILES_DIR, reuse_key)


def result_storage(output: str) -> Any:
    """Return the result storage of the output's cache: a local folder, else an fsspec block.

    Prefect takes a remote storage only as a block saved on its API: it is saved once per
    process, named after the location (``pyflow-cache-HASH``; the URL holds no credentials).
    """
    root = publish.join(cache_root(output), RESULTS_DIR)
    if "://" not in root or root.startswith("file://"):
        return Path(root.removeprefix("file://"))
    return _saved_storage(root)


@cache
def _saved_storage(root: str) -> Any:
    """Save, once, and return the remote file system block of a cache's results."""
    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=root)
    block.save(f"pyflow-cache-{key(root)[:16]}", overwrite=True)
    return block


@dataclass(frozen=True)
class Stored:
    """What the output's cache holds, listed once: the keys with a result, and with files.

    One listing of each folder for a run's every task (`stored`), where asking for each key
    costs two requests a task on an object store.
    """

    results: frozenset[str]
    files: frozenset[str]

    def has(self, reuse_key: str, files: bool = True) -> bool:
        """Whether the key's result is stored (and, with ``files``, its files too)."""
        return reuse_key in self.results and (not files or reuse_key in self.files)


def stored(output: str) -> Stored:
    """List what the output's cache holds (`Stored`), one listing of each of its folders."""
    store = publish.Store.of(output)
    return Stored(*(frozenset(_names(store, folder)) for folder in (RESULTS_DIR, FILES_DIR)))


def _names(store: publish.Store, folder: str) -> list[str]:
    """List the names in a cache folder (none if it is not there), as they are now."""
    path = store.path(CACHE_DIR, folder)
    store.fs.invalidate_cache(path)
    try:
        found = store.fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return [str(name).rstrip("/").rsplit("/", 1)[-1] for name in found]


def options(
    output: str, reuse_key: str, cached: Stored | None = None, files: bool = True
) -> dict[str, Any]:
    """Return a task's options for reuse in this output: its storage, and whether to read again.

    A result whose files are gone (pruned, or deleted by hand) is not reused: the task runs
    again and writes both anew. ``cached`` is what the cache holds (`stored`), listed once for
    many tasks; without it, the key's entry is looked up. A task that writes no files
    (``files=False``) needs only its result, which Prefect looks up itself.
    """
    if not files:
        present = True
    elif cached is not None:
        present = cached.has(reuse_key)
    else:
        store = publish.Store.of(output)
        present = store.fs.exists(
            store.path(CACHE_DIR, RESULTS_DIR, reuse_key)
        ) and store.fs.exists(store.path(CACHE_DIR, FILES_DIR, reuse_key))
    return {
        "result_storage": result_storage(output),
        "persist_result": True,
        "refresh_cache": not present,
    }


def tasks_for(task: T, output: str, keys: Iterable[str]) -> list[T]:
    """Return the task with its reuse `options` for each key, the cache listed once (`stored`).

    The same task stands for every key its options agree on (two at most: read, or reuse), so
    a run of many tasks makes each variant once.
    """
    cached = stored(output)
    made: dict[bool, T] = {}
    found = []
    for reuse_key in keys:
        found_options = options(output, reuse_key, cached)
        refresh = bool(found_options["refresh_cache"])
        if refresh not in made:
            made[refresh] = task.with_options(**found_options)  # type: ignore[attr-defined]
        found.append(made[refresh])
    return found


def record_use(output: str, run: str, keys: Iterable[str]) -> None:
    """Record that a run is using these entries, so that no other run's `prune` removes them.

    One small file per run, ``cache/used/RUN.json``, written before the run reads its entries.
    """
    store = publish.Store.of(output)
    path = store.path(CACHE_DIR, USED_DIR, f"{run}.json")
    with publish.writing(path):
        store.fs.makedirs(store.path(CACHE_DIR, USED_DIR), exist_ok=True)
        store.fs.pipe_file(path, json.dumps(sorted(set(keys))).encode())


def drop_use(output: str, run: str) -> None:
    """Remove a run's record of use (`record_use`): for a run that did not publish."""
    store = publish.Store.of(output)
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.path(CACHE_DIR, USED_DIR, f"{run}.json"))


def prune(
    output: str, used: Iterable[str], forget: Iterable[str] = (), now: float | None = None
) -> list[str]:
    """Remove cache entries no run used in `KEEP_SECONDS`, and those to ``forget``; say which.

    An entry is kept while this run uses it (``used``), or a run recorded using it
    (`record_use`) in the last `KEEP_SECONDS`, or it was written in that time (a run may be
    writing it). Records whose name is no reuse key go at once: Prefect keeps a failed task's
    exception in its result storage under a name of its own, which no run reads.
    """
    store = publish.Store.of(output)
    now = time.time() if now is None else now
    gone = set(forget)
    keep = set(used) - gone
    for entry in _entries(store, USED_DIR):
        if now - _modified(store, entry) < KEEP_SECONDS:
            with contextlib.suppress(OSError, ValueError):
                keep.update(json.loads(store.fs.cat_file(entry["name"])))
        else:
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm(entry["name"])
    written: dict[str, float] = {}
    for folder in (RESULTS_DIR, FILES_DIR):  # files without a result: a failed task's
        for entry in _entries(store, folder):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            written[name] = max(written.get(name, 0.0), _modified(store, entry))
    removed = []
    for name, modified in sorted(written.items()):
        stale = name not in keep and now - modified >= KEEP_SECONDS
        if KEY_PATTERN.fullmatch(name) and name not in gone and not stale:
            continue
        for folder in (RESULTS_DIR, FILES_DIR):
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm(store.path(CACHE_DIR, folder, name), recursive=True)
        removed.append(name)
    return removed


def _entries(store: publish.Store, folder: str) -> list[dict[str, Any]]:
    """List a cache folder's entries (none if it is not there)."""
    try:
        return list(store.fs.ls(store.path(CACHE_DIR, folder), detail=True))
    except FileNotFoundError:
        return []


def _modified(store: publish.Store, entry: dict[str, Any]) -> float:
    """Return when an entry was last written: a folder's newest file on an object store."""
    when = _time(entry)
    if not when and entry.get("type") == "directory":  # an object store's prefix has no time
        found = store.fs.find(entry["name"], detail=True).values()
        when = max((_time(item) for item in found), default=time.time())
    return when


def _time(entry: dict[str, Any]) -> float:
    """Return an ``ls`` entry's modification time, in seconds since the epoch (0: none)."""
    value = entry.get("mtime") or entry.get("updated") or entry.get("created") or 0
    if isinstance(value, str):
        from datetime import datetime

        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
