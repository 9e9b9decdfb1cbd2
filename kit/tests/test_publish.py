"""Publishing on a local disk and on Google Cloud Storage (a real emulator): what readers see."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from pyflow_kit import publish
from pyflow_kit.errors import OutputError
from pyflow_kit.publish import Store
from pyflow_kit.testing import GcsEmulator, fill, tmpfs

FILES = ("data.csv", "errors.csv", "summary.json")


@pytest.fixture(params=["local", "gcs"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty output location: a local folder, or a bucket on the GCS emulator."""
    if request.param == "local":
        return str(tmp_path / "out")
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    return f"{emulator.bucket()}/outputs"


def write_run(output: str, run_id: str, rows: int, lease: float | None = None) -> Store:
    """Write a run's three files (``rows`` rows) into its folder, as a run does."""
    store = Store.of(output)
    folder = Store.of(publish.run_dir(output, run_id)).root
    store.fs.makedirs(folder, exist_ok=True)
    notices = "row_id\n" + "".join(f"{run_id}-{i}\n" for i in range(rows))
    store.fs.pipe_file(f"{folder}/data.csv", notices.encode())
    store.fs.pipe_file(f"{folder}/errors.csv", b"source,record,reason,raw\n")
    summary = {"run": run_id, "rows_out": rows, "data": f"{output}/runs/{run_id}/data.csv"}
    store.fs.pipe_file(f"{folder}/summary.json", json.dumps(summary).encode())
    if lease is not None:
        store.fs.makedirs(f"{folder}/work", exist_ok=True)
        store.fs.pipe_file(f"{folder}/work/part-0.parquet", b"work")
        publish.write_lease(store, folder, lease)
    return store


def run_ids(count: int) -> list[str]:
    """Return run ids in start order."""
    ids = []
    for _ in range(count):
        ids.append(publish.new_run_id())
        time.sleep(0.001)
    return ids


def runs_in(store: Store) -> list[str]:
    """Return the run folders of an output location, sorted."""
    store.fs.invalidate_cache()
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.path("runs")))


def test_publish_points_latest_at_the_run_and_copies_its_files(output: str) -> None:
    """latest.json names the run and its files; the top-level copies are the run's files."""
    (run,) = run_ids(1)
    store = write_run(output, run, rows=3)
    published = publish.publish(output, run, FILES, rows_out=3)
    assert published.is_latest
    pointer, _ = store.read_pointer()
    assert pointer is not None
    assert pointer["run"] == run and pointer["rows_out"] == 3
    for name in FILES:
        entry = pointer["files"][name]
        assert entry["path"] == f"runs/{run}/{name}"
        own = store.fs.cat_file(store.path("runs", run, name))
        assert entry["size"] == len(own)
        assert store.fs.cat_file(store.path(name)) == own
        if store.is_gcs:
            assert entry["generation"] == str(
                store.fs.info(store.path("runs", run, name))["generation"]
            )


def test_publish_leaves_a_later_run_that_published_first(output: str) -> None:
    """A run that started earlier but finishes later does not replace the later run's pointer."""
    earlier, later = run_ids(2)
    write_run(output, earlier, rows=1)
    store = write_run(output, later, rows=2)
    assert publish.publish(output, later, FILES, rows_out=2).is_latest
    result = publish.publish(output, earlier, FILES, rows_out=1)
    assert not result.is_latest and result.latest == later
    pointer, _ = store.read_pointer()
    assert pointer is not None and pointer["run"] == later
    assert json.loads(store.fs.cat_file(store.path("summary.json")))["run"] == later
    assert runs_in(store) == [earlier, later], "the earlier run's files are kept"


def test_replace_pointer_refuses_a_stale_generation(gcs_emulator: GcsEmulator) -> None:
    """On GCS, a pointer write conditional on a generation that has moved on is refused."""
    store = Store.of(f"{gcs_emulator.bucket()}/outputs")
    _, absent = store.read_pointer()
    assert absent == 0
    store.replace_pointer(b'{"run": "a"}', absent)
    _, first = store.read_pointer()
    store.replace_pointer(b'{"run": "b"}', first)
    with pytest.raises(publish.PointerMoved):
        store.replace_pointer(b'{"run": "c"}', first)
    with pytest.raises(publish.PointerMoved):
        store.replace_pointer(b'{"run": "d"}', 0)
    assert store.read_pointer()[0] == {"run": "b"}


def test_publish_tries_again_when_another_run_swaps_the_pointer_first(
    gcs_emulator: GcsEmulator, mocker: MockerFixture
) -> None:
    """If another run's publish lands between our read and our write, we read again and win."""
    output = f"{gcs_emulator.bucket()}/outputs"
    other, ours = run_ids(2)
    write_run(output, other, rows=1)
    store = write_run(output, ours, rows=2)
    original = Store.replace_pointer
    calls: list[int | None] = []

    def other_run_lands_first(self: Store, data: bytes, generation: int | None) -> None:
        calls.append(generation)
        if len(calls) == 1:
            publish.publish(output, other, FILES, rows_out=1)
        original(self, data, generation)

    mocker.patch.object(Store, "replace_pointer", other_run_lands_first)
    assert publish.publish(output, ours, FILES, rows_out=2).is_latest
    assert calls[0] == 0 and calls[-1] not in (None, 0) and len(calls) == 3
    assert store.read_pointer()[0]["run"] == ours  # type: ignore[index]


def test_clean_runs_keeps_the_last_n_and_the_pointers_run(output: str) -> None:
    """Retention keeps exactly the last N published runs, and never the pointer's run."""
    ids = run_ids(5)
    for run in ids:
        store = write_run(output, run, rows=1)
    publish.publish(output, ids[1], FILES, rows_out=1)  # the pointer names an older run
    removed = publish.clean_runs(store, keep=2)
    assert sorted(removed) == [ids[0], ids[2]]
    assert runs_in(store) == [ids[1], ids[3], ids[4]]
    publish.publish(output, ids[4], FILES, rows_out=1)
    publish.clean_runs(store, keep=2)
    assert runs_in(store) == [ids[3], ids[4]]


def test_clean_runs_removes_what_crashed_runs_left(output: str) -> None:
    """A lease that ran out marks a crashed run: its work files go, its folder too if unpublished."""
    crashed, crashed_published, alive = run_ids(3)
    store = write_run(output, crashed, rows=1, lease=60)
    write_run(output, crashed_published, rows=1, lease=60)
    manifest = store.path("runs", crashed_published, publish.MANIFEST_FILE)
    store.fs.pipe_file(manifest, json.dumps({"files": list(FILES)}).encode())  # came to publish
    write_run(output, alive, rows=1, lease=600)
    removed = publish.clean_runs(store, keep=5, now=time.time() + 120)
    assert removed == [crashed]
    assert runs_in(store) == [crashed_published, alive]
    kept = store.fs.ls(store.path("runs", crashed_published), detail=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in kept) == sorted([*FILES, publish.MANIFEST_FILE])
    assert store.fs.exists(store.path("runs", alive, "work", "part-0.parquet"))


def test_finish_run_removes_work_and_lease_or_everything(output: str) -> None:
    """A published run keeps its three files; one that did not publish leaves nothing."""
    published, failed = run_ids(2)
    store = write_run(output, published, rows=1, lease=60)
    write_run(output, failed, rows=1, lease=60)
    for run, done in ((published, True), (failed, False)):
        work = publish.work_dir(publish.run_dir(output, run), shared=True)
        assert publish.finish_run(output, run, work, published=done, keep=5) == []
    assert runs_in(store) == [published]
    kept = store.fs.ls(store.path("runs", published), detail=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in kept) == list(FILES)


def test_leased_renews_the_lease_while_the_block_runs(tmp_path: Path) -> None:
    """The lease is renewed in the background, so a long run never looks crashed."""
    folder = str(tmp_path / "runs" / "r")

    def read() -> float:
        return json.loads(Path(folder, "lease.json").read_text())["expires_at"]

    with publish.leased(folder, seconds=0.4):
        first = read()
        time.sleep(0.35)
        assert read() > first


def test_work_dir_is_local_unless_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Intermediate files stay on this machine unless other machines run the tasks."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = "gs://bucket/outputs/runs/20261129T000000000000Z-abcd"
    assert publish.work_dir(folder, shared=True) == f"{folder}/work"
    local = Path(publish.work_dir(folder, shared=False))
    assert local.parent == tmp_path and local.is_dir()
    assert local.name.startswith("pyflow-20261129T000000000000Z-abcd-")
    assert json.loads((local / "owner.json").read_text())["pid"] == os.getpid()


def test_publish_from_many_threads_never_shows_a_reader_a_mixed_set(output: str) -> None:
    """Ten pairs of runs publishing at once while a reader polls: every read is one whole run."""
    store = Store.of(output)
    failures: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            pointer, _ = store.read_pointer()
            if pointer:
                notices = store.fs.cat_file(store.path(pointer["files"]["data.csv"]["path"]))
                summary = json.loads(
                    store.fs.cat_file(store.path(pointer["files"]["summary.json"]["path"]))
                )
                if (
                    notices.count(b"\n") - 1 != summary["rows_out"]
                    or summary["run"] != pointer["run"]
                ):
                    failures.append(pointer["run"])
                reads[0] += 1

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        for pair in range(10):
            ids = run_ids(2)
            for rows, run in enumerate(ids, start=pair * 2 + 1):
                write_run(output, run, rows=rows)
            threads = [
                threading.Thread(
                    target=publish.publish, args=(output, run, FILES), kwargs={"rows_out": rows}
                )
                for rows, run in enumerate(ids, start=pair * 2 + 1)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert store.read_pointer()[0]["run"] == ids[1]  # type: ignore[index]
    finally:
        stop.set()
        watcher.join()
    assert failures == [] and reads[0] > 0


def test_publish_works_on_any_fsspec_store() -> None:
    """On a store with neither generations nor a local disk (fsspec's memory store), it works too."""
    output = f"memory://pyflow-{publish.new_run_id()}"
    first, second = run_ids(2)
    for run in (first, second):
        store = write_run(output, run, rows=2)
        assert publish.publish(output, run, FILES, rows_out=2).is_latest
    assert store.read_pointer() == (store.read_pointer()[0], None)
    assert store.read_pointer()[0]["run"] == second  # type: ignore[index]
    assert store.fs.cat_file(store.path("data.csv")) == store.fs.cat_file(
        store.path("runs", second, "data.csv")
    )


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="tells flushed files apart by /proc/self/fd (Linux)"
)
def test_publish_flushes_files_and_folders_before_the_pointer(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    """On a local disk the run's files, its folder and runs/ reach the disk before latest.json."""
    output = str(tmp_path / "out")
    (run,) = run_ids(1)
    write_run(output, run, rows=2)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(descriptor: int) -> None:
        events.append(str(Path(f"/proc/self/fd/{descriptor}").readlink()))
        real_fsync(descriptor)

    def replace(self: Path, target: str | os.PathLike[str]) -> Path:
        events.append(f"rename to {target}")
        return real_replace(self, target)

    mocker.patch("os.fsync", fsync)
    mocker.patch.object(Path, "replace", replace)
    publish.publish(output, run, FILES, rows_out=2)
    folder = f"{output}/runs/{run}"
    pointer = events.index(f"rename to {output}/latest.json")
    files = max(events.index(f"{folder}/{name}") for name in FILES)
    assert files < events.index(folder) < events.index(f"{output}/runs") < pointer
    assert events[pointer + 1] == output, "the pointer's folder is flushed once it is in place"
    for name in FILES:
        assert events[events.index(f"rename to {output}/{name}") + 1] == output


def test_publish_on_a_full_disk_raises_one_error_and_keeps_the_pointer(tmp_path: Path) -> None:
    """No space for the new pointer: one OutputError naming it and the fix; nothing else moves."""
    with tmpfs(tmp_path / "small", "1m") as out:
        first, second = run_ids(2)
        write_run(str(out), first, rows=3)
        publish.publish(str(out), first, FILES, rows_out=3)
        write_run(str(out), second, rows=5)
        filler = fill(out)
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != filler}
        with pytest.raises(OutputError) as raised:
            publish.publish(str(out), second, FILES, rows_out=5)
        assert str(raised.value) == (
            f"cannot write {out}/runs/{second}/files.json: no space is left on its disk: free some "
            "space, or "
            "choose another location with --output or PYFLOW_OUTPUT; the previous outputs are as "
            "they were"
        )
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != filler}
        assert after == before, "no temporary file is left, and the pointer still names the first"
        filler.unlink()
        assert publish.finish_run(str(out), second, str(tmp_path / "work"), False, 5) == []
        assert runs_in(Store.of(str(out))) == [first]


def test_finish_run_keeps_a_run_the_pointer_names_though_it_did_not_finish_publishing(
    tmp_path: Path,
) -> None:
    """If copying to the top failed after the pointer moved, the run named is not removed."""
    output = str(tmp_path / "out")
    (run,) = run_ids(1)
    store = write_run(output, run, rows=1, lease=60)
    store.replace_pointer(
        json.dumps(publish.pointer_record(store, run, FILES, {"rows_out": 1})).encode(), None
    )
    work = publish.work_dir(publish.run_dir(output, run), shared=True)
    publish.finish_run(output, run, work, published=False, keep=5)
    assert sorted(p.name for p in Path(output, "runs", run).iterdir()) == list(FILES)


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (errno.ENOSPC, "no space is left on its disk: free some space, or "),
        (errno.EROFS, "its file system is read-only: "),
        (errno.EACCES, "permission denied: fix its permissions, or "),
        (errno.EIO, "Input/output error: "),
    ],
)
def test_storage_error_names_the_path_the_cause_and_the_fix(code: int, cause: str) -> None:
    """Each cause of a failed write is said in words, with the remedy for the output."""
    error = OSError(code, os.strerror(code))
    assert str(publish.storage_error(error, "/out/x.csv")) == (
        f"cannot write /out/x.csv: {cause}choose another location with --output or PYFLOW_OUTPUT; "
        "the previous outputs are as they were"
    )


KILLED_RUN = """
import os, signal, sys
from pyflow_kit import publish
print(publish.work_dir(sys.argv[1], shared=False), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
"""A run that makes its work folder and is killed (SIGKILL) before it can remove it."""


def test_work_dir_removes_the_folders_of_killed_runs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next run removes work folders whose process is gone, never a live run's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    killed = [
        subprocess.run(
            [sys.executable, "-c", KILLED_RUN, f"out/runs/r{i}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        for i in range(3)
    ]
    assert all(result.returncode == -9 for result in killed)
    stale = [Path(result.stdout.strip()) for result in killed]
    assert [folder.exists() for folder in stale] == [False, False, True], (
        "each run removes the last"
    )
    assert (stale[-1] / "owner.json").is_file()
    live = Path(publish.work_dir("out/runs/live", shared=False))
    reused = tmp_path / "pyflow-reused-1"  # a process id now held by another process
    reused.mkdir()
    (reused / "owner.json").write_text(json.dumps({**publish.process_identity(), "started": -1}))
    other_host = tmp_path / "pyflow-other-host"
    other_host.mkdir()
    (other_host / "owner.json").write_text(json.dumps({"host": "elsewhere", "pid": 1 << 30}))
    ownerless = tmp_path / "pyflow-being-made"
    ownerless.mkdir()
    newest = Path(publish.work_dir("out/runs/next", shared=False))
    assert not any(folder.exists() for folder in [*stale, reused])
    assert live.is_dir() and newest.is_dir() and other_host.is_dir() and ownerless.is_dir()


def test_publish_copies_to_the_top_from_another_file_system_and_survives_a_full_disk(
    tmp_path: Path,
) -> None:
    """runs/ on its own mount: copies replace hard links; a copy that does not fit changes nothing."""
    with tmpfs(tmp_path / "out", "1m") as out, tmpfs(out / "runs", "8m"):
        first, second = run_ids(2)
        store = write_run(str(out), first, rows=3)
        publish.publish(str(out), first, FILES, rows_out=3)
        for name in FILES:
            assert (out / name).read_bytes() == (out / "runs" / first / name).read_bytes()
        top = {name: (out / name).read_bytes() for name in FILES}
        write_run(str(out), second, rows=200_000)  # a data.csv larger than the top's disk
        with pytest.raises(OutputError) as raised:
            publish.publish(str(out), second, FILES, rows_out=200_000)
        assert str(raised.value) == (
            f"cannot write {out}: no space is left on its disk: free some space, or choose another "
            f"location with --output or PYFLOW_OUTPUT; latest.json names this run ({second}), "
            f"whose files are whole in runs/{second}/; the copies at the top that did not fit are "
            "still the previous run's, whole"
        )
        assert store.read_pointer()[0]["run"] == second  # type: ignore[index]
        assert {name: (out / name).read_bytes() for name in FILES} == top
        assert not list(out.glob("*.tmp"))
        publish.finish_run(str(out), second, str(tmp_path / "work"), published=False, keep=5)
        assert runs_in(store) == [first, second], "the run the pointer names is kept"


def test_leased_on_a_full_disk_raises_one_error_and_leaves_no_folder(tmp_path: Path) -> None:
    """A run whose lease cannot be written stops at once, naming its folder; nothing is left."""
    with tmpfs(tmp_path / "out", "1m") as out:
        filler = fill(out)
        folder = out / "runs" / "r1"
        with (
            pytest.raises(OutputError, match=f"^cannot write {folder}: no space is left"),
            publish.leased(str(folder), seconds=60),
        ):
            pytest.fail("the block ran without a lease")
        assert not folder.exists()
        filler.unlink()


def test_leased_drops_the_lease_once_no_renewal_can_write_it_again(tmp_path: Path) -> None:
    """After the block, the lease is gone and stays gone: its renewals stopped before it went."""
    folder = tmp_path / "out" / "runs" / "20261129T000000000000Z-abcd"
    with publish.leased(str(folder), seconds=0.04):  # renewed every 10 ms
        time.sleep(0.1)
        assert (folder / publish.LEASE_FILE).exists()
    assert not (folder / publish.LEASE_FILE).exists()
    time.sleep(0.1)
    assert not (folder / publish.LEASE_FILE).exists(), "no renewal wrote it back"
