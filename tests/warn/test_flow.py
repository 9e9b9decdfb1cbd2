"""Flow runs on a real (temporary) Prefect server: the sample, HTTP sources, failures, artifacts."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import ParameterTypeError
from pytest_mock import MockerFixture

from conftest import PUBLISHED, SAMPLE
from pyflow.warn import etl, reading
from pyflow.warn.errors import SourceError
from pyflow.warn.flow import warn_notices
from pyflow.warn.parameters import SAMPLE_STATES, load_aliases
from pyflow.warn.schema import Source
from pyflow.warn.tasks import ASSET_FILES, SUMMARY_ARTIFACT_KEY
from pyflow_kit.testing import HttpSources

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

GOOD_CSV = "Company,State,Notice Date,Jobs\nAcme,CA,2024-01-02,10\nBeta,TX,2024-01-03,20\n"
SIGNATURE = "abc-sig"
"""A signed URL's query-string secret ("abc" alone could be in a hex id by chance)."""


def latest_artifact() -> str:
    """Return the markdown of the newest run summary artifact."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT_KEY]))
        )
    return str(max(artifacts, key=lambda a: a.created).data)


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
    assert "| sample/tx.csv | 30 | 30 | 0 | read |" in latest.data
    assert "- **sample/tx.csv**\n  - Columns: company ← JOB_SITE_NAME;" in latest.data


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
        "changes.csv",
        "files.json",
        "integrated.csv",
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


def test_warn_notices_keeps_url_credentials_out_of_outputs_logs_and_artifact(
    http_sources: HttpSources, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """user:secret@ and ?X-Goog-Signature=... fetch the file, and show nowhere, even on failure."""
    caplog.set_level(logging.DEBUG)
    good = http_sources.add(f"/x.csv?X-Goog-Signature={SIGNATURE}", GOOD_CSV)
    gone = f"{http_sources.base_url}/gone.csv?X-Goog-Signature={SIGNATURE}"
    secret = [url.replace("http://", "http://user:secret@") for url in (good, gone)]
    state = warn_notices(
        sources=secret, output=str(tmp_path / "out"), fetch_retries=0, return_state=True
    )
    assert http_sources.routes[f"/x.csv?X-Goog-Signature={SIGNATURE}"].hits == 1
    assert state.is_failed()
    shown = f"{http_sources.base_url}/gone.csv"
    assert f"source '{shown}' answered HTTP 404: check the URL" in str(state.message)
    notices = (tmp_path / "out" / "notices.csv").read_text()
    assert f",{http_sources.base_url}/x.csv\n" in notices
    assert "Fetched http://" in caplog.text and "HTTP Request: GET" in caplog.text
    seen = {
        "logs": caplog.text,
        "artifact": latest_artifact(),
        "message": str(state.message),
        **{
            str(path): path.read_text(errors="replace")
            for path in (tmp_path / "out").rglob("*")
            if path.is_file()
        },
    }
    leaks = [name for name, text in seen.items() if "secret" in text or SIGNATURE in text]
    assert leaks == []


def test_warn_notices_fails_a_source_that_drops_to_no_rows(tmp_path: Path) -> None:
    """A source with rows in the published run and none now fails, naming it; the rest publish."""
    emptied = tmp_path / "tx.csv"
    emptied.write_bytes((SAMPLE / "tx.csv").read_bytes())
    sources = [f"{emptied}#state=TX,name=tx", f"{SAMPLE / 'wi.csv'}#state=WI,name=wi"]
    out = tmp_path / "out"
    warn_notices(sources=sources, output=str(out))
    emptied.write_bytes((SAMPLE / "tx.csv").read_bytes().split(b"\n", 1)[0])  # the header alone
    state = warn_notices(sources=sources, output=str(out), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("1 of 2 sources failed; the others were published:\n  - ")
    assert "source 'tx' gave no rows, but 30 were read from it before (" in state.message
    assert "allow_empty=true" in state.message
    published = json.loads((out / "latest.json").read_text())["run"]
    assert published == state.result(raise_on_failure=False).run
    assert {
        line.rsplit(",", 1)[1] for line in (out / "notices.csv").read_text().splitlines()[1:]
    } == {"wi"}
    allowed = warn_notices(sources=sources, output=str(out), allow_empty=True)
    assert allowed.failures == []


def materializations(keys: list[str], runs: int, timeout: float = 60.0) -> set[tuple[str, str]]:
    """Return (asset key, flow run) of the server's materialization events of these assets.

    The server stores events a moment after they are sent: this waits until ``runs`` flow runs'
    events are there, or the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
                    resource=EventResourceFilter(id=keys),
                ),
                limit=50,
            )
        found = {
            (event.resource.id, related.id)
            for event in page.events
            for related in event.related
            if related.role == "flow-run"
        }
        if len({run for _, run in found}) >= runs or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_warn_notices_shows_changes_in_the_artifact_and_materializes_assets(
    tmp_path: Path,
) -> None:
    """A new notice is in the artifact's Changes table; each run materializes the outputs' assets.

    The assets are notices.csv, changes.csv and integrated.csv at the top of the output, whose
    folder's name holds characters an asset key may not (they become ``-``).
    """
    source = tmp_path / "wi.csv"
    source.write_text(GOOD_CSV, encoding="utf-8")
    output = tmp_path / "out dir#1"
    first = warn_notices(sources=[f"{source}#name=wi"], output=str(output))
    assert "No changes" not in latest_artifact()
    assert "no run was published in this output before" in latest_artifact()
    source.write_text(GOOD_CSV + "Gamma | Sons,CA,2024-02-01,5\n", encoding="utf-8")
    second = warn_notices(sources=[f"{source}#name=wi"], output=str(output))
    markdown = latest_artifact()
    changes = markdown.split("## Changes", 1)[1]
    assert f"Since run `{first.run}`: 1 added, 0 amended, 0 removed" in changes
    assert "| CA | 1 | 0 | 0 |" in changes
    assert "| added | CA | Gamma \\| Sons | 2024-02-01 |" in changes
    keys = [f"file://{tmp_path}/out-dir-1/{name}" for name in ASSET_FILES]
    runs = materializations(keys, runs=2)
    assert {key for key, _ in runs} == set(keys)
    assert len({run for _, run in runs}) == 2
    assert second.changes["added"] == 1


def reused(summary: etl.Summary) -> dict[str, str]:
    """Each source's label, and the run its rows were reused from ('' when read)."""
    return {entry["source"]: entry["reused_from"] for entry in summary.sources}


def test_warn_notices_reuses_what_did_not_change_and_reads_the_rest(tmp_path: Path) -> None:
    """A source with the same bytes, rules and code is not read again; a changed one is."""
    for name, company in (("a.csv", "Acme"), ("b.csv", "Beta"), ("c.csv", "Cora")):
        (tmp_path / name).write_text(GOOD_CSV.replace("Acme", company), encoding="utf-8")
    sources = [f"{tmp_path / name}#name={name}" for name in ("a.csv", "b.csv", "c.csv")]
    output = str(tmp_path / "out")
    first = warn_notices(sources=sources, output=output)
    assert set(reused(first).values()) == {""}
    notices = (tmp_path / "out" / "notices.csv").read_bytes()
    second = warn_notices(sources=sources, output=output)
    assert reused(second) == dict.fromkeys(("a.csv", "b.csv", "c.csv"), first.run)
    assert (tmp_path / "out" / "notices.csv").read_bytes() == notices
    assert (tmp_path / "out" / "changes.csv").read_text().count("\n") == 1  # the header only

    (tmp_path / "b.csv").write_text(GOOD_CSV + "Dune,WA,2024-03-01,7\n", encoding="utf-8")
    third = warn_notices(sources=[sources[2], *sources[:2]], output=output)  # another order too
    assert reused(third) == {"c.csv": first.run, "a.csv": first.run, "b.csv": ""}
    assert third.changes["added"] == 1
    assert [entry["source"] for entry in third.sources] == ["c.csv", "a.csv", "b.csv"]
    written = (tmp_path / "out" / "notices.csv").read_text()
    assert {line.rsplit(",", 1)[1] for line in written.splitlines()[1:]} == {
        "a.csv",
        "b.csv",
        "c.csv",
    }

    aliases = tmp_path / "aliases.toml"
    aliases.write_text('ignore = ["Unused Column"]\n', encoding="utf-8")
    fourth = warn_notices(sources=sources, output=output, aliases_file=aliases)
    assert set(reused(fourth).values()) == {""}, "other rules read every source again"
    assert fourth.rows_out == third.rows_out


def test_warn_notices_reuses_the_plans_of_the_same_sources_and_bytes(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    """The plans are made once for the same sources, bytes, rules and code; a change makes them anew."""
    (tmp_path / "a.csv").write_text(GOOD_CSV, encoding="utf-8")
    sources = [f"{tmp_path / 'a.csv'}#name=a"]
    output = str(tmp_path / "out")
    planning = mocker.patch.object(etl, "plan_sources", wraps=etl.plan_sources)
    first = warn_notices(sources=sources, output=output)
    second = warn_notices(sources=sources, output=output)
    assert planning.call_count == 1
    assert second.sources == [{**entry, "reused_from": first.run} for entry in first.sources]
    (tmp_path / "a.csv").write_text(GOOD_CSV + "Dune,WA,2024-03-01,7\n", encoding="utf-8")
    third = warn_notices(sources=sources, output=output)
    assert planning.call_count == 2 and third.changes["added"] == 1
    moved = tmp_path / "moved.csv"
    shutil.copy(tmp_path / "a.csv", moved)
    fourth = warn_notices(sources=[f"{moved}#name=a"], output=output)
    assert planning.call_count == 3
    assert fourth.sources[0]["location"] == str(moved) and fourth.rows_out == third.rows_out


def test_plans_are_rebased_on_this_runs_locations_and_reused_only_when_read(
    tmp_path: Path,
) -> None:
    """A reused plan reads where this run saved its source; a plan with a failure is not kept."""
    (tmp_path / "a.csv").write_text(GOOD_CSV, encoding="utf-8")
    sources = [Source.model_validate(f"{tmp_path / 'a.csv'}#name=a")]
    rules = load_aliases(None)
    plans = etl.plan_sources(sources, {}, {}, rules, 0)
    digests = etl.source_digests(sources, {}, {})
    assert etl.plans_reusable(plans, digests)
    assert etl.rebased(plans, sources, {}) is plans
    [moved] = etl.rebased(plans, sources, {0: str(tmp_path / "fetched.csv")})
    assert moved.location == str(tmp_path / "fetched.csv") and moved.columns == plans[0].columns
    version = etl.reuse_version(rules)
    key = etl.plan_key(sources, digests, {}, 0, version)
    assert key == etl.plan_key(sources, digests, {}, 0, version)
    assert key != etl.plan_key(sources, digests, {}, 1_000, version)
    assert key != etl.plan_key(sources, [None], {}, 0, version)
    assert not etl.plans_reusable(plans, ["0" * 64])
    missing = [Source.model_validate(f"{tmp_path / 'gone.csv'}#name=gone")]
    assert etl.source_digests(missing, {}, {}) == [None]
    assert not etl.plans_reusable(etl.plan_sources(missing, {}, {}, rules, 0), [None])


def test_warn_notices_reuses_in_an_output_moved_elsewhere_and_a_source_named_twice(
    tmp_path: Path,
) -> None:
    """A reused result's part files are found where the output is now; a twice-named source too."""
    source = tmp_path / "a.csv"
    source.write_text(GOOD_CSV, encoding="utf-8")
    sources = [f"{source}#name=a", f"{source}#name=again"]
    first = warn_notices(sources=sources, output=str(tmp_path / "out"))
    notices = (tmp_path / "out" / "notices.csv").read_bytes()
    shutil.move(tmp_path / "out", tmp_path / "moved")
    second = warn_notices(sources=sources, output=str(tmp_path / "moved"))
    assert reused(second) == {"a": first.run, "again": first.run}
    assert (second.rows_in, second.rows_out, second.rows_duplicate) == (4, 2, 2)
    assert (tmp_path / "moved" / "notices.csv").read_bytes() == notices


def test_warn_notices_reads_again_a_source_it_could_not_read(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    """A source whose read failed is not reused with its error: the next run reads it again."""
    (tmp_path / "a.csv").write_text(GOOD_CSV, encoding="utf-8")
    sources = [f"{tmp_path / 'a.csv'}#name=a"]
    real = reading.read_records
    broken = mocker.patch.object(reading, "read_records", side_effect=OSError("the disk hiccuped"))
    state = warn_notices(sources=sources, output=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and "the disk hiccuped" in str(state.message)
    broken.side_effect = real
    again = warn_notices(sources=sources, output=str(tmp_path / "out"))
    assert reused(again) == {"a": ""} and again.rows_out == 2
