"""Flow runs on a real (temporary) Prefect server: the sample, HTTP sources, failures, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.exceptions import ParameterTypeError

from conftest import PUBLISHED, SAMPLE, HttpSources
from pyflow.errors import SourceError
from pyflow.flow import warn_notices
from pyflow.tasks import SUMMARY_ARTIFACT_KEY
from pyflow.warn import etl
from pyflow.warn.parameters import SAMPLE_STATES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

GOOD_CSV = "Company,State,Notice Date,Jobs\nAcme,CA,2024-01-02,10\nBeta,TX,2024-01-03,20\n"


def output_bytes(folder: Path) -> dict[str, bytes]:
    """Return the bytes of the two data outputs."""
    return {name: (folder / name).read_bytes() for name in (etl.NOTICES_FILE, etl.REJECTS_FILE)}


def test_warn_notices_consolidates_the_bundled_sample(tmp_path: Path) -> None:
    """With no parameters but an output, the flow reads the nine real slices and counts add up."""
    summary = warn_notices(output=str(tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == PUBLISHED
    assert summary.rows_in == summary.rows_out + summary.rows_rejected + summary.rows_duplicate
    assert summary.rows_rejected > 0 and summary.rows_duplicate > 0 and summary.sources_failed == 0
    assert len((out / "rejects.csv").read_text().splitlines()) == summary.rows_rejected + 1
    assert [entry["source"] for entry in summary.sources] == [
        f"sample/{stem}.csv" for stem in SAMPLE_STATES
    ]
    assert all(entry["mapping"]["fields"]["company"] for entry in summary.sources)


def test_warn_notices_is_byte_identical_on_a_second_run(tmp_path: Path) -> None:
    """Running twice on the same inputs gives the same bytes in notices.csv and rejects.csv."""
    warn_notices(output=str(tmp_path / "a"))
    first = output_bytes(tmp_path / "a")
    warn_notices(output=str(tmp_path / "a"))
    assert output_bytes(tmp_path / "a") == first


def test_warn_notices_publishes_a_summary_artifact(tmp_path: Path) -> None:
    """Each run leaves a markdown artifact with a stable key: totals, then a row per source."""
    summary = warn_notices(output=str(tmp_path / "out"))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT_KEY]))
        )
    assert artifacts, "no artifact with the summary key"
    latest = max(artifacts, key=lambda a: a.created)
    assert latest.type == "markdown"
    assert f"| Notices written | {summary.rows_out:,} |" in latest.data
    assert f"| Rows rejected | {summary.rows_rejected:,} |" in latest.data
    assert "| sample/tx.csv | 30 | 30 | 0 | company ← JOB_SITE_NAME;" in latest.data


def test_warn_notices_retries_a_flaky_http_source(
    http_sources: HttpSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that fails twice with 503 and then answers is fetched on the third try."""
    url = http_sources.add("/flaky.csv", GOOD_CSV, failures=2)
    summary = warn_notices(
        sources=[f"{url}#name=flaky", f"{SAMPLE / 'tx.csv'}#state=TX"],
        output=str(tmp_path / "out"),
        fetch_backoff=0.05,
    )
    assert http_sources.routes["/flaky.csv"].hits == 3
    notices = (tmp_path / "out" / "notices.csv").read_text()
    assert ",CA,Acme,,2024-01-02,,10,,,,flaky\n" in notices
    assert summary.sources_failed == 0


def test_warn_notices_publishes_the_others_and_fails_when_a_source_always_fails(
    http_sources: HttpSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that never answers is retried, then named; the rest is published (Failed)."""
    url = http_sources.add("/down.csv", failures=10**6, status=500)
    state = warn_notices(
        sources=[url, f"{SAMPLE / 'tx.csv'}#state=TX"],
        output=str(tmp_path / "out"),
        fetch_backoff=0.05,
        fetch_retries=2,
        return_state=True,
    )
    assert http_sources.routes["/down.csv"].hits == 3
    assert state.is_failed()
    assert state.message.startswith("1 of 2 sources failed; the others were published:\n  - ")
    assert "answered HTTP 500" in state.message
    summary = state.result(raise_on_failure=False)
    assert summary.rows_out == 30
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [entry["error"] is not None for entry in written["sources"]] == [True, False]
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 1
    assert sorted(p.name for p in runs[0].iterdir()) == [
        "notices.csv",
        "rejects.csv",
        "summary.json",
    ]


def test_warn_notices_in_strict_mode_writes_nothing_when_a_source_fails(tmp_path: Path) -> None:
    """strict=True: a missing source fails the run and the previous outputs stay."""
    out = tmp_path / "out"
    warn_notices(output=str(out))
    before = output_bytes(out)
    with pytest.raises(SourceError, match="1 of 2 sources failed, and strict mode writes nothing"):
        warn_notices(
            sources=[str(tmp_path / "nope.csv"), f"{SAMPLE / 'tx.csv'}#state=TX"],
            output=str(out),
            strict=True,
        )
    assert output_bytes(out) == before


def test_warn_notices_validates_its_parameters(tmp_path: Path) -> None:
    """Prefect refuses an invalid parameter before the run starts, naming the problem."""
    with pytest.raises(ParameterTypeError, match="unknown field stat"):
        warn_notices(sources=["a.csv#stat=CA"], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
