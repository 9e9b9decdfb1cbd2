"""Tests of the schema: source specs, the alias table and row normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pyflow.schema import (
    RowError,
    Source,
    load_aliases,
    map_columns,
    normalise_date,
    normalise_header,
    normalise_jobs,
    normalise_name,
    normalise_row,
    normalise_state,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-05", "2024-01-05"),
        ("2024-1-5", "2024-01-05"),
        ("2024-01-05 00:00:00", "2024-01-05"),
        ("2024/01/05", "2024-01-05"),
        ("01/05/2024", "2024-01-05"),
        ("1/5/24", "2024-01-05"),
        ("01-05-2024", "2024-01-05"),
        ("1/5/2024 0:00", "2024-01-05"),
        ("20240105", "2024-01-05"),
        ("5-Jan-2024", "2024-01-05"),
        ("05 January 2024", "2024-01-05"),
        ("Jan 5, 2024", "2024-01-05"),
        ("January 5 2024", "2024-01-05"),
        ("Sept. 5, 2024", "2024-09-05"),
        ("  3/1/2024 - 3/15/2024 ", "2024-03-01"),
        ("3/1/2024 through 3/15/2024", "2024-03-01"),
        ("1/5/99", "1999-01-05"),
    ],
)
def test_normalise_date_reads_common_formats(text: str, expected: str) -> None:
    """It reads the date formats state files use, month first, and writes ISO 8601."""
    assert normalise_date(text, "notice_date", required=True) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "notice_date: missing"),
        ("TBD", "notice_date: missing"),
        ("soon", "notice_date: unrecognised date 'soon'"),
        ("02/30/2024", "notice_date: no such date '02/30/2024'"),
        ("13/01/2024", "notice_date: no such date '13/01/2024'"),
        ("1900-01-01", "notice_date: date '1900-01-01' is outside 1988-2100"),
        ("Foo 5, 2024", "notice_date: unrecognised date 'Foo 5, 2024'"),
    ],
)
def test_normalise_date_rejects_bad_required_dates(text: str, reason: str) -> None:
    """A required date that is missing, unreadable, impossible or implausible is a reject reason."""
    with pytest.raises(RowError) as raised:
        normalise_date(text, "notice_date", required=True)
    assert str(raised.value) == reason


@pytest.mark.parametrize("text", ["", " ", "TBD", "n/a", "Unknown", "-"])
def test_normalise_date_allows_blank_optional_dates(text: str) -> None:
    """An optional date may be blank or a placeholder such as TBD."""
    assert normalise_date(text, "effective_date", required=False) == ""


@pytest.mark.parametrize(
    ("text", "expected"), [("112", 112), (" 1,204 ", 1204), ("35.0", 35), ("7", 7)]
)
def test_normalise_jobs_coerces_counts(text: str, expected: int) -> None:
    """It strips spaces and thousands separators and accepts whole floats."""
    assert normalise_jobs(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "jobs: missing"),
        ("unknown", "jobs: 'unknown' is not a number"),
        ("1.5", "jobs: '1.5' is not a whole number"),
        ("-5", "jobs: '-5' is not a positive count"),
        ("0", "jobs: '0' is not a positive count"),
    ],
)
def test_normalise_jobs_rejects_bad_counts(text: str, reason: str) -> None:
    """A count that is missing, not a number, fractional or not positive is a reject reason."""
    with pytest.raises(RowError) as raised:
        normalise_jobs(text)
    assert str(raised.value) == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [("CA", "CA"), (" ca ", "CA"), ("California", "CA"), ("new  york", "NY"), ("D.C.", None)],
)
def test_normalise_state_reads_codes_and_names(text: str, expected: str | None) -> None:
    """It accepts postal codes and state names in any case and spacing."""
    if expected is None:
        with pytest.raises(RowError, match=r"unknown state 'D\.C\.'"):
            normalise_state(text)
    else:
        assert normalise_state(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  PACIFIC COAST   LOGISTICS  ", "Pacific Coast Logistics"),
        ("acme widgets llc", "Acme Widgets LLC"),
        ("McKinsey & Company", "McKinsey & Company"),
        ("IBM", "IBM"),
        ("tab\there", "Tab Here"),
    ],
)
def test_normalise_name_fixes_spacing_and_shouting(text: str, expected: str) -> None:
    """It collapses white space and recases all-capitals or all-lower names, keeping mixed case."""
    assert normalise_name(text) == expected


def test_normalise_row_builds_a_clean_notice() -> None:
    """A valid row becomes a notice with every field normalised."""
    notice = normalise_row(
        {
            "state": "texas",
            "company": " ALAMO CALL CENTER ",
            "city": "san antonio",
            "notice_date": "1/10/2024",
            "effective_date": "",
            "jobs": "75",
        },
        "tx.csv",
    )
    assert notice.values() == (
        "TX",
        "Alamo Call Center",
        "San Antonio",
        "2024-01-10",
        "",
        "75",
        "tx.csv",
    )


def test_normalise_row_requires_a_company() -> None:
    """A row without a company name is rejected."""
    with pytest.raises(RowError, match="company: missing"):
        normalise_row({"state": "CA", "notice_date": "2024-01-01", "jobs": "5"}, "x")


def test_notice_dedup_key_ignores_case_and_source() -> None:
    """Two rows of the same notice from different sources, cased differently, share a key."""
    row = {"state": "TX", "company": "Alamo Call Center", "notice_date": "2024-01-10", "jobs": "75"}
    first = normalise_row(row, "a.csv")
    second = normalise_row({**row, "company": "alamo call center"}, "b.csv")
    third = normalise_row({**row, "jobs": "76"}, "a.csv")
    assert first.dedup_key() == second.dedup_key()
    assert first.dedup_key() != third.dedup_key()


def test_source_parses_the_string_form() -> None:
    """``LOCATION#key=value,...`` sets constants, the name and the encoding."""
    source = Source.model_validate("https://x.test/a.csv#state=texas, name=tx ,encoding=cp1252")
    assert source.location == "https://x.test/a.csv"
    assert source.constants == {"state": "TX"}
    assert source.label == "tx"
    assert source.encoding == "cp1252"
    assert source.is_remote_http
    assert str(source) == "https://x.test/a.csv#state=TX,name=tx,encoding=cp1252"


def test_source_label_defaults_to_the_location() -> None:
    """Without a name, the source column shows the location as given."""
    source = Source.model_validate("data/ca.csv")
    assert source.label == "data/ca.csv"
    assert source.constants == {}
    assert not source.is_remote_http


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a.csv#stat=CA", "unknown field stat"),
        ("a.csv#state", "'state' in source 'a.csv#state' is not key=value"),
        ("a.csv#state=Atlantis", "unknown state 'Atlantis'"),
        ("#state=CA", "at least 1 character"),
    ],
)
def test_source_rejects_bad_specs(spec: str, message: str) -> None:
    """A malformed source string fails validation with a message that names the problem."""
    with pytest.raises(ValidationError, match=message):
        Source.model_validate(spec)


def test_normalise_header_ignores_case_spacing_and_underscores() -> None:
    """Column names match whatever their case, spacing, underscores or byte order mark."""
    assert normalise_header("\ufeffTOTAL_LAYOFF_NUMBER ") == "total layoff number"
    assert normalise_header("  Notice   Date:") == "notice date"


def test_map_columns_finds_aliases_and_ignores_extras() -> None:
    """Each field maps to the first column named by one of its aliases; other columns are ignored."""
    aliases = load_aliases()
    header = ["Employer", "County", "Date Received", "# of Workers", "Company", "Layoff Date"]
    assert map_columns(header, aliases) == {
        "company": 0,
        "notice_date": 2,
        "jobs": 3,
        "effective_date": 5,
    }


def test_load_aliases_adds_a_users_table(tmp_path: Path) -> None:
    """A user's alias file adds names to the bundled table without replacing it."""
    extra = tmp_path / "aliases.toml"
    extra.write_text('company = ["Firm"]\njobs = ["Headcount Cut"]\n')
    aliases = load_aliases(extra)
    assert aliases.by_name["firm"] == "company"
    assert aliases.by_name["headcount cut"] == "jobs"
    assert aliases.by_name["employer"] == "company"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('employer = ["Firm"]\n', "unknown field 'employer'"),
        ('company = "Firm"\n', "'company' in the alias table must be a list"),
    ],
)
def test_load_aliases_rejects_bad_tables(tmp_path: Path, text: str, message: str) -> None:
    """An alias file naming an unknown field, or not listing names, is refused."""
    extra = tmp_path / "aliases.toml"
    extra.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_aliases(extra)
