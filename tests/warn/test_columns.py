"""Tests of mapping a source's columns to fields: by the words of its headers, then its values."""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl
import pytest

from pyflow.warn import values
from pyflow.warn.columns import (
    ColumnMap,
    header_cue,
    header_words,
    load_rules,
    map_columns,
    section_header,
)

RULES = load_rules()


def mapping(rows: list[list[str]], constants: dict[str, str] | None = None) -> ColumnMap:
    """Map the columns of a table whose first row is its header."""
    header, *body = rows
    sample = pl.DataFrame(
        {f"c{i}": [row[i] for row in body] for i in range(len(header))},
        schema=dict.fromkeys((f"c{i}" for i in range(len(header))), pl.String),
    )
    profile = values.Profile({0: sample}).of(0)
    return map_columns(
        tuple(header), profile, RULES, {"state": "TX"} if constants is None else constants
    )


def fields(rows: list[list[str]], constants: dict[str, str] | None = None) -> dict[str, str]:
    """Return field -> header name for a table."""
    found = mapping(rows, constants)
    return {name: found.header[index] for name, index in found.fields.items()}


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("Number toEmployees Affected", ["number", "employees", "affected"]),
        ("WFDD_RECEIVED_DATE", ["wfdd", "received", "date"]),
        ("LayOff_Date", ["lay", "off", "date"]),
        ("# EMPLOYEES IMPACTED", ["number", "employees", "affected"]),
        ("No. Of Employees", ["number", "employees"]),
        ("Notification(s) Received", ["notification", "received"]),
        ("Date Rcvd", ["date", "received"]),
        ("warnDated", ["warn", "date"]),
    ],
)
def test_header_words_split_and_read_every_spelling(header: str, words: list[str]) -> None:
    """camelCase, underscores, '#', 'No.', '(s)' and abbreviations all reduce to plain words."""
    assert header_words(header, RULES.synonyms, RULES.stopwords) == words


def test_map_columns_maps_the_real_layouts() -> None:
    """Headers as Texas, Missouri, Illinois and Ohio write them map to the right fields."""
    texas = [
        ["NOTICE_DATE", "JOB_SITE_NAME", "COUNTY_NAME", "WDA_NAME", "TOTAL_LAYOFF_NUMBER", "LayOff_Date", "WFDD_RECEIVED_DATE", "CITY_NAME"],
        ["2022-03-01 00:00:00", "Amentum", "Bowie", "North East Texas WDA", "178", "2022-03-27 00:00:00", "2022-03-01 00:00:00", "New Boston"],
    ]  # fmt: skip
    assert fields(texas) == {
        "company": "JOB_SITE_NAME", "notice_date": "NOTICE_DATE", "effective_date": "LayOff_Date",
        "jobs": "TOTAL_LAYOFF_NUMBER", "city": "CITY_NAME",
    }  # fmt: skip
    missouri = [
        ["Received Sort descending", "Title", "Industry", "Location(s)", "County", "Type", "Layoff date(s)", "# affected"],
        ["01/10/2022", "Nestle Regional Office", "Manufacturing", "St. Louis (city)", "St. Louis", "Layoff", "03/18/2022", "138"],
    ]  # fmt: skip
    assert fields(missouri) == {
        "company": "Title", "notice_date": "Received Sort descending",
        "effective_date": "Layoff date(s)", "jobs": "# affected", "city": "Location(s)",
    }  # fmt: skip
    illinois = [
        ["Location Name", "Doing Business As Name", "Location City", "WARN Received", "Total # of Employees", "Expected Layoff", "Revised Layoff", "Initial Date Reported", "Notification(s) Received", "Last Report Date", "Impact Date"],
        ["Doumak, Inc.", "DOUMAK, INC.", "Bensenville", "", "300", "30", "28", "2020-05-29 00:00:00", "5/29/2020", "2020-06-29 00:00:00", "2020-05-15 00:00:00"],
    ]  # fmt: skip
    assert fields(illinois) == {
        "company": "Location Name", "city": "Location City",
        "notice_date": "Initial Date Reported", "jobs": "Revised Layoff", "effective_date": "Impact Date",
    }  # fmt: skip
    ohio = [["Company", "Date Received", "City/County", "Potential Number Affected", "Layoff Date(s)"],
            ["Encore Industries", "9/12/2023", "Cambridge/Guernsey", "89", "09/12/2023-11/12/2023"]]  # fmt: skip
    assert fields(ohio) == {
        "company": "Company", "notice_date": "Date Received", "city": "City/County",
        "jobs": "Potential Number Affected", "effective_date": "Layoff Date(s)",
    }  # fmt: skip


SPELLINGS = {
    "company": ["Employer Name", "EMPLOYER", "companyName", "Business_Name", "Name of Organization"],
    "notice_date": ["Date Notice Received", "WARN_RCVD_DATE", "noticeDate", "Date of WARN Letter", "Notification Date"],
    "effective_date": ["Separation Date", "LAYOFF_START_DATE", "closureDate", "Effective Date of Layoff", "Date(s) of Impact"],
    "jobs": ["# Affected Employees", "NUM_WORKERS_AFFECTED", "totalEmployeesLaidOff", "No. of Positions Affected", "Workers Impacted"],
    "city": ["City", "TOWN", "siteCity", "Municipality", "Location of Closure"],
}  # fmt: skip
"""Header spellings no source in the tests has: the rules must know them by their words."""

VALUES = {
    "company": "Acme Foods Inc.",
    "notice_date": "3/1/2024",
    "effective_date": "5/1/2024",
    "jobs": "1,204",
    "city": "Springfield",
}


@pytest.mark.parametrize("variant", range(5))
def test_map_columns_knows_headers_no_test_has_seen(variant: int) -> None:
    """Spellings in another style (snake, camel, upper, '#', 'No.') map by their words alone."""
    order = list(itertools.permutations(SPELLINGS))[variant * 7]
    header = [SPELLINGS[name][variant] for name in order]
    rows = [header, *([VALUES[name] for name in order] for _ in range(3))]
    assert fields(rows) == {name: SPELLINGS[name][variant] for name in order}


def test_map_columns_passes_over_an_empty_column_for_one_with_values() -> None:
    """Of two date columns, the one holding dates wins over a blank one with a better header."""
    rows = [
        ["Company", "WARN Received", "Date Received"],
        ["Acme", "", "1/2/2024"],
        ["Beta", "", "1/3/2024"],
    ]
    assert fields(rows)["notice_date"] == "Date Received"


def test_map_columns_skips_a_column_whose_values_contradict_its_header() -> None:
    """A 'Jobs' column of job titles is not a job count; the count column is."""
    rows = [
        ["Company", "Jobs", "Employees Affected"],
        ["Acme", "Cook, cashier", "12"],
        ["Beta", "Driver", "7"],
    ]
    assert fields(rows)["jobs"] == "Employees Affected"


def test_map_columns_finds_notice_kinds_and_yes_no_columns() -> None:
    """Columns of short kind labels are read for the flags; so is a 'Closing Yes/No' column."""
    rows = [
        ["Company", "Layoff or Closure?", "Closing Yes/No", "Status"],
        ["Acme", "Closure", "Yes", "Closed"],
        ["Beta", "Layoff", "No", "Active"],
    ]
    found = mapping(rows)
    assert [found.header[i] for i in found.kinds] == ["Layoff or Closure?"]
    assert {flag: found.header[i] for flag, i in found.yes_no.items()} == {
        "is_closure": "Closing Yes/No"
    }


def test_map_columns_detects_dates_written_day_first() -> None:
    """A date column with a first number over 12 and no second one over 12 is day first."""
    rows = [["Company", "Notice Date"], ["Acme", "25/12/2023"], ["Beta", "3/1/2024"]]
    assert mapping(rows).day_first == ("notice_date",)


def test_map_columns_lets_constants_win_over_columns() -> None:
    """A field given as a constant is not looked for among the columns."""
    rows = [["Company", "State"], ["Acme", "IA"]]
    assert "state" not in mapping(rows, {"state": "IL"}).fields
    assert fields(rows, {})["state"] == "State"


def test_report_says_what_became_what_and_what_is_missing() -> None:
    """The report names each field's column, the constants, the ignored columns and the gaps."""
    rows = [["Employer", "Date Received", "Phone"], ["Acme", "1/2/2024", "555-0100"]]
    report = mapping(rows).report({"state": "TX"})
    assert report["fields"] == {"company": "Employer", "notice_date": "Date Received"}
    assert report["constants"] == {"state": "TX"}
    assert report["ignored"] == ["Phone"]
    assert report["missing"] == ["city", "effective_date", "jobs"]


def test_an_alias_file_overrides_the_rules(tmp_path: Path) -> None:
    """A user's file maps an odd header to a field and keeps another out of every field."""
    aliases = tmp_path / "aliases.toml"
    aliases.write_text('company = ["Party"]\nignore = ["Employer"]\n')
    rules = load_rules(aliases)
    rows = [["Employer", "Party", "Date Received"], ["Old Co", "Acme", "1/2/2024"]]
    sample = pl.DataFrame({f"c{i}": [rows[1][i]] for i in range(3)})
    found = map_columns(tuple(rows[0]), values.Profile({0: sample}).of(0), rules, {"state": "TX"})
    assert found.fields["company"] == 1
    assert found.how["company"] == "alias table"
    assert 0 not in found.fields.values()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cmpany = ["Firm"]\n', "unknown field 'cmpany' in the alias table"),
        ('company = "Firm"\n', "'company' in the alias table must be a list of column names"),
    ],
)
def test_load_rules_refuses_a_bad_alias_file(tmp_path: Path, text: str, message: str) -> None:
    """A misspelt field or a value that is not a list is refused, naming it."""
    path = tmp_path / "aliases.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_rules(path)


def test_map_columns_reports_each_rule_with_its_whole_words() -> None:
    """summary.json's rule text lists every word of each slot, none cut short."""
    found = mapping([["Company", "Number of Employees Affected"], ["Acme", "12"]])
    jobs = next(rule for rule in RULES.fields if rule.name == "jobs")
    slots = found.how["jobs"].removeprefix("header words: ").split(" + ")
    assert [frozenset(slot.split("|")) for slot in slots] in [list(p) for p in jobs.patterns]
    assert max(len(slot) for slot in slots) > 40, "a slot longer than the old cut is whole"


def test_header_cue_holds_the_company_words_and_the_aliases(tmp_path: Path) -> None:
    """The first look for headers finds the company's words and a user's company names."""
    aliases = tmp_path / "aliases.toml"
    aliases.write_text('company = ["Legal Entity"]\n')
    cue = header_cue(load_rules(aliases))
    assert {b"company", b"employer", b"name", b"legal", b"entity"} <= set(cue)
    assert b"legal" not in header_cue(RULES)


@pytest.mark.parametrize(
    ("cells", "header"),
    [
        (["Employer Name", "Location", "WARN Received Date", "Number of Workers"], True),
        (["", "Company", "", "Notice Date", "Jobs Affected", ""], True),
        (["Employer Name", "Address 1", "City", "Notice Date", "Number of\nWorkers"], True),
        (["Employer Name", "Location", "1/2/2020", "Number of Workers"], False),
        (["Employer Name", "Location", "Notice Date", "2020"], False),
        (["Acme Company", "Springfield Business Park", "TBD", "Unknown"], False),
        (["Note: Company", "City", "and Notice Date are as the employer reported them"], False),
        (["Company", "Notice Date"], False),
    ],
)
def test_section_header_takes_names_of_three_fields_and_no_values(
    cells: list[str], header: bool
) -> None:
    """A record is a header when its names map the company and two more fields, and none is a value."""
    found = section_header(cells, RULES)
    assert (found is not None) == header
    if found:
        assert found.header[found.fields["company"]] in cells
