"""The command line on the example: a real process, on a running project server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PUBLISHED, SAMPLE, Cli
from pyflow_kit.testing import HttpSources, tmpfs, tree_bytes

SIGNATURE = "abc-sig"
"""A signed URL's query-string secret ("abc" alone could be in a hex id by chance)."""


@pytest.mark.slow
def test_cli_runs_the_sample_with_a_clean_console(run_cli: Cli, isolated_settings: Path) -> None:
    """A default run exits 0, writes the three files and prints no traceback or ERROR line."""
    result = run_cli()
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    assert sorted(p.name for p in (isolated_settings / "data" / "output").iterdir()) == PUBLISHED
    assert "Traceback" not in console
    assert "ERROR" not in console
    assert (
        "pyflow: read 274 rows from 9 sources: 247 notices, 1 rejected, 26 duplicates dropped."
        in result.stdout
    )
    assert "Using this project's Prefect server" in result.stderr


def test_cli_reports_a_missing_source_in_one_message(run_cli: Cli, isolated_settings: Path) -> None:
    """A run whose only source is missing exits 1 with one message and the fix, at once."""
    result = run_cli("--source", "missing.csv#state=CA")
    assert result.returncode == 1
    assert result.stderr == (
        "pyflow: the run failed: source 'missing.csv' not found: check the path or URL given "
        "with --source or the sources parameter\n"
    )
    assert "Prefect server" not in result.stderr, "refused before Prefect was used"


def test_cli_refuses_an_unknown_encoding_in_one_message(
    run_cli: Cli, isolated_settings: Path
) -> None:
    """`#encoding=nope` on a source is one message naming the value and the fix: exit 2."""
    (isolated_settings / "a.csv").write_text("company,state\nAcme,CA\n")
    result = run_cli("--source", "a.csv#encoding=nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("pyflow: the parameters of flow 'warn-notices' do not fit")
    assert "unknown encoding 'nope' after '#': use a name such as utf-8" in result.stderr
    assert not (isolated_settings / "data" / "output").exists(), "nothing was written"


@pytest.mark.slow
def test_cli_reports_an_unreachable_url_without_a_traceback(
    run_cli: Cli, isolated_settings: Path
) -> None:
    """A URL that cannot be fetched fails the run (exit 1) with its message last and no traceback."""
    result = run_cli(
        *("--source", "http://127.0.0.1:9/warn.csv#state=CA", "--param", "fetch_retries=0"),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("pyflow:")]
    assert len(failures) == 1
    assert failures[0].startswith(
        "pyflow: the run failed: no source could be read, so nothing was written: "
        "source 'http://127.0.0.1:9/warn.csv' could not be fetched (ConnectError"
    )


@pytest.mark.slow
def test_cli_publishes_good_sources_and_exits_1_when_others_fail(
    run_cli: Cli, isolated_settings: Path
) -> None:
    """Good sources are written, bad ones listed with fixes, exit 1; with --strict, nothing."""
    (isolated_settings / "binary.csv").write_bytes(b"\x00\x01 not csv")
    (isolated_settings / "foo.csv").write_text("Foo,Bar\n1,2\n")
    sample = SAMPLE
    sources = [
        "--source", f"{sample / 'tx.csv'}#state=TX", "--source", "binary.csv#state=OK",
        "--source", "foo.csv#state=OK", "--source", f"{sample / 'wi.csv'}#state=WI",
    ]  # fmt: skip
    result = run_cli(*sources, "--output", "out")
    assert result.returncode == 1
    assert "pyflow: read 61 rows from 4 sources: 60 notices, 1 rejected" in result.stdout
    assert (
        "pyflow: the run failed: 2 of 4 sources failed; the others were published:" in result.stderr
    )
    assert "  - source 'binary.csv' is not a CSV file (it holds binary data)" in result.stderr
    assert "  - source 'foo.csv' has no column for the company" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (isolated_settings / "out" / "notices.csv").read_text().count("\n") == 61
    strict = run_cli(*sources, "--output", "strict", "--strict")
    assert strict.returncode == 1
    assert "strict mode writes nothing" in strict.stderr
    assert not (isolated_settings / "strict" / "notices.csv").exists()


def test_cli_refuses_an_unwritable_output_before_starting(
    run_cli: Cli, isolated_settings: Path
) -> None:
    """An output that cannot be written exits 1 with the fix, before a server is started."""
    (isolated_settings / "blocker").write_text("a file, not a folder")
    result = run_cli("--output", "blocker/out")
    assert result.returncode == 1
    assert "cannot be written" in result.stderr
    assert "--output or PYFLOW_OUTPUT" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Prefect server" not in result.stderr, "refused before Prefect was used"


@pytest.mark.slow
def test_cli_reports_a_full_disk_in_one_line_and_keeps_the_previous_outputs(
    run_cli: Cli, isolated_settings: Path, tmp_path: Path
) -> None:
    """An output that fills up mid-run: exit 1, one line naming the file and the fix; no change."""
    big = isolated_settings / "big.csv"
    rows = "".join(
        f"Company number {i} of a long list,Springfield,1/2/2024,{i}\n" for i in range(40_000)
    )
    big.write_text("Company,City,Notice Date,Jobs\n" + rows)
    with tmpfs(tmp_path / "small", "1m") as out:
        first = run_cli("--output", str(out))
        assert first.returncode == 0, first.stdout + first.stderr
        before = tree_bytes(out)
        result = run_cli("--source", f"{big}#state=CA", "--output", str(out))
        assert result.returncode == 1
        assert "Traceback" not in result.stdout + result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("pyflow:")]
        assert line.startswith(f"pyflow: the run failed: cannot write {out}/cache/files/")
        assert line.endswith(
            ": no space is left on its disk: free some space, or choose another location with "
            "--output or PYFLOW_OUTPUT; the previous outputs are as they were"
        )
        assert tree_bytes(out) == before


@pytest.mark.slow
def test_cli_keeps_url_credentials_out_of_its_console_and_outputs(
    run_cli: Cli, isolated_settings: Path, http_sources: HttpSources
) -> None:
    """A signed URL with user:secret@ is fetched; no console line or file shows the secrets."""
    csv = "Company,State,Notice Date\nAcme,CA,2024-01-02\n"
    good = http_sources.add(f"/x.csv?X-Goog-Signature={SIGNATURE}", csv)
    gone = f"{http_sources.base_url}/gone.csv?X-Goog-Signature={SIGNATURE}"
    sources = [url.replace("http://", "http://user:secret@") for url in (good, gone)]
    result = run_cli(
        *("--source", sources[0], "--source", sources[1]),
        *("--param", "fetch_retries=0", "--output", "out"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"  - source '{http_sources.base_url}/gone.csv' answered HTTP 404" in result.stderr
    assert "pyflow: read 1 rows from 2 sources: 1 notices" in result.stdout
    texts = [result.stdout, result.stderr] + [
        path.read_text(errors="replace")
        for path in (isolated_settings / "out").rglob("*")
        if path.is_file()
    ]
    assert not [text for text in texts if "secret" in text or SIGNATURE in text]
