"""The ETL steps as plain functions: fetch, plan, transform, merge, write and publish.

A source is planned once (its header, its column mapping, its record-safe byte ranges), then its
ranges are transformed by Polars, whole columns at a time, into part files sorted by the notice
key. The merge reads the parts in key ranges (buckets) that each fit in memory, drops duplicate
notices, and writes one sorted chunk per bucket; the chunks, concatenated, are ``notices.csv``.
So memory holds one range or one bucket, never the whole dataset, and the output is the same
bytes whatever the number of sources, partitions, buckets or workers.

A source that cannot be read or mapped does not stop the others: its plan or part carries the
error, the summary lists it, and the flow reports it once the other sources are published.
"""

from __future__ import annotations

import bisect
import errno
import io
import itertools
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import fsspec
import httpx
import polars as pl
import polars_hash as plh
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pyflow.warn import normalise, reading, values
from pyflow.warn.changes import find_changes
from pyflow.warn.columns import ColumnMap, Rules, header_cue, map_columns, section_header
from pyflow.warn.errors import FetchError, SourceError
from pyflow.warn.schema import (
    CHANGES_FILE,
    FORMULA_STARTS,
    INTEGRATED_FILE,
    NOTICE_FIELDS,
    NOTICES_FILE,
    REJECT_FIELDS,
    REJECTS_FILE,
    SUMMARY_FILE,
    TEXT_NOTICE_FIELDS,
    TEXT_REJECT_FIELDS,
    Source,
    redact_location,
    source_label_from,
)
from pyflow_kit import publish, reuse
from pyflow_kit.errors import OutputError

logger = logging.getLogger(__name__)


class RedactUrls(logging.Filter):
    """Show the URLs httpx logs ("HTTP Request: GET URL") without credentials or query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record; redact the URLs among its arguments."""
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_location(str(arg)) if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


if not any(isinstance(f, RedactUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(RedactUrls())

OUTPUT_FILES = (NOTICES_FILE, REJECTS_FILE, CHANGES_FILE, INTEGRATED_FILE, SUMMARY_FILE)
"""What a run publishes, in the order the files are copied to the top: data first, the summary
last (it names the others)."""

COPY_REFUSED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EPERM,
     errno.EBADF, errno.ETXTBSY}
)  # fmt: skip
"""Errors of ``copy_file_range`` that mean "not here" (another file system, a kernel without
it, a file system that does not support it), after which the bytes are copied by Python."""

STACK_BYTES = 64 * 1024 * 1024
"""Bytes of source a transform reads at once when partitions are not split (``0``)."""

BATCH_STACKS = 2
"""Stacks per transform task: fewer, larger tasks cost less to orchestrate."""

MERGE_ROWS = 1_000_000
"""Rows a merge bucket holds, about: the merge's memory does not grow with the dataset."""

MIN_BUCKET_ROWS = 100_000
"""Notices a merge bucket holds at least when a run's one bucket is cut so merges run at once."""

KEY_SAMPLES = 64
"""Keys each part reports, evenly spaced, so the merge can cut buckets of even size."""

EXAMPLES = 3
"""Examples kept of each field's values that could not be read."""

ID_LENGTH = 16
"""Hex digits of a notice's id: the start of the SHA-256 of its normalised fields."""


@dataclass(frozen=True)
class Section:
    """A table that starts part-way down a source, under a header of its own (its first record)."""

    record: int
    """The number of its header record in the source, as rejects number records."""
    start: int
    """The byte where its header record starts."""
    layout: reading.Layout
    columns: ColumnMap
    error: str | None = None
    """Why its rows cannot be notices (no company or no state), with the fix; they are rejects."""

    def report(self, constants: Mapping[str, str]) -> dict[str, Any]:
        """Where the section starts, its header, and its column mapping, for ``summary.json``."""
        found = {"record": self.record, "header": list(self.layout.header), **self.columns.report(constants)}  # fmt: skip
        return {**found, "error": self.error} if self.error else found


@dataclass(frozen=True)
class SourcePlan:
    """What a run knows of one source before reading its rows: layout, mapping and ranges.

    A plan with an ``error`` is a failed source. If its rows can still be read (``layout`` is
    set), they are all rejected with the error as reason, so they are counted and kept.
    """

    index: int
    source: Source
    location: str
    layout: reading.Layout | None = None
    columns: ColumnMap | None = None
    ranges: tuple[tuple[int, int], ...] = ()
    error: str | None = None
    reject_reason: str | None = None
    rows_expected: int = 0
    """For a source failed for giving no rows: how many an earlier run read from it."""
    digest: str = ""
    """The SHA-256 of the source's bytes: what says whether an earlier run read the same."""
    sections: tuple[Section, ...] = ()
    """The tables below the first, each under its own header, in file order."""

    @property
    def label(self) -> str:
        """The source's name in outputs and messages."""
        return self.source.label

    def report(self) -> dict[str, Any] | None:
        """The column mapping, and what is unusual in the layout, for ``summary.json``."""
        if not self.columns:
            return None
        assert self.layout is not None
        found = {**self.columns.report(self.source.constants), **self.layout.report()}
        if self.sections:
            found["sections"] = [section.report(self.source.constants) for section in self.sections]
        return found


@dataclass(frozen=True)
class Partition:
    """A byte range of one source that starts and ends at a record boundary: a unit of work.

    ``section`` says under which header its records are: 0 the source's, ``n`` the header of
    ``plan.sections[n - 1]``, which is then the range's first record when ``header_first``.
    """

    plan: SourcePlan
    index: int
    start: int
    end: int
    section: int = 0
    header_first: bool = False

    @property
    def layout(self) -> reading.Layout:
        """The layout its records are read with: the source's, or its section's."""
        layout = self.plan.sections[self.section - 1].layout if self.section else self.plan.layout
        assert layout is not None
        return layout

    @property
    def reject_reason(self) -> str | None:
        """Why all its rows are rejects: its source, or its section, has no company or state."""
        if self.plan.error:
            return self.plan.reject_reason
        if self.section and self.plan.sections[self.section - 1].error:
            return f"{self.plan.sections[self.section - 1].error} (see summary.json)"
        return None

    @property
    def columns(self) -> ColumnMap:
        """The column mapping of its records: the source's, or its section's."""
        columns = (
            self.plan.sections[self.section - 1].columns if self.section else self.plan.columns
        )
        assert columns is not None
        return columns


@dataclass(frozen=True)
class PartResult:
    """What one transformed partition hands on: its counts, its batch's part files, key samples.

    The partitions of a batch share its part files; the first carries the batch's key samples,
    each standing for ``key_weight`` notices.
    """

    source_index: int
    index: int
    records: int = 0
    rows_in: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    notices: str | None = None
    rejects: str | None = None
    keys: tuple[str, ...] = ()
    key_weight: float = 0.0
    rejected_by: dict[str, int] = field(default_factory=dict)
    unread: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    error: str | None = None
    read_in: str = ""
    """The run that read the partition: this one, or an earlier one whose result is reused."""


@dataclass(frozen=True)
class BucketResult:
    """What one merge bucket wrote: its notices, the duplicates it dropped, and its chunk file."""

    index: int
    rows_out: int
    rows_duplicate: int
    path: str | None


@dataclass(frozen=True)
class Summary:
    """A run's summary, written as ``summary.json``: totals, then one entry per source."""

    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_duplicate: int
    sources_failed: int
    started_at: str
    finished_at: str
    notices: str
    rejects: str
    sources: list[dict[str, Any]]
    run: str = ""
    """The run's id: its files are under ``runs/<run>/`` in the output location."""
    changes: dict[str, Any] = field(default_factory=dict)
    """What changed since the run published before (`pyflow.warn.changes.find_changes`)."""

    @property
    def read_sources(self) -> list[str]:
        """The labels of the sources this run read (their notices may be removed)."""
        return [entry["source"] for entry in self.sources if not entry["error"]]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The sources that could not be read or mapped."""
        return [entry for entry in self.sources if entry["error"]]

    def to_json(self) -> str:
        """Return the summary as indented JSON text."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def report_lines(self) -> list[str]:
        """Describe the run for the command line: its counts, and where its outputs are."""
        lines = [
            f"read {self.rows_in:,} rows from {len(self.sources)} sources: {self.rows_out:,} "
            f"notices, {self.rows_rejected:,} rejected, {self.rows_duplicate:,} duplicates dropped."
        ]
        output = self.notices.rsplit("/", 3)[0]
        if self.changes.get("compared_with"):
            lines.append(
                f"since run {self.changes['compared_with']}: {self.changes['added']:,} added, "
                f"{self.changes['amended']:,} amended, {self.changes['removed']:,} removed "
                "(changes.csv; every notice so far in integrated.csv)"
            )
        latest, _ = publish.Store.of(output).read_pointer()
        if latest is None or latest["run"] == self.run:
            lines.append(
                f"wrote {output}/notices.csv and {output}/rejects.csv (run {self.run}, which "
                "latest.json names)"
            )
        else:
            lines.append(
                f"wrote {self.notices} and {self.rejects}; run {latest['run']}, which started "
                "later, was published first, and latest.json names it"
            )
        return lines


def utc_now() -> str:
    """Return the current UTC time in ISO 8601 form, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


join_path = publish.join
"""Join path parts onto a local path or URL with forward slashes (one definition, in publish)."""


def prepare_output(output: str) -> str:
    """Create the output location if needed and prove it can be written.

    Args:
        output: A local directory or fsspec URL.

    Returns:
        The location in canonical form (absolute path for local directories).

    Raises:
        OutputError: If the location cannot be created or written.
    """
    try:
        fs, path = url_to_fs(output)
        fs.makedirs(path, exist_ok=True)
        probe = join_path(path, f".pyflow-probe-{uuid.uuid4().hex}")
        with fs.open(probe, "wb") as handle:
            handle.write(b"ok")
        fs.rm(probe)
    except (OSError, ValueError, ImportError) as error:
        raise OutputError(
            f"output location '{output}' cannot be written ({error}): choose another with "
            "--output or PYFLOW_OUTPUT, or fix its permissions"
        ) from None
    return str(path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path))


def check_source_exists(source: Source) -> None:
    """Check that a file source (local or fsspec, not HTTP) exists.

    Raises:
        SourceError: If it does not exist or its file system cannot be reached.
    """
    try:
        fs, path = url_to_fs(source.location)
        exists = fs.isfile(path)
    except (OSError, ValueError, ImportError) as error:
        raise SourceError(
            f"source '{source.shown_location}' cannot be opened ({source.scrub(str(error))}): "
            "check the path or URL, and for a cloud URL (gs://, s3://) the credentials and the "
            "fsspec package it needs"
        ) from None
    if not exists:
        raise SourceError(
            f"source '{source.shown_location}' not found: check the path or URL given with "
            "--source or the sources parameter"
        )


def fetch_source(source: Source, work_dir: str, timeout: float) -> str:
    """Make a source readable: download HTTP(S) sources, check that others exist.

    Args:
        source: The source to fetch.
        work_dir: The run's folder for intermediate files; downloads go below it.
        timeout: Seconds to wait for the server to connect or send data.

    Returns:
        The location the transform reads: the download, or the source's own location.

    Raises:
        SourceError: If the source does not exist or the server does not answer with it.
    """
    if not source.is_remote_http:
        check_source_exists(source)
        return source.location
    target = join_path(
        work_dir, "fetched", f"{uuid.uuid4().hex}-{source_label_from(source.location)}"
    )
    try:
        with (
            httpx.stream(
                "GET", source.location, timeout=timeout, follow_redirects=True
            ) as response,
            _atomic_open(target) as handle,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                handle.write(chunk)
    except httpx.HTTPStatusError as error:
        status = error.response.status_code
        kind = FetchError if status >= 500 or status == 429 else SourceError
        raise kind(
            f"source '{source.shown_location}' answered HTTP {status}: check the URL"
        ) from None
    except httpx.HTTPError as error:
        raise FetchError(
            f"source '{source.shown_location}' could not be fetched ({type(error).__name__}: "
            f"{source.scrub(str(error))}): check the URL and the network"
        ) from None
    except OSError as error:
        raise publish.storage_error(error, work_dir, publish.work_fix(work_dir)) from None
    return target


@contextmanager
def _atomic_open(target: str) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``target`` for writing, and move it into place on success."""
    fs, path = url_to_fs(target)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(temporary, "wb") as handle:
            yield handle
        fs.mv(temporary, path)
    except BaseException:
        if fs.exists(temporary):
            fs.rm(temporary)
        raise


def plan_sources(
    sources: list[Source],
    locations: Mapping[int, str],
    errors: Mapping[int, str],
    rules: Rules,
    partition_bytes: int,
) -> list[SourcePlan]:
    """Read each source's header and first rows, map its columns, and cut it into record ranges.

    Never raises for a bad source: its plan carries the error instead, so one bad source does
    not stop the others. The first rows of all sources are profiled together, in one pass.

    Args:
        sources: The run's sources, in order.
        locations: Where each downloaded source was saved, by index; others are read in place.
        errors: Why a source could not be downloaded, by index.
        rules: The header rules and overrides.
        partition_bytes: Target size of a range; 0 keeps each source whole.
    """
    plans: dict[int, SourcePlan] = {}
    samples: dict[int, pl.DataFrame] = {}
    found: dict[int, list[tuple[int, reading.Layout, int]]] = {}
    cue = header_cue(rules)
    for index, source in enumerate(sources):
        location = locations.get(index, source.location)
        if index in errors:
            plans[index] = SourcePlan(index, source, location, error=errors[index])
            continue
        try:
            if not source.is_remote_http:
                check_source_exists(source)
            layout = reading.read_layout(location, source.encoding, source.label)
            ranges = tuple(reading.record_ranges(location, layout, partition_bytes))
            heads = _section_heads(location, layout, rules, cue)
            # the first table's mapping is decided on its own rows, not a section's
            end = min([reading.sample_end(location, layout), *(s for s, _ in heads[:1])])
            sample = reading.read_records(location, layout, layout.data_start, end)
            digest = reuse.file_digest(location)
            for start, head in heads:
                key = len(sources) + len(samples)
                stop = min(
                    [reading.sample_end(location, head), *(s for s, _ in heads if s > start)]
                )
                samples[key] = reading.read_records(location, head, head.data_start, stop)
                found.setdefault(index, []).append((start, head, key))
        except (SourceError, OSError) as error:
            message = str(error) if isinstance(error, SourceError) else f"cannot be read ({error})"
            message = source.scrub(message)
            if not message.startswith("source '"):
                message = f"source '{source.label}' {message}"
            plans[index] = SourcePlan(index, source, location, error=message)
            continue
        plans[index] = SourcePlan(index, source, location, layout, ranges=ranges, digest=digest)
        samples[index] = sample
    profile = values.Profile(samples)
    for index in range(len(sources)):
        plan = plans[index]
        if index not in samples:
            continue
        assert plan.layout is not None
        constants = plan.source.constants
        columns = map_columns(plan.layout.header, profile.of(index), rules, constants)
        tables = found.get(index, [])
        numbers = reading.record_numbers(plan.location, plan.layout, [s for s, _, _ in tables])
        sections = tuple(
            _section(
                plan,
                number,
                start,
                head,
                map_columns(head.header, profile.of(key), rules, constants),
            )
            for number, (start, head, key) in zip(numbers, tables, strict=True)
        )
        plan = replace(plan, columns=columns, sections=sections, ranges=_cut(plan.ranges, sections))
        problem = _unmapped(plan)
        if problem:
            missing = "company" if "no column for the company" in problem else "state"
            plan = replace(
                plan,
                error=problem,
                reject_reason=(
                    f"the source has no {missing}, so no row of it is a notice (see summary.json)"
                ),
            )
        plans[index] = plan
    return [plans[index] for index in range(len(sources))]


def _section_heads(
    location: str, layout: reading.Layout, rules: Rules, cue: tuple[bytes, ...]
) -> list[tuple[int, reading.Layout]]:
    """Find the headers part-way down a source: where each starts, and the layout below it.

    A record that reads as a header (`pyflow.warn.columns.section_header`) and differs from the
    header above it starts a section; one that repeats that header does not (its row is
    rejected as a repeat), and one that goes back to an earlier header starts a section again. Its empty cells at the end are unnamed columns as far as the
    source's header goes, so rows lined up with the source's columns keep their cells.
    """
    heads: list[tuple[int, reading.Layout]] = []
    above = _header_key(layout.header)
    for start, end, cells in reading.header_records(location, layout, cue):
        header = reading.header_of(cells, at_least=layout.width)
        if _header_key(header) == above or section_header(cells, rules) is None:
            continue
        heads.append((start, replace(layout, header=header, data_start=end, above_header=())))
        above = _header_key(header)
    return heads


def _header_key(header: tuple[str, ...]) -> tuple[str, ...]:
    """A header as compared with another: case and spaces ignored."""
    return tuple(" ".join(name.lower().split()) for name in header)


def _cut(
    ranges: tuple[tuple[int, int], ...], sections: tuple[Section, ...]
) -> tuple[tuple[int, int], ...]:
    """Cut a source's record ranges where each section starts, so a range is under one header."""
    starts = {section.start for section in sections}
    cut: list[tuple[int, int]] = []
    for start, end in ranges:
        bounds = sorted({start, end, *(s for s in starts if start < s < end)})
        cut += itertools.pairwise(bounds)
    return tuple(cut)


def _section(
    plan: SourcePlan, record: int, start: int, layout: reading.Layout, columns: ColumnMap
) -> Section:
    """Return a section; with no state (a constant, or a column of its own), its `Section.error`."""
    if "state" in {*columns.fields, *plan.source.constants}:
        return Section(record, start, layout, columns)
    return Section(
        record,
        start,
        layout,
        columns,
        error=(
            f"the section of source '{plan.label}' from record {record} has no state column: "
            f"give the state as a constant, for example '{plan.source.shown_location}#state=TX', "
            'or add its state column\'s name to an alias file (state = ["..."])'
        ),
    )


def _unmapped(plan: SourcePlan) -> str | None:
    """Say why a source's rows cannot be notices (no company or no state), with the fix."""
    assert plan.columns is not None and plan.layout is not None
    found = {*plan.columns.fields, *plan.source.constants}
    if "company" not in found:
        names = ", ".join(f"'{name}'" for name in plan.layout.header[:30])
        more = f" and {len(plan.layout.header) - 30} more" if len(plan.layout.header) > 30 else ""
        return (
            f"source '{plan.label}' has no column for the company: none of its columns "
            f"({names}{more}) has a header naming a company, employer or organization over "
            "values with names in them. Add the column's name to an alias file "
            '(company = ["..."], the shape of pyflow/warn/aliases.toml) and pass it as the '
            "aliases_file parameter (--param aliases_file=PATH), or give a constant: "
            f"'{plan.source.shown_location}#company=...'"
        )
    if "state" not in found:
        return (
            f"source '{plan.label}' has no state: give it as a constant, for example "
            f"'{plan.source.shown_location}#state=TX', or add its state column's name to an "
            'alias file (state = ["..."]) passed as the aliases_file parameter'
        )
    return None


def partitions_of(plan: SourcePlan) -> list[Partition]:
    """Return a source's partitions, one per record range (none for an unreadable source)."""
    starts = [section.start for section in plan.sections]
    return [
        Partition(plan, i, start, end, bisect.bisect_right(starts, start), start in starts)
        for i, (start, end) in enumerate(plan.ranges)
    ]


def batch_sizes(partition_bytes: int) -> tuple[int, int]:
    """Return the bytes of a task's batch and of a stack within it, for a partition size."""
    stack = partition_bytes or STACK_BYTES
    return stack * BATCH_STACKS, stack


def plan_batches(plans: list[SourcePlan], batch_bytes: int) -> list[list[Partition]]:
    """Group each source's partitions into batches of even size, at most ``batch_bytes``.

    A batch is one task, and holds one source's partitions only: so a source that did not
    change is reused on its own (`batch_key`), whatever changed in the others. A source larger
    than the limit is cut into batches of even size, so tasks running at once finish together
    (142 MB under a 128 MB limit is two batches of 71 MB, not 128 and 14). A task reads its
    batch a stack at a time (`transform_batch`), so a batch can be larger than memory should
    hold at once. 0 gives one partition per batch.
    """
    batches: list[list[Partition]] = []
    for plan in plans:
        partitions = partitions_of(plan)
        total = sum(partition.end - partition.start for partition in partitions)
        if batch_bytes <= 0 or not partitions:
            batches += [[partition] for partition in partitions]
            continue
        target = total / math.ceil(total / batch_bytes) if total else batch_bytes
        batches += _runs(partitions, batch_bytes, target)
    return batches


def reuse_version(rules: Rules) -> str:
    """Return what, besides a source's bytes and mapping, a batch's result depends on.

    That is the rules (the bundled ones and an aliases file's), the example's code and files
    (`pyflow_kit.reuse.code_version`) and the Polars that parses: a change to any of them
    reads every source again.
    """
    rules_text = json.dumps(
        asdict(rules),
        sort_keys=True,
        default=lambda value: sorted(value) if isinstance(value, (set, frozenset)) else str(value),
    )
    return reuse.key(rules_text, reuse.code_version(Path(__file__).parent), pl.__version__)


def batch_key(batch: list[Partition], version: str) -> str:
    """Return the reuse key of a batch: its source's bytes, mapping and ranges, and ``version``.

    The mapping (`SourcePlan.report`) holds what the rules and aliases made of the header, so
    new rules that map a source otherwise read it again; the constants are written into its
    notices. Its label and location are not in the key (the merge writes the label): the same
    bytes moved to another folder are reused.
    """
    plan = batch[0].plan
    return reuse.key(
        plan.digest,
        sorted(plan.source.constants.items()),
        json.dumps(plan.report(), sort_keys=True, default=str),
        repr(plan.columns),
        repr(plan.layout),
        repr(plan.sections),
        plan.error,
        plan.reject_reason,
        [(partition.index, partition.start, partition.end) for partition in batch],
        version,
    )


def adopt(parts: list[PartResult], batch: list[Partition], files: str) -> list[PartResult]:
    """Give a batch's results this run's index of its source, and its part files' folder.

    A reused result has the index its run gave the source, and the paths its run saw: the same
    files, in ``files`` (the key's folder) wherever the output is now.
    """
    index = batch[0].plan.index

    def moved(path: str | None) -> str | None:
        return (
            publish.join(files, path.rsplit("/", 2)[-2], path.rsplit("/", 1)[-1]) if path else None
        )

    return [
        replace(part, source_index=index, notices=moved(part.notices), rejects=moved(part.rejects))
        for part in parts
    ]


def source_digests(
    sources: list[Source], locations: Mapping[int, str], errors: Mapping[int, str]
) -> list[str | None]:
    """Return the SHA-256 of each source's bytes where the run reads them (`plan_key`).

    None for a source that failed to download or cannot be read: its plan says why.
    """
    digests: list[str | None] = []
    for index, source in enumerate(sources):
        digest = None
        if index not in errors and (index in locations or not source.is_remote_http):
            try:
                digest = reuse.file_digest(locations.get(index, source.location))
            except (OSError, ValueError, ImportError):
                digest = None  # planning says why
        digests.append(digest)
    return digests


def plan_key(
    sources: list[Source],
    digests: list[str | None],
    errors: Mapping[int, str],
    partition_bytes: int,
    version: str,
) -> str:
    """Return the reuse key of a run's plans (`plan_sources`): what they are made of.

    That is each source as given (its location, constants, name, encoding) and its bytes, the
    download failures, the partition size and ``version`` (`reuse_version`: the rules, the code
    and the Polars that read them). Where a download was saved is not in it, only its bytes:
    `rebased` gives reused plans this run's locations.
    """
    return reuse.key(
        "plans",
        [(repr(source), digest) for source, digest in zip(sources, digests, strict=True)],
        sorted(errors.items()),
        partition_bytes,
        version,
    )


def plans_reusable(plans: list[SourcePlan], digests: list[str | None]) -> bool:
    """Whether later runs may reuse these plans: every source planned, from the bytes keyed.

    Plans with a failed source are made again next time, which reads it again (as `failed`
    batches are) and logs why it failed; so are plans of bytes that changed while planned.
    """
    return all(
        not plan.error and plan.digest == digest
        for plan, digest in zip(plans, digests, strict=True)
    )


def rebased(
    plans: list[SourcePlan], sources: list[Source], locations: Mapping[int, str]
) -> list[SourcePlan]:
    """Give plans, reused from an earlier run, this run's sources and where it reads them.

    The plans themselves when nothing differs (a downloaded source is saved elsewhere each run).
    """
    moved = [
        replace(plan, index=index, source=source, location=where)
        if (plan.index, plan.source, plan.location) != (index, source, where)
        else plan
        for index, (plan, source) in enumerate(zip(plans, sources, strict=True))
        for where in [locations.get(index, source.location)]
    ]
    return plans if all(new is old for new, old in zip(moved, plans, strict=True)) else moved


def _runs(
    partitions: Iterable[Partition], limit: int, target: float | None = None
) -> list[list[Partition]]:
    """Group partitions, in order, into runs of at most ``limit`` bytes.

    With ``target``, a run also ends where the runs so far come nearest a whole multiple of it
    (before a partition whose larger half would pass it), so runs come out of about that size.
    A partition larger than ``limit`` is a run of its own; 0 makes every partition one.
    """
    runs: list[list[Partition]] = []
    size = done = 0
    for partition in partitions:
        length = partition.end - partition.start
        full = target is not None and done + size + length / 2 > target * len(runs)
        if not runs or limit <= 0 or size + length > limit or (size and full):
            runs.append([])
            done += size
            size = 0
        runs[-1].append(partition)
        size += length
    return runs


def transform_batch(
    batch: list[Partition], work_dir: str, stack_bytes: int, run: str = "", fix: str = ""
) -> list[PartResult]:
    """Transform a task's partitions a stack at a time, so memory holds one stack, not the batch.

    Args:
        batch: The partitions, of one or more sources.
        work_dir: The folder for its part files.
        stack_bytes: Partitions are stacked up to this many bytes (one larger stands alone).
        run: The run reading them, recorded in each result (`PartResult.read_in`).
        fix: What to do when the part files cannot be written (default: `publish.work_fix`'s).

    Returns:
        One result per partition, in the batch's order.
    """
    return [
        replace(part, read_in=run)
        for stack in _runs(batch, stack_bytes)
        for part in transform_stack(stack, work_dir, fix)
    ]


def transform_stack(batch: list[Partition], work_dir: str, fix: str = "") -> list[PartResult]:
    """Read a stack of partitions and turn their rows into notices and rejects, in one pass.

    Each partition's columns are renamed to the fields, the partitions are stacked, and the
    stack is read at once (`pyflow.warn.normalise`). Notices go to one part file for the stack,
    sorted by key in row groups a merge bucket can skip; rejects (with their reason and raw
    text) to another. A source that failed to map has all its rows rejected with that reason;
    a partition that cannot be read gets a result with its error instead of raising.

    Args:
        batch: The partitions, of one or more sources.
        work_dir: The folder for its part files.
        fix: What to do when they cannot be written (default: `publish.work_fix`'s).

    Returns:
        One result per partition, in the stack's order.
    """
    frames: dict[tuple[int, int], pl.DataFrame] = {}
    errors: dict[tuple[int, int], str] = {}
    raws: list[pl.DataFrame] = []
    failed: list[pl.DataFrame] = []
    for partition in batch:
        plan, where = partition.plan, (partition.plan.index, partition.index)
        try:
            frame = reading.read_records(plan.location, partition.layout, partition.start, partition.end)  # fmt: skip
        except (SourceError, OSError) as error:
            errors[where] = plan.source.scrub(f"source '{plan.label}' {error}")
            continue
        frames[where] = frame
        if partition.reject_reason:
            failed.append(_reject_whole(frame, partition))
        else:
            raw = normalise.raw_fields(frame, partition.columns, plan.source.constants, *where)
            if partition.header_first:  # the section's header: read as its names, not a row
                raw = raw.with_columns((pl.col("blank") | (pl.col("record") == 1)).alias("blank"))
            raws.append(raw)
    partitions = {(partition.plan.index, partition.index): partition for partition in batch}
    prefix = join_path(work_dir, "parts", f"{batch[0].plan.index:06d}-{batch[0].index:06d}")
    notices = pl.DataFrame(schema=dict.fromkeys(normalise.NOTICE_COLUMNS, pl.String))
    rows = pl.DataFrame(schema={**dict.fromkeys(normalise.IDS, pl.UInt32), "rule": pl.String})
    unread: dict[tuple[int, int], dict[str, tuple[int, list[str]]]] = {}
    rejects = [frame.drop("rule") for frame in failed]
    if raws:
        stack = pl.concat(raws).filter(~pl.col("blank"))
        normal, readings = normalise.normalise(stack)
        normal = normal.with_columns(normalise.reject_rule())
        kept = normal.get_column("rule").is_null()
        notices = normal.filter(kept).select(normalise.key(), *normalise.NOTICE_COLUMNS[1:])
        notices = notices.sort("key", *normalise.IDS)
        rows = normal.select(*normalise.IDS, "rule")
        rejects += _rejects(normal.filter(~kept), frames, partitions)
        unread = _unread(stack, readings, kept)
    if failed:
        rows = pl.concat(
            [
                rows,
                *(f.select(*normalise.IDS, "rule") for f in failed),
            ]
        )
    fix = fix or publish.work_fix(work_dir)
    notices_path = _write_part(notices, f"{prefix}-notices", fix, sorted_=True)
    rejects_path = _write_part(
        pl.concat(rejects) if rejects else pl.DataFrame(), f"{prefix}-rejects", fix
    )
    counts = _counts(rows)
    keys: tuple[str, ...] = ()
    if notices.height:
        step = max(1, math.ceil(notices.height / KEY_SAMPLES))
        keys = tuple(notices.get_column("key").gather_every(step).to_list())
    results = []
    for position, partition in enumerate(batch):
        where = (partition.plan.index, partition.index)
        if where in errors:
            results.append(PartResult(*where, error=errors[where]))
            continue
        rows_in, kept_rows, rejected_by = counts.get(where, (0, 0, {}))
        results.append(
            PartResult(
                *where,
                records=frames[where].height,
                rows_in=rows_in,
                rows_kept=kept_rows,
                rows_rejected=rows_in - kept_rows,
                notices=notices_path,
                rejects=rejects_path,
                keys=keys if position == 0 else (),
                key_weight=notices.height / len(keys) if keys and position == 0 else 0.0,
                rejected_by=rejected_by,
                unread=unread.get(where, {}),
            )
        )
    return results


def _reject_whole(frame: pl.DataFrame, partition: Partition) -> pl.DataFrame:
    """Reject every non-blank row of a source or section that could not be mapped, with why.

    Its ``rule`` (for the counts) is ``source failed``, or ``section has no state``.
    """
    plan, part_index, width = partition.plan, partition.index, partition.layout.width
    rule = "source failed" if plan.error else "section has no state"
    blank = normalise.blank_rows(frame, width)
    if partition.header_first:
        blank = blank.scatter(0, True)
    return (
        frame.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("record"))
        .filter(~blank)
        .select(
            pl.lit(plan.index, dtype=pl.UInt32).alias("source_index"),
            pl.lit(part_index, dtype=pl.UInt32).alias("part_index"),
            "record",
            pl.lit(partition.reject_reason, dtype=pl.String).alias("reason"),
            normalise.raw_row(width),
            pl.lit(rule).alias("rule"),
        )
    )  # fmt: skip


def _rejects(
    rejected: pl.DataFrame,
    frames: Mapping[tuple[int, int], pl.DataFrame],
    partitions: Mapping[tuple[int, int], Partition],
) -> list[pl.DataFrame]:
    """Give each rejected row its reason and its raw text, from its own partition's cells."""
    found = []
    for (source_index, part_index), rows in rejected.group_by("source_index", "part_index"):
        where = (int(source_index), int(part_index))
        layout, fields = partitions[where].layout, partitions[where].columns.fields
        company = layout.header[fields["company"]] if "company" in fields else "company"
        state = layout.header[fields["state"]] if "state" in fields else "state"
        cells = frames[where].gather(rows.get_column("record") - 1)
        found.append(
            pl.concat(
                [
                    rows.select(*normalise.IDS, normalise.reject_reason(layout.width, company, state)),
                    cells.select(normalise.raw_row(layout.width)),
                ],
                how="horizontal",
            )
        )  # fmt: skip
    return found


def _counts(rows: pl.DataFrame) -> dict[tuple[int, int], tuple[int, int, dict[str, int]]]:
    """Count each partition's rows, kept rows, and rejects by rule."""
    totals = rows.group_by("source_index", "part_index").agg(
        pl.len().alias("rows"), pl.col("rule").is_null().sum().alias("kept")
    )
    rules = rows.drop_nulls("rule").group_by("source_index", "part_index", "rule").len()
    by_rule: dict[tuple[int, int], dict[str, int]] = {}
    for source_index, part_index, rule, count in rules.sort("rule").iter_rows():
        by_rule.setdefault((source_index, part_index), {})[rule] = count
    return {(s, p): (n, k, by_rule.get((s, p), {})) for s, p, n, k in totals.iter_rows()}


def _unread(
    stack: pl.DataFrame, readings: Mapping[str, values.Reading], kept: pl.Series
) -> dict[tuple[int, int], dict[str, tuple[int, list[str]]]]:
    """Count, per partition and field, the kept rows' values that were there but did not read."""
    found: dict[tuple[int, int], dict[str, tuple[int, list[str]]]] = {}
    for name in normalise.REPORTED:
        unread = readings[name].unread
        if unread.is_empty():
            continue
        raw = stack.get_column(name)
        bad = stack.filter(kept & raw.is_in(unread.implode()))
        groups = bad.group_by("source_index", "part_index", maintain_order=True).agg(
            pl.len(), values.clean(pl.col(name)).unique(maintain_order=True).head(EXAMPLES)
        )
        for source_index, part_index, count, examples in groups.iter_rows():
            found.setdefault((source_index, part_index), {})[name] = (count, examples)
    return found


def _write_part(frame: pl.DataFrame, prefix: str, fix: str, *, sorted_: bool = False) -> str | None:
    """Write a part file; None when it is empty.

    Sorted notices go to Parquet, in row groups whose key statistics let a merge bucket skip
    the others; everything else to Arrow IPC, which is faster to write and read whole. The file
    is made in memory, then written beside and moved into place, so that a full disk is an
    `OSError` (`publish.writing` names it, with ``fix``), not the engine's own error, and a run
    reusing the file (another one, writing the same) never reads half of it.
    """
    if frame.is_empty():
        return None
    path = f"{prefix}.parquet" if sorted_ else f"{prefix}.arrow"
    data = io.BytesIO()
    if sorted_:
        frame.write_parquet(data, compression="uncompressed", row_group_size=64 * 1024)
    else:
        frame.write_ipc(data)
    # beside, then moved into place: a run reusing the file never reads half of it
    with publish.writing(path, fix), _atomic_open(path) as handle:
        handle.write(data.getbuffer())
    return path


def _scan_parts(paths: list[str]) -> pl.LazyFrame:
    """Scan part files, Parquet or Arrow IPC (all of one run are of one kind).

    Files in an object store (reused ones, in an output's cache) are read through fsspec, whose
    credentials and endpoint are the output's, rather than by Polars' own cloud reader.
    """
    parquet = paths[0].endswith(".parquet")
    if any("://" in path and not path.startswith("file://") for path in paths):
        read = pl.read_parquet if parquet else pl.read_ipc
        frames = []
        for path in paths:
            with fsspec.open(path, "rb") as handle:
                frames.append(read(handle.read()))
        return pl.concat(frames).lazy()
    if parquet:
        return pl.scan_parquet(paths)
    return pl.scan_ipc(paths)


def failed(parts: list[PartResult]) -> bool:
    """Return whether a batch's partitions could not all be read (its result is not reused)."""
    return any(part.error for part in parts)


def usable_parts(parts: list[PartResult]) -> list[PartResult]:
    """Return the parts of sources whose every partition could be read."""
    failed = {part.source_index for part in parts if part.error}
    return [part for part in parts if part.source_index not in failed]


def plan_buckets(
    parts: list[PartResult], merge_rows: int = MERGE_ROWS, at_least: int = 1
) -> list[tuple[str | None, str | None]]:
    """Cut the key space into ranges of about ``merge_rows`` notices, from the parts' key samples.

    Args:
        parts: The transformed parts, with their key samples.
        merge_rows: Notices a bucket holds at most, about.
        at_least: Buckets to cut when one would hold every notice, so that the merge does not
            run alone after transforms that ran at once (the run's transform tasks), as long
            as each holds `MIN_BUCKET_ROWS`.

    Returns:
        ``(low, high)`` key bounds, low inclusive and high exclusive, None for open ends; one
        range when everything fits in one bucket.
    """
    total = sum(part.rows_kept for part in parts)
    count = math.ceil(total / merge_rows)
    if count <= 1:
        count = min(at_least, total // MIN_BUCKET_ROWS)
    if count <= 1:
        return [(None, None)]
    samples = sorted((key, part.key_weight) for part in parts for key in part.keys)
    cuts: list[str] = []
    seen = 0.0
    for key, weight in samples:
        seen += weight
        if seen >= total * (len(cuts) + 1) / count and (not cuts or key > cuts[-1]):
            cuts.append(key)
            if len(cuts) == count - 1:
                break
    bounds: list[str | None] = [None, *cuts, None]
    return list(itertools.pairwise(bounds))


def notice_files(parts: list[PartResult]) -> list[tuple[str, int]]:
    """Return the part files of notices, each with the run's index of its source.

    A part file holds one source's rows; a reused one has the index its run gave the source,
    which the merge replaces by this run's. A source named twice has the same files twice.
    """
    return list(
        dict.fromkeys((p.notices, p.source_index) for p in sorted(parts, key=_origin) if p.notices)
    )


def _origin(part: PartResult) -> tuple[int, int]:
    return part.source_index, part.index


def _scan_as(path: str, source_index: int) -> pl.LazyFrame:
    """Scan a part file, its rows given this run's index of their source."""
    return _scan_parts([path]).with_columns(pl.lit(source_index, pl.UInt32).alias("source_index"))


def merge_bucket(
    index: int,
    bounds: tuple[str | None, str | None],
    files: list[tuple[str, int]],
    labels: Mapping[int, str],
    work_dir: str,
) -> BucketResult:
    """Merge one key range of every part: drop duplicate notices, keep the first, write a chunk.

    Each part file is sorted by key and origin, so they are merged, not sorted again. The first
    of a set of duplicates is the one from the earliest source, partition and record, so the
    output does not depend on how the sources were split or scheduled.

    Args:
        index: The bucket's position; chunks are concatenated in this order.
        bounds: The key range, low inclusive, high exclusive.
        files: The part files to merge, each with its source (`notice_files`).
        labels: Source index to the label written in the ``source`` column.
        work_dir: The run's folder for intermediate files.
    """
    if not files:
        return BucketResult(index, 0, 0, None)
    assert tuple(NOTICE_FIELDS) == ("notice_id", *normalise.NOTICE_COLUMNS[1:-3], "source")
    low, high = bounds
    keep = pl.lit(True)
    if low is not None:
        keep &= pl.col("key") >= low
    if high is not None:
        keep &= pl.col("key") < high
    scans = [_scan_as(path, source).filter(keep) for path, source in files]
    while len(scans) > 1:
        scans = [
            pair[0].merge_sorted(pair[1], key=["key", *normalise.IDS]) if len(pair) > 1 else pair[0]
            for pair in (scans[i : i + 2] for i in range(0, len(scans), 2))
        ]
    rows = scans[0].collect()
    unique = rows.filter(pl.col("key") != pl.col("key").shift(1, fill_value=""))
    out = unique.select(
        plh.col("key").chash.sha2_256().str.slice(0, ID_LENGTH).alias("notice_id"),
        *NOTICE_FIELDS[1:-1],
        pl.col("source_index").replace_strict(dict(labels), return_dtype=pl.String).alias("source"),
    ).with_columns(defused(name) for name in TEXT_NOTICE_FIELDS)
    path = join_path(work_dir, "chunks", f"notices-{index:06d}.csv")
    with (
        publish.writing(path, publish.work_fix(path)),
        fsspec.open(path, "wb", auto_mkdir=True) as handle,
    ):
        out.write_csv(handle, include_header=False)
    return BucketResult(index, unique.height, rows.height - unique.height, path)


def write_outputs(
    parts: list[PartResult],
    buckets: list[BucketResult],
    labels: Mapping[int, str],
    run_folder: str,
) -> None:
    """Write ``rejects.csv`` and ``notices.csv`` in the run's own folder (`write_rejects`, `write_notices`)."""
    write_rejects(parts, labels, run_folder)
    write_notices(buckets, run_folder)


def write_notices(buckets: Iterable[BucketResult], run_folder: str) -> list[BucketResult]:
    """Write ``notices.csv``: the header, then each bucket's chunk, in the order given.

    The chunks go to the run's own folder, which readers see only once it is published.

    Returns:
        The buckets, in the order written.
    """
    header = (",".join(NOTICE_FIELDS) + "\n").encode()
    written: list[BucketResult] = []
    target = join_path(run_folder, NOTICES_FILE)
    with publish.writing(target), _binary_writer(target) as out:
        out.write(header)
        for bucket in buckets:
            if written and bucket.index <= written[-1].index:
                raise ValueError(f"merge bucket {bucket.index} came out of order")
            written.append(bucket)
            if bucket.path:
                append_file(out, bucket.path)
    return written


def write_rejects(parts: list[PartResult], labels: Mapping[int, str], run_folder: str) -> None:
    """Write ``rejects.csv`` in file order, each reject with its record number in its file.

    A partition's records are numbered from the end of the partitions before it.
    """
    offsets: dict[tuple[int, int], int] = {}
    seen: dict[int, int] = {}
    for part in sorted(parts, key=lambda p: (p.source_index, p.index)):
        offsets[part.source_index, part.index] = seen.get(part.source_index, 0)
        seen[part.source_index] = offsets[part.source_index, part.index] + part.records
    paths = list(
        dict.fromkeys((p.rejects, p.source_index) for p in sorted(parts, key=_origin) if p.rejects)
    )
    target = join_path(run_folder, REJECTS_FILE)
    with publish.writing(target), _binary_writer(target) as out:
        out.write((",".join(REJECT_FIELDS) + "\n").encode())
        if not paths:
            return
        table = pl.DataFrame(
            [(s, p, o) for (s, p), o in offsets.items()],
            schema={"source_index": pl.UInt32, "part_index": pl.UInt32, "offset": pl.UInt32},
            orient="row",
        )
        rejects = (
            pl.concat([_scan_as(path, source) for path, source in paths])
            .join(table.lazy(), on=["source_index", "part_index"], how="inner")
            .sort("source_index", "part_index", "record")
            .select(
                pl.col("source_index")
                .replace_strict(dict(labels), return_dtype=pl.String)
                .alias("source"),
                (pl.col("record") + pl.col("offset")).alias("record"),
                "reason",
                "raw",
            )
            .with_columns(defused(name) for name in TEXT_REJECT_FIELDS)
            .collect()
        )
        rejects.write_csv(out, include_header=False)


def append_file(out: IO[bytes], chunk: str) -> None:
    """Append a whole file to an open output.

    On a local disk the kernel copies it (``copy_file_range``), without passing the bytes
    through Python: a billion-byte output is staged in a fraction of a second.
    """
    with fsspec.open(chunk, "rb") as source:
        local = all(isinstance(getattr(f, "fs", None), LocalFileSystem) for f in (source, out))
        if local and hasattr(os, "copy_file_range"):
            out.flush()
            copied = _copy_range(source.fileno(), out.fileno())
            if copied is None:
                return
            source.seek(copied)  # refused (another file system): Python copies the rest
        shutil.copyfileobj(source, out, 1 << 20)


def _copy_range(source: int, target: int) -> int | None:
    """Append a whole open file to another, in the kernel.

    Returns:
        None once it is copied; if the kernel refuses (`COPY_REFUSED`: the two files are on
        different file systems, such as a work folder on a tmpfs and the output on a disk),
        how many bytes it had copied, for the caller to copy the rest.
    """
    copied = 0
    while True:
        try:
            count = os.copy_file_range(source, target, 1 << 30)
        except OSError as error:
            if error.errno in COPY_REFUSED:
                return copied
            raise
        if not count:
            return None
        copied += count


FORMULA_PATTERN = "^[" + "".join(f"\\x{ord(start):02x}" for start in FORMULA_STARTS) + "]"
"""A cell a spreadsheet would read as a formula."""


def defused(column: str) -> pl.Expr:
    """Prefix a single quote to a text cell a spreadsheet would read as a formula (OWASP).

    ``=HYPERLINK("http://x","y")`` is written ``'=HYPERLINK("http://x","y")``, which a
    spreadsheet shows as text; cells that start otherwise are written as they are.
    """
    cell = pl.col(column)
    return (
        pl.when(cell.str.contains(FORMULA_PATTERN))
        .then(pl.concat_str(pl.lit("'"), cell))
        .otherwise(cell)
        .alias(column)
    )


@contextmanager
def _binary_writer(target: str) -> Iterator[IO[bytes]]:
    """Open a file for writing bytes, creating its folder."""
    with fsspec.open(target, "wb", auto_mkdir=True) as handle:
        yield handle


def summarise(
    plans: list[SourcePlan],
    parts: list[PartResult],
    buckets: list[BucketResult],
    output: str,
    started_at: str,
) -> Summary:
    """Add up a run's counts, per source and in all, with each source's mapping and errors.

    Args:
        plans: Every source's plan.
        parts: Every partition's result.
        buckets: Every merge bucket's result.
        output: The run's own folder, where its files are.
        started_at: When the run started.

    Raises:
        RuntimeError: If the counts do not add up, which would mean a row was lost.
    """
    usable = usable_parts(parts)
    run = output.rstrip("/").rsplit("/", 1)[-1]
    entries = [
        _source_entry(plan, [p for p in parts if p.source_index == plan.index], run)
        for plan in plans
    ]
    summary = Summary(
        rows_in=sum(part.rows_in for part in usable),
        rows_out=sum(bucket.rows_out for bucket in buckets),
        rows_rejected=sum(part.rows_rejected for part in usable),
        rows_duplicate=sum(bucket.rows_duplicate for bucket in buckets),
        sources_failed=sum(1 for entry in entries if entry["error"]),
        started_at=started_at,
        finished_at=utc_now(),
        notices=join_path(output, NOTICES_FILE),
        rejects=join_path(output, REJECTS_FILE),
        sources=entries,
        run=run,
    )
    kept = sum(part.rows_kept for part in usable)
    if (
        summary.rows_in != summary.rows_out + summary.rows_rejected + summary.rows_duplicate
        or kept != summary.rows_out + summary.rows_duplicate
    ):
        raise RuntimeError(f"row counts do not add up: {summary}")
    return summary


def _source_entry(plan: SourcePlan, parts: list[PartResult], run: str) -> dict[str, Any]:
    """One source's entry in ``summary.json``: counts, mapping, unread values, and its error."""
    failed_part = next((part.error for part in parts if part.error), None)
    read = failed_part is None
    rejected: dict[str, int] = {}
    unread: dict[str, dict[str, Any]] = {}
    for part in parts if read else []:
        for rule, count in part.rejected_by.items():
            rejected[rule] = rejected.get(rule, 0) + count
        for name, (count, examples) in part.unread.items():
            entry = unread.setdefault(name, {"count": 0, "examples": []})
            entry["count"] += count
            entry["examples"] = (
                entry["examples"] + [e for e in examples if e not in entry["examples"]]
            )[:EXAMPLES]
    reused = {part.read_in for part in parts} - {run, ""}
    entry = {
        "source": plan.label,
        "location": plan.source.shown_location,
        "reused_from": min(reused) if read and reused else "",
        "error": plan.error or failed_part,
        "rows_in": sum(part.rows_in for part in parts) if read else 0,
        "rows_kept": sum(part.rows_kept for part in parts) if read else 0,
        "rows_rejected": sum(part.rows_rejected for part in parts) if read else 0,
        "rejected_by": dict(sorted(rejected.items())),
        "values_not_read": dict(sorted(unread.items())),
        "partitions": len(plan.ranges),
        "mapping": plan.report(),
    }
    if plan.rows_expected:
        entry["rows_expected"] = plan.rows_expected  # so the next run fails it too
    return entry


def with_changes(summary: Summary, output: str, run_folder: str) -> Summary:
    """Write the run's changes and integrated history (`find_changes`), then its summary."""
    changes = find_changes(
        output,
        run_folder,
        summary.read_sources,
        summary.started_at,
        [entry["source"] for entry in summary.sources],
    )
    summary = replace(summary, changes=changes)
    write_summary(summary, run_folder)
    return summary


def write_summary(summary: Summary, run_folder: str) -> str:
    """Write ``summary.json`` beside the run's other files; return where."""
    target = join_path(run_folder, SUMMARY_FILE)
    with (
        publish.writing(target),
        fsspec.open(target, "w", encoding="utf-8", newline="", auto_mkdir=True) as handle,
    ):
        handle.write(summary.to_json())
    return target


def run_local(
    sources: list[Source],
    output: str,
    rules: Rules,
    partition_bytes: int,
    *,
    strict: bool = False,
    allow_empty: bool = False,
    merge_rows: int = MERGE_ROWS,
    keep_runs: int = 10,
    lease_seconds: float = 300.0,
) -> Summary:
    """Run every step in this process, in order, with no Prefect: what the flow does, plainly.

    The benchmark's plain-Python line and the tests use it; the flow composes the same steps as
    Prefect tasks.

    Args:
        sources: The sources to read.
        output: Folder or fsspec URL for the outputs.
        rules: The header rules and overrides.
        partition_bytes: Sources larger than this are split; 0 keeps each whole.
        strict: Write nothing if any source fails.
        allow_empty: Let a source that gave rows in the published run give none (`fail_emptied`).
        merge_rows: Notices a merge bucket holds, about.
        keep_runs: How many published runs to keep in the output's ``runs/``.
        lease_seconds: How long the run counts as alive without renewing its lease.

    Raises:
        SourceError: With ``strict``, if any source failed; nothing is then written.
    """
    started_at = utc_now()
    location = prepare_output(output)
    run_id = publish.new_run_id()
    run_folder = publish.run_dir(location, run_id)
    work_dir = publish.work_dir(run_folder, shared=False)
    published = False
    try:
        with publish.leased(run_folder, lease_seconds):
            locations: dict[int, str] = {}
            errors: dict[int, str] = {}
            for index, source in enumerate(sources):
                if source.is_remote_http:
                    try:
                        locations[index] = fetch_source(source, work_dir, timeout=30)
                    except SourceError as error:
                        errors[index] = str(error)
            plans = plan_sources(sources, locations, errors, rules, partition_bytes)
            batch_bytes, stack_bytes = batch_sizes(partition_bytes)
            batches = plan_batches(plans, batch_bytes)
            parts = [
                part
                for batch in batches
                for part in transform_batch(batch, work_dir, stack_bytes, run_id)
            ]
            plans = fail_emptied(plans, parts, location, allow_empty)
            raise_failures(plans, parts, strict=strict)
            usable = usable_parts(parts)
            labels = {plan.index: plan.label for plan in plans}
            files = notice_files(usable)
            buckets = [
                merge_bucket(i, bounds, files, labels, work_dir)
                for i, bounds in enumerate(plan_buckets(usable, merge_rows, len(batches)))
            ]
            write_outputs(usable, buckets, labels, run_folder)
            summary = summarise(plans, parts, buckets, run_folder, started_at)
            summary = with_changes(summary, location, run_folder)
            publish.publish(location, run_id, OUTPUT_FILES, rows_out=summary.rows_out)
            published = True
    finally:
        publish.finish_run(location, run_id, work_dir, published, keep_runs)
    return summary


def previous_rows(output: str) -> tuple[str | None, dict[str, int]]:
    """Return the run latest.json names, and how many rows each source is expected to give.

    That is, by label, the rows the run read from a source; for a source it failed for giving
    none, the rows an earlier run read (``rows_expected``), so that running again does not let
    the emptied source through. Other failed sources are left out. Nothing is published yet,
    or its summary cannot be read: no run, and no counts.
    """
    store = publish.Store.of(output)
    try:
        pointer, _ = store.read_pointer()
        if not pointer:
            return None, {}
        path = store.path(pointer["files"][SUMMARY_FILE]["path"])
        entries = json.loads(store.fs.cat_file(path))["sources"]
        rows = {
            e["source"]: int(e.get("rows_expected") or e["rows_in"])
            for e in entries
            if not e.get("error") or e.get("rows_expected")
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning(
            "The run latest.json names in %s cannot be read (%s), so sources are not compared "
            "with it",
            output,
            error,
        )
        return None, {}
    return str(pointer["run"]), rows


def fail_emptied(
    plans: list[SourcePlan], parts: list[PartResult], output: str, allow_empty: bool = False
) -> list[SourcePlan]:
    """Fail each source that gave no rows where the latest published run read rows from it.

    A source that suddenly yields nothing (a truncated download, a file of one long line) is
    more likely broken than empty: it fails, so the others are published and the run says
    why, unless ``allow_empty``. Sources are matched by label (the ``source`` column).

    Args:
        plans: Every source's plan.
        parts: Every partition's result.
        output: The output location, whose latest.json names the run to compare with.
        allow_empty: Let a source that read rows before give none now.

    Returns:
        The plans, those of emptied sources with their error.
    """
    if allow_empty:
        return plans
    rows: dict[int, int] = {}
    for part in parts:
        rows[part.source_index] = rows.get(part.source_index, 0) + part.rows_in
    failed = {part.source_index for part in parts if part.error}
    candidates = [
        plan
        for plan in plans
        if not plan.error and plan.index not in failed and not rows.get(plan.index)
    ]
    if not candidates:
        return plans
    run, before = previous_rows(output)
    emptied = {plan.index: before[plan.label] for plan in candidates if before.get(plan.label)}
    return [
        replace(
            plan,
            error=_emptied_message(plan, run, emptied[plan.index]),
            rows_expected=emptied[plan.index],
        )
        if plan.index in emptied
        else plan
        for plan in plans
    ]


def _emptied_message(plan: SourcePlan, run: str | None, rows_before: int) -> str:
    """Say that a source gave no rows where a published run read some, and what to do."""
    return (
        f"source '{plan.label}' gave no rows, but {rows_before:,} were read from it before (as "
        f"the published run latest.json names, {run}, records): check the file (a truncated "
        "download, an export of one line, a changed layout) and run again, or pass "
        "allow_empty=true (--param allow_empty=true, or the deployment's parameters) if it is "
        "really empty now"
    )


def failures(plans: list[SourcePlan], parts: list[PartResult]) -> list[str]:
    """Return every source failure's message, in source order."""
    found = {plan.index: plan.error for plan in plans if plan.error}
    for part in parts:
        if part.error:
            found.setdefault(part.source_index, part.error)
    return [found[index] for index in sorted(found)]


def raise_failures(plans: list[SourcePlan], parts: list[PartResult], *, strict: bool) -> None:
    """Fail the run before anything is written if every source failed, or (strict) any did.

    Raises:
        SourceError: Listing every failed source and its fix.
    """
    problems = failures(plans, parts)
    if problems and len(problems) == len(plans):
        raise SourceError(f"no source could be read, so nothing was written: {'; '.join(problems)}")
    if problems and strict:
        raise SourceError(
            f"{len(problems)} of {len(plans)} sources failed, and strict mode writes nothing "
            "unless all are read: " + "; ".join(problems)
        )
