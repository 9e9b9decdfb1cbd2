"""The example flow on what 44 states really publish, against the peer's output on the same files.

The files are in ../shared/warn-data (raw/ and reference/, see its README), beside the
project's checkout, not in the package; without them these tests are skipped, saying so.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import make_day_two
from pyflow.warn import changes, etl
from pyflow.warn.columns import load_rules
from pyflow.warn.schema import Source

RULES = load_rules()
RAW_ROWS = 50_839
"""Non-blank records in the 44 raw files, as Python's csv module counts them (the README's)."""


def state_sources(raw: Path) -> list[Source]:
    """Each raw file as a source, its state (the file's name) as a constant."""
    return [
        Source(location=str(path), constants={"state": path.stem.upper()}, name=path.name)
        for path in sorted(raw.glob("*.csv"))
    ]


@pytest.fixture(scope="module")
def real_run(warn_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[etl.Summary, Path]:
    """One run over the 44 files, shared by the tests of this module."""
    output = tmp_path_factory.mktemp("real")
    return etl.run_local(state_sources(warn_data / "raw"), str(output), RULES, 0), output


def test_real_data_counts_every_row_fails_no_source_and_keeps_nearly_all(
    real_run: tuple[etl.Summary, Path], warn_data: Path
) -> None:
    """All 50,839 records are rows or a section's header, none fails, >= 99.5 % are kept."""
    summary, _ = real_run
    csv.field_size_limit(sys.maxsize)
    counted = 0
    for path in sorted((warn_data / "raw").glob("*.csv")):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            next(rows)
            counted += sum(1 for row in rows if any(cell.strip() for cell in row))
    sections = [
        (entry["source"], section["record"])
        for entry in summary.sources
        for section in entry["mapping"].get("sections", [])
    ]
    assert sections == [("co.csv", 231)]
    assert summary.rows_in + len(sections) == counted == RAW_ROWS
    assert summary.sources_failed == 0
    assert summary.rows_in == summary.rows_out + summary.rows_rejected + summary.rows_duplicate
    assert (summary.rows_out + summary.rows_duplicate) / summary.rows_in >= 0.995


def test_real_data_agrees_with_the_peer_on_jobs_and_effective_dates(
    real_run: tuple[etl.Summary, Path], warn_data: Path
) -> None:
    """Where a notice matches the peer's on state, company and notice date, >= 97 % agree."""
    _, output = real_run
    ours = pl.read_csv(output / "notices.csv", infer_schema=False).fill_null("")
    peer = (
        pl.read_csv(warn_data / "reference" / "transformed.csv", infer_schema=False)
        .rename({"postal_code": "state"})
        .with_columns(pl.col("jobs").str.replace(r"\.0$", ""))
        .fill_null("")
        .group_by("state", "company", "notice_date")
        .agg(pl.col("jobs").alias("peer_jobs"), pl.col("effective_date").alias("peer_effective"))
    )
    matched = ours.join(peer, on=["state", "company", "notice_date"], how="inner")
    assert matched.height > 40_000
    jobs = matched.select(pl.col("peer_jobs").list.contains(pl.col("jobs")).mean()).item()
    effective = matched.select(
        pl.col("peer_effective").list.contains(pl.col("effective_date")).mean()
    ).item()
    assert jobs >= 0.97
    assert effective >= 0.97


def test_real_data_rejects_say_why(real_run: tuple[etl.Summary, Path]) -> None:
    """Every reject names its source, record and a reason; the raw row is kept."""
    _, output = real_run
    rejects = pl.read_csv(output / "rejects.csv", infer_schema=False)
    assert rejects.height == real_run[0].rows_rejected
    assert rejects.filter(pl.col("reason").is_null() | pl.col("raw").is_null()).is_empty()
    assert set(rejects["reason"].str.extract(r"^(company|the row|state)")) <= {
        "company",
        "the row",
        "state",
    }


def test_real_data_split_into_small_ranges_gives_the_same_bytes(
    real_run: tuple[etl.Summary, Path], warn_data: Path, tmp_path: Path
) -> None:
    """The states whose records hold line breaks, cut into 50 kB ranges, give the same outputs."""
    sources = [s for s in state_sources(warn_data / "raw") if s.name in {"ca.csv", "fl.csv", "ga.csv", "il.csv", "pa.csv", "tx.csv", "wi.csv"}]  # fmt: skip
    whole = etl.run_local(sources, str(tmp_path / "whole"), RULES, 0)
    split = etl.run_local(sources, str(tmp_path / "split"), RULES, 50_000)
    assert sum(entry["partitions"] for entry in split.sources) > 60
    for name in (etl.NOTICES_FILE, etl.REJECTS_FILE):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()
    assert whole.rows_in == split.rows_in


def test_real_data_day_two_finds_every_change_and_keeps_first_seen(
    warn_data: Path, tmp_path: Path
) -> None:
    """Run, run again, then run on a second day where states amended, removed and added notices."""
    folder = tmp_path / "raw"
    shutil.copytree(warn_data / "raw", folder)
    out = tmp_path / "out"
    first = etl.run_local(state_sources(folder), str(out), RULES, 0)
    again = etl.run_local(state_sources(folder), str(out), RULES, 0)
    assert [again.changes[kind] for kind in changes.KINDS] == [0, 0, 0]
    made = make_day_two(folder, out / "summary.json")
    assert len(made.states) >= 30
    etl.run_local(state_sources(folder), str(out), RULES, 0)
    with (out / "changes.csv").open(newline="", encoding="utf-8") as handle:
        found = list(csv.DictReader(handle))
    by_kind = {
        kind: {(r["state"], r["company"]) for r in found if r["change"] == kind}
        for kind in changes.KINDS
    }
    assert by_kind == {"added": made.added, "amended": made.amended, "removed": made.removed}
    touched = {r["previous_notice_id"] or r["notice_id"] for r in found}
    unchanged = set(pl.read_csv(again.notices, infer_schema=False)["notice_id"]) - touched
    integrated = pl.read_csv(out / "integrated.csv", infer_schema=False)
    kept = integrated.filter(pl.col("notice_id").is_in(list(unchanged)))
    assert kept.height == len(unchanged)
    assert set(kept["first_seen"]) == {first.started_at}
    assert set(kept["status"]) == {"current"}
