"""Flow runs on a real (temporary) Prefect server: the sample, HTTP sources, failures, artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.exceptions import ParameterTypeError

from conftest import SAMPLE, HttpSources
from pyflow import etl
from pyflow.errors import FetchError, SourceError
from pyflow.flow import warn_notices
from pyflow.tasks import SUMMARY_ARTIFACT_KEY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

GOOD_CSV = "Company,State,Notice Date,Jobs\nAcme,CA,2024-01-02,10\nBeta,TX,2024-01-03,20\n"


def output_bytes(folder: Path) -> dict[str, bytes]:
    """Return the bytes of the two data outputs."""
    return {name: (folder / name).read_bytes() for name in (etl.NOTICES_FILE, etl.REJECTS_FILE)}


def test_warn_notices_consolidates_the_bundled_sample(tmp_path: Path) -> None:
    """With no parameters but an output, the flow writes the three files and their counts add up."""
    summary = warn_notices(output=str(tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["notices.csv", "rejects.csv", "summary.json"]
    assert summary.rows_in == summary.rows_out + summary.rows_rejected + summary.rows_duplicate
    assert summary.rows_rejected > 0 and summary.rows_duplicate > 0
    assert len((out / "notices.csv").read_text().splitlines()) == summary.rows_out + 1
    assert len((out / "rejects.csv").read_text().splitlines()) == summary.rows_rejected + 1
    assert summary.sources == ["sample/ca.csv", "sample/tx.csv", "sample/ny.csv", "sample/wa.csv"]


def test_warn_notices_is_byte_identical_on_a_second_run(tmp_path: Path) -> None:
    """Running twice on the same inputs gives the same bytes in notices.csv and rejects.csv."""
    warn_notices(output=str(tmp_path / "a"))
    first = output_bytes(tmp_path / "a")
    warn_notices(output=str(tmp_path / "a"))
    assert output_bytes(tmp_path / "a") == first


def test_warn_notices_publishes_a_summary_artifact(tmp_path: Path) -> None:
    """Each run leaves a markdown artifact with a stable key that shows its counts."""
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


def test_warn_notices_retries_a_flaky_http_source(
    http_sources: HttpSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that fails twice with 503 and then answers is fetched on the third try."""
    monkeypatch.setenv("PYFLOW_FETCH_BACKOFF", "0.05")
    url = http_sources.add("/flaky.csv", GOOD_CSV, failures=2)
    summary = warn_notices(
        sources=[f"{url}#name=flaky", f"{SAMPLE / 'wa.csv'}#state=WA"], output=str(tmp_path / "out")
    )
    assert http_sources.routes["/flaky.csv"].hits == 3
    notices = (tmp_path / "out" / "notices.csv").read_text()
    assert "CA,Acme,,2024-01-02,,10,flaky" in notices
    assert summary.sources == ["flaky", f"{SAMPLE / 'wa.csv'}"]


def test_warn_notices_fails_cleanly_when_a_source_always_fails(
    http_sources: HttpSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that never answers fails the run after its retries and leaves the old outputs."""
    monkeypatch.setenv("PYFLOW_FETCH_BACKOFF", "0.05")
    monkeypatch.setenv("PYFLOW_FETCH_RETRIES", "2")
    out = tmp_path / "out"
    warn_notices(output=str(out))
    before = output_bytes(out)
    url = http_sources.add("/down.csv", failures=10**6, status=500)
    with pytest.raises(FetchError, match="answered HTTP 500"):
        warn_notices(sources=[url, str(SAMPLE / "ny.csv")], output=str(out))
    assert http_sources.routes["/down.csv"].hits == 3
    assert output_bytes(out) == before
    assert not (out / etl.WORK_DIR_NAME).exists()


def test_warn_notices_does_not_retry_a_missing_file(tmp_path: Path) -> None:
    """A local source that does not exist fails at once with the fix in the message."""
    with pytest.raises(SourceError, match="not found: check the path or URL"):
        warn_notices(sources=[str(tmp_path / "nope.csv")], output=str(tmp_path / "out"))


def test_warn_notices_validates_its_parameters(tmp_path: Path) -> None:
    """Prefect refuses an invalid parameter before the run starts, naming the problem."""
    with pytest.raises(ParameterTypeError, match="unknown field stat"):
        warn_notices(sources=["a.csv#stat=CA"], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
