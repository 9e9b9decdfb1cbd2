"""Tests of the Prefect tasks' own logic, called through `.fn()` without a run logger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger
from prefect.states import Completed, Failed

from conftest import SAMPLE
from pyflow.warn import etl, tasks
from pyflow.warn.columns import load_rules
from pyflow.warn.errors import FetchError, SourceError
from pyflow.warn.schema import Source
from pyflow_kit.testing import HttpSources


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (FetchError("503"), True),
        (SourceError("missing"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient_retries_only_network_failures(error: Exception, retried: bool) -> None:
    """Only FetchError (timeouts, dropped connections, 5xx) is worth another try."""
    assert tasks.is_transient(None, None, Failed(data=error)) is retried
    assert tasks.is_transient(None, None, Completed(data=1)) is False


def test_fetch_then_plan_splits_a_downloaded_source(
    http_sources: HttpSources, tmp_path: Path
) -> None:
    """An HTTP source is downloaded into the run's folder and planned in record ranges of it."""
    url = http_sources.add("/tx.csv", (SAMPLE / "tx.csv").read_text())
    source = Source(location=url, constants={"state": "TX"})
    with disable_run_logger():
        location = tasks.fetch_source.fn(source, str(tmp_path), 5.0)
        [plan] = tasks.plan_sources.fn([source], {0: location}, {}, load_rules(), 1_000)
    assert location.startswith(str(tmp_path / "fetched"))
    assert plan.error is None and len(plan.ranges) > 1
    assert plan.ranges[-1][1] == Path(location).stat().st_size


def summary(**changes: object) -> etl.Summary:
    """A summary of two sources, one of which failed."""
    entry = {
        "source": "ca.csv", "location": "ca.csv", "error": None, "rows_in": 1204, "rows_kept": 1054,
        "rows_rejected": 150, "rejected_by": {}, "values_not_read": {}, "partitions": 1,
        "mapping": {"fields": {"company": "Company", "jobs": "No. Of Employees"}, "constants": {"state": "CA"},
                    "ignored": ["County", "Address", "A", "B", "C", "D"], "missing": ["city", "notice_date"]},
    }  # fmt: skip
    failed = {**entry, "source": "x|y.csv", "error": "source 'x|y.csv' not found: check the path",
              "rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "mapping": None}  # fmt: skip
    fields = {
        "rows_in": 1204, "rows_out": 1000, "rows_rejected": 150, "rows_duplicate": 54,
        "sources_failed": 1, "started_at": "s", "finished_at": "f", "notices": "out/n.csv",
        "rejects": "out/r.csv", "sources": [entry, failed],
    }  # fmt: skip
    return etl.Summary(**{**fields, **changes})  # type: ignore[arg-type]


def test_summary_markdown_shows_the_totals_then_each_source() -> None:
    """The artifact shows the totals, a row of counts per source, then each one's details."""
    markdown = tasks.summary_markdown(summary())
    for row in (
        "| Total | Count |",
        "| Sources | 2 |",
        "| Sources failed | 1 |",
        "| Rows read | 1,204 |",
        "| Notices written | 1,000 |",
        "| Rows rejected | 150 |",
        "| Duplicates dropped | 54 |",
        "| Notices | `out/n.csv` |",
        "| Source | Rows read | Kept | Rejected | Status |",
        "| ca.csv | 1,204 | 1,054 | 150 | read |",
        "| x\\|y.csv | 0 | 0 | 0 | **failed** |",
    ):
        assert row in markdown
    details = markdown.split("## Each source\n", 1)[1]
    assert details == (
        "\n- **ca.csv**\n"
        "  - Columns: company ← Company; jobs ← No. Of Employees; state = CA\n"
        "  - Ignored: County, Address, A, B, C and 1 more\n"
        "  - Lacks: city, notice_date\n"
        "- **x|y.csv**\n"
        "  - Failed: source 'x|y.csv' not found: check the path\n"
    )
    assert "| | |" not in markdown


def test_summary_markdown_shows_a_sources_delimiter_and_title_lines() -> None:
    """A source split at semicolons, under two title lines, says so in its columns."""
    entry = summary().sources[0]
    mapping = {**entry["mapping"], "delimiter": ";", "lines_above_header": ["CA WARN", "Updated"]}
    markdown = tasks.summary_markdown(summary(sources=[{**entry, "mapping": mapping}]))
    assert (
        "  - Columns: company ← Company; jobs ← No. Of Employees; state = CA; cells split at ';'; "
        "2 title line(s) above the header skipped\n"
    ) in markdown


def test_summary_markdown_shows_each_section_and_its_columns() -> None:
    """A source with a second table lists where it starts and what its columns became."""
    entry = summary().sources[0]
    sections = [{"record": 231, "fields": {"company": "Company", "jobs": "Layoff Total"}}]
    mapping = {**entry["mapping"], "sections": sections}
    markdown = tasks.summary_markdown(summary(sources=[{**entry, "mapping": mapping}]))
    assert "  - Sections: from record 231: company ← Company; jobs ← Layoff Total\n" in markdown


def test_summary_markdown_keeps_its_table_narrow_whatever_the_details() -> None:
    """Many columns and a long failure go in the list: each table row stays under 80 characters."""
    entry = summary().sources[0]
    header = [f"Column number {i} of a very wide export" for i in range(40)]
    wide = {
        **entry,
        "source": "data/warn/2026/al.csv",
        "error": "source 'data/warn/2026/al.csv' has no column for the company: "
        + ", ".join(header),
        "mapping": {**entry["mapping"], "ignored": header, "missing": ["city", "jobs", "state"]},
    }
    markdown = tasks.summary_markdown(summary(sources=[entry, wide]))
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table and max(len(line) for line in table if "`" not in line) < 80
    assert "  - Failed: source 'data/warn/2026/al.csv' has no column for the company: " in markdown
    assert "  - Ignored: Column number 0 of a very wide export, " in markdown


def test_check_row_counts_fails_a_source_that_drops_to_no_rows(tmp_path: Path) -> None:
    """The task fails a source that gave rows in the published run and none now; others stay."""
    output = tmp_path / "out"
    (output / "runs" / "r1").mkdir(parents=True)
    entries = [{"source": name, "rows_in": 5, "error": None} for name in ("a", "b")]
    (output / "runs" / "r1" / "summary.json").write_text(json.dumps({"sources": entries}))
    pointer = {"run": "r1", "files": {"summary.json": {"path": "runs/r1/summary.json"}}}
    (output / "latest.json").write_text(json.dumps(pointer))
    plans = [
        etl.SourcePlan(i, Source(location=f"{n}.csv", name=n), "") for i, n in enumerate("abc")
    ]
    parts = [etl.PartResult(1, 0, rows_in=4), etl.PartResult(2, 0, rows_in=0)]
    with disable_run_logger():
        checked = tasks.check_row_counts.fn(plans, parts, str(output), False)
        allowed = tasks.check_row_counts.fn(plans, parts, str(output), True)
    assert [plan.error is not None for plan in checked] == [True, False, False]
    assert str(checked[0].error).startswith("source 'a' gave no rows, but ")
    assert allowed == plans
