"""Which column of a source becomes which notice field: header words first, then the values.

The rules live in ``columns.toml`` (kinds of header, as data) and the overrides in
``aliases.toml`` plus the user's ``PYFLOW_ALIASES_FILE`` (exact header names). A source's
mapping is decided once, on a sample of its rows, and written into ``summary.json``: which
column became which field, which were read for the kind of notice, which were ignored and
which fields the source lacks.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pyflow.warn import reading, values
from pyflow.warn.schema import INPUT_FIELDS

IGNORE = "ignore"
"""The override that keeps a column out of every field."""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[a-z0-9]+")

SECTION_FIELDS = 3
"""Fields a record's cells must name by the header rules, the company among them, to be a header."""

_VALUE = re.compile(r"\d{3}|\d\s*[-/.:]\s*\d|^[\s\d.,$%()#+-]+$")
"""What marks a cell as a value, not a column's name: three digits in a row (a year, a count),
a date or a time, or a number alone. ``Address 1`` is a name."""

HEADER_WORDS = 8
"""Words a column's name holds at most: a cell with more is a sentence (a note), not a name."""

KIND_SHARE = 0.5
"""A column whose non-blank values are at least this share of short notice-kind labels
(``Closure``, ``Temporary layoff``) is read for the notice's kind."""


@dataclass(frozen=True)
class FieldRule:
    """How to recognise one field's column: header patterns, words to avoid, kind of value."""

    name: str
    kind: str
    patterns: tuple[tuple[frozenset[str], ...], ...]
    avoid: frozenset[str]
    prefer: frozenset[str] = frozenset()

    def tier(self, words: frozenset[str]) -> int | None:
        """Return the index of the first pattern the header's words match, or None."""
        for index, pattern in enumerate(self.patterns):
            if all(words & slot for slot in pattern):
                return index
        return None

    def extra_words(self, words: frozenset[str], tier: int) -> int:
        """Count the header's words that no slot of the matched pattern asked for."""
        wanted = frozenset().union(*self.patterns[tier])
        return len(words - wanted)


@dataclass(frozen=True)
class Rules:
    """The header rules and overrides, as loaded from the TOML files."""

    synonyms: Mapping[str, str]
    stopwords: frozenset[str]
    qualifiers: frozenset[str]
    fields: tuple[FieldRule, ...]
    overrides: Mapping[str, str]
    kind_avoid: frozenset[str]

    def words(self, header: str) -> frozenset[str]:
        """Reduce a header to its words (see ``columns.toml``)."""
        return frozenset(header_words(header, self.synonyms, self.stopwords))

    def alternatives(self, header: str) -> list[frozenset[str]]:
        """Return the header's words, then those of each part between slashes (``City/County``)."""
        parts = [part for part in header.split("/") if part.strip()]
        return [self.words(header), *(self.words(part) for part in parts[1:] and parts)]

    def names_for(self, name: str) -> list[str]:
        """Return the exact header names overridden to a field, for messages."""
        return [header for header, target in self.overrides.items() if target == name]


def header_words(name: str, synonyms: Mapping[str, str], stopwords: frozenset[str]) -> list[str]:
    """Split a header into lower-case words: camelCase, underscores and punctuation split it.

    ``#``, ``No.`` and ``Num`` read as ``number``; synonyms are replaced; stopwords dropped.
    """
    text = _CAMEL.sub(" ", name.replace("\ufeff", "")).lower()
    text = text.replace("(s)", "s").replace("#", " number ")
    text = re.sub(r"\bno\.", " number ", text)
    words = [synonyms.get(word, word) for word in _WORD.findall(text)]
    return [word for word in words if word not in stopwords]


def normalise_header(name: str) -> str:
    """Reduce a header to the form overrides are matched in: case, spaces and underscores ignored."""
    return " ".join(name.replace("\ufeff", "").replace("_", " ").strip(" :\"'").lower().split())


@cache
def _bundled(filename: str) -> dict[str, Any]:
    """Read one of the package's TOML files."""
    return tomllib.loads(resources.files("pyflow.warn").joinpath(filename).read_text("utf-8"))


def load_rules(overrides_file: Path | None = None) -> Rules:
    """Load the header rules and the overrides, the user's file added to the bundled ones.

    Args:
        overrides_file: A TOML file of the same shape as ``aliases.toml``.

    Raises:
        ValueError: If an overrides file names an unknown field or is not a table of lists.
    """
    table = _bundled("columns.toml")
    concepts = {name: frozenset(words) for name, words in table["concepts"].items()}
    rules = tuple(
        FieldRule(
            name=name,
            kind=spec["kind"],
            patterns=tuple(
                tuple(concepts.get(slot, frozenset({slot})) for slot in pattern)
                for pattern in spec["patterns"]
            ),
            avoid=frozenset(spec.get("avoid", ())),
            prefer=frozenset(spec.get("prefer", ())),
        )
        for name, spec in table["fields"].items()
    )
    overrides: dict[str, str] = {}
    tables = [_bundled("aliases.toml")]
    if overrides_file is not None:
        tables.append(tomllib.loads(Path(overrides_file).read_text("utf-8")))
    for extra in reversed(tables):
        for target, names in extra.items():
            if target not in (*INPUT_FIELDS, IGNORE):
                raise ValueError(
                    f"unknown field '{target}' in the alias table: use "
                    f"{', '.join(INPUT_FIELDS)} or {IGNORE}"
                )
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"'{target}' in the alias table must be a list of column names")
            for header in names:
                overrides.setdefault(normalise_header(header), target)
    return Rules(
        synonyms=table["synonyms"],
        stopwords=frozenset(table["stopwords"]),
        qualifiers=frozenset(table["qualifiers"]),
        fields=rules,
        overrides=overrides,
        kind_avoid=frozenset(table["kinds"]["avoid"]),
    )


@dataclass(frozen=True)
class ColumnMap:
    """How one source's columns become notice fields; decided once per source."""

    header: tuple[str, ...]
    fields: dict[str, int] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    kinds: tuple[int, ...] = ()
    yes_no: dict[str, int] = field(default_factory=dict)
    day_first: tuple[str, ...] = ()

    def report(self, constants: Mapping[str, str]) -> dict[str, Any]:
        """Describe the mapping for ``summary.json``: fields, constants, kind columns, the rest."""
        used = {*self.fields.values(), *self.kinds, *self.yes_no.values()}
        found = {*self.fields, *constants}
        return {
            "fields": {name: self.header[index] for name, index in self.fields.items()},
            "rules": dict(self.how),
            "constants": dict(constants),
            "kind_columns": [self.header[index] for index in self.kinds]
            + [f"{self.header[index]} ({flag})" for flag, index in self.yes_no.items()],
            "day_first_dates": list(self.day_first),
            "ignored": [name for index, name in enumerate(self.header) if index not in used],
            "missing": [name for name in INPUT_FIELDS if name not in found],
        }


def map_columns(
    header: tuple[str, ...],
    profile: values.SourceProfile,
    rules: Rules,
    constants: Mapping[str, str],
) -> ColumnMap:
    """Decide which column becomes which field, from the header words and a sample of values.

    Args:
        header: The source's column names; column ``i`` of the profile is ``header[i]``.
        profile: What the source's first rows hold, column by column.
        rules: The header rules and overrides.
        constants: Fields the source gives as constants; no column is looked for them.

    Returns:
        The mapping. A field no column fits is left out (the caller decides whether it matters).
    """
    words = [rules.words(name) for name in header]
    alternatives = [rules.alternatives(name) for name in header]
    fields: dict[str, int] = {}
    how: dict[str, str] = {}
    used: set[int] = set()
    for index, name in enumerate(header):
        target = rules.overrides.get(normalise_header(name))
        if target == IGNORE:
            used.add(index)
        elif target and target not in fields:
            fields[target], how[target] = index, "alias table"
            used.add(index)
    for rule in rules.fields:
        if rule.name in fields or rule.name in constants:
            continue
        best: tuple[tuple[int | bool, ...], int] | None = None
        for index in range(len(header)):
            if index in used:
                continue
            matches = [
                (tier, option)
                for option in alternatives[index]
                if not option & rule.avoid and (tier := rule.tier(option)) is not None
            ]
            if not matches:
                continue
            tier, column_words = min(matches, key=lambda match: match[0])
            present = profile.present(index)
            readable = profile.readable(index, rule.kind)
            if present and (readable == 0 or (rule.kind != "text" and 2 * readable < present)):
                continue
            rank = (
                bool(column_words & rules.qualifiers),
                not present,
                tier,
                not column_words & rule.prefer,
                -readable,
                rule.extra_words(column_words, tier),
                index,
            )
            if best is None or rank < best[0]:
                best = (rank, index)
        if best is not None:
            index = best[1]
            fields[rule.name], how[rule.name] = (
                index,
                "header words: "
                + " + ".join("|".join(sorted(slot)) for slot in rule.patterns[int(best[0][2])]),
            )
            used.add(index)
    kinds = tuple(
        index
        for index in range(len(header))
        if index not in used
        and not words[index] & rules.kind_avoid
        and profile.kind_share(index) >= KIND_SHARE
    )
    yes_no = _yes_no_columns(words, profile, used | set(kinds))
    day_first = tuple(
        name
        for name in ("notice_date", "effective_date")
        if name in fields and profile.day_first(fields[name])
    )
    return ColumnMap(header, fields, how, kinds, yes_no, day_first)


_YES_NO_WORDS = frozenset({"yes", "number", "y", "n", "is", "plant", "notice", "true", "false"})

_YES_NO_HEADERS = {
    "is_closure": frozenset({"closure", "closing", "close", "closed", "shutdown"}),
    "is_temporary": frozenset({"temporary", "temp", "furlough"}),
    "is_amendment": frozenset({"amendment", "amended", "revised", "revision"}),
}


def _yes_no_columns(
    words: list[frozenset[str]], profile: values.SourceProfile, used: set[int]
) -> dict[str, int]:
    """Find yes/no columns whose header names a kind of notice (``Closing Yes/No``)."""
    found: dict[str, int] = {}
    for flag, flag_words in _YES_NO_HEADERS.items():
        for index, column_words in enumerate(words):
            if index in used or len(column_words - flag_words - _YES_NO_WORDS) > 1:
                continue
            if column_words & flag_words and profile.yes_no_share(index) >= 0.5:
                found[flag] = index
                break
    return found


def header_cue(rules: Rules) -> tuple[bytes, ...]:
    """Return what every line that can name a company column holds: a cheap first look for headers.

    The words of the company field's patterns, the synonyms of those words, and each word of the
    names the overrides give the company, in lower case, to be found anywhere (``CompanyName``).
    """
    company = next(rule for rule in rules.fields if rule.name == "company")
    words = set().union(*(slot for pattern in company.patterns for slot in pattern))
    words |= {word for word, meaning in rules.synonyms.items() if meaning in words}
    for name, target in rules.overrides.items():
        if target == "company":
            words |= set(name.split())
    # a word that holds another is found by it: look for the shorter alone
    kept = {word for word in words if not any(other in word for other in words - {word})}
    return tuple(sorted(word.lower().encode() for word in kept))


def section_header(cells: list[str], rules: Rules) -> ColumnMap | None:
    """Return a record's cells mapped as a header, if they read as one; else None.

    A header names columns: no cell reads as a value (`_VALUE`: a date, a count, a year) or as
    a sentence (more than `HEADER_WORDS` words), and the header rules find the company and at
    least two other fields in its names alone (`SECTION_FIELDS`).
    """
    filled = [cell for cell in cells if cell.strip()]
    if len(filled) < SECTION_FIELDS or any(
        _VALUE.search(cell.strip()) or len(cell.split()) > HEADER_WORDS for cell in filled
    ):
        return None
    mapping = map_columns(reading.header_of(cells), values.Profile({}).of(0), rules, {})
    if "company" not in mapping.fields or len(mapping.fields) < SECTION_FIELDS:
        return None
    return mapping
