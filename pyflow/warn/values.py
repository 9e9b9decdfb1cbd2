"""Values as states write them, read into clean ones: Polars expressions over whole columns.

Every function here returns a `polars.Expr` (or works on a whole `Series`), so the work runs in
the engine, never row by row in Python. A value that is present but cannot be read becomes
null; the transform counts such values per field, with examples, so nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from pyflow.warn.schema import STATE_CODES, STATES

EARLIEST_YEAR = 1988
"""The WARN Act was passed in 1988: a notice dated before it is a typing error."""

LATEST_YEAR = 2100
"""A date after this year is a typing error."""

SPREADSHEET_EPOCH = date(1899, 12, 30)
"""Day 0 of a spreadsheet's date numbers (Excel's, LibreOffice's): a date exported as a number."""

NULL_WORDS = (
    "", "-", "--", "?", "n/a", "na", "n.a.", "none", "null", "nil", "tbd", "tba", "tbc",
    "unknown", "not known", "unk", "not indicated", "not available", "not provided",
    "not specified", "pending", "see notes", "see letter", "see notice", "see warn", "various",
)  # fmt: skip
"""Placeholders that mean "no value": an unknown job count or date is not an error."""

EXTRA_COLUMN = "_extra"
"""The column of cells beyond the header (`pyflow.warn.reading.EXTRA`), not profiled."""

_SPACE = r"(?:[\s\x00-\x1f\x7f]|_x00[01][0-9A-Fa-f]_)+"
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE = re.compile(
    r"(?i)(?:^|[^0-9])(?:"
    r"(?P<iy>\d{4})[-/.](?P<im>\d{1,2})[-/.](?P<id>\d{1,2})"
    r"|(?P<an>\d{1,2})[-/.](?P<bn>\d{1,2})[-/.]{1,2}(?P<ay>\d{4}|\d{2})(?:$|[^0-9])"
    rf"|\b(?P<mn>{_MONTH})\.?,?\s*(?P<md>\d{{1,2}})(?:st|nd|rd|th)?(?:\s*-\s*\d{{1,2}})?\s*[,.]?\s*(?P<my>\d{{4}})"
    rf"|\b(?P<dd>\d{{1,2}})[-\s](?P<dm>{_MONTH})\.?[-\s,]+(?P<dy>\d{{4}}|\d{{2}})"
    r"|(?P<cy>(?:19|20)\d{2})(?P<cm>[01]\d)(?P<cd>[0-3]\d)(?:$|[^0-9])"
    r")"
)
"""The date forms states write, in one pattern so the leftmost date in a value is the one read.

``2020-01-02`` (and ``2020/1/2``, ``2020-01-02 00:00:00``); ``1/2/2020``, ``1/2/20``,
``01-02-20``; ``January 2, 2020``, ``Jan. 2 2020``, ``April, 30, 2021``; ``2-Jan-2020``;
``20200102``. In a range (``1/2/2020 - 3/4/2020``, ``Beginning: ...; Ending: ...``) the first
date is the one read.
"""

_MONTH_NUMBERS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"),
            ("may",), ("jun", "june"), ("jul", "july"), ("aug", "august"),
            ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}  # fmt: skip

_COUNT = r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
"""A job count: the first number in the value, with or without thousands separators."""

CLOSURE = r"(?i)\bclos(?:e|ed|es|ing|ings|ure|ures)\b|\bshut\s?downs?\b|^cl$|\bcessation\b"
LAYOFF = (
    r"(?i)\blay\s?-?offs?\b|\blaid off\b|\breductions?\b|\brif\b|^lo$|\bfurloughs?\b"
    r"|\bdownsiz\w*|\brelocat\w*|\bcutbacks?\b"
)
TEMPORARY = r"(?i)\btemp(?:orary|orarily)?\b|\bfurloughs?\b|\bseasonal\b"
PERMANENT = r"(?i)\bperm(?:anent|anently)?\b"
AMENDMENT = (
    r"(?i)\bamend(?:ed|ment|ments)?\b|\brevis(?:ed|ion|ions)\b|\bupdated?\b"
    r"|\bsupplement(?:al|ary)?\b|\bcorrect(?:ed|ion)\b|\brescind(?:ed)?\b|\bwithdrawn\b"
)
"""Words in a notice's type (or its company name) that say what kind of notice it is."""

KIND_PATTERNS = (CLOSURE, LAYOFF, TEMPORARY, PERMANENT, AMENDMENT)

COMPANY_AMENDED = r"(?i)\b(?:amend(?:ed|ment)|revis(?:ed|ion))\b|[-(]\s*updated?\b"
"""A company name that says its notice is an amendment (``Acme - Updated``, ``Revision 2``)."""

_YES = r"(?i)^(?:y|yes|true|x|1)$"
_NO = r"(?i)^(?:n|no|false|0)$"


@dataclass(frozen=True)
class Reading:
    """A column read value by value: the result per row, and the values that did not read."""

    values: pl.Series
    unread: pl.Series

    def unread_rows(self, column: pl.Series) -> pl.Series:
        """The rows' raw values that were there but could not be read, in row order."""
        return column.filter(column.is_in(self.unread.implode()))


def read_distinct(
    column: pl.Series, read: Callable[[pl.Series], pl.Series], *, report: bool = True
) -> Reading:
    """Read each distinct value of a column once and map the results back onto every row.

    A state's file repeats its cities, dates and counts thousands of times: reading the distinct
    values gives the same result at a fraction of the work. A value that is present (not blank,
    not a placeholder such as ``N/A``) but reads as null is reported in ``unread``.

    Args:
        column: Raw text, one value per row.
        read: Reads a series of distinct raw values into a series of results.
        report: Find the values that did not read (False leaves ``unread`` empty).
    """
    distinct = column.unique()
    result = read(distinct)
    unread = distinct.clear()
    if report:
        present = distinct.to_frame("value").select(~is_null_word(clean(pl.col("value"))))
        unread = distinct.filter(present.to_series() & result.is_null())
    return Reading(
        column.replace_strict(distinct, result, default=None, return_dtype=result.dtype), unread
    )


def per_value(read: Callable[[pl.Expr], pl.Expr]) -> Callable[[pl.Series], pl.Series]:
    """Turn an expression over text into a reader of a series (for `read_distinct`)."""

    def reader(values: pl.Series) -> pl.Series:
        return values.to_frame("value").lazy().select(read(pl.col("value"))).collect().to_series()

    return reader


def kind_of(column: pl.Expr) -> pl.Expr:
    """Read what a notice-type label says: closure or layoff, temporary or permanent, amendment."""
    text = clean(column)
    return pl.struct(
        flag([text], CLOSURE, LAYOFF).alias("is_closure"),
        flag([text], TEMPORARY, PERMANENT).alias("is_temporary"),
        text.str.contains(AMENDMENT).alias("is_amendment"),
    )


def clean(column: pl.Expr) -> pl.Expr:
    """Collapse runs of white space, control characters and Excel's ``_x000D_`` escapes; trim."""
    return column.str.replace_all(_SPACE, " ").str.strip_chars()


def is_null_word(cleaned: pl.Expr) -> pl.Expr:
    """Whether a cleaned value is a placeholder for "no value" (blank, N/A, TBD, ...)."""
    return cleaned.is_null() | cleaned.str.to_lowercase().str.strip_chars(" .").is_in(NULL_WORDS)


def name(column: pl.Expr) -> pl.Expr:
    r"""A company name, cleaned; blank becomes null.

    A name over several lines is joined into one, unless the lines after the first hold digits:
    then they are its address (``Target\\nT3238 Store\\n250 N.W. 13th Street``), and only the first
    line is the name.
    """
    text = column.str.strip_chars()
    first = text.str.extract(r"^([^\r\n]*)", 1)
    rest = text.str.extract(r"(?s)^[^\r\n]*[\r\n]+(.*)$", 1)
    chosen = clean(pl.when(rest.str.contains(r"\d")).then(first).otherwise(text))
    return pl.when(chosen == "").then(None).otherwise(chosen)


_UNTIDY = r"[\x00-\x1f\x7f\u00a0]|\s\s|^\s|\s$|^$|_x00[01]"


def names(column: pl.Series) -> pl.Series:
    """Apply `name` to a column, doing the work only for values that need it (most are tidy)."""
    untidy = column.str.contains(_UNTIDY).fill_null(value=False)
    if not untidy.any():
        return column
    rows = untidy.arg_true()
    fixed = column.gather(rows).to_frame("value").select(name(pl.col("value"))).to_series()
    return column.scatter(rows, fixed)


_STATE_SUFFIX = (
    r"(?i)(?:,\s*|\s+)(?:" + "|".join(sorted(STATE_CODES)) + "|" + "|".join(STATES) + r")\.?$"
)


def city(column: pl.Expr) -> pl.Expr:
    """A place, cleaned, without a trailing ZIP code or state (``Fargo, ND``).

    Of a street address (``1003 Broad Street, Johnstown, PA 15906``) its last part, the city.
    """
    text = clean(column).str.replace(r"[\s,]*\d{5}(?:-\d{4})?$", "")
    text = text.str.replace(_STATE_SUFFIX, "").str.strip_chars(" ,;")
    street = text.str.contains(r"^\d+\s") & text.str.contains(",")
    text = pl.when(street).then(text.str.extract(r",\s*([^,]+)$", 1)).otherwise(text)
    return pl.when(text == "").then(None).otherwise(text)


def dates(column: pl.Series, *, day_first: bool = False) -> pl.Series:
    """Read the first date in each value; null if there is none, or it cannot be a real date.

    Values in the commonest forms (``2020-01-02``, ``1/2/2020``, ``2020-01-02 00:00:00``) are
    parsed directly, and so are five-digit numbers, a spreadsheet's day numbers (``43832`` is
    2020-01-02, as Excel and LibreOffice count); the others go through `_DATE`, which finds a
    date anywhere in the text.

    Args:
        column: Cleaned text.
        day_first: Read ``1/2/2020`` as 1 February (a source whose dates say so), not 2 January.
    """
    slash = "%d/%m/%Y" if day_first else "%m/%d/%Y"
    text = pl.col("value")
    serial = text.str.extract(r"^(\d{5})(?:\.0+)?$").cast(pl.Int64)
    parsed = pl.coalesce(
        text.str.to_date("%Y-%m-%d", strict=False),
        text.str.to_date(slash, strict=False),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False).dt.date(),
        pl.lit(SPREADSHEET_EPOCH) + pl.duration(days=serial),
    )
    fast = (
        column.to_frame("value")
        .lazy()
        .select(pl.when(parsed.dt.year().is_between(EARLIEST_YEAR, LATEST_YEAR)).then(parsed))
        .collect()
        .to_series()
    )
    rest = fast.is_null() & column.is_not_null()
    if not rest.any():
        return fast
    rows = rest.arg_true()
    groups = column.gather(rows).str.extract_groups(_DATE.pattern).struct.unnest()
    slow = groups.lazy().select(_date_from_groups(day_first=day_first)).collect().to_series()
    return fast.scatter(rows, slow)


def _date_from_groups(*, day_first: bool) -> pl.Expr:
    """Assemble a date from the capture groups of `_DATE`, each a column."""
    col = pl.col
    first, second = (col("bn"), col("an")) if day_first else (col("an"), col("bn"))
    month_name = pl.coalesce(col("mn"), col("dm")).str.to_lowercase().str.slice(0, 3)
    year = pl.coalesce(
        col("iy"), _full_year(col("ay")), col("my"), _full_year(col("dy")), col("cy")
    ).cast(pl.Int32, strict=False)
    month = pl.coalesce(
        col("im").cast(pl.Int32, strict=False),
        first.cast(pl.Int32, strict=False),
        month_name.replace_strict(
            {k[:3]: v for k, v in _MONTH_NUMBERS.items()}, default=None, return_dtype=pl.Int32
        ),
        col("cm").cast(pl.Int32, strict=False),
    )
    day = pl.coalesce(col("id"), second, col("md"), col("dd"), col("cd")).cast(
        pl.Int32, strict=False
    )
    valid = year.is_between(EARLIEST_YEAR, LATEST_YEAR) & month.is_between(1, 12)
    text = pl.concat_str([year, month, day], separator="-")
    return pl.when(valid).then(text).str.to_date("%Y-%m-%d", strict=False)


def _full_year(two_or_four: pl.Expr) -> pl.Expr:
    """Turn a two-digit year into four (``20`` is 2020, ``95`` is 1995); keep four-digit ones."""
    number = two_or_four.cast(pl.Int32, strict=False)
    return (
        pl.when(two_or_four.str.len_chars() == 2)
        .then(pl.when(number < 70).then(number + 2000).otherwise(number + 1900))
        .otherwise(number)
        .cast(pl.String)
    )


def count(column: pl.Expr) -> pl.Expr:
    """Read a job count: the first whole number in the value (``1,234``, ``approx. 50``).

    A value with no number (``N/A``, ``TBD``, ``unknown``) is null; so is a fraction.
    """
    whole = column.str.extract(_COUNT, 1).str.replace_all(",", "").cast(pl.Int64, strict=False)
    fraction = column.str.extract(_COUNT, 2)
    return pl.when(fraction.is_null() | fraction.str.contains(r"^0+$")).then(whole)


def state(column: pl.Expr) -> pl.Expr:
    """Read a state's postal code from a code or a name (``tx``, ``Texas``); null if it is neither."""
    text = clean(column).str.strip_chars(".")
    upper = text.str.to_uppercase()
    by_name = text.str.to_lowercase().replace_strict(STATES, default=None, return_dtype=pl.String)
    return pl.when(upper.is_in(sorted(STATE_CODES))).then(upper).otherwise(by_name)


def flag(texts: Iterable[pl.Expr], true: str, false: str | None = None) -> pl.Expr:
    """Read a yes/no fact from the first text that says it: True if it matches ``true``.

    Args:
        texts: Cleaned values to look in, in order of trust.
        true: Pattern of a value that means yes.
        false: Pattern of a value that means no; without it, a text that does not match ``true``
            says nothing.
    """
    answers = []
    for text in texts:
        says_true = text.str.contains(true)
        says_false = text.str.contains(false) if false else pl.lit(value=False)
        answers.append(
            pl.when(says_true & ~says_false)
            .then(pl.lit(value=True))
            .when(says_false & ~says_true)
            .then(pl.lit(value=False))
        )
    return pl.coalesce(answers) if answers else pl.lit(None, dtype=pl.Boolean)


def yes_no(column: pl.Expr) -> pl.Expr:
    """Read ``yes``/``no`` (``Y``, ``N``, ``true``, ``x``) as a boolean; anything else is null."""
    text = clean(column)
    return (
        pl.when(text.str.contains(_YES))
        .then(pl.lit(value=True))
        .when(text.str.contains(_NO))
        .then(pl.lit(value=False))
    )


class Profile:
    """What the columns of sample rows hold, counted for every column of every source at once.

    What the column mapping decides on: how many values are present, and how many read as
    names, counts, dates, notice kinds or yes/no; and whether ``a/b/yyyy`` dates are day first.
    One pass over all the samples stacked, not a few per column.
    """

    def __init__(self, samples: Mapping[int, pl.DataFrame]) -> None:
        stacked = [
            sample.lazy()
            .select(pl.exclude(EXTRA_COLUMN))
            .unpivot(variable_name="column")
            .with_columns(pl.lit(source, dtype=pl.UInt32).alias("source"))
            for source, sample in samples.items()
        ]
        if not stacked:
            self._counts: dict[tuple[int, str], dict[str, Any]] = {}
            return
        long = pl.concat(stacked).with_columns(clean(pl.col("value")).alias("value")).collect()
        distinct = long.select(pl.col("value").unique())
        value = pl.col("value")
        present = ~is_null_word(value)
        kind = pl.any_horizontal(*(value.str.contains(pattern) for pattern in KIND_PATTERNS))
        slash = value.str.extract_groups(r"^(\d{1,2})[-/.](\d{1,2})[-/.]\d{2,4}\b")
        features = distinct.select(
            value,
            present.alias("present"),
            (present & value.str.contains(r"[A-Za-z]")).alias("text"),
            (present & count(value).is_not_null()).alias("count"),
            (present & dates(distinct.get_column("value")).is_not_null()).alias("date"),
            (present & (value.str.len_chars() <= 40) & kind).alias("kind"),
            (present & yes_no(value).is_not_null()).alias("yes_no"),
            (slash.struct.field("1").cast(pl.Int32, strict=False) > 12).fill_null(False).alias("first_over_12"),
            (slash.struct.field("2").cast(pl.Int32, strict=False) > 12).fill_null(False).alias("second_over_12"),
        )  # fmt: skip
        # each value's features are worked out once, however many cells hold it, then counted
        measures = [name for name in features.columns if name != "value"]
        counts = (
            long.lazy()
            .join(features.lazy(), on="value", how="left", nulls_equal=True)
            .group_by("source", "column")
            .agg(pl.col(name).sum() for name in measures)
            .collect()
        )
        self._counts = {(row["source"], row["column"]): row for row in counts.iter_rows(named=True)}

    def of(self, source: int) -> SourceProfile:
        """The counts of one source's columns."""
        return SourceProfile(self, source)

    def count(self, source: int, index: int, what: str) -> int:
        """One count of one column of one source."""
        row = self._counts.get((source, f"c{index}"))
        return int(row[what]) if row else 0


@dataclass(frozen=True)
class SourceProfile:
    """One source's view of a `Profile`."""

    profile: Profile
    source: int

    def present(self, index: int) -> int:
        """Non-blank values (not placeholders such as ``N/A``) of a column."""
        return self.profile.count(self.source, index, "present")

    def readable(self, index: int, kind: str) -> int:
        """Present values of a column that read as ``kind``: ``date``, ``count`` or ``text``."""
        return self.profile.count(self.source, index, kind)

    def kind_share(self, index: int) -> float:
        """The share of a column's present values that are short labels of a notice's kind."""
        present = self.present(index)
        return self.profile.count(self.source, index, "kind") / present if present else 0.0

    def yes_no_share(self, index: int) -> float:
        """The share of a column's present values that read as yes or no."""
        present = self.present(index)
        return self.profile.count(self.source, index, "yes_no") / present if present else 0.0

    def day_first(self, index: int) -> bool:
        """Whether a column's ``a/b/yyyy`` dates are day first: some ``a`` over 12, no ``b``."""
        count = self.profile.count
        return count(self.source, index, "first_over_12") > 0 and not count(
            self.source, index, "second_over_12"
        )
