"""Bad tables, duplicated inputs and run settings that a later stage would refuse (round 2).

Like ``tests/test_bad_inputs.py``: each case breaks one thing in a small cohort or run config and
runs the CLI; a refusal exits 2 with one line on stderr naming what is wrong and never shows a
traceback. The outcomes are the rows marked † in ``docs/robustness.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from conftest import write_cohort
from test_bad_inputs import _csv, _rows

from multimodal.cohort import read_cohort
from multimodal.config import load_cohort_config
from strokessl.cli import main


def _refused(argv: list[str], capsys, expected: str) -> str:
    """Run the CLI, expect exit 2 and ``expected`` in the output; return the output."""
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text[-2000:]
    assert expected in text, text[-2000:]
    assert "Traceback" not in text
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return text


def _table(folder: Path, rows: list[list[str]], config: dict | None = None) -> Path:
    """``cohort.csv`` from rows of cells (quoted where needed) and a cohort.yaml."""
    with open(folder / "cohort.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    data = {"csv": "cohort.csv", "images": {"flair": "flair"}, **(config or {})}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(data))
    return folder / "cohort.yaml"


def _good_cells(folder: Path) -> list[list[str]]:
    rows = _rows(folder)
    header = list(rows[0])
    return [header] + [[str(row[c]) for c in header] for row in rows]


# --------------------------------------------------------------------------- cause: readers that change values
def test_a_row_cut_off_mid_line_is_refused_naming_its_line(tmp_path, capsys):
    path = write_cohort(tmp_path, _rows(tmp_path))
    table = tmp_path / "cohort.csv"
    text = table.read_text()
    table.write_text(text[:text.rindex(",", 0, len(text) - 1)] + "\n")  # the last row loses its last field
    _refused(["validate", str(path)], capsys, "line 13 has only 5 of the header's 6 fields (a row cut off mid-line")


def test_one_trailing_field_too_many_is_refused_not_shifted(tmp_path, capsys):
    cells = _good_cells(tmp_path)
    _table(tmp_path, [cells[0]] + [[*row, ""] for row in cells[1:]])
    _refused(["validate", str(tmp_path / "cohort.yaml")], capsys,
             "lines 2, 3, 4 and 9 more have 7 fields, more than the header's 6 (a trailing comma")


@pytest.mark.parametrize("word", ["None", "NA", "null", "N/A", "nan", "n/a"])
def test_a_category_spelled_like_a_missing_marker_stays_a_category(tmp_path, word):
    cells = _good_cells(tmp_path)
    header = cells[0] + ["smoking"]
    rows = [[*row, word if i % 2 else "current"] for i, row in enumerate(cells[1:])]
    cohort, problems = read_cohort(load_cohort_config(_table(tmp_path, [header, *rows])))
    assert problems == []
    assert cohort.features["smoking"].notna().all()
    assert sorted(set(cohort.features["smoking"])) == sorted({word, "current"})


def test_missing_means_an_empty_cell_or_a_declared_marker_only(tmp_path):
    cells = _good_cells(tmp_path)
    cells[1][cells[0].index("sex")] = ""
    cells[2][cells[0].index("sex")] = "not recorded"
    cells[3][cells[0].index("sex")] = "None"
    cohort, problems = read_cohort(load_cohort_config(_table(tmp_path, cells, {"na_values": ["not recorded"]})))
    assert problems == []
    assert cohort.features["sex"].isna().tolist()[:3] == [True, True, False]


def test_an_unclosed_quote_is_refused_naming_the_line_it_opens(tmp_path, capsys):
    path = write_cohort(tmp_path, _rows(tmp_path))
    table = tmp_path / "cohort.csv"
    lines = table.read_text().splitlines()
    lines[5] = lines[5].replace(",M", ',"M', 1).replace(",F", ',"F', 1)
    table.write_text("\n".join(lines) + "\n")
    _refused(["validate", str(path)], capsys, "the row starting on line 6: a quote (\") opened there is never closed")


def test_a_quoted_newline_keeps_the_table_and_its_line_numbers(tmp_path, capsys):
    cells = _good_cells(tmp_path)
    header = cells[0] + ["report"]
    rows = [[*row, "small infarct\nleft MCA" if i == 0 else "normal"] for i, row in enumerate(cells[1:])]
    path = _table(tmp_path, [header, *rows], {"text": ["report"]})
    cohort, problems = read_cohort(load_cohort_config(path))
    assert problems == [] and len(cohort.ids) == 12 and cohort.text["report"].iloc[0] == "small infarct\nleft MCA"
    rows[4][0] = ""  # the 5th subject's record starts on line 7 (line 2 holds two lines)
    _refused(["validate", str(_table(tmp_path, [header, *rows], {"text": ["report"]}))], capsys,
             "row 7 of cohort.csv has an empty id")


@pytest.mark.parametrize(("start", "expected"), [
    (b"PK\x03\x04\x14\x00\x06\x00", "is an Excel workbook (.xlsx, a zip archive), not a CSV: open it in Excel"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "is an old Excel workbook (.xls), not a CSV"),
])
def test_a_workbook_given_as_csv_says_what_it_is_and_how_to_save_it(tmp_path, capsys, start, expected):
    path = _csv(tmp_path, "")
    (tmp_path / "cohort.csv").write_bytes(start + bytes(range(256)) * 4)
    assert "and save it as 'CSV UTF-8 (comma delimited)'" in _refused(["validate", str(path)], capsys, expected)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_text_says_so(tmp_path, capsys, encoding):
    path = write_cohort(tmp_path, _rows(tmp_path))
    table = tmp_path / "cohort.csv"
    table.write_bytes(table.read_text().encode(encoding))
    expected = "UTF-16 text" if encoding == "utf-16" else "holds NUL bytes (UTF-16 text without a byte-order mark"
    text = _refused(["validate", str(path)], capsys, expected)
    assert "save it as 'CSV UTF-8 (comma delimited)'" in text


def test_a_header_line_too_long_to_be_real_is_refused_before_parsing(tmp_path, capsys):
    path = _csv(tmp_path, "")
    with open(tmp_path / "cohort.csv", "wb") as handle:
        handle.write(b"subject_id,flair," + b"x" * (1 << 20) + b",age")  # no line break anywhere
    _refused(["validate", str(path)], capsys, "too long to be a header row")


def test_a_tilde_in_an_image_cell_is_not_expanded(tmp_path, capsys, monkeypatch):
    rows = _rows(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / rows[3]["flair"]).rename(home / "s03.nii.gz")
    monkeypatch.setenv("HOME", str(home))
    rows[3]["flair"] = "~/s03.nii.gz"
    path = write_cohort(tmp_path, rows)
    _refused(["validate", str(path)], capsys, "subject s03, column 'flair': image path '~/s03.nii.gz' starts with '~', "
             "which is not expanded in the cohort table; write the absolute path")


def test_a_gzip_compressed_table_reads_and_a_damaged_one_is_refused(tmp_path, capsys):
    import gzip

    path = write_cohort(tmp_path, _rows(tmp_path))
    table = tmp_path / "cohort.csv"  # named .csv: found by its content, not by its name
    data = gzip.compress(table.read_bytes())
    table.write_bytes(data)
    assert main(["validate", str(path)]) == 0
    table.write_bytes(data[: len(data) // 2])
    _refused(["validate", str(path)], capsys, "is gzip-compressed but damaged")
