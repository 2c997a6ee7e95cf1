"""Read a cohort CSV exactly as written: text cells, one record per row, nothing guessed.

pandas' reader changes values on the way in: its default missing-value list turns a category
literally called ``None``, ``NA`` or ``null`` into a missing value, a row cut off mid-line becomes
a subject whose later cells are all missing, and rows with one field too many silently move the
first column into the index. This reader keeps every cell as the text it is, refuses a record
whose number of fields differs from the header's (naming its line), and says what a file is when
it is not a UTF-8 CSV (an Excel workbook, UTF-16 text, a header line too long to be one). Which
cells count as missing is ``multimodal.cohort.read_table``'s rule.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

from multimodal.errors import CohortError

MAX_HEADER_BYTES = 1 << 20  # 1 MiB: ~50,000 column names; a longer first line is not a header
SAVE_AS_CSV = "open it in Excel (or LibreOffice) and save it as 'CSV UTF-8 (comma delimited)'"
# The first bytes of files that are not text tables.
SIGNATURES = {
    b"PK\x03\x04": "an Excel workbook (.xlsx, a zip archive), not a CSV",
    b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls), not a CSV",
    b"\xff\xfe": "UTF-16 text (Excel's 'Unicode Text' or a Windows export), not UTF-8",
    b"\xfe\xff": "UTF-16 text (big-endian), not UTF-8",
}
GZIP = b"\x1f\x8b"
SEPARATORS = ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"))


def _head(path: Path) -> bytes:
    """The first ``MAX_HEADER_BYTES + 1`` bytes of the table (gunzipped when it is gzip)."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES + 1)
    return _gunzip(path, limit=MAX_HEADER_BYTES + 1) if head.startswith(GZIP) else head


def _gunzip(path: Path, limit: int = -1) -> bytes:
    """The decompressed bytes of a gzip table (the first ``limit`` of them; -1: all)."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(limit)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise CohortError(f"cohort table {path} is gzip-compressed but damaged ({err}); compress it again "
                          "or give the plain CSV") from err


def _check_head(path: Path, head: bytes) -> None:
    """Refuse a file that is not a UTF-8 text table before any parser reads it."""
    for magic, what in SIGNATURES.items():
        if head.startswith(magic):
            raise CohortError(f"cohort table {path} is {what}: {SAVE_AS_CSV}, and point 'csv' at that file")
    if b"\x00" in head:
        raise CohortError(f"cohort table {path} holds NUL bytes (UTF-16 text without a byte-order mark, or not a "
                          f"text file): {SAVE_AS_CSV}")
    if len(head) > MAX_HEADER_BYTES and not any(end in head for end in (b"\n", b"\r")):
        raise CohortError(f"cohort table {path}: its first line runs past {MAX_HEADER_BYTES // 2**20} MiB without a "
                          "line break, too long to be a header row (not a table, or a CSV whose line breaks were "
                          "lost); export the table again with one row per line")


def _text(path: Path) -> str:
    """The whole table as text (a UTF-8 byte-order mark dropped); other encodings are refused."""
    _check_head(path, _head(path))
    data = path.read_bytes()
    if data.startswith(GZIP):
        data = _gunzip(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CohortError(f"cohort table {path} is not a readable CSV: it is not UTF-8 (byte 0x{data[err.start]:02x} "
                          f"on line {line}; a Latin-1 / Windows export?): {SAVE_AS_CSV}") from err


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:3])
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (f" and {len(numbers) - 3} more" if len(numbers) > 3 else "")


def read_records(path: Path) -> tuple[list[str], list[int], list[list[str]]]:
    """``(header, lines, rows)``: the header's names (stripped), each record's first line in the file
    and its cells as written (stripped). Blank lines are skipped; anything else malformed is a
    ``CohortError`` naming the line."""
    text = _text(path)
    if not text.strip():
        raise CohortError(f"cohort table {path} is empty (not a readable CSV); export the table with its header row")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    records: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for record in reader:
            cells = [cell.strip() for cell in record]
            if any(cells):  # a blank line, or one of commas only (an empty spreadsheet row), holds nothing
                records.append(cells)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        unclosed = "unexpected end of data" in str(err) or "field larger" in str(err)
        what = ("a quote (\") opened there is never closed" if unclosed else
                "a NUL byte (part of the file is binary or UTF-16)" if "NUL" in str(err) else
                f"a stray quote ({err}): a value holding a quote must be quoted whole, with the quote doubled (\"\")")
        raise CohortError(f"cohort table {path} is not a readable CSV: the row starting on line {start}: {what}; "
                          "fix the quoting there") from err
    if not records:
        raise CohortError(f"cohort table {path} holds empty cells only (not a readable CSV); export the table with "
                          "its header row")
    if records[0][0].casefold().startswith("sep=") and len(records[0]) <= 2:
        raise CohortError(f"cohort table {path}: line {lines[0]} ({','.join(records[0])!r}) is Excel's separator hint, not a "
                          "header row; delete that line (or save the table again as 'CSV UTF-8 (comma delimited)')")
    header, rows, lines = records[0], records[1:], lines[1:]
    repeated = [line for line, row in zip(lines, rows, strict=True) if row == header]
    if repeated:
        raise CohortError(f"cohort table {path}: {_lines(repeated)} repeat{'s' if len(repeated) == 1 else ''} the "
                          "header row (tables joined one after another?); remove the repeated header lines")
    if len(header) == 1:
        for separator, name in SEPARATORS:
            if separator in header[0]:
                raise CohortError(f"cohort table {path} reads as a single column: it looks {name}-separated; "
                                  "save it as a comma-separated CSV (decimal points, not commas)")
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    if unnamed:
        cause = ("a row index written by pandas' to_csv? write the table with index=False" if unnamed == [1] else
                 "a trailing comma on every line?" if unnamed == [len(header)] else "empty header cells")
        raise CohortError(f"cohort table {path}: header field{'s' if len(unnamed) > 1 else ''} "
                          f"{', '.join(map(str, unnamed))} of {len(header)} {'have' if len(unnamed) > 1 else 'has'} no "
                          f"name ({cause}); name every column, or remove the unnamed ones")
    _check_field_counts(path, len(header), lines, rows)
    return header, lines, rows


def _check_field_counts(path: Path, width: int, lines: list[int], rows: list[list[str]]) -> None:
    """Every record must have the header's number of fields: a shorter one is a row cut off (its
    later cells would all read as missing), a longer one a stray comma (its cells would shift)."""
    longer = [(line, len(row)) for line, row in zip(lines, rows, strict=True) if len(row) > width]
    shorter = [(line, len(row)) for line, row in zip(lines, rows, strict=True) if len(row) < width]
    parts = []
    if longer:
        counts = sorted({n for _, n in longer})
        parts.append(f"{_lines([line for line, _ in longer])} {'has' if len(longer) == 1 else 'have'} "
                     f"{'/'.join(map(str, counts))} fields, more than the header's {width} (a trailing comma, or a comma "
                     "inside an unquoted value?): quote values that hold commas and remove trailing ones")
    if shorter:
        counts = sorted({n for _, n in shorter})
        parts.append(f"{_lines([line for line, _ in shorter])} {'has' if len(shorter) == 1 else 'have'} only "
                     f"{'/'.join(map(str, counts))} of the header's {width} fields (a row cut off mid-line, as in a "
                     "truncated export?): export the table again")
    if parts:
        raise CohortError(f"cohort table {path}: {'; '.join(parts)}")


def read_header(path: Path) -> list[str]:
    """The table's header names as written (stripped), without reading the rows."""
    head = _head(path)
    _check_head(path, head)
    first = head.decode("utf-8-sig", errors="replace")
    return [name.strip() for name in next(csv.reader(io.StringIO(first, newline="")), [])]
