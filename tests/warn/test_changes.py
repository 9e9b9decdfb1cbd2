"""Tests of what changed since the last run (changes.csv) and the integrated history."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from conftest import SAMPLE, make_day_two
from pyflow.warn import changes, etl
from pyflow.warn.columns import load_rules
from pyflow.warn.schema import NOTICE_FIELDS, Source
from pyflow_kit.errors import OutputError

RULES = load_rules()


def notice(notice_id: str, company: str, **fields: str) -> dict[str, str]:
    """A notice of notices.csv: Texas, 2024-01-02, 10 jobs in Austin unless told."""
    row = dict.fromkeys(NOTICE_FIELDS, "")
    row.update(
        notice_id=notice_id,
        state="TX",
        company=company,
        city="Austin",
        notice_date="2024-01-02",
        jobs="10",
        source="tx.csv",
    )
    row.update(fields)
    return row


def frame(*rows: dict[str, str]) -> pl.DataFrame:
    """Notices as notices.csv holds them: every column text."""
    return pl.DataFrame(list(rows), schema=dict.fromkeys(NOTICE_FIELDS, pl.String))


def kinds(found: pl.DataFrame) -> list[tuple[str, str, str]]:
    """Each change as (kind, notice_id, previous_notice_id)."""
    return [
        (r["change"], r["notice_id"], r["previous_notice_id"]) for r in found.iter_rows(named=True)
    ]


def test_compare_finds_added_amended_and_removed() -> None:
    before = frame(notice("a1", "Acme Inc."), notice("b1", "Bolt"), notice("c1", "Crane"))
    after = frame(
        notice("a2", "ACME, INC", jobs="12"),  # the same company, name written otherwise
        notice("c1", "Crane"),
        notice("d1", "Dune"),
    )
    found = changes.compare(before, after, {"tx.csv"})
    assert kinds(found) == [("added", "d1", ""), ("amended", "a2", "a1"), ("removed", "b1", "")]
    amended = found.row(1, named=True)
    assert amended["changed_fields"] == "company jobs"
    assert json.loads(amended["old_values"]) == {"company": "Acme Inc.", "jobs": "10"}
    assert json.loads(amended["new_values"]) == {"company": "ACME, INC", "jobs": "12"}


def test_compare_pairs_each_amendment_with_the_closest_earlier_notice() -> None:
    before = frame(notice("a1", "Acme", city="Austin"), notice("a2", "Acme", city="Dallas"))
    after = frame(notice("a3", "Acme", city="Dallas", jobs="99"))
    found = changes.compare(before, after, {"tx.csv"})
    assert kinds(found) == [("amended", "a3", "a2"), ("removed", "a1", "")]


def test_compare_sees_a_new_notice_date_as_an_addition() -> None:
    before = frame(notice("a1", "Acme"))
    after = frame(notice("a1", "Acme"), notice("a2", "Acme", notice_date="2024-02-01"))
    assert kinds(changes.compare(before, after, {"tx.csv"})) == [("added", "a2", "")]


def test_compare_removes_nothing_from_a_source_this_run_did_not_read() -> None:
    before = frame(notice("a1", "Acme"), notice("w1", "Wren", state="WA", source="wa.csv"))
    found = changes.compare(before, frame(), {"tx.csv"})
    assert kinds(found) == [("removed", "a1", "")]


def test_compare_follows_a_source_moved_to_another_folder() -> None:
    before = frame(
        notice("a1", "Acme", source="day1/tx.csv"), notice("b1", "Bolt", source="day1/tx.csv")
    )
    after = frame(notice("a2", "Acme", jobs="12", source="day2/tx.csv"))
    found = changes.compare(before, after, {"day2/tx.csv"}, {"day2/tx.csv", "day2/wa.csv"})
    assert kinds(found) == [("amended", "a2", "a1"), ("removed", "b1", "")]
    # a file name two sources share is no proof: nothing is removed
    both = {"day2/tx.csv", "other/tx.csv"}
    assert kinds(changes.compare(before, after, both, both)) == [("added", "a2", "")]
    # a source this run names, but failed, keeps its notices
    failed = changes.compare(before, after, set(), {"day1/tx.csv"})
    assert kinds(failed) == [("added", "a2", "")]


def test_integrate_keeps_first_seen_and_records_status() -> None:
    day1 = frame(notice("a1", "Acme"), notice("b1", "Bolt"), notice("c1", "Crane"))
    history = changes.integrate(None, day1, changes.compare(day1, day1, set()), "T1")
    day2 = frame(notice("a2", "Acme", jobs="12"), notice("c1", "Crane"))
    found = changes.compare(day1, day2, {"tx.csv"})
    history = changes.integrate(history, day2, found, "T2")
    rows = {r["notice_id"]: r for r in history.iter_rows(named=True)}
    assert list(history.columns) == list(changes.INTEGRATED_FIELDS)
    assert {
        k: (r["first_seen"], r["last_seen"], r["status"], r["superseded_by"])
        for k, r in rows.items()
    } == {
        "a1": ("T1", "T1", "amended", "a2"),
        "a2": ("T2", "T2", "current", ""),
        "b1": ("T1", "T1", "removed", ""),
        "c1": ("T1", "T2", "current", ""),
    }
    day3 = frame(notice("a2", "Acme", jobs="12"), notice("b1", "Bolt"), notice("c1", "Crane"))
    history = changes.integrate(history, day3, changes.compare(day2, day3, {"tx.csv"}), "T3")
    back = history.filter(pl.col("notice_id") == "b1").row(0, named=True)
    assert (back["first_seen"], back["last_seen"], back["status"]) == ("T1", "T3", "current")


def sample_sources(folder: Path) -> list[Source]:
    """The sample's files as sources, named by file, each with its state."""
    return [
        Source(location=str(path), constants={"state": path.stem.upper()}, name=path.name)
        for path in sorted(folder.glob("*.csv"))
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into dictionaries."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_run_first_lists_no_changes_and_says_why(tmp_path: Path) -> None:
    summary = etl.run_local(sample_sources(SAMPLE), str(tmp_path / "out"), RULES, 0)
    assert summary.changes["compared_with"] is None
    assert "no run was published" in summary.changes["reason"]
    assert read_rows(tmp_path / "out" / "changes.csv") == []
    integrated = read_rows(tmp_path / "out" / "integrated.csv")
    assert len(integrated) == summary.rows_out
    assert {(r["first_seen"], r["status"]) for r in integrated} == {(summary.started_at, "current")}
    pointer = json.loads((tmp_path / "out" / "latest.json").read_text())
    assert {"changes.csv", "integrated.csv"} <= set(pointer["files"])


def test_run_day_two_finds_every_change_and_keeps_first_seen(tmp_path: Path) -> None:
    folder = tmp_path / "sources"
    shutil.copytree(SAMPLE, folder)
    out = tmp_path / "out"
    first = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    again = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    assert (again.changes["compared_with"], again.changes["added"]) == (first.run, 0)
    assert (out / "changes.csv").read_text().strip() == ",".join(changes.CHANGE_FIELDS)
    made = make_day_two(folder, out / "summary.json")
    assert len(made.states) >= 3
    day_two = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    found = read_rows(out / "changes.csv")
    by_kind = {
        kind: {(r["state"], r["company"]) for r in found if r["change"] == kind}
        for kind in changes.KINDS
    }
    assert by_kind == {"added": made.added, "amended": made.amended, "removed": made.removed}
    assert {r["changed_fields"] for r in found if r["change"] == "amended"} == {"jobs"}
    counts = {kind: day_two.changes[kind] for kind in ("compared_with", *changes.KINDS)}
    assert counts == {
        "compared_with": again.run,
        "added": len(made.added),
        "amended": len(made.amended),
        "removed": len(made.removed),
    }
    assert day_two.changes["by_state"] == {
        state: dict.fromkeys(changes.KINDS, 1) for state in sorted(made.states)
    }
    assert len(day_two.changes["first"]) == min(len(found), changes.FIRST_ROWS)
    unchanged = {r["notice_id"] for r in read_rows(Path(again.notices))} - {
        r["previous_notice_id"] or r["notice_id"] for r in found
    }
    integrated = {r["notice_id"]: r for r in read_rows(out / "integrated.csv")}
    assert {integrated[i]["first_seen"] for i in unchanged} == {first.started_at}
    assert {integrated[i]["status"] for i in unchanged} == {"current"}


def test_run_removes_nothing_from_a_source_that_failed(tmp_path: Path) -> None:
    folder = tmp_path / "sources"
    shutil.copytree(SAMPLE, folder)
    out = tmp_path / "out"
    etl.run_local(sample_sources(folder), str(out), RULES, 0)
    (folder / "wi.csv").write_text("not,a,warn,file\n1,2,3,4\n", encoding="utf-8")
    summary = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    assert summary.sources_failed == 1
    assert read_rows(out / "changes.csv") == []
    wi = [r for r in read_rows(out / "integrated.csv") if r["state"] == "WI"]
    assert wi and {r["status"] for r in wi} == {"current"}


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_run_publishes_nothing_when_the_published_run_cannot_be_read(
    tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "out"
    first = etl.run_local(sample_sources(SAMPLE), str(out), RULES, 0)
    published = out / "runs" / first.run / "integrated.csv"
    if damage == "missing":
        published.unlink()
    else:
        published.write_bytes(b"\xff\xfe\x00garbage")
    before = (out / "latest.json").read_bytes()
    with pytest.raises(OutputError) as raised:
        etl.run_local(sample_sources(SAMPLE), str(out), RULES, 0)
    assert str(raised.value).startswith(f"the run latest.json names in {out} cannot be read (")
    assert str(raised.value).endswith(
        "nothing is published. Check the output location and run again; to start the history "
        "anew, delete its latest.json"
    )
    assert (out / "latest.json").read_bytes() == before
    assert sorted(p.name for p in (out / "runs").iterdir()) == [first.run]


def test_run_compares_a_source_that_comes_back_with_what_it_last_gave(tmp_path: Path) -> None:
    """A source that failed in the run before is not new when it comes back, nor its removals lost."""
    folder = tmp_path / "sources"
    shutil.copytree(SAMPLE, folder)
    out = tmp_path / "out"
    etl.run_local(sample_sources(folder), str(out), RULES, 0)
    good = (folder / "wi.csv").read_text(encoding="utf-8")
    (folder / "wi.csv").write_text("not,a,warn,file\n1,2,3,4\n", encoding="utf-8")
    etl.run_local(sample_sources(folder), str(out), RULES, 0)
    (folder / "wi.csv").write_text(good, encoding="utf-8")
    back = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    assert [back.changes[kind] for kind in changes.KINDS] == [0, 0, 0]
    lines = good.splitlines(keepends=True)
    (folder / "wi.csv").write_text("".join(lines[:-1]), encoding="utf-8")  # its last notice goes
    gone = etl.run_local(sample_sources(folder), str(out), RULES, 0)
    assert [gone.changes[kind] for kind in changes.KINDS] == [0, 0, 1]
