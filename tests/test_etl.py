"""Tests of the ETL functions: fetch, transform, merge, summary, run on real files and HTTP."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import HttpSources
from pyflow import etl
from pyflow.errors import FetchError, OutputError, SourceError
from pyflow.schema import Source, load_aliases

ALIASES = load_aliases()

CA_TEXT = """Notice Date,Company,City,No. Of Employees,Effective Date
01/08/2024,Sunrise Foods LLC,Fresno,112,03/08/2024
01/09/2024,,Oakland,30,
01/10/2024,Acme,Oakland,12
not a date,Redwood,Sacramento,5,

01/11/2024,SUNRISE FOODS LLC,fresno,112,03/08/2024
"""


def run_etl(
    sources: list[Source],
    output: Path,
    run_rows: int = etl.RUN_ROWS,
    partition_bytes: int = 0,
) -> etl.Summary:
    """Run every step in order, in this process, as the flow does."""
    location = etl.prepare_output(str(output))
    work_dir = etl.new_work_dir(location)
    partitions = [
        partition
        for index, source in enumerate(sources)
        for partition in etl.plan_partitions(
            index, source, etl.fetch_source(source, work_dir, 5), partition_bytes
        )
    ]
    parts = [etl.transform_source(p, ALIASES, work_dir, run_rows) for p in partitions]
    merged = etl.merge_outputs(parts, location, work_dir)
    summary = etl.summarise(sources, parts, merged, etl.utc_now())
    etl.write_summary(summary, work_dir)
    etl.publish_outputs(work_dir, location)
    etl.remove_work_dir(work_dir)
    return summary


def whole(source: Source, path: Path | None = None) -> etl.Partition:
    """Return the one partition that covers a whole source."""
    return etl.Partition(0, 0, source, str(path or source.location))


def read_rows(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into dictionaries."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_transform_source_rejects_each_bad_row_with_its_line(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Every invalid row goes to the rejects with its source, line number and reason."""
    path = write_csv("ca.csv", CA_TEXT)
    source = Source(location=str(path), constants={"state": "CA"}, name="ca")
    summary = run_etl([source], tmp_path / "out")
    rejects = read_rows(tmp_path / "out" / "rejects.csv")
    assert [(r["source"], r["line"], r["reason"]) for r in rejects] == [
        ("ca", "3", "company: missing"),
        ("ca", "4", "has 4 fields, the header has 5"),
        ("ca", "5", "notice_date: unrecognised date 'not a date'"),
        ("ca", "6", "empty row"),
    ]
    assert rejects[1]["raw"] == "01/10/2024,Acme,Oakland,12"
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (6, 2, 4)


def test_transform_source_fills_missing_fields_from_constants(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A source's constants fill fields its file lacks, and blank cells of fields it has."""
    path = write_csv("x.csv", "Employer,Date Received,Number Affected,City\nAcme,2024-02-01,9,\n")
    source = Source(location=str(path), constants={"state": "OR", "city": "Salem"})
    run_etl([source], tmp_path / "out")
    [row] = read_rows(tmp_path / "out" / "notices.csv")
    assert row == {
        "state": "OR",
        "company": "Acme",
        "city": "Salem",
        "notice_date": "2024-02-01",
        "effective_date": "",
        "jobs": "9",
        "source": str(path),
    }


def test_transform_source_names_a_missing_required_column(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A file with no column for a required field fails, naming the field, aliases and fix."""
    path = write_csv("x.csv", "Employer,Date Received,City\nAcme,2024-02-01,Salem\n")
    with pytest.raises(SourceError) as raised:
        etl.transform_source(whole(Source(location=str(path))), ALIASES, str(tmp_path))
    message = str(raised.value)
    assert "no column for 'state'" in message
    assert "'jobs' (looked for: # of workers" in message
    assert "PYFLOW_ALIASES_FILE" in message
    assert f"'{path}#state=...'" in message


def test_transform_source_names_the_encoding_fix(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A file that is not UTF-8 fails with a message that says how to name its encoding."""
    path = tmp_path / "latin.csv"
    path.write_bytes(
        "Company,State,Notice Date,Jobs\nCaf\xe9 Uno,CA,2024-01-01,5\n".encode("cp1252")
    )
    with pytest.raises(SourceError, match="#encoding=cp1252"):
        etl.transform_source(whole(Source(location=str(path))), ALIASES, str(tmp_path))
    part = etl.transform_source(
        whole(Source(location=str(path), encoding="cp1252")), ALIASES, str(tmp_path)
    )
    assert (part.rows_in, part.rows_rejected) == (1, 0)


def test_transform_source_refuses_an_empty_file(tmp_path: Path) -> None:
    """A file with no header row fails with a clear message."""
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(SourceError, match="is empty: it needs a header row"):
        etl.transform_source(whole(Source(location=str(path))), ALIASES, str(tmp_path))


def test_merge_outputs_drops_duplicates_across_sources_and_keeps_a_stable_order(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """The same notice in two sources is written once, from the first source, in key order."""
    header = "State,Company,Notice Date,Jobs\n"
    first = write_csv("a.csv", header + "TX,Zeta Corp,2024-03-01,5\nCA,Acme,2024-01-01,10\n")
    second = write_csv("b.csv", header + "CA,ACME,1/1/2024,10\nAK,Polar,2024-05-05,3\n")
    sources = [Source(location=str(first), name="a"), Source(location=str(second), name="b")]
    summary = run_etl(sources, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "notices.csv")
    assert [(r["state"], r["company"], r["source"]) for r in rows] == [
        ("AK", "Polar", "b"),
        ("CA", "Acme", "a"),
        ("TX", "Zeta Corp", "a"),
    ]
    assert (summary.rows_in, summary.rows_out, summary.rows_duplicate) == (4, 3, 1)


def test_run_gives_byte_identical_outputs_whatever_the_run_size(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Outputs are the same bytes run after run, and however many run files the rows spill to."""
    sample = Path(__file__).resolve().parent.parent / "pyflow" / "sample"
    sources = [
        Source(location=str(sample / "ca.csv"), constants={"state": "CA"}, name="ca"),
        Source(location=str(sample / "ny.csv"), name="ny"),
        Source(location=str(write_csv("dup.csv", CA_TEXT)), constants={"state": "CA"}),
    ]
    run_etl(sources, tmp_path / "one")
    run_etl(sources, tmp_path / "two", run_rows=2)
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not (tmp_path / "two" / etl.WORK_DIR_NAME).exists()


def test_summarise_counts_always_add_up(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """rows_in = rows_out + rows_rejected + rows_duplicate, and summary.json says so."""
    summary = run_etl(
        [Source(location=str(write_csv("ca.csv", CA_TEXT)), constants={"state": "CA"})],
        tmp_path / "out",
    )
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (
        written["rows_in"]
        == written["rows_out"] + written["rows_rejected"] + written["rows_duplicate"]
    )
    assert written == json.loads(summary.to_json())
    assert set(written) >= {
        "sources",
        "rows_in",
        "rows_out",
        "rows_rejected",
        "rows_duplicate",
        "started_at",
        "finished_at",
    }


def test_summarise_refuses_counts_that_do_not_add_up() -> None:
    """A lost row is a bug, so the summary refuses to be written."""
    part = etl.PartResult("a", rows_in=5, rows_rejected=1)
    merged = etl.MergeResult(rows_out=3, rows_duplicate=0, notices="n", rejects="r")
    with pytest.raises(RuntimeError, match="do not add up"):
        etl.summarise([Source(location="a")], [part], merged, etl.utc_now())


def test_merge_outputs_keeps_the_previous_files_when_it_fails(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A merge that fails half-way leaves the good outputs in place and nothing new beside them."""
    output = tmp_path / "out"
    sources = [Source(location=str(write_csv("ca.csv", CA_TEXT)), constants={"state": "CA"})]
    run_etl(sources, output)
    before = {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()}
    broken = etl.PartResult("x", 1, 0, notice_runs=[str(tmp_path / "missing.run")])
    work_dir = etl.new_work_dir(str(output))
    with pytest.raises(FileNotFoundError):
        etl.merge_outputs([broken], str(output), work_dir)
    etl.remove_work_dir(work_dir)
    after = {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in output.iterdir()) == [
        "notices.csv",
        "rejects.csv",
        "summary.json",
    ]


def test_publish_outputs_moves_all_three_files_only_when_staged(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Staged outputs replace the old ones together; with one missing, the data files stay put."""
    output = tmp_path / "out"
    sources = [Source(location=str(write_csv("ca.csv", CA_TEXT)), constants={"state": "CA"})]
    run_etl(sources, output)
    work_dir = etl.new_work_dir(str(output))
    for name in ("notices.csv", "rejects.csv", "summary.json"):
        Path(etl.staged_path(work_dir, name)).parent.mkdir(parents=True, exist_ok=True)
        Path(etl.staged_path(work_dir, name)).write_text(f"new {name}\n")
    assert etl.publish_outputs(work_dir, str(output)) == [
        str(output / name) for name in ("notices.csv", "rejects.csv", "summary.json")
    ]
    assert (output / "summary.json").read_text() == "new summary.json\n"
    assert (output / "notices.csv").read_text() == "new notices.csv\n"


def test_transform_source_rejects_a_row_with_a_line_break_inside_a_field(
    write_csv: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """A bad row whose quoted field holds a line break is rejected whole, its raw text intact."""
    path = write_csv(
        "x.csv",
        'Company,State,Notice Date,Jobs\n"Acme\nWest",CA,2024-01-02,ten\nBeta,CA,2024-01-03,4\n',
    )
    summary = run_etl([Source(location=str(path), name="x")], tmp_path / "out")
    [reject] = read_rows(tmp_path / "out" / "rejects.csv")
    assert reject["reason"] == "jobs: 'ten' is not a number"
    assert reject["line"] == "2"
    assert reject["raw"] == '"Acme\nWest",CA,2024-01-02,ten'
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (2, 1, 1)


def test_prepare_output_refuses_an_unwritable_location(tmp_path: Path) -> None:
    """An output location that cannot be created names the setting and the fix."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="--output or PYFLOW_OUTPUT"):
        etl.prepare_output(str(blocker / "out"))


def test_fetch_source_downloads_over_http(http_sources: HttpSources, tmp_path: Path) -> None:
    """An HTTP(S) source is downloaded into the run's folder and read from there."""
    url = http_sources.add("/ok.csv", CA_TEXT)
    location = etl.fetch_source(Source(location=url), str(tmp_path), timeout=5)
    assert Path(location).read_text() == CA_TEXT
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
    with pytest.raises(SourceError, match=r"'nope\.csv' not found: .*--source or PYFLOW_SOURCES"):
        etl.fetch_source(Source(location="nope.csv"), str(tmp_path), timeout=5)


def big_source(path: Path, rows: int) -> Source:
    """Write a source of ``rows`` rows with some bad rows and duplicates; return it."""
    lines = ["Company,Notice Date,Jobs,City"]
    for i in range(rows):
        if i % 17 == 0:
            lines.append(f"Firm {i},not a date,{i + 1},Town {i % 7}")
        elif i % 13 == 0:
            lines.append(f"FIRM {i - 1},2024-01-{1 + (i - 1) % 28:02d},{i},town {(i - 1) % 7}")
        else:
            lines.append(f"Firm {i},2024-01-{1 + i % 28:02d},{i + 1},Town {i % 7}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Source(location=str(path), constants={"state": "CA"}, name="big")


def test_plan_partitions_covers_the_file_in_byte_ranges(tmp_path: Path) -> None:
    """A file larger than the partition size is split into contiguous ranges covering all of it."""
    source = big_source(tmp_path / "big.csv", 500)
    size = (tmp_path / "big.csv").stat().st_size
    partitions = etl.plan_partitions(3, source, source.location, size // 4 + 1)
    assert len(partitions) == 4
    assert partitions[0].start == 0 and partitions[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(partitions))
    assert {p.source_index for p in partitions} == {3}
    assert etl.plan_partitions(3, source, source.location, 0) == [
        etl.Partition(3, 0, source, source.location)
    ]
    assert len(etl.plan_partitions(3, source, source.location, size)) == 1


@pytest.mark.parametrize("parts", [2, 3, 7, 50])
def test_transform_source_split_gives_the_same_output_as_unsplit(
    tmp_path: Path, parts: int
) -> None:
    """A source split into partitions gives byte-identical outputs, line numbers included."""
    source = big_source(tmp_path / "big.csv", 2000)
    size = (tmp_path / "big.csv").stat().st_size
    whole_run = run_etl([source], tmp_path / "whole")
    split_run = run_etl([source], tmp_path / "split", run_rows=97, partition_bytes=size // parts)
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()
    assert (whole_run.rows_in, whole_run.rows_duplicate) == (
        split_run.rows_in,
        split_run.rows_duplicate,
    )
    assert whole_run.rows_rejected > 100 and whole_run.rows_duplicate > 100
    rejects = read_rows(tmp_path / "split" / "rejects.csv")
    assert rejects[0]["line"] == "2" and rejects[0]["raw"].startswith("Firm 0,not a date")
    line = int(rejects[-1]["line"])
    assert (tmp_path / "big.csv").read_text().splitlines()[line - 1] == rejects[-1]["raw"]


@pytest.mark.parametrize(
    "values",
    [
        ("a", "b", ""),
        ("comma, inside", 'quote " inside', "line\nbreak", " padded "),
        ("", "", ""),
        ("plain",),
    ],
)
def test_csv_line_matches_the_csv_module(values: tuple[str, ...]) -> None:
    """The fast CSV renderer writes exactly what csv.writer writes, quoting included."""
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerow(values)
    assert etl.csv_line(values) == expected.getvalue()


def test_csv_line_quotes_a_carriage_return_so_it_reads_back() -> None:
    """A carriage return inside a value is quoted, so a CSV reader gets the value back whole."""
    values = ("cr\rreturn", "x")
    line = etl.csv_line(values)
    assert line == '"cr\rreturn",x\n'
    assert next(csv.reader(io.StringIO(line, newline=""))) == list(values)
