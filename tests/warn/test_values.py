"""Tests of reading values as states write them: dates, counts, names, places, kinds."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from pyflow.warn import values


def read(expression: pl.Expr, texts: list[str | None]) -> list[object]:
    """Apply an expression to a column of texts and return the results."""
    return (
        pl.DataFrame({"v": texts}, schema={"v": pl.String}).select(expression).to_series().to_list()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1/2/2020", date(2020, 1, 2)),
        ("01/02/2020", date(2020, 1, 2)),
        ("1/2/20", date(2020, 1, 2)),
        ("03-17-22", date(2022, 3, 17)),
        ("2020-01-02", date(2020, 1, 2)),
        ("2022/2/8", date(2022, 2, 8)),
        ("2020-01-02 00:00:00", date(2020, 1, 2)),
        ("2020-05-15 05:00:00", date(2020, 5, 15)),
        ("January 2, 2020", date(2020, 1, 2)),
        ("Jan. 2, 2020", date(2020, 1, 2)),
        ("Jan 13, 2022", date(2022, 1, 13)),
        ("April, 30, 2021", date(2021, 4, 30)),
        ("April 18. 2020", date(2020, 4, 18)),
        ("16-Feb-2021", date(2021, 2, 16)),
        ("20200102", date(2020, 1, 2)),
        ("1/2/2020 - 3/4/2020", date(2020, 1, 2)),
        ("07/07/2021 - (08/30/2021)", date(2021, 7, 7)),
        ("06-11-22\n thru\n06-11-22", date(2022, 6, 11)),
        ("Beginning:  January 23, 2023; Ending:  March 31, 2023", date(2023, 1, 23)),
        ("December 15-30, 2020", date(2020, 12, 15)),
        ("Updated12/16/2022", date(2022, 12, 16)),
        ("12/31//2015", date(2015, 12, 31)),
    ],
)
def test_dates_read_every_form_states_write(text: str, expected: date) -> None:
    """Each date form found in the 44 states' files reads as its first date."""
    assert values.dates(pl.Series([values_clean(text)])).to_list() == [expected]


def values_clean(text: str) -> str:
    """Clean a value as the transform does before reading a date."""
    return read(values.clean(pl.col("v")), [text])[0]  # type: ignore[return-value]


@pytest.mark.parametrize(
    "text",
    ["", "TBD", "N/A", "31/31/2024", "11/31/2021", "1899-12-29 00:00:00", "0025-05-16",
     "August-November 2021", "3/29", "Smay 5, 2020", "see letter"],
)  # fmt: skip
def test_dates_leave_missing_or_impossible_dates_empty(text: str) -> None:
    """A value with no date, or one that cannot be a real date in 1988-2100, reads as null."""
    assert values.dates(pl.Series([text])).to_list() == [None]


def test_dates_read_a_spreadsheets_day_numbers() -> None:
    """A date exported from a spreadsheet as its day number reads as that day; others do not."""
    read_ = values.dates(pl.Series(["43832", "45292.0", "12345", "99999", "4383", "438320"]))
    assert read_.to_list() == [date(2020, 1, 2), date(2024, 1, 1), None, None, None, None]


def test_dates_read_days_first_when_the_source_writes_them_so() -> None:
    """With day_first, 1/2/2020 is 1 February; ISO dates are not affected."""
    read_ = values.dates(pl.Series(["1/2/2020", "25/12/2020", "2020-01-02"]), day_first=True)
    assert read_.to_list() == [date(2020, 2, 1), date(2020, 12, 25), date(2020, 1, 2)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", 12), (" 1,234 ", 1234), ("approx. 50", 50), ("35.0", 35), ("207 total locations", 207),
        ("66; #CT workers not indicated", 66), ("0", 0), ("N/A", None), ("TBD", None),
        ("Not indicated", None), ("12.5", None), ("", None),
    ],
)  # fmt: skip
def test_count_reads_job_counts_as_states_write_them(text: str, expected: int | None) -> None:
    """The first whole number in the value; no number (N/A, TBD) or a fraction is unknown."""
    assert read(values.count(values.clean(pl.col("v"))), [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("TX", "TX"), ("tx", "TX"), (" Texas ", "TX"), ("district of columbia", "DC"), ("Ontario", None), ("", None)],
)  # fmt: skip
def test_state_reads_codes_and_names(text: str, expected: str | None) -> None:
    """A postal code or a state's name gives its code; anything else is null."""
    assert read(values.state(pl.col("v")), [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Target\nT3238 Store\n250 N.W. 13th Street\nGAINESVILLE, FL, 32601", "Target"),
        ("Hof's Hut, Inc. dba Lucille's Smokehouse\r\nBarbque", "Hof's Hut, Inc. dba Lucille's Smokehouse Barbque"),
        ("Cinemark 14 Wichita_x000D_\r\nFalls", "Cinemark 14 Wichita Falls"),
        ("  Acme   Foods  ", "Acme Foods"),
        ("   ", None),
    ],
)  # fmt: skip
def test_names_keep_a_wrapped_name_whole_and_drop_an_address(
    text: str, expected: str | None
) -> None:
    """Lines after a name's first are its address when they hold digits, else the name goes on."""
    assert values.names(pl.Series([text])).to_list() == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fargo, ND", "Fargo"), ("Detroit, Michigan", "Detroit"), ("Ringgold VA", "Ringgold"),
        ("1003 Broad Street, #101\r, Johnstown, PA 15906", "Johnstown"),
        ("Des Moines, Auburn, Puyallup", "Des Moines, Auburn, Puyallup"),
        ("Joint Base Lewis McChord", "Joint Base Lewis McChord"), ("Salt Lake City", "Salt Lake City"),
    ],
)  # fmt: skip
def test_city_drops_a_trailing_state_zip_and_street(text: str, expected: str) -> None:
    """A place keeps its name; a state, a ZIP code or a street address before it goes."""
    assert read(values.city(pl.col("v")), [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "closure", "temporary", "amendment"),
    [
        ("Closure Permanent", True, False, False), ("Layoff Temporary", False, True, False),
        ("Plant Closing", True, None, False), ("Mass Layoff", False, None, False),
        ("CL", True, None, False), ("LO", False, None, False), ("Furlough", False, True, False),
        ("Amendment", None, None, True), ("ClosureLayoff", None, None, False), ("Other", None, None, False),
    ],
)  # fmt: skip
def test_kind_of_reads_what_a_notice_type_says(
    text: str, closure: bool | None, temporary: bool | None, amendment: bool
) -> None:
    """Closure or layoff, temporary or permanent, amendment; a label saying both says neither."""
    [kind] = read(values.kind_of(pl.col("v")), [text])
    assert kind == {"is_closure": closure, "is_temporary": temporary, "is_amendment": amendment}


def test_read_distinct_reports_values_that_were_there_but_did_not_read() -> None:
    """Placeholders are not reported; a value such as 'many' is, once."""
    column = pl.Series(["12", "N/A", "many", "many", None, "7"])
    reading = values.read_distinct(column, values.per_value(values.count))
    assert reading.values.to_list() == [12, None, None, None, None, 7]
    assert reading.unread.to_list() == ["many"]
    assert reading.unread_rows(column).to_list() == ["many", "many"]
