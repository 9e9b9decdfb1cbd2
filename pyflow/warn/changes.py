"""What changed since the last published run (``changes.csv``) and the integrated history.

A run compares its notices with those of the run ``latest.json`` named before it (and of the
sources that run did not read, as its history has them):

- **added**: a notice that run did not have, and that is no amendment of one of its notices;
- **amended**: a notice of the same state, the same company (its name normalised: case,
  punctuation and legal suffixes such as *Inc.* do not count) and the same notice date as one of
  that run's, which now differs in other fields; the row names the earlier notice
  (``previous_notice_id``) and the fields that changed, with their old and new values;
- **removed**: a notice of that run that is gone from a source this run read (a source that
  failed, or that this run did not name, removes nothing).

``integrated.csv`` holds every notice ever seen, with ``first_seen`` and ``last_seen`` (the
start times of the runs), ``status`` (``current``, ``amended``, ``removed``) and
``superseded_by``. It is built from the previous ``integrated.csv``, this run's notices and its
changes, never by reading older runs again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import fsspec
import polars as pl

from pyflow.warn.schema import (
    CHANGES_FILE,
    INTEGRATED_FILE,
    NOTICE_FIELDS,
    NOTICES_FILE,
    SUMMARY_FILE,
    source_label_from,
)
from pyflow_kit import publish
from pyflow_kit.errors import OutputError

CHANGE_FIELDS: tuple[str, ...] = (
    "change", "notice_id", "state", "company", "notice_date", "source",
    "previous_notice_id", "changed_fields", "old_values", "new_values",
)  # fmt: skip
"""Columns of ``changes.csv``: the values are JSON objects of the changed fields."""

HISTORY_FIELDS: tuple[str, ...] = ("first_seen", "last_seen", "status", "superseded_by")
INTEGRATED_FIELDS: tuple[str, ...] = (*NOTICE_FIELDS, *HISTORY_FIELDS)
"""Columns of ``integrated.csv``: a notice's fields, then its history."""

COMPARED_FIELDS: tuple[str, ...] = tuple(
    name for name in NOTICE_FIELDS if name not in ("notice_id", "source")
)
"""Fields an amendment may change (the notice's identity is made of these)."""

LEGAL_SUFFIXES = (
    "inc", "incorporated", "llc", "l l c", "corp", "corporation", "co", "company", "ltd",
    "limited", "lp", "llp", "plc", "pllc", "pc", "the",
)  # fmt: skip
"""Words a company's name is compared without."""

KINDS: tuple[str, ...] = ("added", "amended", "removed")

FIRST_ROWS = 10
"""Changes the summary (and the UI's artifact) shows; changes.csv holds them all."""

SEP = "\x1f"


@dataclass(frozen=True)
class Previous:
    """The run latest.json named before this one: its notices, history and start time."""

    run: str
    started_at: str
    notices: pl.DataFrame
    integrated: pl.DataFrame | None


def read_csv(
    path: str, fields: tuple[str, ...], store: publish.Store | None = None
) -> pl.DataFrame:
    """Read a CSV file pyflow wrote, its ``fields`` as text (empty cells as empty text).

    Args:
        path: A path or URL; with ``store``, a path in that store (`publish.Store.path`).
        fields: The columns to read.
        store: The store ``path`` is in.

    Raises:
        ValueError: If the file lacks one of the fields.
    """
    if store is not None:
        data = store.fs.cat_file(path)
    else:
        with fsspec.open(path, "rb") as handle:
            data = handle.read()
    frame = pl.read_csv(data, infer_schema=False, empty_string_is_null=False)
    missing = [name for name in fields if name not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)}")
    return frame.select(pl.col(fields).fill_null(""))


def read_previous(output: str) -> Previous | None:
    """Return the run latest.json names, with its files; None when nothing is published yet.

    Raises:
        OSError, ValueError, KeyError: If the published run's files cannot be read.
    """
    store = publish.Store.of(output)
    pointer, _ = store.read_pointer()
    if not pointer:
        return None
    files = pointer["files"]
    summary = json.loads(store.fs.cat_file(store.path(files[SUMMARY_FILE]["path"])))
    notices = read_csv(store.path(files[NOTICES_FILE]["path"]), NOTICE_FIELDS, store)
    integrated = (
        read_csv(store.path(files[INTEGRATED_FILE]["path"]), INTEGRATED_FIELDS, store)
        if INTEGRATED_FILE in files
        else None
    )
    return Previous(str(pointer["run"]), str(summary["started_at"]), notices, integrated)


def company_key(column: str = "company") -> pl.Expr:
    """Normalise a company's name for matching: lower case, letters and digits, no legal suffix."""
    suffixes = "|".join(word.replace(" ", r"\s") for word in LEGAL_SUFFIXES)
    return (
        pl.col(column)
        .str.to_lowercase()
        .str.replace_all(r"[^\p{L}\p{N}]+", " ")
        .str.replace_all(rf"\b(?:{suffixes})\b", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _match_key() -> pl.Expr:
    return pl.concat_str(pl.col("state"), company_key(), pl.col("notice_date"), separator=SEP)


def compare(
    previous: pl.DataFrame,
    current: pl.DataFrame,
    read_sources: Collection[str],
    named_sources: Collection[str] = (),
) -> pl.DataFrame:
    """Return the changes from ``previous`` notices to ``current`` ones, as ``changes.csv`` rows.

    Args:
        previous: The notices of the run compared with.
        current: This run's notices.
        read_sources: Labels of the sources this run read: only their notices can be removed.
        named_sources: Labels of every source of this run, read or failed (`read_as`).
    """
    labels = read_as(previous["source"].unique().to_list(), read_sources, named_sources)
    old = previous.filter(
        ~pl.col("notice_id").is_in(current["notice_id"].implode())
        & pl.col("source").is_in(pl.Series(labels, dtype=pl.String).implode())
    ).with_columns(_match_key().alias("match"))
    new = current.filter(~pl.col("notice_id").is_in(previous["notice_id"].implode())).with_columns(
        _match_key().alias("match")
    )
    old_by: dict[str, list[dict[str, str]]] = {}
    for row in old.iter_rows(named=True):
        old_by.setdefault(row["match"], []).append(row)
    rows: list[dict[str, str]] = []
    paired: set[str] = set()
    for row in new.iter_rows(named=True):
        candidates = [o for o in old_by.get(row["match"], []) if o["notice_id"] not in paired]
        if not candidates:
            rows.append(_row("added", row))
            continue
        best = max(candidates, key=lambda o: (_same(o, row), o["notice_id"]))
        paired.add(best["notice_id"])
        rows.append(_amended(best, row))
    rows += [_row("removed", o) for o in old.iter_rows(named=True) if o["notice_id"] not in paired]
    order = {kind: index for index, kind in enumerate(KINDS)}
    rows.sort(key=lambda r: (order[r["change"]], r["state"], r["company"], r["notice_id"]))
    return pl.DataFrame(rows, schema=dict.fromkeys(CHANGE_FIELDS, pl.String))


def read_as(
    before: Collection[str], read_sources: Collection[str], named_sources: Collection[str]
) -> list[str]:
    """Return the earlier run's source labels whose sources this run read.

    A label this run has is read if its source was. A label it does not have is the same source
    moved (``day1/ca.csv`` then ``day2/ca.csv``) when its file name is that of exactly one
    source of this run, which was read, and of no other earlier label; otherwise that source was
    left out of this run, and its notices stay.
    """
    read, named = set(read_sources), set(named_sources) | set(read_sources)
    name = source_label_from
    names_before = Counter(name(label) for label in before)
    names_now = Counter(name(label) for label in named)
    read_names = {name(label) for label in read}
    return sorted(
        label
        for label in before
        if label in read
        or (
            label not in named
            and names_before[name(label)] == 1
            and names_now[name(label)] == 1
            and name(label) in read_names
        )
    )


def _same(old: dict[str, str], new: dict[str, str]) -> int:
    return sum(old[name] == new[name] for name in COMPARED_FIELDS)


def _row(change: str, notice: dict[str, str], **extra: str) -> dict[str, str]:
    row = dict.fromkeys(CHANGE_FIELDS, "")
    row.update({name: notice[name] for name in CHANGE_FIELDS[1:6]}, change=change, **extra)
    return row


def _amended(old: dict[str, str], new: dict[str, str]) -> dict[str, str]:
    changed = [name for name in COMPARED_FIELDS if old[name] != new[name]]
    return _row(
        "amended",
        new,
        previous_notice_id=old["notice_id"],
        changed_fields=" ".join(changed),
        old_values=json.dumps({name: old[name] for name in changed}, ensure_ascii=False),
        new_values=json.dumps({name: new[name] for name in changed}, ensure_ascii=False),
    )


def integrate(
    history: pl.DataFrame | None,
    current: pl.DataFrame,
    changes: pl.DataFrame,
    started_at: str,
) -> pl.DataFrame:
    """Return the integrated history: the previous one brought up to this run.

    A notice of this run keeps its ``first_seen`` (or gets this run's start), and its
    ``last_seen`` is this run's start; a removed notice becomes ``removed``, an amended one
    ``amended`` and ``superseded_by`` its amendment; every other notice stays as it was.

    Args:
        history: The previous ``integrated.csv``; None for the first run.
        current: This run's notices.
        changes: This run's changes (`compare`).
        started_at: When this run started.
    """
    history = history if history is not None else _empty(INTEGRATED_FIELDS)
    first = history.select("notice_id", "first_seen")
    seen = (
        current.join(first, on="notice_id", how="left")
        .with_columns(
            pl.col("first_seen").fill_null(started_at),
            pl.lit(started_at).alias("last_seen"),
            pl.lit("current").alias("status"),
            pl.lit("").alias("superseded_by"),
        )
        .select(INTEGRATED_FIELDS)
    )
    removed = changes.filter(pl.col("change") == "removed")["notice_id"].to_list()
    amended = changes.filter(pl.col("change") == "amended").select(
        pl.col("previous_notice_id").alias("notice_id"), pl.col("notice_id").alias("by")
    )
    rest = (
        history.filter(~pl.col("notice_id").is_in(current["notice_id"].implode()))
        .join(amended, on="notice_id", how="left")
        .with_columns(
            pl.when(pl.col("by").is_not_null())
            .then(pl.lit("amended"))
            .when(pl.col("notice_id").is_in(removed))
            .then(pl.lit("removed"))
            .otherwise(pl.col("status"))
            .alias("status"),
            pl.coalesce("by", "superseded_by").alias("superseded_by"),
        )
        .select(INTEGRATED_FIELDS)
    )
    return pl.concat([rest, seen]).sort("state", "notice_date", "company", "notice_id")


def baseline(previous: Previous, history: pl.DataFrame) -> pl.DataFrame:
    """Return the notices to compare with: the history's current ones, else the run's notices.

    The history's current notices are the published run's, and those of sources it did not
    read (one that failed): so a source that comes back is compared with what it last gave.
    """
    if previous.integrated is None:
        return previous.notices
    return history.filter(pl.col("status") == "current").select(NOTICE_FIELDS)


def history_of(previous: Previous) -> pl.DataFrame:
    """Return the previous run's history: its ``integrated.csv``, or its notices as all new."""
    if previous.integrated is not None:
        return previous.integrated.unique("notice_id", keep="first", maintain_order=True)
    return previous.notices.with_columns(
        pl.lit(previous.started_at).alias("first_seen"),
        pl.lit(previous.started_at).alias("last_seen"),
        pl.lit("current").alias("status"),
        pl.lit("").alias("superseded_by"),
    ).select(INTEGRATED_FIELDS)


def _empty(fields: tuple[str, ...]) -> pl.DataFrame:
    return pl.DataFrame(schema=dict.fromkeys(fields, pl.String))


def write_csv(frame: pl.DataFrame, target: str) -> None:
    """Write a frame as CSV into the run's folder (`publish.writing` names a full disk)."""
    with publish.writing(target), fsspec.open(target, "wb", auto_mkdir=True) as handle:
        frame.write_csv(handle)


def find_changes(
    output: str,
    run_folder: str,
    read_sources: Collection[str],
    started_at: str,
    named_sources: Collection[str] = (),
) -> dict[str, Any]:
    """Write ``changes.csv`` and ``integrated.csv`` into the run's folder; return what to report.

    Args:
        output: The output location, whose ``latest.json`` names the run to compare with.
        run_folder: This run's folder, holding its ``notices.csv``.
        read_sources: Labels of the sources this run read.
        started_at: When this run started.
        named_sources: Labels of every source of this run, read or failed.

    Returns:
        The ``changes`` entry of ``summary.json``: the run compared with (or why none), the
        count of each kind, and the first few changes' companies.
    """
    current = read_csv(publish.join(run_folder, NOTICES_FILE), NOTICE_FIELDS)
    try:
        previous = read_previous(output)
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as error:
        raise OutputError(
            f"the run latest.json names in {output} cannot be read ({error}), so this run cannot "
            "say what changed, and publishing it would lose the history: nothing is published. "
            "Check the output location and run again; to start the history anew, delete its "
            "latest.json"
        ) from None
    reason = ""
    if previous is None:
        changes = _empty(CHANGE_FIELDS)
        history = None
        reason = (
            "no run was published in this output before: every notice is new, so changes.csv "
            "lists none and integrated.csv starts here"
        )
    else:
        history = history_of(previous)
        changes = compare(baseline(previous, history), current, read_sources, named_sources)
    write_csv(changes, publish.join(run_folder, CHANGES_FILE))
    write_csv(
        integrate(history, current, changes, started_at), publish.join(run_folder, INTEGRATED_FILE)
    )
    counts = {kind: changes.filter(pl.col("change") == kind).height for kind in KINDS}
    by_state: dict[str, dict[str, int]] = {}
    for state, kind, count in (
        changes.group_by("state", "change").len().sort("state", "change").iter_rows()
    ):
        by_state.setdefault(state, dict.fromkeys(KINDS, 0))[kind] = count
    return {
        "compared_with": previous.run if previous else None,
        "reason": reason,
        **counts,
        "by_state": by_state,
        "first": changes.head(FIRST_ROWS).select(CHANGE_FIELDS[:6]).to_dicts(),
        "companies": changes.filter(pl.col("change") != "removed")["company"].head(5).to_list(),
        "file": publish.join(run_folder, CHANGES_FILE),
        "integrated": publish.join(run_folder, INTEGRATED_FILE),
    }
