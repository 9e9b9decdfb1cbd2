"""Reading a CSV source as its states write it: header, delimiter, line ends, encoding, splits.

A source's header is found past any title lines above it, and its delimiter (a comma, else a
semicolon, tab or bar) from its first records.

A source is read in byte ranges that always start and end at a record boundary, found by quote
parity, so a quoted field with line breaks is never cut. Each range is parsed by Polars, every
column as text; a range with rows longer than the header (which Polars refuses) is parsed by
Python's `csv` module instead, which keeps the extra cells so they can be checked.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import re
import sys
from collections import Counter
from dataclasses import dataclass

import fsspec
import polars as pl
from fsspec.core import url_to_fs

from pyflow.warn import values
from pyflow.warn.errors import SourceError

SNIFF_BYTES = 1 << 16
"""Bytes read from a source's start to find its line ends and header."""

SAMPLE_BYTES = 1 << 17
"""Bytes of a source's first rows that its column mapping is decided on."""

SCAN_BYTES = 1 << 23
"""Bytes read at a time while scanning a source for record boundaries."""

MAX_HEADER_BYTES = 1 << 20
"""The longest record looked at as a header part-way down a source (`header_records`)."""

DELIMITERS = (",", ";", "\t", "|")
"""The cell separators a source may use: a comma, or another its first records show."""

HEADER_SEARCH = 20
"""Records at a source's start among which its header is looked for, past any title lines."""

EXTRA_COLUMNS = 8
"""Columns read beyond the header's, at first, to find cells a row has beyond it."""

MAX_EXTRA_COLUMNS = 512
"""Beyond this many extra columns, a range is parsed by Python's `csv` module instead."""

EXTRA = values.EXTRA_COLUMN
"""Column of the cells a row has beyond the header's, rendered as CSV (null when none)."""

_VALUE = re.compile(rb"\d{3}|\d\s*[-/.:]\s*\d")
"""A year, a count or a date in a record: what a header never holds (`columns.section_header`)."""

UTF8_NAMES = frozenset({"utf-8", "utf-8-sig"})
_CP1252_UNDEFINED = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})


def _as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Decode the bytes UTF-8 refused as Windows-1252 (Latin-1 for its five unused bytes)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    text = "".join(
        chr(byte) if byte in _CP1252_UNDEFINED else bytes([byte]).decode("cp1252") for byte in bad
    )
    return text, error.end


codecs.register_error("pyflow-cp1252", _as_cp1252)
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Layout:
    """How a source's bytes are laid out: its header, where its records start, its line ends.

    ``above_header`` holds the lines found before the header (a title, a date), which are not
    records; ``delimiter`` the cell separator.
    """

    header: tuple[str, ...]
    data_start: int
    size: int
    newline: str
    encoding: str
    delimiter: str = ","
    above_header: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """The number of named columns."""
        return len(self.header)

    def decode(self, data: bytes) -> str:
        """Decode bytes of this source: UTF-8 by default, any byte that is not read as Windows-1252."""
        if codecs.lookup(self.encoding).name in UTF8_NAMES:
            return data.decode("utf-8", errors="pyflow-cp1252")
        return data.decode(self.encoding)

    def report(self) -> dict[str, object]:
        """What a reader of ``summary.json`` needs to know of the layout: only what is unusual."""
        found: dict[str, object] = {}
        if self.delimiter != ",":
            found["delimiter"] = self.delimiter
        if self.above_header:
            found["lines_above_header"] = list(self.above_header)
        return found


def read_layout(location: str, encoding: str, label: str) -> Layout:
    """Find a source's header, the byte where its first record starts, and its line ends.

    Its cells are split at commas, or at the semicolons, tabs or bars its first records show
    (`_split_records`). Title lines above the header are skipped and reported in the layout,
    not taken for the header (`_header_position`).

    Args:
        location: Where to read the source (a local path or fsspec URL).
        encoding: Its declared encoding.
        label: Its name, for messages.

    Raises:
        SourceError: If the file is empty, binary or UTF-16, or its header cannot be decoded.
    """
    fs, path = url_to_fs(location)
    size = fs.size(path)
    with fs.open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
        start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
        newline = "\r" if b"\n" not in head and b"\r" in head else "\n"
        end = _record_end(head, start, newline)
        while end is None and len(head) < size:
            head += handle.read(SNIFF_BYTES * 16)
            end = _record_end(head, start, newline)
    if end is None:
        end = len(head)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SourceError(
            f"source '{label}' is UTF-16 text (such as Excel's 'Unicode Text'), which is not read: "
            "save it as 'CSV UTF-8', or convert it with iconv -f UTF-16 -t UTF-8"
        )
    if not head[start:].strip():
        raise SourceError(f"source '{label}' is empty: it needs a header row of column names")
    if b"\x00" in head[start:end]:
        raise SourceError(
            f"source '{label}' is not a CSV file (it holds binary data): export it as CSV, "
            "or check the URL or path"
        )
    layout = Layout((), end, size, newline, encoding)
    bounds = [start, end]
    while len(bounds) <= HEADER_SEARCH and bounds[-1] < len(head):
        following = _record_end(head, bounds[-1], newline)
        if following is None:
            break
        bounds.append(following)
    texts = [_lenient(layout, head[a:b]) for a, b in itertools.pairwise(bounds)]
    if texts[0].lstrip().lower().startswith(("<!doctype", "<html", "<?xml")):
        raise SourceError(
            f"source '{label}' is an HTML or XML page, not CSV: check the URL gives the file itself"
        )
    if newline == "\n":  # a carriage return is then part of a line end, or a stray in a cell
        texts = [text.replace("\r", "") for text in texts]
    delimiter, rows = _split_records(texts)
    position = _header_position(rows)
    try:
        layout.decode(head[bounds[position] : bounds[position + 1]])
    except UnicodeDecodeError as error:
        raise SourceError(
            f"source '{label}' is not valid {encoding} ({error.reason} at byte "
            f"{bounds[position] + error.start:,}): name its encoding, for example "
            "'#encoding=cp1252', or leave it out to read UTF-8"
        ) from None
    header = header_of(rows[position])
    if not header:
        raise SourceError(f"source '{label}' is empty: it needs a header row of column names")
    above = tuple(
        texts[i].strip()[:200] for i in range(position) if any(cell.strip() for cell in rows[i])
    )
    return Layout(header, bounds[position + 1], size, newline, encoding, delimiter, above)


def header_of(cells: list[str], at_least: int = 0) -> tuple[str, ...]:
    """Return a header record's column names: end cells that are empty dropped, down to ``at_least``.

    An empty cell that stays is named by its place (``column 3``).
    """
    cells = [cell.replace("\ufeff", "") for cell in cells]
    while len(cells) > at_least and not cells[-1].strip():
        cells.pop()
    return tuple(name.strip() or f"column {i + 1}" for i, name in enumerate(cells))


def header_records(
    location: str, layout: Layout, cue: tuple[bytes, ...]
) -> list[tuple[int, int, list[str]]]:
    """Find the records after the header that hold a word of ``cue``, to look at as headers.

    A scan at memory speed: only lines where a word of ``cue`` (lower case) is found, in any
    case, are looked at, and only those that start a record (by quote parity, outside quotes)
    and hold no year, count or date (`_VALUE`) are parsed; a record may go on over quoted
    line breaks (``"Number of<newline>Workers"``).

    Returns:
        For each such record, in file order: where it starts, where the next record starts,
        and its cells.
    """
    mark = layout.newline.encode()
    found: list[tuple[int, int, list[str]]] = []
    with fsspec.open(location, "rb") as handle:
        handle.seek(layout.data_start)
        offset, quotes, carry = layout.data_start, 0, b""
        while True:
            chunk = handle.read(SCAN_BYTES)
            data = carry + chunk
            cut = data.rfind(mark) + 1 if chunk else len(data)
            lines, carry = data[:cut], data[cut:]
            position = 0  # quote characters are counted up to here
            for start in _lines_holding(lines, lines.lower(), cue, mark):
                if start < position:
                    continue  # within the record looked at last
                quotes += lines.count(b'"', position, start)
                position = start
                if quotes % 2:
                    continue  # inside a quoted cell
                end = _record_end(lines, start, layout.newline)
                if end is None and chunk and len(lines) - start < MAX_HEADER_BYTES:
                    cut, carry = start, lines[start:] + carry  # it goes on: look with what follows
                    lines = lines[:start]
                    break
                if end is None:  # the file's last record, or too long for a header
                    if chunk or lines.count(b'"', start) % 2:
                        continue
                    end = len(lines)
                record = lines[start:end]
                quotes += record.count(b'"')
                position = end
                if not _VALUE.search(record):
                    text = _lenient(layout, record)
                    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter)
                    found.append((offset + start, offset + end, next(reader, [])))
            quotes += lines.count(b'"', position)
            offset += cut
            if not chunk:
                return found


def _lines_holding(data: bytes, lower: bytes, words: tuple[bytes, ...], mark: bytes) -> list[int]:
    """Return where each line of ``data`` that holds one of ``words`` starts, in order."""
    starts: set[int] = set()
    for word in words:
        found = lower.find(word)
        while found != -1:
            starts.add(data.rfind(mark, 0, found) + 1)
            line_end = data.find(mark, found)
            found = -1 if line_end == -1 else lower.find(word, line_end)
    return sorted(starts)


def record_numbers(location: str, layout: Layout, offsets: list[int]) -> list[int]:
    """Return the number of the record that starts at each offset (the first after the header is 1).

    Numbered as rejects are: every record counts, blank ones too. One pass for all the offsets
    (ascending), at memory speed where a stretch holds no quote character.
    """
    mark = layout.newline.encode()
    numbers: list[int] = []
    number, quotes, at = 1, 0, layout.data_start
    with fsspec.open(location, "rb") as handle:
        handle.seek(at)
        for offset in offsets:
            while at < offset and (chunk := handle.read(min(SCAN_BYTES, offset - at))):
                at += len(chunk)
                if quotes % 2 == 0 and b'"' not in chunk:
                    number += chunk.count(mark)
                    continue
                position = 0
                while (line_end := chunk.find(mark, position)) != -1:
                    quotes += chunk.count(b'"', position, line_end)
                    number += quotes % 2 == 0
                    position = line_end + len(mark)
                quotes += chunk.count(b'"', position)
            numbers.append(number)
    return numbers


def _lenient(layout: Layout, data: bytes) -> str:
    """Decode bytes as the source's encoding would, undecodable ones replaced: to look, not keep."""
    try:
        return layout.decode(data)
    except UnicodeDecodeError:
        return data.decode(layout.encoding, errors="replace")


def _split_records(texts: list[str]) -> tuple[str, list[list[str]]]:
    """Split a source's first records into cells with the delimiter that suits them best.

    The best splits most of them into the same number of cells, more than one: the delimiter a
    file uses gives its records one width, and another, found in some cells, gives many. A
    comma wins a tie.
    """
    best: tuple[tuple[int, int], str, list[list[str]]] | None = None
    for delimiter in DELIMITERS:
        rows = [
            next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
            for text in texts
        ]
        widths = Counter(len(row) for row in rows if any(cell.strip() for cell in row))
        width, times = max(widths.items(), key=lambda item: (item[1], item[0]), default=(0, 0))
        score = (times, width) if width > 1 else (0, 0)
        if best is None or score > best[0]:
            best = (score, delimiter, rows)
    assert best is not None
    return best[1], best[2]


def _header_position(rows: list[list[str]]) -> int:
    """Return which of a source's first records is its header, past any title lines.

    A title line (a name, "Updated: 1/2/2024") fills one or two cells; the header is the first
    record that fills more: at least three, or two when the records after it fill fewer than
    four. With none, it is the first record that is not blank.
    """
    filled = [sum(1 for cell in row if cell.strip()) for row in rows]
    for position, count in enumerate(filled):
        after = sorted(filled[position + 1 :])
        typical = after[len(after) // 2] if after else 0
        if count >= (3 if typical >= 4 else 2):
            return position
    return next((position for position, count in enumerate(filled) if count), 0)


def _record_end(data: bytes, start: int, newline: str) -> int | None:
    """Return the offset just after the record that starts at ``start``, if ``data`` holds its end."""
    mark = newline.encode()
    position, quotes = start, 0
    while True:
        found = data.find(mark, position)
        if found == -1:
            return None
        quotes += data.count(b'"', position, found)
        if quotes % 2 == 0:
            return found + 1
        position = found + 1


def sample_end(location: str, layout: Layout, size: int = SAMPLE_BYTES) -> int:
    """Return where the records in the first ``size`` bytes after the header end (whole records)."""
    if layout.size - layout.data_start <= size:
        return layout.size
    with fsspec.open(location, "rb") as handle:
        handle.seek(layout.data_start)
        data = handle.read(size)
    end, position = 0, 0
    while (found := _record_end(data, position, layout.newline)) is not None:
        end = position = found
    return layout.data_start + end if end else layout.size


def record_ranges(location: str, layout: Layout, partition_bytes: int) -> list[tuple[int, int]]:
    """Split a source's records into byte ranges of about ``partition_bytes``, never inside a record.

    A boundary is moved forward to the first line end outside quotes, counting quote characters
    from the first record (a linear scan at memory speed). A file whose unquoted fields hold stray
    quote characters can defeat the count; such files are rare, and 0 keeps every source whole.

    Args:
        location: Where to read the source.
        layout: Its layout.
        partition_bytes: Target size of a range; 0, or a larger source: one range.

    Returns:
        Contiguous ``(start, end)`` ranges covering every record.
    """
    data_bytes = layout.size - layout.data_start
    if partition_bytes <= 0 or data_bytes <= partition_bytes:
        return [(layout.data_start, layout.size)]
    count = -(-data_bytes // partition_bytes)
    targets = [layout.data_start + data_bytes * i // count for i in range(1, count)]
    with fsspec.open(location, "rb") as handle:
        starts = _record_starts(handle, layout, targets)
    bounds = sorted({layout.data_start, *(s for s in starts if s < layout.size), layout.size})
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _record_starts(handle: io.BufferedIOBase, layout: Layout, targets: list[int]) -> list[int]:
    """For each target offset (ascending), return the first record start at or after it."""
    mark = layout.newline.encode()
    handle.seek(layout.data_start)
    found: list[int] = []
    offset, quotes, seeking = layout.data_start, 0, False
    pending = iter(targets)
    target = next(pending, None)
    while target is not None and (chunk := handle.read(SCAN_BYTES)):
        position = 0
        while target is not None:
            if not seeking:
                if target >= offset + len(chunk):
                    break
                local = max(target - offset, position)
                quotes += chunk.count(b'"', position, local)
                position, seeking = local, True
            line_end = chunk.find(mark, position)
            if line_end == -1:
                break
            quotes += chunk.count(b'"', position, line_end)
            position = line_end + 1
            if quotes % 2 == 0:
                found.append(offset + position)
                seeking = False
                while target is not None and target < offset + position:
                    target = next(pending, None)
        quotes += chunk.count(b'"', position)
        offset += len(chunk)
    return found


def read_records(location: str, layout: Layout, start: int, end: int) -> pl.DataFrame:
    """Parse the records in one byte range: columns ``c0``...``cN`` as text, and `EXTRA`.

    Blank records are kept (as blank rows), so a row's position is its record's position.

    Raises:
        SourceError: If the bytes cannot be decoded with the source's declared encoding.
    """
    with fsspec.open(location, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    if codecs.lookup(layout.encoding).name not in UTF8_NAMES:
        try:
            data = data.decode(layout.encoding).encode("utf-8")
        except UnicodeDecodeError as error:
            raise SourceError(
                f"is not valid {layout.encoding} ({error.reason} at byte {start + error.start:,}): "
                "name its encoding, for example '#encoding=cp1252', or leave it out to read UTF-8"
            ) from None
    try:
        return _polars_read(data, layout)
    except pl.exceptions.PolarsError as error:
        if "utf-8" in str(error).lower():
            data = layout.decode(data).encode("utf-8")
            with contextlib.suppress(pl.exceptions.PolarsError):
                return _polars_read(data, layout)
    return _csv_read(data.decode("utf-8", errors="pyflow-cp1252"), layout)


def _polars_read(data: bytes, layout: Layout) -> pl.DataFrame:
    """Parse CSV bytes with Polars, every column as text, keeping cells beyond the header.

    Polars needs the number of columns up front and refuses a row with more: it is given the
    header's and a few more, and reads again with more while it refuses; rows wider still (such
    as a row of 16,384 cells) are parsed by Python's `csv` module instead.
    """
    extra = EXTRA_COLUMNS
    while extra <= MAX_EXTRA_COLUMNS:
        names = [f"c{i}" for i in range(layout.width + extra)]
        try:
            frame = pl.read_csv(
                data,
                has_header=False,
                schema=dict.fromkeys(names, pl.String),
                separator=layout.delimiter,
                eol_char=layout.newline,
                quote_char='"',
                empty_string_is_null=False,
                missing_columns="insert",
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError as error:
            if "utf-8" in str(error).lower():
                raise
            extra *= 8
            continue
        return _with_extras(frame, names[: layout.width], names[layout.width :])
    return _csv_read(data.decode("utf-8", errors="pyflow-cp1252"), layout)


def _with_extras(frame: pl.DataFrame, named: list[str], beyond: list[str]) -> pl.DataFrame:
    """Keep the named columns, and gather each row's non-blank cells beyond them into `EXTRA`."""
    present = [pl.col(n).str.strip_chars().fill_null("") != "" for n in beyond]
    rows = frame.select(pl.any_horizontal(present)).to_series()
    extras = pl.Series(EXTRA, [None] * frame.height, dtype=pl.String)
    if rows.any():
        where = rows.arg_true()
        cells = [
            pl.when(check).then(quoted(pl.col(n))) for n, check in zip(beyond, present, strict=True)
        ]
        rendered = frame[where].select(pl.concat_str(cells, separator=",", ignore_nulls=True))
        extras = extras.scatter(where, rendered.to_series())
    return frame.select(named).with_columns(extras)


def quoted(cell: pl.Expr) -> pl.Expr:
    """Quote a cell as `csv.writer` does: when it holds a comma, a quote or a line break."""
    return (
        pl.when(cell.str.contains('[",\r\n]'))
        .then(pl.lit('"') + cell.str.replace_all('"', '""', literal=True) + pl.lit('"'))
        .otherwise(cell)
    )


def _csv_read(text: str, layout: Layout) -> pl.DataFrame:
    """Parse text with Python's `csv` module: for rows longer than the header, which Polars refuses."""
    width = layout.width
    columns: list[list[str | None]] = [[] for _ in range(width)]
    extras: list[str | None] = []
    for row in csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter):
        for index in range(width):
            columns[index].append(row[index] if index < len(row) else None)
        beyond = [cell for cell in row[width:] if cell.strip()]
        extras.append(csv_line(beyond) if beyond else None)
    frame = pl.DataFrame(
        {f"c{i}": pl.Series(values, dtype=pl.String) for i, values in enumerate(columns)}
    )
    return frame.with_columns(pl.Series(EXTRA, extras, dtype=pl.String))


def csv_line(values: list[str]) -> str:
    """Render cells as one CSV record (quoted as `csv.writer` does), without a line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()
