"""Tests of the Prefect tasks' own logic, called through `.fn()` without a run logger."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.logging import disable_run_logger
from prefect.states import Completed, Failed

from conftest import SAMPLE, HttpSources
from pyflow import etl, tasks
from pyflow.errors import FetchError, SourceError
from pyflow.schema import Source


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


def test_prepare_source_fetches_and_splits(http_sources: HttpSources, tmp_path: Path) -> None:
    """An HTTP source is downloaded into the run's folder and planned as partitions of it."""
    url = http_sources.add("/tx.csv", (SAMPLE / "tx.csv").read_text())
    with disable_run_logger():
        partitions = tasks.prepare_source.fn(2, Source(location=url), str(tmp_path), 5.0, 100)
    assert len(partitions) > 1
    assert {p.source_index for p in partitions} == {2}
    assert all(p.location.startswith(str(tmp_path / "fetched")) for p in partitions)
    assert partitions[-1].end == Path(partitions[0].location).stat().st_size


def test_summary_markdown_shows_every_count() -> None:
    """The artifact's table shows sources, rows read, written, rejected and dropped."""
    summary = etl.Summary(["a", "b"], 1204, 1000, 150, 54, "s", "f", "out/n.csv", "out/r.csv")
    markdown = tasks.summary_markdown(summary)
    for row in (
        "| Sources | 2 |",
        "| Rows read | 1,204 |",
        "| Notices written | 1,000 |",
        "| Rows rejected | 150 |",
        "| Duplicates dropped | 54 |",
        "| Notices | `out/n.csv` |",
    ):
        assert row in markdown
