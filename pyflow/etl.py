"""The ETL steps as plain functions: fetch, transform to sorted run files, merge, and write.

Rows stream through every step. A transform writes its valid rows to run files, each sorted
by the deduplication key, and its rejects to run files sorted by line; the merge reads all
runs at once with `heapq.merge`, so duplicates arrive side by side and the output order is
the same whatever the number of sources, partitions or workers. Memory holds one run per
transform and one line per run during the merge, never a whole source.
"""

from __future__ import annotations

import codecs
import csv
import heapq
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO

import fsspec
import httpx
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pyflow.errors import FetchError, OutputError, SourceError
from pyflow.schema import (
    FIELDS,
    REJECT_FIELDS,
    REQUIRED_FIELDS,
    Aliases,
    RowError,
    Source,
    map_columns,
    normalise_row,
    source_label_from,
)

logger = logging.getLogger(__name__)

RUN_ROWS = 200_000
"""Rows a transform sorts in memory before it writes them out as one run file."""

NOTICES_FILE = "notices.csv"
REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "summary.json"
WORK_DIR_NAME = ".pyflow-work"
"""Folder inside the output location for a run's intermediate files; removed after the run."""

_KEY_END = "\x1e"
_TEXT_START = "\t"


@dataclass(frozen=True)
class PartResult:
    """What one transform hands to the merge: counts, lines read and the paths of its run files."""

    source: str
    rows_in: int
    rows_rejected: int
    notice_runs: list[str] = field(default_factory=list)
    reject_runs: list[str] = field(default_factory=list)
    source_index: int = 0
    index: int = 0
    lines: int = 0


@dataclass(frozen=True)
class MergeResult:
    """What the merge wrote: row counts and the final file locations."""

    rows_out: int
    rows_duplicate: int
    notices: str
    rejects: str


@dataclass(frozen=True)
class Summary:
    """A run's summary, written as ``summary.json``."""

    sources: list[str]
    rows_in: int
    rows_out: int
    rows_rejected: int
    rows_duplicate: int
    started_at: str
    finished_at: str
    notices: str
    rejects: str

    def to_json(self) -> str:
        """Return the summary as indented JSON text."""
        return json.dumps(asdict(self), indent=2) + "\n"


def utc_now() -> str:
    """Return the current UTC time in ISO 8601 form, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


_NEEDS_QUOTES = re.compile(r'[",\r\n]')


def csv_line(values: Iterable[str]) -> str:
    """Render values as one CSV line, quoted where needed (as `csv.writer` does), ending in a newline."""
    values = tuple(values)
    if not _NEEDS_QUOTES.search("".join(values)):
        return ",".join(values) + "\n"
    return (
        ",".join(
            f'"{value.replace(chr(34), chr(34) * 2)}"' if _NEEDS_QUOTES.search(value) else value
            for value in values
        )
        + "\n"
    )


def join_path(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with forward slashes."""
    return "/".join([base.rstrip("/"), *parts])


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
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def new_work_dir(output: str) -> str:
    """Return a fresh folder for one run's intermediate files, inside the output location."""
    return join_path(output, WORK_DIR_NAME, uuid.uuid4().hex)


def remove_work_dir(work_dir: str) -> None:
    """Delete a run's intermediate files; a folder that is already gone is fine."""
    fs, path = url_to_fs(work_dir)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    parent = path.rsplit("/", 1)[0]
    if fs.exists(parent) and not fs.ls(parent):
        fs.rmdir(parent)


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
            f"source '{source.location}' cannot be opened ({error}): check the path or URL, and "
            "for a cloud URL (gs://, s3://) the credentials and the fsspec package it needs"
        ) from None
    if not exists:
        raise SourceError(
            f"source '{source.location}' not found: check the path or URL given with "
            "--source or PYFLOW_SOURCES"
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
        raise kind(f"source '{source.location}' answered HTTP {status}: check the URL") from None
    except httpx.HTTPError as error:
        raise FetchError(
            f"source '{source.location}' could not be fetched ({type(error).__name__}: {error}): "
            "check the URL and the network"
        ) from None
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


class _RunWriter:
    """Collects lines, and writes each full batch, sorted, as one run file."""

    def __init__(self, prefix: str, run_rows: int) -> None:
        self.prefix = prefix
        self.run_rows = run_rows
        self.lines: list[str] = []
        self.paths: list[str] = []

    def add(self, line: str) -> None:
        """Add a line; write a run file when the batch is full."""
        self.lines.append(line)
        if len(self.lines) >= self.run_rows:
            self.flush()

    def flush(self) -> None:
        """Write the batch, sorted, as one run file."""
        if not self.lines:
            return
        self.lines.sort()
        path = f"{self.prefix}-{len(self.paths):05d}.run"
        with fsspec.open(path, "w", encoding="utf-8", newline="", auto_mkdir=True) as handle:
            handle.writelines(self.lines)
        self.paths.append(path)
        self.lines = []


@dataclass(frozen=True)
class Partition:
    """A byte range of one source: the unit of work of a transform.

    A line belongs to the partition its first byte falls in, so partitions split a file at line
    boundaries; a record whose quoted field holds a line break must not cross one, so files
    with such records should not be split (``PYFLOW_PARTITION_BYTES=0``).
    """

    source_index: int
    index: int
    source: Source
    location: str
    start: int = 0
    end: int | None = None

    @property
    def name(self) -> str:
        """A short name for logs: the source's label, and the byte range of a split source."""
        if self.end is None:
            return self.source.label
        return f"{self.source.label} (bytes {self.start:,} to {self.end:,})"


def plan_partitions(
    source_index: int, source: Source, location: str, partition_bytes: int
) -> list[Partition]:
    """Split a source into byte ranges of about ``partition_bytes``; 0 keeps it whole.

    Args:
        source_index: The source's position in the run's list.
        source: The source.
        location: Where to read it.
        partition_bytes: Target size of a partition; 0 or a larger file size: one partition.

    Returns:
        The partitions, in file order; together they cover the whole file.
    """
    if partition_bytes <= 0:
        return [Partition(source_index, 0, source, location)]
    fs, path = url_to_fs(location)
    size = fs.size(path)
    count = max(1, math.ceil(size / partition_bytes))
    if count == 1:
        return [Partition(source_index, 0, source, location)]
    bounds = [size * i // count for i in range(count + 1)]
    return [
        Partition(source_index, i, source, location, bounds[i], bounds[i + 1]) for i in range(count)
    ]


def _sort_head(partition: Partition, line: int) -> str:
    """Return the part of a sort key that orders rows by source, partition and line."""
    return f"{partition.source_index:06d}\x1f{partition.index:06d}\x1f{line:012d}"


def _read_header(location: str, encoding: str) -> list[str] | None:
    """Return a file's first CSV record: its column names."""
    with fsspec.open(location, "r", encoding=encoding, newline="") as handle:
        return next(csv.reader(handle), None)


def _partition_lines(raw: IO[bytes], partition: Partition, counter: list[int]) -> Iterator[str]:
    """Yield the decoded lines that start inside the partition's byte range.

    Lines are split on the newline byte, which is safe for the ASCII-compatible encodings
    state files use (UTF-8, Windows-1252, Latin-1); a byte order mark is dropped.
    """
    encoding = codecs.lookup(partition.source.encoding).name
    if partition.start > 0:
        raw.seek(partition.start - 1)
        raw.readline()
    elif encoding == "utf-8-sig":
        raw.seek(len(codecs.BOM_UTF8) if raw.read(3) == codecs.BOM_UTF8 else 0)
    if encoding == "utf-8-sig":
        encoding = "utf-8"
    position = raw.tell()
    end = partition.end
    for line in raw:
        if end is not None and position >= end:
            return
        position += len(line)
        counter[0] += 1
        yield line.decode(encoding)


def transform_source(
    partition: Partition, aliases: Aliases, work_dir: str, run_rows: int = RUN_ROWS
) -> PartResult:
    """Read one partition of a source, normalise every row, and write sorted run files.

    Args:
        partition: The byte range to read (a whole file is one partition).
        aliases: The column alias table.
        work_dir: The run's folder for intermediate files.
        run_rows: Rows per sorted run file.

    Returns:
        The counts, the number of lines read, and the run files written.

    Raises:
        SourceError: If the file cannot be decoded or lacks a column for a required field.
    """
    source = partition.source
    prefix = join_path(work_dir, "parts", f"{partition.source_index:06d}-{partition.index:06d}")
    notices = _RunWriter(f"{prefix}-notices", run_rows)
    rejects = _RunWriter(f"{prefix}-rejects", run_rows)
    label = source.label
    rows_in = rows_rejected = 0
    lines_read = [0]
    try:
        with fsspec.open(partition.location, "rb") as raw:
            reader = csv.reader(_partition_lines(raw, partition, lines_read))
            header = (
                next(reader, None)
                if partition.index == 0
                else _read_header(partition.location, source.encoding)
            )
            if header is None:
                raise SourceError(
                    f"source '{label}' is empty: it needs a header row of column names"
                )
            columns = _check_columns(header, source, aliases)
            width = len(header)
            constants = source.constants
            previous_line = reader.line_num
            for row in reader:
                line, previous_line = previous_line + 1, reader.line_num
                rows_in += 1
                try:
                    if not any(value.strip() for value in row):
                        raise RowError("empty row")
                    if len(row) != width:
                        raise RowError(f"has {len(row)} fields, the header has {width}")
                    values = {name: row[index] for name, index in columns.items()}
                    for name, value in constants.items():
                        if not values.get(name, "").strip():
                            values[name] = value
                    notice = normalise_row(values, label)
                except RowError as reason:
                    rows_rejected += 1
                    raw = csv_line(row).rstrip("\n")
                    rejects.add(
                        f"{_sort_head(partition, line)}{_TEXT_START}"
                        + json.dumps((label, str(reason), raw), ensure_ascii=False)
                        + "\n"
                    )
                    continue
                notices.add(
                    f"{notice.dedup_key()}{_KEY_END}{_sort_head(partition, line)}{_TEXT_START}"
                    + csv_line(notice.values())
                )
    except UnicodeDecodeError:
        where = f"line {lines_read[0]}" + (
            f" after byte {partition.start:,}" if partition.start else ""
        )
        raise SourceError(
            f"source '{label}' is not valid {source.encoding} ({where}): name its encoding, "
            f"for example '{source.location}#encoding=cp1252'"
        ) from None
    except csv.Error as error:
        raise SourceError(
            f"source '{label}' is not readable CSV ({error}): check that it is a CSV file with a "
            "header row, and name its encoding if it is not UTF-8 (#encoding=cp1252)"
        ) from None
    notices.flush()
    rejects.flush()
    return PartResult(
        label,
        rows_in,
        rows_rejected,
        notices.paths,
        rejects.paths,
        source_index=partition.source_index,
        index=partition.index,
        lines=lines_read[0],
    )


def _check_columns(header: list[str], source: Source, aliases: Aliases) -> dict[str, int]:
    """Map the header to fields, or fail naming each required field with no column or constant."""
    columns = map_columns(header, aliases)
    missing = [f for f in REQUIRED_FIELDS if f not in columns and f not in source.constants]
    if missing:
        details = "; ".join(
            f"'{f}' (looked for: {', '.join(aliases.names_for(f))})" for f in missing
        )
        raise SourceError(
            f"source '{source.label}' has no column for {details}. Its columns are: "
            f"{', '.join(header)}. Add the column name to the alias table (PYFLOW_ALIASES_FILE), "
            f"or give a constant, for example '{source.location}#{missing[0]}=...'"
        )
    return columns


def _open_runs(stack: ExitStack, paths: list[str]) -> list[IO[str]]:
    """Open run files for reading, closed when ``stack`` closes."""
    return [
        stack.enter_context(fsspec.open(path, "r", encoding="utf-8", newline="")) for path in paths
    ]


def _first_lines(parts: list[PartResult]) -> dict[tuple[int, int], int]:
    """Return the file line number of each partition's first line (partitions count their own)."""
    first: dict[tuple[int, int], int] = {}
    next_line: dict[int, int] = {}
    for part in sorted(parts, key=lambda p: (p.source_index, p.index)):
        first[part.source_index, part.index] = next_line.get(part.source_index, 1)
        next_line[part.source_index] = first[part.source_index, part.index] + part.lines
    return first


def staged_path(work_dir: str, name: str) -> str:
    """Return where a run stages an output file until every output is complete."""
    return join_path(work_dir, "staged", name)


def merge_outputs(parts: list[PartResult], output: str, work_dir: str) -> MergeResult:
    """Merge all run files into ``notices.csv`` and ``rejects.csv``, dropping duplicates.

    The files are staged in the run's folder; `publish_outputs` moves them into place once
    ``summary.json`` is staged too, so a failed run leaves the previous outputs untouched.

    Args:
        parts: The transforms' results.
        output: The output location the files will be published to.
        work_dir: The run's folder for intermediate files.

    Returns:
        The counts and the locations the files will have.
    """
    rows_out = rows_duplicate = 0
    with ExitStack() as stack:
        notices = stack.enter_context(_text_writer(staged_path(work_dir, NOTICES_FILE)))
        rejects = stack.enter_context(_text_writer(staged_path(work_dir, REJECTS_FILE)))
        notices.write(csv_line(FIELDS))
        last_key = None
        runs = _open_runs(stack, [path for part in parts for path in part.notice_runs])
        for line in heapq.merge(*runs):
            head, _, text = line.partition(_TEXT_START)
            key = head.partition(_KEY_END)[0]
            if key == last_key:
                rows_duplicate += 1
                continue
            last_key = key
            notices.write(text)
            rows_out += 1
        rejects.write(csv_line(REJECT_FIELDS))
        first_lines = _first_lines(parts)
        for line in heapq.merge(
            *_open_runs(stack, [p for part in parts for p in part.reject_runs])
        ):
            head, _, text = line.partition(_TEXT_START)
            source_index, part_index, relative = (int(n) for n in head.split("\x1f"))
            label, reason, raw = json.loads(text)
            number = first_lines[source_index, part_index] + relative - 1
            rejects.write(csv_line((label, str(number), reason, raw)))
    return MergeResult(
        rows_out, rows_duplicate, join_path(output, NOTICES_FILE), join_path(output, REJECTS_FILE)
    )


@contextmanager
def _text_writer(target: str) -> Iterator[IO[str]]:
    """Open a UTF-8 text file with Unix line endings for writing, creating its folder."""
    with fsspec.open(target, "w", encoding="utf-8", newline="", auto_mkdir=True) as handle:
        yield handle


def summarise(
    sources: list[Source], parts: list[PartResult], merged: MergeResult, started_at: str
) -> Summary:
    """Add up a run's counts.

    Raises:
        RuntimeError: If the counts do not add up, which would mean a row was lost.
    """
    summary = Summary(
        sources=[source.label for source in sources],
        rows_in=sum(part.rows_in for part in parts),
        rows_out=merged.rows_out,
        rows_rejected=sum(part.rows_rejected for part in parts),
        rows_duplicate=merged.rows_duplicate,
        started_at=started_at,
        finished_at=utc_now(),
        notices=merged.notices,
        rejects=merged.rejects,
    )
    if summary.rows_in != summary.rows_out + summary.rows_rejected + summary.rows_duplicate:
        raise RuntimeError(f"row counts do not add up: {summary}")
    return summary


def write_summary(summary: Summary, work_dir: str) -> str:
    """Stage ``summary.json`` beside the other outputs; return where it is staged."""
    target = staged_path(work_dir, SUMMARY_FILE)
    with _text_writer(target) as handle:
        handle.write(summary.to_json())
    return target


def publish_outputs(work_dir: str, output: str) -> list[str]:
    """Move the staged outputs into the output location, data first and summary last.

    Each move replaces its file at once (a rename on a local disk; on object stores such as
    Google Cloud Storage, an object appears only when complete), and nothing is moved before all
    three files are staged, so readers never see a partial file.

    Returns:
        The published locations.
    """
    fs, _ = url_to_fs(output)
    published = []
    for name in (NOTICES_FILE, REJECTS_FILE, SUMMARY_FILE):
        source, target = (
            url_to_fs(staged_path(work_dir, name))[1],
            url_to_fs(join_path(output, name))[1],
        )
        fs.mv(source, target)
        published.append(join_path(output, name))
    return published
