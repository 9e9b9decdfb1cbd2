"""The output schema, source specifications, the column alias table and row normalisation."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FIELDS: tuple[str, ...] = (
    "state",
    "company",
    "city",
    "notice_date",
    "effective_date",
    "jobs",
    "source",
)
"""Columns of ``notices.csv``, in order."""

REJECT_FIELDS: tuple[str, ...] = ("source", "line", "reason", "raw")
"""Columns of ``rejects.csv``, in order."""

INPUT_FIELDS: tuple[str, ...] = FIELDS[:-1]
"""Fields a source file (or a source's constants) provides."""

REQUIRED_FIELDS: tuple[str, ...] = ("state", "company", "notice_date", "jobs")
"""Fields without which a row is rejected."""

EARLIEST_YEAR = 1988
"""The WARN Act was passed in 1988: an earlier notice date is a typing error."""

LATEST_YEAR = 2100
"""A date after this year is a typing error."""

STATES: dict[str, str] = {
    "alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA",
    "colorado": "CO", "connecticut": "CT", "delaware": "DE", "district of columbia": "DC",
    "florida": "FL", "georgia": "GA", "hawaii": "HI", "idaho": "ID", "illinois": "IL",
    "indiana": "IN", "iowa": "IA", "kansas": "KS", "kentucky": "KY", "louisiana": "LA",
    "maine": "ME", "maryland": "MD", "massachusetts": "MA", "michigan": "MI", "minnesota": "MN",
    "mississippi": "MS", "missouri": "MO", "montana": "MT", "nebraska": "NE", "nevada": "NV",
    "new hampshire": "NH", "new jersey": "NJ", "new mexico": "NM", "new york": "NY",
    "north carolina": "NC", "north dakota": "ND", "ohio": "OH", "oklahoma": "OK", "oregon": "OR",
    "pennsylvania": "PA", "puerto rico": "PR", "rhode island": "RI", "south carolina": "SC",
    "south dakota": "SD", "tennessee": "TN", "texas": "TX", "utah": "UT", "vermont": "VT",
    "virginia": "VA", "washington": "WA", "west virginia": "WV", "wisconsin": "WI",
    "wyoming": "WY", "guam": "GU", "virgin islands": "VI",
}  # fmt: skip
"""US state and territory names, lower case, to their postal codes."""

STATE_CODES = frozenset(STATES.values())

KEEP_UPPER = frozenset(
    {"LLC", "LLP", "LP", "PC", "PLLC", "USA", "US", "II", "III", "IV", "NA", "UPS", "IBM", "AT&T"}
)
"""Words kept in capitals when an all-capitals or all-lower-case name is recased."""

NULL_DATES = frozenset({"", "tbd", "n/a", "na", "unknown", "none", "-"})
"""Optional-date placeholders that mean "no date"."""

MONTHS = {
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

_ISO = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[ T]\S*)?")
_US = re.compile(r"(\d{1,2})[-/](\d{1,2})[-/](\d{4}|\d{2})(?: \S*)?")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DAY_MONTH = re.compile(r"(\d{1,2})[- ]([A-Za-z]{3,9})\.?[- ,]+(\d{4}|\d{2})")
_MONTH_DAY = re.compile(r"([A-Za-z]{3,9})\.? (\d{1,2}),? (\d{4})")
_RANGE = re.compile(r"\s+(?:-|to|through)\s+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RowError(ValueError):
    """A row that cannot be made valid; the message is the reject reason."""


class Source(BaseModel):
    """One input: where to read it, and constant values for the fields its file lacks.

    The string form is ``LOCATION`` or ``LOCATION#key=value,key=value``: for example
    ``data/ca.csv#state=CA`` or ``https://example.org/warn.csv#state=TX,name=tx``. Keys are
    the input fields (``state``, ``company``, ``city``, ``notice_date``, ``effective_date``,
    ``jobs``), ``name`` (the label written in the ``source`` column; default: the location)
    and ``encoding`` (default ``utf-8-sig``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    location: str = Field(
        min_length=1, description="Local path, file:// or http(s):// URL, or any fsspec URL."
    )
    constants: dict[str, str] = Field(
        default_factory=dict, description="Values for fields the file lacks, such as its state."
    )
    name: str | None = Field(
        default=None, description="Label for the source column; default: the location."
    )
    encoding: str = Field(default="utf-8-sig", description="Text encoding of the file.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """Accept the ``LOCATION#key=value,...`` string form."""
        return parse_source_spec(value) if isinstance(value, str) else value

    @field_validator("constants")
    @classmethod
    def _check_constants(cls, constants: dict[str, str]) -> dict[str, str]:
        """Allow only input fields, and normalise a constant state."""
        unknown = sorted(set(constants) - set(INPUT_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown field {', '.join(unknown)} after '#': use one of "
                f"{', '.join(INPUT_FIELDS)}, name or encoding"
            )
        if "state" in constants:
            constants = {**constants, "state": normalise_state(constants["state"])}
        return constants

    @property
    def label(self) -> str:
        """The value written in the ``source`` column of the outputs."""
        return self.name or self.location

    @property
    def is_remote_http(self) -> bool:
        """Whether the source is fetched over HTTP(S) before it is read."""
        return urlsplit(self.location).scheme in {"http", "https"}

    def __str__(self) -> str:
        """Render the source in its string form."""
        extras = {**self.constants}
        if self.name:
            extras["name"] = self.name
        if self.encoding != "utf-8-sig":
            extras["encoding"] = self.encoding
        suffix = ",".join(f"{key}={value}" for key, value in extras.items())
        return f"{self.location}#{suffix}" if suffix else self.location


def parse_source_spec(spec: str) -> dict[str, Any]:
    """Split a ``LOCATION#key=value,...`` string into the fields of a `Source`.

    Args:
        spec: The source in its string form.

    Returns:
        A mapping with ``location`` and, where given, ``constants``, ``name`` and ``encoding``.

    Raises:
        ValueError: If a ``key=value`` pair is malformed.
    """
    location, _, fragment = spec.strip().partition("#")
    fields: dict[str, Any] = {"location": location.strip()}
    constants: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in fragment.split(","))):
        key, sep, value = pair.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"'{pair}' in source '{spec}' is not key=value (such as state=CA)")
        if key in {"name", "encoding"}:
            fields[key] = value
        else:
            constants[key] = value
    fields["constants"] = constants
    return fields


def source_label_from(location: str) -> str:
    """Return the last path component of a location, for short messages."""
    return PurePosixPath(urlsplit(location).path).name or location


def normalise_header(name: str) -> str:
    """Reduce a column name to the form the alias table is matched in."""
    return " ".join(name.replace("\ufeff", "").replace("_", " ").strip(" :\"'").lower().split())


@dataclass(frozen=True)
class Aliases:
    """The column alias table: normalised column name -> output field."""

    by_name: Mapping[str, str]

    def names_for(self, field: str) -> list[str]:
        """Return the column names that map to a field, for error messages."""
        return [name for name, target in self.by_name.items() if target == field]


def load_aliases(extra_file: Path | None = None) -> Aliases:
    """Load the bundled alias table, extended by a user's TOML file of the same shape.

    Args:
        extra_file: Optional TOML file mapping fields to lists of extra column names.

    Returns:
        The merged alias table.

    Raises:
        ValueError: If a file names an unknown field or is not a table of string lists.
    """
    tables = [tomllib.loads(resources.files("pyflow").joinpath("aliases.toml").read_text("utf-8"))]
    if extra_file is not None:
        tables.append(tomllib.loads(Path(extra_file).read_text("utf-8")))
    by_name: dict[str, str] = {}
    for table in tables:
        for field, names in table.items():
            if field not in INPUT_FIELDS:
                raise ValueError(
                    f"unknown field '{field}' in the alias table: use {', '.join(INPUT_FIELDS)}"
                )
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"'{field}' in the alias table must be a list of column names")
            for name in names:
                by_name.setdefault(normalise_header(name), field)
    return Aliases(by_name)


def map_columns(header: list[str], aliases: Aliases) -> dict[str, int]:
    """Find, for each output field, the index of the first column whose name is an alias of it.

    Args:
        header: The file's column names.
        aliases: The alias table.

    Returns:
        Output field -> column index, for the fields the file has.
    """
    found: dict[str, int] = {}
    for index, name in enumerate(header):
        field = aliases.by_name.get(normalise_header(name))
        if field is not None and field not in found:
            found[field] = index
    return found


def clean_text(value: str) -> str:
    """Collapse runs of white space and drop control characters."""
    if not value.isprintable():
        value = _CONTROL.sub(" ", value)
    return " ".join(value.split())


@lru_cache(maxsize=65536)
def normalise_name(value: str) -> str:
    """Clean a company or city name, recasing it when it is all capitals or all lower case."""
    text = clean_text(value)
    if text.isupper() or text.islower():
        text = " ".join(
            word.upper() if word.upper() in KEEP_UPPER else word.capitalize()
            for word in text.split(" ")
        )
    return text


@lru_cache(maxsize=256)
def normalise_state(value: str) -> str:
    """Return the postal code for a state code or name.

    Raises:
        RowError: If the value is not a US state or territory.
    """
    text = clean_text(value)
    if not text:
        raise RowError("state: missing")
    if text.upper() in STATE_CODES:
        return text.upper()
    code = STATES.get(text.lower().rstrip("."))
    if code is None:
        raise RowError(f"state: unknown state '{text}'")
    return code


def _year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < 70 else 1900
    return year


def _parse_date(text: str) -> date:
    if match := _ISO.fullmatch(text):
        year, month, day = int(match[1]), int(match[2]), int(match[3])
    elif match := _US.fullmatch(text):
        year, month, day = _year(match[3]), int(match[1]), int(match[2])
    elif match := _COMPACT.fullmatch(text):
        year, month, day = int(match[1]), int(match[2]), int(match[3])
    elif (match := _DAY_MONTH.fullmatch(text)) and match[2].lower() in MONTHS:
        year, month, day = _year(match[3]), MONTHS[match[2].lower()], int(match[1])
    elif (match := _MONTH_DAY.fullmatch(text)) and match[1].lower() in MONTHS:
        year, month, day = int(match[3]), MONTHS[match[1].lower()], int(match[2])
    else:
        raise RowError(f"unrecognised date '{text}'")
    try:
        parsed = date(year, month, day)
    except ValueError:
        raise RowError(f"no such date '{text}'") from None
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        raise RowError(f"date '{text}' is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
    return parsed


def normalise_date(value: str, field: str, *, required: bool) -> str:
    """Return a date in ISO 8601 form (``YYYY-MM-DD``), or ``""`` for an optional blank.

    US order (month first) is assumed for ``1/2/2024``; for a range such as
    ``3/1/2024 - 3/15/2024`` the first date is taken.

    Raises:
        RowError: If the date is missing but required, or cannot be read.
    """
    iso, problem = _read_date(value)
    if problem:
        raise RowError(f"{field}: {problem}")
    if not iso and required:
        raise RowError(f"{field}: missing")
    return iso


@lru_cache(maxsize=65536)
def _read_date(value: str) -> tuple[str, str]:
    """Return ``(iso_date, "")``, ``("", "")`` for a blank, or ``("", problem)``."""
    text = clean_text(value)
    if text.lower() in NULL_DATES:
        return "", ""
    try:
        return _parse_date(_RANGE.split(text, maxsplit=1)[0]).isoformat(), ""
    except RowError as error:
        return "", str(error)


def normalise_jobs(value: str) -> int:
    """Coerce a job count such as ``" 1,204 "`` or ``"35.0"`` to a positive integer.

    Raises:
        RowError: If the count is missing, not a whole number, or not positive.
    """
    text = clean_text(value).replace(",", "")
    if not text:
        raise RowError("jobs: missing")
    try:
        number = float(text)
    except ValueError:
        raise RowError(f"jobs: '{clean_text(value)}' is not a number") from None
    if not number.is_integer():
        raise RowError(f"jobs: '{clean_text(value)}' is not a whole number")
    if number < 1:
        raise RowError(f"jobs: '{clean_text(value)}' is not a positive count")
    return int(number)


class Notice(NamedTuple):
    """One clean notice row, its fields in `FIELDS` order."""

    state: str
    company: str
    city: str
    notice_date: str
    effective_date: str
    jobs: int
    source: str

    def dedup_key(self) -> str:
        """Return the key two rows share exactly when they are the same notice.

        Its fields are joined by a control character that no clean value contains, so the
        key sorts as the tuple would: by state, notice date, company, city, jobs, effective date.
        """
        return (
            f"{self.state}\x1f{self.notice_date}\x1f{self.company.casefold()}\x1f"
            f"{self.city.casefold()}\x1f{self.jobs:012d}\x1f{self.effective_date}"
        )

    def values(self) -> tuple[str, ...]:
        """Return the row's values in `FIELDS` order, as text."""
        return (
            self.state,
            self.company,
            self.city,
            self.notice_date,
            self.effective_date,
            str(self.jobs),
            self.source,
        )


def normalise_row(values: Mapping[str, str], source: str) -> Notice:
    """Turn one row's raw field values into a clean `Notice`.

    Args:
        values: Raw text per input field (missing fields may be absent).
        source: The source label for the ``source`` column.

    Returns:
        The clean notice.

    Raises:
        RowError: With the reject reason, if any field cannot be made valid.
    """
    company = normalise_name(values.get("company", ""))
    if not company:
        raise RowError("company: missing")
    return Notice(
        state=normalise_state(values.get("state", "")),
        company=company,
        city=normalise_name(values.get("city", "")),
        notice_date=normalise_date(values.get("notice_date", ""), "notice_date", required=True),
        effective_date=normalise_date(
            values.get("effective_date", ""), "effective_date", required=False
        ),
        jobs=normalise_jobs(values.get("jobs", "")),
        source=source,
    )
