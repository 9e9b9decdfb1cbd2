"""Rows into notices, many sources at once: renamed to the fields, stacked, read in one pass.

Each source's columns are renamed to the fields, the sources are stacked, and every field is
read in one pass over the stack.

A run over many small files is then a few engine calls, not a few per file; a run over a few
large ones is the same work as reading each alone. Every value is read once per distinct value
(`pyflow.warn.values.read_distinct`): states repeat their dates, cities and counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import polars as pl

from pyflow.warn import reading, values
from pyflow.warn.columns import ColumnMap
from pyflow.warn.schema import FLAG_FIELDS, KEY_FIELDS, NOTICE_FIELDS

RAW_FIELDS = ("state", "company", "city", "notice_date", "effective_date", "jobs")
"""Fields read from a source's columns or constants."""

IDS = ("source_index", "part_index", "record")
"""Columns that say where a row came from: its source, partition and record in the partition."""

REPORTED = ("notice_date", "effective_date", "jobs")
"""Fields whose values that could not be read are counted, with examples, in the summary."""

_NO_TEXT = pl.lit(None, dtype=pl.String)


def blank_rows(frame: pl.DataFrame, width: int) -> pl.Series:
    """Which rows are blank: every cell empty or white space, and none beyond the header.

    Only rows whose first cell is blank can be, so the other cells are looked at for them alone.
    """
    candidates = frame.select(_blank("c0")).to_series() & frame.get_column(reading.EXTRA).is_null()
    if width < 2:
        return candidates
    return _where(frame, candidates, pl.all_horizontal(_blank(f"c{i}") for i in range(1, width)))


def note_rows(frame: pl.DataFrame, width: int, company: int) -> pl.Series:
    """Which rows hold one value, in the company column, and nothing else: notes, not notices.

    A footnote, a "Source: ..." line or a title within the rows fills one cell. Only rows with
    no cells beyond the header and an empty first other column can be one, so the other cells
    are looked at for them alone.
    """
    if width < 2:
        return pl.Series(values=[False] * frame.height, dtype=pl.Boolean)
    first_other = frame.get_column("c1" if company == 0 else "c0").fill_null("") == ""
    candidates = first_other & frame.get_column(reading.EXTRA).is_null()
    others = (_blank(f"c{i}") for i in range(width) if i != company)
    return _where(frame, candidates, ~_blank(f"c{company}") & pl.all_horizontal(others))


def _blank(column: str) -> pl.Expr:
    """Whether a cell is empty or white space."""
    return pl.col(column).str.strip_chars().fill_null("") == ""


def _where(frame: pl.DataFrame, candidates: pl.Series, condition: pl.Expr) -> pl.Series:
    """Check ``condition`` on the candidate rows alone; the other rows are False."""
    if not candidates.any():
        return candidates
    rows = candidates.arg_true()
    return candidates.scatter(rows, frame[rows].select(condition).to_series())


def raw_fields(
    frame: pl.DataFrame,
    columns: ColumnMap,
    constants: Mapping[str, str],
    source_index: int,
    part_index: int,
) -> pl.DataFrame:
    """Rename one partition's columns to the fields, in one pass: the shape every source shares.

    Args:
        frame: The partition's records, columns ``c0``... and `reading.EXTRA`.
        columns: The source's column mapping.
        constants: The source's constants (they win over its columns).
        source_index: The source's position in the run.
        part_index: The partition's position in the source.

    Returns:
        One row per record: `IDS`, whether it is blank, each raw field, the notice-kind text,
        the yes/no columns, the cells beyond the header, whether it repeats the header, and
        whether it is a note line (`note_rows`).
    """

    def raw(name: str) -> pl.Expr:
        if name in constants:
            return pl.lit(constants[name], dtype=pl.String)
        if name in columns.fields:
            return pl.col(f"c{columns.fields[name]}")
        return _NO_TEXT

    kinds = [pl.col(f"c{index}") for index in columns.kinds]
    company_header = columns.header[columns.fields["company"]] if "company" in columns.fields else None  # fmt: skip
    return frame.select(
        pl.lit(source_index, dtype=pl.UInt32).alias("source_index"),
        pl.lit(part_index, dtype=pl.UInt32).alias("part_index"),
        pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("record"),
        blank_rows(frame, len(columns.header)).alias("blank"),
        *(raw(name).alias(name) for name in RAW_FIELDS),
        (pl.concat_str(kinds, separator=" | ", ignore_nulls=True) if kinds else _NO_TEXT).alias("kinds"),
        pl.lit(bool(kinds)).alias("has_kinds"),
        *(
            (pl.col(f"c{columns.yes_no[flag]}") if flag in columns.yes_no else _NO_TEXT).alias(f"{flag}_yes_no")
            for flag in FLAG_FIELDS
        ),
        pl.lit("notice_date" in columns.day_first).alias("notice_day_first"),
        pl.lit("effective_date" in columns.day_first).alias("effective_day_first"),
        pl.col(reading.EXTRA),
        (
            raw("company").str.contains(rf"(?i)^\s*{re.escape(company_header)}\s*$")
            if company_header
            else pl.lit(value=False)
        ).alias("repeats_header"),
        (
            note_rows(frame, len(columns.header), columns.fields["company"])
            if "company" in columns.fields and "company" not in constants
            else pl.lit(value=False)
        ).alias("note_line"),
    )  # fmt: skip


_STATE = values.per_value(lambda text: values.state(values.clean(text)))
_CITY = values.per_value(values.city)
_JOBS = values.per_value(lambda text: values.count(values.clean(text)))
_KIND = values.per_value(values.kind_of)
_YES_NO = values.per_value(values.yes_no)


def _dates(raw: pl.Series, day_first: pl.Series) -> values.Reading:
    """Read a date column; rows whose source writes days first are read again that way."""
    clean = values.per_value(values.clean)

    def read(text: pl.Series, *, first: bool) -> pl.Series:
        return values.dates(clean(text), day_first=first)

    reading_ = values.read_distinct(raw, lambda text: read(text, first=False))
    if not day_first.any():
        return reading_
    rows = day_first.arg_true()
    again = values.read_distinct(raw.gather(rows), lambda text: read(text, first=True))
    return values.Reading(
        reading_.values.scatter(rows, again.values),
        pl.concat([reading_.unread, again.unread]).unique(),
    )


READERS = 4
"""Fields read at once, each in a thread: the engine releases Python's lock while it works."""


def normalise(raw: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, values.Reading]]:
    """Read every field of every (non-blank) row of the stack, each distinct value once.

    The fields are independent, so they are read at once, in threads.

    Returns:
        The rows with their notice fields, `IDS`, the raw state (for reasons) and the cells
        beyond the header; and the readings of the fields whose unread values are reported.
    """
    column = raw.get_column
    work: dict[str, Callable[[], values.Reading]] = {
        "notice_date": lambda: _dates(column("notice_date"), column("notice_day_first")),
        "effective_date": lambda: _dates(column("effective_date"), column("effective_day_first")),
        "jobs": lambda: values.read_distinct(column("jobs"), _JOBS),
        "company": lambda: values.Reading(values.names(column("company")), pl.Series([], dtype=pl.String)),
        "kinds": lambda: values.read_distinct(column("kinds"), _KIND, report=False),
        "state": lambda: values.read_distinct(column("state"), _STATE, report=False),
        "city": lambda: values.read_distinct(column("city"), _CITY, report=False),
        **{flag: partial(values.read_distinct, column(f"{flag}_yes_no"), _YES_NO, report=False) for flag in FLAG_FIELDS},
    }  # fmt: skip
    with ThreadPoolExecutor(READERS) as pool:
        futures = {name: pool.submit(read) for name, read in work.items()}
        done = {name: future.result() for name, future in futures.items()}
    readings = {name: done[name] for name in REPORTED}
    company = done["company"].values
    kinds = done["kinds"].values.struct.unnest()
    yes_no = {flag: done[flag].values for flag in FLAG_FIELDS}
    amended = company.str.contains(values.COMPANY_AMENDED).fill_null(value=False) | kinds[
        "is_amendment"
    ].fill_null(value=False)
    frame = raw.select(
        *IDS,
        pl.col(reading.EXTRA),
        pl.col("repeats_header"),
        pl.col("note_line"),
        pl.col("state").alias("raw_state"),
    ).with_columns(
        company.alias("company"),
        done["state"].values.alias("state"),
        done["city"].values.alias("city"),
        readings["notice_date"].values.alias("notice_date"),
        readings["effective_date"].values.alias("effective_date"),
        readings["jobs"].values.alias("jobs"),
        pl.coalesce(yes_no["is_closure"], kinds["is_closure"]).alias("is_closure"),
        pl.coalesce(yes_no["is_temporary"], kinds["is_temporary"]).alias("is_temporary"),
        pl.coalesce(
            yes_no["is_amendment"],
            pl.when(amended).then(pl.lit(value=True)).when(raw.get_column("has_kinds")).then(pl.lit(value=False)),
        ).alias("is_amendment"),
    )  # fmt: skip
    return frame, readings


TOTAL = r"(?i)^(grand\s+|sub[\s-]?)?totals?\s*:?$"
"""A company cell that marks a total line ("Total", "Grand total", "Subtotal:")."""

RULES = {
    "values beyond the header": pl.col(reading.EXTRA).is_not_null(),
    "company blank": pl.col("company").is_null(),
    "header repeated": pl.col("repeats_header"),
    "total line": pl.col("company").str.contains(TOTAL),
    "note line": pl.col("note_line"),
    "state blank": _blank("raw_state"),
    "state unknown": pl.col("state").is_null(),
}
"""Why a row is rejected, in the order checked: only when it cannot be a notice.

Cells beyond the header (the row does not line up with it), a blank company, a repeat of the
header row, a total line (a company of "Total"), a note line (a footnote or title: the company
cell is the row's one value), or no readable US state. A value that is there but cannot be
read (a date such as ``31/31/2024``, a count such as ``see letter``) is left empty and counted,
not rejected: the notice is still a notice.
"""


def reject_rule() -> pl.Expr:
    """The first of `RULES` a row breaks, or null when it is kept."""
    rule: Any = None  # a chain of when/then expressions, built one rule at a time
    for name, condition in RULES.items():
        rule = (pl.when(condition) if rule is None else rule.when(condition)).then(pl.lit(name))
    assert rule is not None
    expression: pl.Expr = rule.otherwise(None).alias("rule")
    return expression


def reject_reason(width: int, company: str, state: str) -> pl.Expr:
    """The reason a rejected row of one source gives, naming the value and why."""
    return (
        pl.when(pl.col("rule") == "values beyond the header")
        .then(pl.format(f"the row has values beyond the header's {width} columns: {{}}", pl.col(reading.EXTRA).str.slice(0, 200)))
        .when(pl.col("rule") == "company blank")
        .then(pl.lit(f"company: the '{company}' cell is blank"))
        .when(pl.col("rule") == "header repeated")
        .then(pl.lit("the row repeats the header"))
        .when(pl.col("rule") == "total line")
        .then(pl.format(f"company: '{{}}' in '{company}' marks a total line, not a notice", pl.col("company")))
        .when(pl.col("rule") == "note line")
        .then(pl.format(f"the row's one value is '{{}}', in '{company}': a note or title line, not a notice", pl.col("company").str.slice(0, 200)))
        .when(pl.col("rule") == "state blank")
        .then(pl.lit(f"state: the '{state}' cell is blank"))
        .otherwise(pl.format(f"state: '{{}}' in '{state}' is not a US state or territory", values.clean(pl.col("raw_state"))))
        .alias("reason")
    )  # fmt: skip


def key() -> pl.Expr:
    """The notice key: its normalised fields, company and city in lower case, joined.

    Two rows with the same key are the same notice; keys sort by state, notice date, company.
    Dates are written as days since 1970 plus 100,000 and counts plus 10^12, so that both
    sort as text as they do as numbers, and cost little to write.
    """

    def day(name: str) -> pl.Expr:
        return (pl.col(name).cast(pl.Int32) + 100_000).cast(pl.String)

    flags = sum(
        (pl.col(name).cast(pl.UInt8).fill_null(2) * 3**power for power, name in enumerate(FLAG_FIELDS)),
        start=pl.lit(0, dtype=pl.UInt8),
    )  # fmt: skip
    parts = {
        "state": pl.col("state"),
        "notice_date": day("notice_date"),
        "company": pl.col("company").str.to_lowercase(),
        "city": pl.col("city").str.to_lowercase(),
        "effective_date": day("effective_date"),
        "jobs": (pl.col("jobs") + 10**12).cast(pl.String),
        "flags": (flags + 10).cast(pl.String),
    }
    order = [*(name for name in KEY_FIELDS if name in parts), "flags"]
    return pl.concat_str([parts[name].fill_null("") for name in order], separator="\x1f").alias("key")  # fmt: skip


NOTICE_COLUMNS = ("key", *NOTICE_FIELDS[1:-1], *IDS)
"""Columns of a part file of notices: the key, the fields, and where the row came from."""


def raw_row(width: int) -> pl.Expr:
    """The row as its file had it, rendered as one CSV record (trailing empty cells dropped)."""
    cells = [reading.quoted(pl.col(f"c{i}")).fill_null("") for i in range(width)]
    row = pl.concat_str(cells, separator=",").str.strip_chars_end(",")
    extra = pl.col(reading.EXTRA)
    return pl.when(extra.is_null()).then(row).otherwise(pl.concat_str([row, extra], separator=",")).alias("raw")  # fmt: skip
