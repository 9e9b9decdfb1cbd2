"""Tests of reading CSV bytes as states write them, and of cutting them at record boundaries."""

from __future__ import annotations

import csv
import io
import itertools
import random
import sys
from pathlib import Path

import pytest

from pyflow.warn import reading
from pyflow.warn.errors import SourceError

csv.field_size_limit(sys.maxsize)


def layout_of(path: Path, encoding: str = "utf-8-sig") -> reading.Layout:
    """Read a file's layout."""
    return reading.read_layout(str(path), encoding, path.name)


def rows_of(path: Path, layout: reading.Layout, start: int, end: int) -> list[list[str]]:
    """Read a byte range into rows shaped as `csv_rows` shapes the csv module's."""
    frame = reading.read_records(str(path), layout, start, end)
    return [
        [cell or "" for cell in row[: layout.width]] + ([row[-1]] if row[-1] else [])
        for row in frame.iter_rows()
    ]


def csv_rows(path: Path, layout: reading.Layout, encoding: str = "utf-8") -> list[list[str]]:
    """What the csv module reads after the header, shaped as `rows_of` returns it."""
    text = path.read_bytes()[layout.data_start :].decode(encoding)
    found = []
    for row in csv.reader(io.StringIO(text, newline="")):
        cells = (row + [""] * layout.width)[: layout.width]
        beyond = [cell for cell in row[layout.width :] if cell.strip()]
        found.append(cells + ([reading.csv_line(beyond)] if beyond else []))
    return found


def nasty(path: Path, rows: int, seed: int = 7) -> Path:
    """Write a CSV file of quoted line breaks, short and long rows, blanks and a 1 MB field."""
    rng = random.Random(seed)
    lines = ["Company,Notice Date,Jobs,City,Notes"]
    for i in range(rows):
        kind = rng.randrange(8)
        note = rng.choice(["plain", '"line\nbreak, and comma"', '"say ""hi""\r\nthere"', ""])
        if kind == 0:
            lines.append(f'"Firm {i}\nSuite {i}",1/{1 + i % 28}/2024,{i},Town,{note}')
        elif kind == 1:
            lines.append(f"Firm {i},1/2/2024,{i}")
        elif kind == 2:
            lines.append(f"Firm {i},1/2/2024,{i},Town,{note},,,")
        elif kind == 3:
            lines.append(f"Firm {i},1/2/2024,{i},Town,{note},beyond")
        elif kind == 4:
            lines.append("")
        else:
            lines.append(f"Firm {i},1/{1 + i % 28}/2024,{i},Town {i % 5},{note}")
    lines.insert(rows // 2, f'Big Firm,1/2/2024,5,Town,"{"x" * (1 << 20)}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_layout_finds_the_header_line_ends_and_byte_order_mark(tmp_path: Path) -> None:
    """The header is the first record; a BOM is skipped; bare carriage returns end lines."""
    path = tmp_path / "pa.csv"
    path.write_bytes(b'\xef\xbb\xbfcompany,"address\rfull",jobs\rAcme,"1 Main St\r, Town",5\r')
    layout = layout_of(path)
    assert layout.header == ("company", "address\rfull", "jobs")
    assert layout.newline == "\r"
    assert layout.data_start == len(b'\xef\xbb\xbfcompany,"address\rfull",jobs\r')


def test_read_layout_trims_a_header_padded_with_empty_cells(tmp_path: Path) -> None:
    """Texas pads its header to 16,384 cells: the empty ones at the end are not columns."""
    path = tmp_path / "tx.csv"
    path.write_text("NOTICE_DATE,JOB_SITE_NAME" + "," * 16382 + "\n2022-03-01,Amentum\n")
    assert layout_of(path).header == ("NOTICE_DATE", "JOB_SITE_NAME")


def test_read_layout_skips_title_lines_above_the_header_and_reports_them(tmp_path: Path) -> None:
    """A spreadsheet's title, date and blank lines above the header are not taken for it."""
    path = tmp_path / "ak.csv"
    path.write_text(
        "Alaska WARN Notices,,,\n\nLast updated:,11/29/2026,,\n"
        "Company,Location,Notice Date,Employees Affected\n"
        "Acme,Juneau,1/2/2024,5\nBeta,Nome,2/3/2024,\n"
    )
    layout = layout_of(path)
    assert layout.header == ("Company", "Location", "Notice Date", "Employees Affected")
    assert layout.above_header == ("Alaska WARN Notices,,,", "Last updated:,11/29/2026,,")
    assert layout.report() == {"lines_above_header": list(layout.above_header)}
    assert rows_of(path, layout, layout.data_start, layout.size) == [
        ["Acme", "Juneau", "1/2/2024", "5"],
        ["Beta", "Nome", "2/3/2024", ""],
    ]


def test_read_layout_takes_a_two_column_header_when_the_rows_fill_two(tmp_path: Path) -> None:
    """Two named columns over rows of two are a header, not a title line."""
    path = tmp_path / "two.csv"
    path.write_text("Company,Date\nAcme,1/2/2024\nBeta,\n")
    layout = layout_of(path)
    assert (layout.header, layout.above_header) == (("Company", "Date"), ())


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_read_layout_finds_the_delimiter_the_rows_use(tmp_path: Path, delimiter: str) -> None:
    """Semicolons, tabs or bars split a source that uses them; rows read as the csv module does."""
    path = tmp_path / "x.csv"
    lines = [["Company", "City", "Notes", "Jobs"], ["Acme, Inc.", "Salem", "a, b; c", "5"]]
    lines += [["Beta", "Bristol", "multi\nline", "1,234"], ["Gamma", "", "", ""]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter, lineterminator="\r\n").writerows(lines)
    layout = layout_of(path)
    assert (layout.delimiter, layout.header) == (delimiter, tuple(lines[0]))
    assert layout.report() == {"delimiter": delimiter}
    assert rows_of(path, layout, layout.data_start, layout.size) == lines[1:]


def test_read_layout_keeps_commas_when_some_cells_hold_semicolons(tmp_path: Path) -> None:
    """A comma file whose notes are full of semicolons is still split at its commas."""
    path = tmp_path / "x.csv"
    path.write_text('Company,Notes,Jobs\nAcme,"a; b; c; d; e",5\nBeta,x;y;z;w,2\nGamma,,3\n')
    layout = layout_of(path)
    assert (layout.delimiter, layout.header, layout.report()) == (
        ",",
        ("Company", "Notes", "Jobs"),
        {},
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty: it needs a header row"),
        (b"\n\n", "is empty: it needs a header row"),
        (b"PK\x03\x04\x00\x00binary", "is not a CSV file"),
        (
            "Company\tCity\nAcme\tSalem\n".encode("utf-16"),
            "is UTF-16 text .* save it as 'CSV UTF-8'",
        ),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "is an HTML or XML page"),
    ],
)
def test_read_layout_refuses_what_is_not_a_csv_file(
    tmp_path: Path, data: bytes, message: str
) -> None:
    """An empty, binary or UTF-16 file, or a web page, fails with what it is and what to do."""
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    with pytest.raises(SourceError, match=message):
        layout_of(path)


def test_read_records_reads_what_the_csv_module_reads(tmp_path: Path) -> None:
    """Quoted line breaks, short and long rows, blank lines and a 1 MB field, as csv reads them."""
    path = nasty(tmp_path / "nasty.csv", 2_000)
    layout = layout_of(path)
    got = rows_of(path, layout, layout.data_start, layout.size)
    assert got == csv_rows(path, layout)
    assert max(len(cell) for row in got for cell in row) == 1 << 20
    assert any(row[-1] == "beyond" for row in got)


def test_read_records_reads_a_row_far_wider_than_the_header(tmp_path: Path) -> None:
    """A row of 16,384 cells (Texas has some) is read; its non-blank extra cells are kept."""
    path = tmp_path / "wide.csv"
    path.write_text("A,B\n1,2" + "," * 9000 + "late" + "," * 7000 + "\n3,4\n")
    layout = layout_of(path)
    assert rows_of(path, layout, layout.data_start, layout.size) == [["1", "2", "late"], ["3", "4"]]


def test_read_records_reads_bytes_that_are_not_utf8_as_windows_1252(tmp_path: Path) -> None:
    """A file that is mostly UTF-8 with some Windows-1252 bytes keeps every character."""
    path = tmp_path / "mixed.csv"
    path.write_bytes("Company\nCafé Uno\n".encode() + "Caf\xe9 Dos\n".encode("cp1252"))
    layout = layout_of(path)
    assert rows_of(path, layout, layout.data_start, layout.size) == [["Café Uno"], ["Café Dos"]]


def test_read_records_decodes_a_named_encoding_and_names_a_wrong_one(tmp_path: Path) -> None:
    """#encoding=cp1252 reads a Windows-1252 file; naming ASCII for bytes that are not fails."""
    path = tmp_path / "cp.csv"
    path.write_bytes("Company\nCafé “Uno”\n".encode("cp1252"))
    layout = layout_of(path, "cp1252")
    assert rows_of(path, layout, layout.data_start, layout.size) == [["Café “Uno”"]]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Company\nCaf\xe9\n".encode("cp1252"))
    ascii_layout = layout_of(latin, "ascii")
    with pytest.raises(SourceError, match=r"is not valid ascii .*name its encoding"):
        reading.read_records(str(latin), ascii_layout, ascii_layout.data_start, ascii_layout.size)


@pytest.mark.parametrize("size", [7_000, 9_973, 15_000, 30_011, 64_000, 250_000, 1_500_000])
def test_record_ranges_never_cut_a_record(tmp_path: Path, size: int) -> None:
    """Ranges of any size start at a record: read one by one, they give every row, in order."""
    path = nasty(tmp_path / "nasty.csv", 3_000, seed=size)
    layout = layout_of(path)
    ranges = reading.record_ranges(str(path), layout, size)
    assert ranges[0][0] == layout.data_start and ranges[-1][1] == layout.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    pieces = [row for start, end in ranges for row in rows_of(path, layout, start, end)]
    assert pieces == csv_rows(path, layout)
    if size < layout.size / 2:
        assert len(ranges) > 1


def test_sample_end_stops_at_a_whole_record(tmp_path: Path) -> None:
    """The sample covers whole records only, even when a quoted line break straddles its end."""
    path = nasty(tmp_path / "nasty.csv", 3_000)
    layout = layout_of(path)
    end = reading.sample_end(str(path), layout, 50_000)
    assert end <= layout.data_start + 50_000
    whole = csv_rows(path, layout)
    sample = rows_of(path, layout, layout.data_start, end)
    assert sample == whole[: len(sample)] and len(sample) > 100


@pytest.mark.parametrize("newline", ["\n", "\r"])
def test_header_records_finds_whole_records_outside_quotes(tmp_path: Path, newline: str) -> None:
    """Lines holding a cue word are found where a record starts, not inside a quoted cell or with digits."""
    lines = [
        "Company,City,Date",
        "Acme,Topeka,1/2/2020",
        '"Brick',
        'Employer Name,City,Date",Wichita,2/3/2020',
        "Employer Name,Town,Received",
        "Cedar 2 Company,Salina,3/4/2021",
    ]
    path = tmp_path / "two.csv"
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    layout = reading.read_layout(str(path), "utf-8", "two")
    found = reading.header_records(str(path), layout, (b"employer", b"company"))
    data = path.read_bytes()
    [(start, end, cells)] = found
    assert cells == ["Employer Name", "Town", "Received"]
    assert data[start:end] == f"Employer Name,Town,Received{newline}".encode()
    assert reading.record_numbers(str(path), layout, [start]) == [3]


@pytest.mark.parametrize("scan", [1, 7, 1 << 23])
def test_header_records_reads_a_header_over_quoted_line_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan: int
) -> None:
    """A header whose cell holds a line break is one record, found whatever the chunk size."""
    monkeypatch.setattr(reading, "SCAN_BYTES", scan)
    text = (
        'Company,City,Date\nAcme,Topeka,1/2/2020\n\nEmployer Name,"Number of\nWorkers",Date\n'
        'Brick,"4\n5",2/3/2020\nEmployer Name,"Number of\nWorkers",Date'
    )
    path = tmp_path / "two.csv"
    path.write_text(text, encoding="utf-8")
    layout = reading.read_layout(str(path), "utf-8", "two")
    found = reading.header_records(str(path), layout, (b"employer",))
    assert [cells for _, _, cells in found] == [["Employer Name", "Number of\nWorkers", "Date"]] * 2
    starts = [start for start, _, _ in found]
    assert found[1][1] == len(text)
    assert reading.record_numbers(str(path), layout, starts) == [3, 5]
