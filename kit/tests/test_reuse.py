"""Tests of reuse: keys, the cache's folders and options, and pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyflow_kit import publish, reuse
from pyflow_kit.errors import OutputError


def entry(output: Path, key: str, age: float = 0.0) -> None:
    """Make a cache entry: its result record and its files, ``age`` seconds old."""
    record = output / "cache" / "results" / key
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{}")
    files = output / "cache" / "files" / key
    files.mkdir(parents=True, exist_ok=True)
    (files / "part.parquet").write_bytes(b"x")
    when = record.stat().st_mtime - age
    for path in (record, files):
        os.utime(path, (when, when))


def test_key_changes_with_any_part_and_is_stable() -> None:
    assert reuse.key("a", 1, ("b",)) == reuse.key("a", 1, ("b",))
    assert reuse.key("a", 1) != reuse.key("a", 2)
    assert reuse.key("ab", "c") != reuse.key("a", "bc")


def test_file_digest_is_the_bytes_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n")
    before = reuse.file_digest(str(path))
    assert before == reuse.file_digest(str(path))
    path.write_bytes(b"a,b\n1,3\n")
    assert reuse.file_digest(str(path)) != before


def test_code_version_changes_with_a_code_or_toml_file(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "rules.toml").write_text("a = 1\n")
    before = reuse.code_version(tmp_path)
    reuse.code_version.cache_clear()
    (tmp_path / "rules.toml").write_text("a = 2\n")
    assert reuse.code_version(tmp_path) != before
    reuse.code_version.cache_clear()


def test_options_read_again_when_the_record_or_its_files_are_gone(tmp_path: Path) -> None:
    assert reuse.options(str(tmp_path), "k1")["refresh_cache"] is True
    entry(tmp_path, "k1")
    found = reuse.options(str(tmp_path), "k1")
    assert found["refresh_cache"] is False
    assert found["persist_result"] is True
    assert found["result_storage"] == tmp_path / "cache" / "results"
    (tmp_path / "cache" / "files" / "k1" / "part.parquet").unlink()
    (tmp_path / "cache" / "files" / "k1").rmdir()
    assert reuse.options(str(tmp_path), "k1")["refresh_cache"] is True


def test_prune_removes_old_entries_no_run_used_and_failure_records(tmp_path: Path) -> None:
    used, old, new = (reuse.key(name) for name in ("used", "old", "new"))
    entry(tmp_path, used, age=10 * reuse.KEEP_SECONDS)
    entry(tmp_path, old, age=10 * reuse.KEEP_SECONDS)
    entry(tmp_path, new)
    failure = tmp_path / "cache" / "results" / "750b0d5042ad480684225916ca35a1e9"
    failure.write_text("{}")
    half = tmp_path / "cache" / "files" / reuse.key("half")
    half.mkdir()
    os.utime(half, (1.0, 1.0))
    assert sorted(reuse.prune(str(tmp_path), [used])) == sorted([old, failure.name, half.name])
    assert sorted(p.name for p in (tmp_path / "cache" / "results").iterdir()) == sorted([new, used])
    assert sorted(p.name for p in (tmp_path / "cache" / "files").iterdir()) == sorted([new, used])
    assert reuse.prune(str(tmp_path / "nothing"), []) == []


def test_files_dir_is_under_the_output_and_cannot_be_published(tmp_path: Path) -> None:
    assert reuse.files_dir("gs://b/out/", "k") == "gs://b/out/cache/files/k"
    assert reuse.files_dir(str(tmp_path), "k") == f"{tmp_path}/cache/files/k"
    with pytest.raises(OutputError, match="'cache' cannot be published"):
        publish.check_files(["notices.csv", "cache"])


def test_asset_key_is_a_valid_key_for_any_output_location(tmp_path: Path) -> None:
    from prefect.assets import Asset

    cases = {
        str(tmp_path / "out"): f"file://{tmp_path}/out/notices.csv",
        str(tmp_path / "a b#c%d"): f"file://{tmp_path}/a-b-c-d/notices.csv",
        "gs://user:pass@bucket/out?sig=abc": "gs://bucket/out/notices.csv",
    }
    for output, expected in cases.items():
        assert publish.asset_key(output, "notices.csv") == expected
        Asset(key=expected)
    long = publish.asset_key("gs://bucket/" + "x" * 600, "notices.csv")
    assert long.startswith("gs://pyflow-output-") and long.endswith("/notices.csv")
    assert Asset(key=long).key == long
    assert long == publish.asset_key("gs://bucket/" + "x" * 600, "notices.csv")


def test_prune_keeps_what_another_run_recorded_using_and_forgets_failed_reads(
    tmp_path: Path,
) -> None:
    theirs, failed, old = (reuse.key(name) for name in ("theirs", "failed", "old"))
    entry(tmp_path, theirs, age=10 * reuse.KEEP_SECONDS)
    entry(tmp_path, old, age=10 * reuse.KEEP_SECONDS)
    entry(tmp_path, failed)
    reuse.record_use(str(tmp_path), "20261207T000000000000Z-other", [theirs])
    assert sorted(reuse.prune(str(tmp_path), [], forget=[failed])) == sorted([old, failed])
    assert [p.name for p in (tmp_path / "cache" / "results").iterdir()] == [theirs]
    record = tmp_path / "cache" / "used" / "20261207T000000000000Z-other.json"
    when = record.stat().st_mtime - 10 * reuse.KEEP_SECONDS
    os.utime(record, (when, when))
    assert reuse.prune(str(tmp_path), []) == [theirs], "a use recorded long ago keeps nothing"
    assert not record.exists()


def test_stored_lists_the_cache_once_for_many_keys(tmp_path: Path) -> None:
    assert reuse.stored(str(tmp_path / "nothing")) == reuse.Stored(frozenset(), frozenset())
    entry(tmp_path, "k1")
    (tmp_path / "cache" / "results" / "k2").write_text("{}")
    cached = reuse.stored(str(tmp_path))
    assert cached.has("k1") and not cached.has("k2") and cached.has("k2", files=False)
    assert reuse.options(str(tmp_path), "k1", cached)["refresh_cache"] is False
    assert reuse.options(str(tmp_path), "k2", cached)["refresh_cache"] is True
    assert reuse.options(str(tmp_path), "k3", files=False)["refresh_cache"] is False


def test_tasks_for_makes_one_task_per_option_set(tmp_path: Path) -> None:
    from prefect import task

    @task(cache_key_fn=reuse.by_key)
    def step(reuse_key: str) -> str:
        return reuse_key

    entry(tmp_path, "k1")
    found = reuse.tasks_for(step, str(tmp_path), ["k1", "k2", "k3", "k1"])
    assert found[0] is found[3] and found[1] is found[2] and found[0] is not found[1]
    assert found[0].refresh_cache is False and found[1].refresh_cache is True
    assert reuse.by_key(None, {"reuse_key": "k1"}) == "k1"
    assert reuse.by_key(None, {"reuse_key": ""}) is None
