"""The output schema, the US states, and source specifications (``LOCATION#key=value,...``)."""

from __future__ import annotations

import codecs
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pyflow_kit.bootstrap import URL, redact_url

INPUT_FIELDS: tuple[str, ...] = (
    "state",
    "company",
    "city",
    "notice_date",
    "effective_date",
    "jobs",
)
"""Fields a source's columns (or its constants) provide."""

FLAG_FIELDS: tuple[str, ...] = ("is_closure", "is_temporary", "is_amendment")
"""Facts read from a source's notice-type columns where it has them; empty when unknown."""

NOTICE_FIELDS: tuple[str, ...] = ("notice_id", *INPUT_FIELDS, *FLAG_FIELDS, "source")
"""Columns of ``notices.csv``, in order."""

NOTICES_FILE = "notices.csv"
REJECTS_FILE = "rejects.csv"
CHANGES_FILE = "changes.csv"
INTEGRATED_FILE = "integrated.csv"
SUMMARY_FILE = "summary.json"

REJECT_FIELDS: tuple[str, ...] = ("source", "record", "reason", "raw")
"""Columns of ``rejects.csv``, in order: ``record`` counts the file's records, 1 after the header."""

TEXT_NOTICE_FIELDS: tuple[str, ...] = ("company", "city", "source")
"""Columns of ``notices.csv`` whose text comes from the sources, so any text can be in them.

The others hold what pyflow writes itself: an id, a postal code, ISO dates, a whole number
(``jobs``, never negative) and ``true``/``false``.
"""

TEXT_REJECT_FIELDS: tuple[str, ...] = ("source", "reason", "raw")
"""Columns of ``rejects.csv`` that hold text (``record`` is a number)."""

FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection)."""

REQUIRED_FIELDS: tuple[str, ...] = ("state", "company")
"""Fields without which a row is not a notice."""

KEY_FIELDS: tuple[str, ...] = (
    "state", "notice_date", "company", "city", "effective_date", "jobs", *FLAG_FIELDS,
)  # fmt: skip
"""The normalised fields a notice's identity is made of: two rows equal on all are one notice."""

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


class Source(BaseModel):
    """One input: where to read it, and constant values for fields (such as its state).

    The string form is ``LOCATION`` or ``LOCATION#key=value,key=value``: for example
    ``data/ca.csv#state=CA`` or ``https://example.org/warn.csv#state=TX,name=tx``. Keys are
    the input fields (``state``, ``company``, ``city``, ``notice_date``, ``effective_date``,
    ``jobs``), whose value then holds for every row (a column for that field is not read),
    ``name`` (the label written in the ``source`` column; default: the location, without the
    credentials or query string of a URL, which are only used to fetch it) and
    ``encoding`` (default ``utf-8-sig``: UTF-8, a byte order mark dropped, and any byte that is
    not UTF-8 read as Windows-1252).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    location: str = Field(
        min_length=1, description="Local path, file:// or http(s):// URL, or any fsspec URL."
    )
    constants: dict[str, str] = Field(
        default_factory=dict,
        description="Values for fields, such as the state, that hold for every row.",
    )
    name: str | None = Field(
        default=None,
        description="Label for the source column; default: the location, without credentials "
        "or query string.",
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
        if "jobs" in constants and not constants["jobs"].isdigit():
            raise ValueError(f"jobs={constants['jobs']} after '#' is not a whole number")
        return constants

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, encoding: str) -> str:
        """Refuse an encoding Python does not know."""
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(
                f"unknown encoding '{encoding}' after '#': use a name such as utf-8, cp1252 or "
                "latin-1"
            ) from None
        ascii_like = codecs.lookup(encoding).name in {"utf-8", "utf-8-sig"}
        if not ascii_like and '\n,"'.encode(encoding, errors="replace") != b'\n,"':
            raise ValueError(
                f"encoding '{encoding}' does not write line ends, commas and quotes as ASCII does, "
                "which pyflow needs to find records: convert the file to UTF-8"
            )
        return encoding

    @property
    def label(self) -> str:
        """The value written in the ``source`` column of the outputs: never a secret."""
        return self.name or self.shown_location

    @property
    def shown_location(self) -> str:
        """The location as outputs, logs and messages show it: without credentials or query."""
        return redact_location(self.location)

    def scrub(self, text: str) -> str:
        """Remove this source's credentials and query string from a message (a library's error)."""
        return redact_text(text, self.location)

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
            shown = f"{redact_location(location.strip())}#{fragment}"
            raise ValueError(f"'{pair}' in source '{shown}' is not key=value (such as state=CA)")
        if key in {"name", "encoding"}:
            fields[key] = value
        else:
            constants[key] = value
    fields["constants"] = constants
    return fields


def source_label_from(location: str) -> str:
    """Return the last path component of a location, for short messages and file names."""
    return PurePosixPath(urlsplit(location).path).name or redact_location(location)


def redact_location(location: str) -> str:
    """Return a URL without its credentials (``user:pass@``) and query string (a signature).

    What fetches the source keeps the whole URL; what shows it (the ``source`` column,
    ``summary.json``, logs and messages) gets this. A local path is returned as it is.

    Args:
        location: A local path or a URL.
    """
    return redact_url(location, mark="")


def redact_text(text: str, location: str) -> str:
    """Remove a location's credentials and query string from a text, wherever they appear.

    Every URL in the text loses its own, and the location's secrets go also where a library
    quoted them apart from the URL (``user:pass@`` or ``?query`` alone).

    Args:
        text: A message, such as a library's error, that may quote the location.
        location: The location whose secrets are to go.
    """
    text = URL.sub(lambda found: redact_url(found.group(), mark=""), text)
    _, _, rest = location.partition("://")
    address, _, query = rest.partition("?")
    userinfo = address.split("/", 1)[0].rpartition("@")[0]
    for secret in (f"{userinfo}@" if userinfo else "", f"?{query}" if query else ""):
        if secret:
            text = text.replace(secret, "")
    return text


def normalise_state(value: str) -> str:
    """Return the postal code for a state code or name given as a constant.

    Raises:
        ValueError: If the value is not a US state or territory.
    """
    text = " ".join(value.split()).strip(".")
    if text.upper() in STATE_CODES:
        return text.upper()
    code = STATES.get(text.lower())
    if code is None:
        raise ValueError(f"'{value}' is not a US state or territory: use a code such as TX")
    return code
