"""Tests of the ETL steps, run in this process: rows to notices and rejects, failures, outputs."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import SAMPLE
from pyflow.warn import etl
from pyflow.warn.columns import load_rules
from pyflow.warn.errors import FetchError, SourceError
from pyflow.warn.schema import NOTICE_FIELDS, Source
from pyflow_kit.errors import OutputError
from pyflow_kit.testing import HttpSources, tmpfs, tree_bytes

RULES = load_rules()

WA_TEXT = """Company,Location,Layoff Start Date,# of Workers,Closure Layoff,Type of Layoff,Received Date
Wesley Homes,"Des Moines, Auburn",5/14/2022,119,Layoff,Permanent,3/11/2022
,Auburn,7/1/2022,181,Closure,Temporary,3/3/2022
Company,Location,Layoff Start Date,# of Workers,Closure Layoff,Type of Layoff,Received Date
Valiant Integrated,Joint Base Lewis McChord,3/31/2022,N/A,Closure,Permanent,2/14/2022,late cell
"Hawthorne
Gardening",Vancouver,see letter,"1,204",Closure,Temporary,1/26/2022

Acme Foods,Seattle,TBD,TBD,Layoff,,31/31/2022
WESLEY HOMES,"DES MOINES, AUBURN",5/14/2022,119,Layoff,Permanent,3/11/2022
"""
"""Washington's layout, with what real rows hold: blank company, a repeated header, a cell
beyond the header, a quoted line break, a blank line, unreadable values, and a duplicate."""


def run(
    sources: list[Source], output: Path, partition_bytes: int = 0, **options: object
) -> etl.Summary:
    """Run every step in this process, as the flow does."""
    return etl.run_local(sources, str(output), RULES, partition_bytes, **options)  # type: ignore[arg-type]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into dictionaries."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def wa_source(write_csv: Callable[[str, str], Path]) -> Source:
    """The Washington-like source, with its state as a constant."""
    return Source(location=str(write_csv("wa.csv", WA_TEXT)), constants={"state": "WA"}, name="wa")


def test_run_rejects_only_rows_that_cannot_be_notices(wa_source: Source, tmp_path: Path) -> None:
    """Rejects name the record, the rule and the value; unreadable values only go empty."""
    summary = run([wa_source], tmp_path / "out")
    rejects = read_rows(tmp_path / "out" / "rejects.csv")
    assert [(r["source"], r["record"], r["reason"]) for r in rejects] == [
        ("wa", "2", "company: the 'Company' cell is blank"),
        ("wa", "3", "the row repeats the header"),
        ("wa", "4", "the row has values beyond the header's 7 columns: late cell"),
    ]
    assert rejects[2]["raw"] == (
        "Valiant Integrated,Joint Base Lewis McChord,3/31/2022,N/A,Closure,Permanent,2/14/2022,late cell"
    )
    notices = {row["company"]: row for row in read_rows(tmp_path / "out" / "notices.csv")}
    assert set(notices) == {"Wesley Homes", "Hawthorne Gardening", "Acme Foods"}
    assert notices["Acme Foods"]["notice_date"] == ""
    assert notices["Acme Foods"]["jobs"] == ""
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected, summary.rows_duplicate) == (
        7,
        3,
        3,
        1,
    )
    [entry] = summary.sources
    assert entry["values_not_read"]["notice_date"] == {"count": 1, "examples": ["31/31/2022"]}
    assert entry["rejected_by"] == {
        "company blank": 1,
        "header repeated": 1,
        "values beyond the header": 1,
    }


def test_run_reads_values_and_kinds_into_the_schema(wa_source: Source, tmp_path: Path) -> None:
    """A notice has its id, dates in ISO form, a count, and what its type columns say."""
    run([wa_source], tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "notices.csv")
    assert list(rows[0]) == list(NOTICE_FIELDS)
    wesley = next(row for row in rows if row["company"] == "Wesley Homes")
    assert {k: v for k, v in wesley.items() if k != "notice_id"} == {
        "state": "WA",
        "company": "Wesley Homes",
        "city": "Des Moines, Auburn",
        "notice_date": "2022-03-11",
        "effective_date": "2022-05-14",
        "jobs": "119",
        "is_closure": "false",
        "is_temporary": "false",
        "is_amendment": "false",
        "source": "wa",
    }
    assert len(wesley["notice_id"]) == 16
    hawthorne = next(row for row in rows if row["company"] == "Hawthorne Gardening")
    assert (hawthorne["jobs"], hawthorne["is_closure"], hawthorne["is_temporary"]) == (
        "1204",
        "true",
        "true",
    )


def test_run_rejects_total_and_note_lines_but_keeps_companies_named_total(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A "Total" row and a footnote are not notices; "Total Airport Services" is one."""
    text = (
        "State of Alaska,,,\n"
        "Company,Location,Notice Date,Employees Affected\n"
        "Total Airport Services,Anchorage,1/2/2024,34\n"
        "Acme,Juneau,,\n"
        "Grand Total,,,34\n"
        "* Rehired by the buyer,,,\n"
    )
    source = Source(location=str(write_csv("ak.csv", text)), constants={"state": "AK"})
    summary = run([source], tmp_path / "out")
    rejects = read_rows(tmp_path / "out" / "rejects.csv")
    assert [(r["record"], r["reason"], r["raw"]) for r in rejects] == [
        ("3", "company: 'Grand Total' in 'Company' marks a total line, not a notice", "Grand Total,,,34"),
        (
            "4",
            "the row's one value is '* Rehired by the buyer', in 'Company': a note or title line, not a notice",
            "* Rehired by the buyer",
        ),
    ]  # fmt: skip
    notices = read_rows(tmp_path / "out" / "notices.csv")
    assert sorted(row["company"] for row in notices) == ["Acme", "Total Airport Services"]
    [entry] = summary.sources
    assert entry["rejected_by"] == {"note line": 1, "total line": 1}
    assert entry["mapping"]["lines_above_header"] == ["State of Alaska,,,"]


def test_run_maps_and_reads_dates_a_spreadsheet_exported_as_day_numbers(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A Notice Date column of day numbers (43832) is still the notice date, read as dates."""
    text = "Company,Notice Date,Jobs\nAcme,43832,5\nBeta,45292,7\n"
    source = Source(location=str(write_csv("x.csv", text)), constants={"state": "OH"})
    summary = run([source], tmp_path / "out")
    assert summary.sources[0]["mapping"]["fields"]["notice_date"] == "Notice Date"
    notices = read_rows(tmp_path / "out" / "notices.csv")
    assert [(row["company"], row["notice_date"]) for row in notices] == [
        ("Acme", "2020-01-02"),
        ("Beta", "2024-01-01"),
    ]


def test_run_keeps_the_first_of_duplicates_across_sources_in_key_order(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """The same notice in two sources (any case) is written once, from the first source."""
    header = "Company,Notice Date,Jobs\n"
    first = write_csv("a.csv", header + "Zeta Corp,2024-03-01,5\nAcme,2024-01-01,10\n")
    second = write_csv("b.csv", header + "ACME,1/1/2024,10\nPolar,2024-05-05,3\n")
    sources = [
        Source(location=str(first), constants={"state": "CA"}, name="a"),
        Source(location=str(second), constants={"state": "CA"}, name="b"),
    ]
    summary = run(sources, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "notices.csv")
    assert [(r["company"], r["notice_date"], r["source"]) for r in rows] == [
        ("Acme", "2024-01-01", "a"),
        ("Zeta Corp", "2024-03-01", "a"),
        ("Polar", "2024-05-05", "b"),
    ]
    assert (summary.rows_in, summary.rows_out, summary.rows_duplicate) == (4, 3, 1)


def test_run_lets_constants_win_over_columns(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A source's constant sets its field on every row, whatever its column says."""
    path = write_csv("ia.csv", "Company,St,Notice Date\nAcme,TN,1/2/2024\nBeta,,1/3/2024\n")
    run([Source(location=str(path), constants={"state": "IA"})], tmp_path / "out")
    assert {r["state"] for r in read_rows(tmp_path / "out" / "notices.csv")} == {"IA"}


def test_run_reads_a_state_column_when_there_is_no_constant(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Without a constant the state column is read; a value that is no state is rejected."""
    path = write_csv(
        "us.csv", "Company,State,Notice Date\nAcme,Texas,1/2/2024\nBeta,Ontario,1/3/2024\n"
    )
    run([Source(location=str(path), name="us")], tmp_path / "out")
    assert [r["state"] for r in read_rows(tmp_path / "out" / "notices.csv")] == ["TX"]
    [reject] = read_rows(tmp_path / "out" / "rejects.csv")
    assert reject["reason"] == "state: 'Ontario' in 'State' is not a US state or territory"


def test_run_publishes_good_sources_when_others_fail(
    wa_source: Source, write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """An unreadable and an unmappable source are reported; the good one is published."""
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\x01\x02 not csv")
    unmappable = write_csv("foo.csv", "Foo,Bar\n1,2\n3,4\n")
    sources = [
        wa_source,
        Source(location=str(binary), constants={"state": "OK"}, name="binary"),
        Source(location=str(unmappable), constants={"state": "OK"}, name="foo"),
        Source(location=str(tmp_path / "missing.csv"), name="missing"),
    ]
    summary = run(sources, tmp_path / "out")
    assert summary.sources_failed == 3
    errors = {entry["source"]: entry["error"] for entry in summary.failures}
    assert "is not a CSV file (it holds binary data)" in errors["binary"]
    assert "has no column for the company" in errors["foo"]
    assert "aliases_file parameter" in errors["foo"]
    assert "not found: check the path" in errors["missing"]
    assert summary.rows_out == 3
    foo = [r for r in read_rows(tmp_path / "out" / "rejects.csv") if r["source"] == "foo"]
    assert [(r["record"], r["raw"]) for r in foo] == [("1", "1,2"), ("2", "3,4")]
    assert "has no company" in foo[0]["reason"]
    assert summary.rows_in == summary.rows_out + summary.rows_rejected + summary.rows_duplicate
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["sources_failed"] == 3


def test_run_in_strict_mode_writes_nothing_when_a_source_fails(
    wa_source: Source, write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """With strict, one unmappable source fails the run and the previous outputs stay."""
    run([wa_source], tmp_path / "out")
    before = tree_bytes(tmp_path / "out")
    unmappable = Source(location=str(write_csv("foo.csv", "Foo\n1\n")), constants={"state": "OK"})
    with pytest.raises(SourceError, match="1 of 2 sources failed, and strict mode writes nothing"):
        run([wa_source, unmappable], tmp_path / "out", strict=True)
    assert tree_bytes(tmp_path / "out") == before


def test_run_writes_nothing_when_every_source_fails(wa_source: Source, tmp_path: Path) -> None:
    """A run that could read no source keeps the previous outputs and says why."""
    run([wa_source], tmp_path / "out")
    before = tree_bytes(tmp_path / "out")
    with pytest.raises(SourceError, match="no source could be read, so nothing was written"):
        run([Source(location=str(tmp_path / "nope.csv"))], tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == before


def big_source(path: Path, rows: int) -> Source:
    """Write a source with quoted line breaks in most records, bad rows and duplicates."""
    lines = ["Company,Notice Date,Jobs,City,Notes"]
    for i in range(rows):
        note = f'"phase {i}\nsee letter, page {i % 3}"' if i % 4 else "plain"
        if i % 17 == 0:
            lines.append(f",2024-01-{1 + i % 28:02d},{i},Town {i % 7},{note}")
        elif i % 13 == 0:
            lines.append(
                f"FIRM {i - 1},2024-01-{1 + (i - 1) % 28:02d},{i - 1},town {(i - 1) % 7},{note}"
            )
        else:
            lines.append(f'"Firm {i}\nSuite {i}",2024-01-{1 + i % 28:02d},{i},Town {i % 7},{note}')
    lines.insert(rows // 2, f'Big Firm,2024-02-01,5,Town,"{"x" * (1 << 20)}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Source(location=str(path), constants={"state": "CA"}, name="big")


@pytest.mark.parametrize("size", [5_000, 13_001, 40_000, 250_000])
def test_run_split_gives_the_same_bytes_as_unsplit(tmp_path: Path, size: int) -> None:
    """A source of quoted line breaks split into ranges gives byte-identical outputs."""
    source = big_source(tmp_path / "big.csv", 3_000)
    whole = run([source], tmp_path / "whole")
    split = run([source], tmp_path / "split", partition_bytes=size)
    assert split.sources[0]["partitions"] > 1
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()
    assert whole.rows_rejected > 100 and whole.rows_duplicate > 100
    assert any(
        len(row["company"]) == len("Big Firm")
        for row in read_rows(tmp_path / "split" / "notices.csv")
    )


SECTIONS_TEXT = """Company,City,Notice Date,Employees Affected
Acme Foods,Topeka,1/2/2020,50
Company,City,Notice Date,Employees Affected
"Brick Co
Company,City,Notice Date,Employees Affected",Wichita,2/3/2020,12
Employer Name,Location,WARN Received Date,Layoff Date,Number of Workers,Closure
Cedar Mills,Salina,2021-03-04,2021-05-01,80,Yes
"Dune, Inc.",Lawrence,2021-04-05,2021-06-01,15,No
Employer Name,Location,WARN Received Date,Layoff Date,Number of Workers,Closure
Elm Works,Hays,2021-06-07,2021-08-01,7,No,late cell
"""
"""A state's file whose form changed: a second, wider table below the first, under its own
header; each header also repeated once, and a quoted cell that holds a header-like line."""


@pytest.mark.parametrize("size", [0, 40])
def test_run_reads_a_second_table_by_its_own_header(tmp_path: Path, size: int) -> None:
    """Rows below a second header are mapped by it; a repeated header is still a reject."""
    path = tmp_path / "ks.csv"
    path.write_text(SECTIONS_TEXT, encoding="utf-8")
    summary = run([Source(location=str(path), constants={"state": "KS"}, name="ks")], tmp_path / "out", size)  # fmt: skip
    notices = {row["company"]: row for row in read_rows(tmp_path / "out" / "notices.csv")}
    assert {
        k: notices["Cedar Mills"][k]
        for k in ("city", "notice_date", "effective_date", "jobs", "is_closure")
    } == {
        "city": "Salina",
        "notice_date": "2021-03-04",
        "effective_date": "2021-05-01",
        "jobs": "80",
        "is_closure": "true",
    }
    assert notices["Acme Foods"]["jobs"] == "50"
    assert notices["Brick Co Company,City,Notice Date,Employees Affected"]["city"] == "Wichita"
    rejects = read_rows(tmp_path / "out" / "rejects.csv")
    assert [(r["record"], r["reason"]) for r in rejects] == [
        ("2", "the row repeats the header"),
        ("7", "the row repeats the header"),
        ("8", "the row has values beyond the header's 6 columns: late cell"),
    ]
    [entry] = summary.sources
    [section] = entry["mapping"]["sections"]
    assert section["record"] == 4
    assert section["header"][0] == "Employer Name"
    assert section["fields"] == {
        "company": "Employer Name",
        "city": "Location",
        "notice_date": "WARN Received Date",
        "effective_date": "Layoff Date",
        "jobs": "Number of Workers",
    }
    assert entry["mapping"]["fields"]["jobs"] == "Employees Affected"
    assert (entry["rows_in"], entry["rows_kept"]) == (7, 4)


@pytest.mark.parametrize("size", [0, 30])
def test_run_maps_each_table_on_its_own_rows(tmp_path: Path, size: int) -> None:
    """A header over two lines, with a numbered column, starts a table mapped on its own rows."""
    rows = "".join(f"Bee {i},100{i} Main St,Hays,Closure,{i}\n" for i in range(12))
    path = tmp_path / "ks.csv"
    path.write_text(
        "\ufeffCompany,City,Notice Date,Employees Affected\nAcme Foods,Topeka,1/2/2020,50\n"
        'Employer Name,Address 1,City,Notice Type,"Number of\nWorkers"\n' + rows,
        encoding="utf-8",
    )
    summary = run([Source(location=str(path), constants={"state": "KS"}, name="ks")], tmp_path / "out", size)  # fmt: skip
    [entry] = summary.sources
    assert entry["mapping"]["fields"]["jobs"] == "Employees Affected"
    [section] = entry["mapping"]["sections"]
    assert section["record"] == 2
    assert section["fields"] == {"company": "Employer Name", "city": "City", "jobs": "Number of\nWorkers"}  # fmt: skip
    notices = {row["company"]: row for row in read_rows(tmp_path / "out" / "notices.csv")}
    assert (notices["Acme Foods"]["jobs"], notices["Acme Foods"]["notice_date"]) == ("50", "2020-01-02")  # fmt: skip
    assert (notices["Bee 7"]["city"], notices["Bee 7"]["jobs"], notices["Bee 7"]["is_closure"]) == ("Hays", "7", "true")  # fmt: skip
    assert (entry["rows_in"], entry["rows_kept"]) == (13, 13)


@pytest.mark.parametrize("size", [0, 20])
def test_run_rejects_the_rows_of_a_section_with_no_state_and_says_why(
    tmp_path: Path, size: int
) -> None:
    """A section without the state column the first table has: its rows are rejects, with the fix."""
    path = tmp_path / "ks.csv"
    path.write_text(
        "Company,State,Notice Date,Jobs\nAcme,KS,1/2/2020,5\n"
        "Employer Name,City,Notice Date,Number of Workers\nBee,Hays,2/3/2020,7\nCedar,Salina,,3\n",
        encoding="utf-8",
    )
    summary = run([Source(location=str(path), name="ks")], tmp_path / "out", size)
    [entry] = summary.sources
    assert [row["company"] for row in read_rows(tmp_path / "out" / "notices.csv")] == ["Acme"]
    rejects = read_rows(tmp_path / "out" / "rejects.csv")
    reason = (
        f"the section of source 'ks' from record 2 has no state column: give the state as a "
        f"constant, for example '{path}#state=TX', or add its state column's name to an alias "
        'file (state = ["..."])'
    )
    assert [(r["record"], r["reason"], r["raw"]) for r in rejects] == [
        ("3", f"{reason} (see summary.json)", "Bee,Hays,2/3/2020,7"),
        ("4", f"{reason} (see summary.json)", "Cedar,Salina,,3"),
    ]
    assert entry["mapping"]["sections"][0]["error"] == reason
    assert entry["rejected_by"] == {"section has no state": 2}
    assert entry["error"] is None and summary.sources_failed == 0


def test_run_takes_no_row_for_a_header(tmp_path: Path) -> None:
    """A row whose cells hold digits, or name too few fields, is a row, not a new header."""
    path = tmp_path / "ks.csv"
    path.write_text(
        "Company,City,Notice Date,Employees Affected\n"
        "Acme Foods,Topeka,1/2/2020,50\n"
        "Acme Company,Springfield Business Park,TBD,Unknown\n"
        "Employer Name,City,2/3/2020,Workers\n"
        "Note: Company,City,and Notice Date are as the employer reported them\n"
        "Brick Co,Wichita,2/3/2020,12\n",
        encoding="utf-8",
    )
    summary = run([Source(location=str(path), constants={"state": "KS"}, name="ks")], tmp_path / "out")  # fmt: skip
    [entry] = summary.sources
    assert "sections" not in entry["mapping"]
    assert entry["rows_in"] == 5


def test_run_gives_the_same_bytes_whatever_the_number_of_buckets(tmp_path: Path) -> None:
    """Merging in many key ranges gives the same output as in one, run after run."""
    source = big_source(tmp_path / "big.csv", 3_000)
    run([source], tmp_path / "one")
    run([source], tmp_path / "many", partition_bytes=20_000, merge_rows=300)
    run([source], tmp_path / "again", partition_bytes=20_000, merge_rows=300)
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        one = (tmp_path / "one" / name).read_bytes()
        assert (tmp_path / "many" / name).read_bytes() == one
        assert (tmp_path / "again" / name).read_bytes() == one


def test_plan_buckets_cuts_even_key_ranges(tmp_path: Path) -> None:
    """Key samples give about merge_rows notices per bucket, and ranges that join up."""
    parts = [
        etl.PartResult(
            0,
            0,
            rows_kept=1_000,
            keys=tuple(f"k{i:04d}" for i in range(0, 1_000, 10)),
            key_weight=10.0,
        )
    ]
    ranges = etl.plan_buckets(parts, merge_rows=250)
    assert len(ranges) == 4
    assert ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert etl.plan_buckets(parts, merge_rows=1_000) == [(None, None)]


def test_plan_buckets_cuts_one_per_transform_when_each_is_large_enough() -> None:
    """Where one bucket would do, one per transform (to run at once), none under the minimum."""
    rows = 3 * etl.MIN_BUCKET_ROWS
    parts = [
        etl.PartResult(
            0,
            0,
            rows_kept=rows,
            keys=tuple(f"k{i:04d}" for i in range(64)),
            key_weight=rows / 64,
        )
    ]
    assert len(etl.plan_buckets(parts, merge_rows=10 * rows, at_least=2)) == 2
    assert len(etl.plan_buckets(parts, merge_rows=10 * rows, at_least=8)) == 3
    assert etl.plan_buckets(parts, merge_rows=rows, at_least=1) == [(None, None)]
    assert len(etl.plan_buckets(parts, merge_rows=rows // 2, at_least=8)) == 2


def test_plan_batches_never_mixes_sources_and_keeps_order(tmp_path: Path) -> None:
    """Each batch holds one source's partitions, in source order, so each can be reused alone."""
    sources = [
        Source(location=str(SAMPLE / f"{stem}.csv"), constants={"state": stem.upper()})
        for stem in ("ca", "dc", "fl")
    ]
    plans = etl.plan_sources(sources, {}, {}, RULES, 0)
    assert [[p.plan.index for p in b] for b in etl.plan_batches(plans, 10_000)] == [[0], [1], [2]]
    split = etl.plan_sources(sources, {}, {}, RULES, 2_000)
    found = [[p.plan.index for p in b] for b in etl.plan_batches(split, 4_000)]
    assert [index for batch in found for index in batch] == sorted(
        index for batch in found for index in batch
    )
    assert all(len(set(batch)) == 1 for batch in found) and len(found) > 3


def test_batch_key_follows_the_bytes_mapping_and_version(tmp_path: Path) -> None:
    """The reuse key changes with the source's bytes, its constants, or the rules and code."""
    path = tmp_path / "wa.csv"
    path.write_text(WA_TEXT, encoding="utf-8")

    def key(
        text: str = WA_TEXT, state: str = "WA", version: str = "v1", encoding: str = "utf-8"
    ) -> str:
        path.write_text(text, encoding="utf-8")
        source = Source(
            location=str(path), constants={"state": state}, name="wa", encoding=encoding
        )
        plans = etl.plan_sources([source], {}, {}, RULES, 0)
        return etl.batch_key(etl.plan_batches(plans, 0)[0], version)

    same = key()
    assert key() == same
    assert key(WA_TEXT.replace("119", "120")) != same
    assert key(state="OR") != same
    assert key(version="v2") != same
    assert key(encoding="cp1252") != same, "another encoding reads other text"
    assert etl.reuse_version(RULES) == etl.reuse_version(load_rules())
    aliases = tmp_path / "aliases.toml"
    aliases.write_text('jobs = ["Headcount"]\n', encoding="utf-8")
    assert etl.reuse_version(load_rules(aliases)) != etl.reuse_version(RULES)


def test_plan_batches_makes_even_batches_within_the_limit() -> None:
    """Batches are as few as the limit allows and of even size; none passes the limit."""
    plan = etl.SourcePlan(0, Source(location="x.csv"), "x.csv")

    def batches(sizes: list[int], limit: int) -> list[list[int]]:
        starts = list(itertools.accumulate([0, *sizes]))
        source = replace(plan, ranges=tuple(itertools.pairwise(starts)))
        found = etl.plan_batches([source], limit)
        assert [p for batch in found for p in batch] == etl.partitions_of(source)
        return [[p.end - p.start for p in batch] for batch in found]

    assert batches([36, 36, 36, 34], 128) == [[36, 36], [36, 34]]
    assert batches([64, 64, 14], 128) == [[64], [64, 14]]
    assert batches([100, 10, 10, 10], 128) == [[100], [10, 10, 10]]
    assert batches([300, 10], 128) == [[300], [10]]
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(1, 64) for _ in range(rng.randint(1, 40))]
        found = batches(sizes, 128)
        assert all(sum(batch) <= 128 for batch in found)


def test_write_notices_writes_the_chunks_in_bucket_order_and_refuses_disorder(
    tmp_path: Path,
) -> None:
    """notices.csv is the header then the chunks in bucket order; buckets out of order are refused."""
    chunks = []
    for index in range(3):
        chunk = tmp_path / f"chunk-{index}.csv"
        chunk.write_text(f"row {index}\n")
        chunks.append(etl.BucketResult(index, 1, 0, str(chunk)))
    assert etl.write_notices(chunks, str(tmp_path / "run")) == chunks
    assert (tmp_path / "run" / etl.NOTICES_FILE).read_text().splitlines() == [
        ",".join(NOTICE_FIELDS), "row 0", "row 1", "row 2",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="merge bucket 0 came out of order"):
        etl.write_notices([chunks[1], chunks[0]], str(tmp_path / "other"))


def test_summary_counts_add_up_and_describe_each_source(wa_source: Source, tmp_path: Path) -> None:
    """summary.json holds the totals, and for each source its mapping and counts."""
    summary = run([wa_source], tmp_path / "out")
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == json.loads(summary.to_json())
    assert (
        written["rows_in"]
        == written["rows_out"] + written["rows_rejected"] + written["rows_duplicate"]
    )
    [entry] = written["sources"]
    assert entry["mapping"]["fields"] == {
        "company": "Company", "notice_date": "Received Date", "effective_date": "Layoff Start Date",
        "jobs": "# of Workers", "city": "Location",
    }  # fmt: skip
    assert entry["mapping"]["kind_columns"] == ["Closure Layoff", "Type of Layoff"]
    assert entry["mapping"]["constants"] == {"state": "WA"}


def test_summarise_refuses_counts_that_do_not_add_up() -> None:
    """A lost row is a bug, so the summary refuses to be written."""
    plan = etl.SourcePlan(0, Source(location="a"), "a")
    part = etl.PartResult(0, 0, rows_in=5, rows_kept=4, rows_rejected=1)
    bucket = etl.BucketResult(0, rows_out=3, rows_duplicate=0, path=None)
    with pytest.raises(RuntimeError, match="do not add up"):
        etl.summarise([plan], [part], [bucket], "out", etl.utc_now())


def test_prepare_output_refuses_an_unwritable_location(tmp_path: Path) -> None:
    """An output location that cannot be created names the setting and the fix."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="--output or PYFLOW_OUTPUT"):
        etl.prepare_output(str(blocker / "out"))


def test_fetch_source_downloads_over_http(http_sources: HttpSources, tmp_path: Path) -> None:
    """An HTTP(S) source is downloaded into the run's folder and read from there."""
    url = http_sources.add("/ok.csv", WA_TEXT)
    location = etl.fetch_source(Source(location=url), str(tmp_path), timeout=5)
    assert Path(location).read_text() == WA_TEXT
    assert Path(location).parent == tmp_path / "fetched"


@pytest.mark.parametrize(
    ("status", "kind"), [(503, FetchError), (500, FetchError), (404, SourceError)]
)
def test_fetch_source_tells_transient_from_permanent_failures(
    http_sources: HttpSources, tmp_path: Path, status: int, kind: type[SourceError]
) -> None:
    """5xx answers may pass and are retried (FetchError); a 404 will not and is not."""
    url = http_sources.add("/x.csv", failures=99, status=status)
    with pytest.raises(SourceError, match=f"answered HTTP {status}") as raised:
        etl.fetch_source(Source(location=url), str(tmp_path), timeout=5)
    assert type(raised.value) is kind
    assert not (tmp_path / "fetched").exists() or not list((tmp_path / "fetched").iterdir())


def test_fetch_source_reports_an_unreachable_server(tmp_path: Path) -> None:
    """A server that refuses the connection gives a FetchError naming the URL."""
    with pytest.raises(FetchError, match=r"could not be fetched .*check the URL and the network"):
        etl.fetch_source(Source(location="http://127.0.0.1:9/x.csv"), str(tmp_path), timeout=2)


def test_fetch_source_refuses_a_missing_file(tmp_path: Path) -> None:
    """A local source that does not exist names the option and setting to fix."""
    with pytest.raises(
        SourceError, match=r"'nope\.csv' not found: .*--source or the sources parameter"
    ):
        etl.fetch_source(Source(location="nope.csv"), str(tmp_path), timeout=5)


def test_run_escapes_cells_a_spreadsheet_would_read_as_formulas(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Text cells starting with = + - @ get a leading quote; counts and other cells do not."""
    text = (
        "Company,City,Notice Date,Jobs\n"
        '"=HYPERLINK(""http://x"",""y"")",+1 Town,1/2/2024,-5\n'
        "@SUM(A1),-Springfield,1/3/2024,7\n"
        "Acme,Springfield,1/4/2024,3\n"
        "=1+1,Town,1/5/2024,4,late cell\n"
    )
    source = Source(location=str(write_csv("x.csv", text)), constants={"state": "OH"}, name="=x")
    run([source], tmp_path / "out")
    notices = {row["notice_date"]: row for row in read_rows(tmp_path / "out" / "notices.csv")}
    assert notices["2024-01-02"]["company"] == '\'=HYPERLINK("http://x","y")'
    assert notices["2024-01-02"]["city"] == "'+1 Town"
    assert notices["2024-01-02"]["jobs"] == "5"
    assert notices["2024-01-03"]["company"] == "'@SUM(A1)"
    assert notices["2024-01-03"]["city"] == "'-Springfield"
    assert (notices["2024-01-04"]["company"], notices["2024-01-04"]["city"]) == (
        "Acme",
        "Springfield",
    )
    assert {row["source"] for row in notices.values()} == {"'=x"}
    [reject] = read_rows(tmp_path / "out" / "rejects.csv")
    assert (reject["source"], reject["raw"]) == ("'=x", "'=1+1,Town,1/5/2024,4,late cell")
    assert '\'=HYPERLINK(""http://x"",""y"")",' in (tmp_path / "out" / "notices.csv").read_text()


def test_defused_prefixes_exactly_the_formula_starts() -> None:
    """Each of = + - @ tab and carriage return at the start gets a quote; other cells stay."""
    cells = ["=A1", "+1", "-1", "@x", "\tx", "\rx", "a=b", "'=x", "", None, " =x"]
    frame = pl.DataFrame({"cell": cells}, schema={"cell": pl.String})
    assert frame.select(etl.defused("cell")).get_column("cell").to_list() == [
        "'=A1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "a=b", "'=x", "", None, " =x",
    ]  # fmt: skip


def test_run_gives_the_same_bytes_with_its_work_folder_on_a_tmpfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TMPDIR on a tmpfs and the output on the disk (copy_file_range refused): same outputs."""
    source = big_source(tmp_path / "big.csv", 3_000)
    run([source], tmp_path / "disk", partition_bytes=20_000, merge_rows=300)
    with tmpfs(tmp_path / "tmpfs", "64m") as temporary:
        monkeypatch.setattr(tempfile, "tempdir", str(temporary))
        run([source], tmp_path / "both", partition_bytes=20_000, merge_rows=300)
        assert not [p for p in temporary.iterdir() if p.name.startswith("pyflow-")]
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        assert (tmp_path / "both" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes()


def test_append_file_copies_across_file_systems(tmp_path: Path) -> None:
    """A chunk on a tmpfs is appended to a file on the disk, where the kernel refuses to copy."""
    with tmpfs(tmp_path / "tmpfs", "4m") as folder:
        chunk = folder / "chunk.csv"
        chunk.write_bytes(b"".join(b"row %d\n" % i for i in range(100_000)))
        target = tmp_path / "out.csv"
        with target.open("wb") as out:
            out.write(b"header\n")
            etl.append_file(out, str(chunk))
            out.write(b"end\n")
        assert target.read_bytes() == b"header\n" + chunk.read_bytes() + b"end\n"
        with chunk.open("rb") as source, (tmp_path / "probe").open("wb") as probe:
            assert etl._copy_range(source.fileno(), probe.fileno()) == 0, "the kernel copied"


def test_run_on_a_full_disk_raises_one_error_and_keeps_the_previous_outputs(
    wa_source: Source, tmp_path: Path
) -> None:
    """ENOSPC while writing a run: an OutputError naming the file and the fix; nothing changes."""
    with tmpfs(tmp_path / "small", "1m") as out:
        run([wa_source], out)
        before = tree_bytes(out)
        big = big_source(tmp_path / "big.csv", 30_000)
        with pytest.raises(OutputError) as raised:
            run([big], out)
        message = str(raised.value)
        assert message.startswith(f"cannot write {out}/runs/")
        assert (
            "no space is left on its disk: free some space, or choose another location with "
            "--output or PYFLOW_OUTPUT; the previous outputs are as they were" in message
        )
        assert "\n" not in message
        assert tree_bytes(out) == before


@pytest.fixture
def signed_server(http_sources: HttpSources) -> str:
    """A real HTTP server on loopback that serves /x.csv only with user:secret and a signature."""
    http_sources.add(f"/x.csv?X-Goog-Signature={SIGNATURE}", WA_TEXT, auth="user:secret")
    return http_sources.base_url.removeprefix("http://")


SIGNATURE = "abc-sig"
"""The query-string secret of the signed URLs; "abc" alone could be in a hex id by chance."""


def test_fetch_source_uses_credentials_but_never_shows_them(
    signed_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole URL fetches the file; its label, errors and logs have no password or query."""
    caplog.set_level(logging.DEBUG)
    url = f"http://user:secret@{signed_server}/x.csv?X-Goog-Signature={SIGNATURE}"
    source = Source.model_validate(f"{url}#state=WA")
    location = etl.fetch_source(source, str(tmp_path), timeout=5)
    assert Path(location).read_text() == WA_TEXT
    assert source.label == f"http://{signed_server}/x.csv"
    for wrong in (url.replace("x.csv", "y.csv"), url.replace("secret", "wrong")):
        with pytest.raises(SourceError) as raised:
            etl.fetch_source(Source(location=wrong), str(tmp_path), timeout=5)
        assert "answered HTTP 40" in str(raised.value)
        assert "secret" not in str(raised.value) and SIGNATURE not in str(raised.value)
    assert "HTTP Request: GET" in caplog.text, "httpx logged its requests"
    assert "secret" not in caplog.text and SIGNATURE not in caplog.text


def test_run_labels_a_url_source_without_its_credentials(
    signed_server: str, tmp_path: Path
) -> None:
    """The source column, rejects and summary.json of a signed URL hold no secret."""
    url = f"http://user:secret@{signed_server}/x.csv?X-Goog-Signature={SIGNATURE}"
    missing = url.replace("x.csv", "gone.csv")
    summary = run(
        [Source.model_validate(f"{url}#state=WA"), Source.model_validate(missing)],
        tmp_path / "out",
    )
    assert {row["source"] for row in read_rows(tmp_path / "out" / "notices.csv")} == {
        f"http://{signed_server}/x.csv"
    }
    assert [entry["location"] for entry in summary.sources] == [
        f"http://{signed_server}/x.csv",
        f"http://{signed_server}/gone.csv",
    ]
    assert summary.failures[0]["error"] == (
        f"source 'http://{signed_server}/gone.csv' answered HTTP 404: check the URL"
    )
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert (
                b"secret" not in path.read_bytes() and SIGNATURE.encode() not in path.read_bytes()
            )


def test_run_fails_a_source_that_drops_to_no_rows(
    wa_source: Source, write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A source that read rows in the published run and none now fails; the others publish."""
    other = Source(
        location=str(write_csv("oh.csv", "Company,Notice Date\nAcme,1/2/2024\n")),
        constants={"state": "OH"},
        name="oh",
    )
    run([wa_source, other], tmp_path / "out")
    Path(wa_source.location).write_text("Company," + "x" * (1 << 20))  # one long line, no rows
    summary = run([wa_source, other], tmp_path / "out")
    [failure] = summary.failures
    assert failure["source"] == "wa"
    assert failure["error"] == (
        f"source 'wa' gave no rows, but 7 were read from it before (as the published run "
        f"latest.json names, {summary_of(tmp_path / 'out', 1)['run']}, records): check the file "
        "(a truncated download, an export of one line, a changed layout) and run again, or pass "
        "allow_empty=true (--param allow_empty=true, or the deployment's parameters) if it is "
        "really empty now"
    )
    assert [row["source"] for row in read_rows(tmp_path / "out" / "notices.csv")] == ["oh"]
    assert json.loads((tmp_path / "out" / "latest.json").read_text())["run"] == summary.run
    [still] = run([wa_source, other], tmp_path / "out").failures
    assert still["error"].startswith("source 'wa' gave no rows, but 7 were read from it before (")
    assert summary.run in still["error"], "running again does not let it through"
    again = run([wa_source, other], tmp_path / "out", allow_empty=True)
    assert again.failures == [], "allowed, it is published empty"
    assert run([wa_source, other], tmp_path / "out").failures == [], "now empty is the norm"


def test_run_in_strict_mode_writes_nothing_when_a_source_drops_to_no_rows(
    wa_source: Source, tmp_path: Path
) -> None:
    """With strict, a source that gave rows before and none now fails the run before writing."""
    run([wa_source], tmp_path / "out")
    before = tree_bytes(tmp_path / "out")
    Path(wa_source.location).write_text("Company,Location\n")
    with pytest.raises(SourceError, match=r"no source could be read.*source 'wa' gave no rows"):
        run([wa_source], tmp_path / "out", strict=True)
    assert tree_bytes(tmp_path / "out") == before


def summary_of(output: Path, back: int = 0) -> dict[str, Any]:
    """Return the summary of the latest run in an output, or of the run ``back`` runs before it."""
    runs = sorted((output / "runs").iterdir())
    return json.loads((runs[-1 - back] / "summary.json").read_text())  # type: ignore[no-any-return]
