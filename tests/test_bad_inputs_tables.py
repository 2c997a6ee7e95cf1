"""Bad tables, duplicated inputs and run settings that a later stage would refuse (round 2).

Like ``tests/test_bad_inputs.py``: each case breaks one thing in a small cohort or run config and
runs the CLI; a refusal exits 2 with one line on stderr naming what is wrong and never shows a
traceback. Handled cases check what was read (a category stays a category), and the fixed test
cohort's checks are called as ``finetune`` calls them before training. The outcomes are the rows
marked † in ``docs/robustness.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
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


def _yaml(folder: Path, text: str) -> Path:
    """A cohort.yaml written as raw text (``yaml.safe_dump`` would quote the words under test)."""
    (folder / "cohort.yaml").write_text(text)
    return folder / "cohort.yaml"


def test_yaml_words_in_na_values_and_label_map_stay_words(tmp_path):
    rows = _rows(tmp_path)
    for i, row in enumerate(rows):
        row.update(recurrence_12m=["yes", "no", "no"][i % 3], smoking=["off", "current", "no"][i % 3])
    write_cohort(tmp_path, rows)
    path = _yaml(tmp_path, "csv: cohort.csv\nimages: {flair: flair}\nlabel: recurrence_12m\n"
                           "label_map: {yes: 1, no: 0}\nna_values: [off, n/a]\n")
    cohort, problems = read_cohort(load_cohort_config(path))
    assert problems == []
    assert cohort.labels.tolist() == [1.0, 0.0, 0.0] * 4
    assert cohort.features["smoking"].isna().tolist() == [True, False, False] * 4  # 'off' only, not 'no'
    # where a setting is a switch, the same words still mean one
    from multimodal.config import ImagingConfig
    from multimodal.config_mapping import from_dict
    from multimodal.yaml_loader import load_yaml

    assert from_dict(ImagingConfig, load_yaml("augment: {enabled: off}")).augment.enabled is False
    # a key overriding one merged from an anchor is no repeated key
    assert load_yaml("a: &x {b: 1}\nc: {<<: *x, b: 2}") == {"a": {"b": 1}, "c": {"b": 2}}
    # numbers read as numbers (YAML 1.1 read 3e-4 as text and 010 as octal 8)
    assert load_yaml("[2_000, 3e-4, 010, 0x1f, -1.5, .inf]") == [2000, 3e-4, 10, 31, -1.5, float("inf")]


@pytest.mark.parametrize(("text", "expected"), [
    ("na_values: [null]", "na_values[0]: YAML reads this unquoted value as null (null, ~ or nothing), not as text; "
                          "quote it (e.g. 'null')"),
    ("na_values: [-999, false]", "na_values[1]: YAML reads this unquoted value as the boolean false"),
    ("label: recurrence_12m\nlabel: outcome", "key 'label' is given twice in one mapping (lines 3 and 4)"),
    ("images: {flair: flair, dwi: flair}", "images.dwi names column 'flair', as images.flair does"),
])
def test_cohort_yaml_values_that_would_be_misread_are_refused_with_the_fix(tmp_path, capsys, text, expected):
    write_cohort(tmp_path, _rows(tmp_path))
    path = _yaml(tmp_path, "csv: cohort.csv\n" + ("" if text.startswith("images") else "images: {flair: flair}\n")
                 + text + "\n")
    _refused(["validate", str(path)], capsys, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "is empty; a cohort config needs at least csv: FILE.csv and images:"),
    ("- csv: cohort.csv\n- images: {flair: flair}\n", "holds a list ('- item' lines), not keys"),
])
def test_a_cohort_yaml_that_is_empty_or_a_list_says_so(tmp_path, capsys, text, expected):
    _refused(["validate", str(_yaml(tmp_path, text))], capsys, expected)


# --------------------------------------------------------------------------- cause: silent duplication
def test_two_subjects_pointing_at_one_image_file_are_refused(tmp_path, capsys):
    rows = _rows(tmp_path)
    rows[7]["flair"] = "img/./s02.nii.gz"  # the same file, written another way
    (tmp_path / "img" / "link.nii.gz").symlink_to(tmp_path / "img" / "s05.nii.gz")
    rows[9]["flair"] = "img/link.nii.gz"  # and through a symbolic link
    text = _refused(["validate", str(write_cohort(tmp_path, rows))], capsys,
                    "subject s07, column 'flair': flair file s02.nii.gz is also subject s02's flair image")
    assert "subject s09, column 'flair': flair file link.nii.gz is also subject s05's flair image" in text


def test_two_sequences_of_one_subject_reading_one_file_are_refused(tmp_path, capsys):
    rows = _rows(tmp_path)
    for row in rows:
        row["dwi"] = row["flair"].replace("s", "d", 1) if row["subject_id"] != "s04" else row["flair"]
        if row["subject_id"] != "s04":
            (tmp_path / row["dwi"]).write_bytes((tmp_path / row["flair"]).read_bytes())
    path = write_cohort(tmp_path, rows, {"images": {"flair": "flair", "dwi": "dwi"}})
    _refused(["validate", str(path)], capsys,  # safe_dump sorts images: dwi comes first
             "subject s04, column 'flair': the flair and dwi cells name the same file s04.nii.gz")


def test_ids_that_differ_only_in_letter_case_are_refused(tmp_path, capsys):
    rows = _rows(tmp_path)
    rows[6]["subject_id"] = "S01"
    _refused(["validate", str(write_cohort(tmp_path, rows))], capsys,
             "subject S01, column 'subject_id': id differs from 's01' (row 3) only in letter case (row 8)")


# --------------------------------------------------------------------------- more label and number spellings
def test_labels_coded_1_and_2_are_refused_as_a_column_not_half_read(tmp_path, capsys):
    rows = _rows(tmp_path)
    for row in rows:
        row["recurrence_12m"] = int(row["recurrence_12m"]) + 1
    text = _refused(["validate", str(write_cohort(tmp_path, rows))], capsys,
                    "column 'recurrence_12m': labels are coded 1/2 (8 and 4 subjects), not 0/1; say which value is "
                    "the event with label_map, e.g. label_map: {1: 0, 2: 1}")
    assert "label '2' is not one of" not in text


def test_labels_written_as_other_spellings_of_0_and_1_are_read(tmp_path):
    rows = _rows(tmp_path)
    for i, row in enumerate(rows):
        row["recurrence_12m"] = ["1.00", " 0 ", "+1", "0.000"][i % 4]
    cohort, problems = read_cohort(load_cohort_config(write_cohort(tmp_path, rows)))
    assert problems == [] and cohort.labels.tolist() == [1.0, 0.0, 1.0, 0.0] * 3


# --------------------------------------------------------------------------- cause: validate misses what a stage refuses
def _run_config(folder: Path) -> Path:
    """A run config that ``validate`` passes on the 12-subject cohort."""
    cohort = write_cohort(folder, _rows(folder))
    run = folder / "run.yaml"
    run.write_text(yaml.safe_dump({"cohort": str(cohort), "finetune": {"folds": 2},
                                   "pretrain": {"batch_size": 4, "rows": "all", "val_fraction": 0.25}}))
    return run


SETTINGS = [
    ("imaging.spacing=[0.3, 1, 1]", "imaging.spacing[0]: 0.3 mm is below 0.5 mm; use a value in [0.5, 30] mm"),
    ("imaging.spacing=[2, .nan, 2]", "imaging.spacing[1]: nan is not a finite number"),
    ("imaging.spacing=[2, 2, .inf]", "imaging.spacing[2]: inf is not a finite number"),
    ("imaging.spacing=[-2, 2, 2]", "imaging.spacing[0]: -2 mm is below 0.5 mm"),
    ("imaging.spatial_size=[4, 16, 16]", "imaging.spatial_size[0]: 4 voxels is below 8 voxels"),
    ("imaging.head_margin_mm=-1", "imaging.head_margin_mm: -1 mm is below 0 mm"),
    ("imaging.orientation=RAR", "imaging.orientation: 'RAR' is not an orientation code"),
    ("imaging.augment.flip_prob=2", "imaging.augment.flip_prob: 2 is above 1"),
    ("imaging.augment.gamma_range=[1.5, 0.7]", "imaging.augment.gamma_range[1]: 0.7 is below 1.5"),
    ("imaging.sequences=[flair, flair]", "imaging.sequences ['flair', 'flair']: ['flair'] listed more than once"),
    ("seed=-1", "seed: -1 is below 0; use a value in [0, 4294967295]"),
    ("seed=1.5", "seed must be a int, got 1.5 (from --set seed=1.5)"),
    ("pretrain.lr=-0.001", "pretrain.lr: -0.001 is below 0; use a value in (0, 1]"),
    ("pretrain.lr=.nan", "pretrain.lr: nan is not a finite number"),
    ("pretrain.batch_size=1", "pretrain.batch_size: 1 is below 2"),
    ("pretrain.objectives={clip: 0}", "every weight is 0, so nothing would be learned"),
    ("pretrain.grad_clip=-1", "pretrain.grad_clip: -1 is below 0"),
    ("finetune.lr=.nan", "finetune.lr: nan is not a finite number"),
    ("finetune.bootstrap=0", "finetune.bootstrap: 0 is below 100"),
    ("finetune.folds=1", "finetune.folds: 1 is below 2"),
    ("finetune.dropout=1", "finetune.dropout: 1 is not below 1"),
    ("finetune.loss=focall", "finetune.loss: 'focall' is not one of"),
    ("finetune.threshold=sensitivity", "finetune.target_sensitivity: None is not a finite number"),
    ("model.encoders.imgae.name=resnet3d_10", "model.encoders.imgae: no modality 'imgae'; did you mean 'image'?"),
    ("model.encoders.image.name=resnet3d_81", "model.encoders.image.name: 'resnet3d_81' is not an image encoder; "
                                             "did you mean 'resnet3d_18'?"),
]


@pytest.mark.parametrize(("override", "expected"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_validate_refuses_every_run_setting_a_stage_would_refuse(tmp_path, capsys, override, expected):
    run = _run_config(tmp_path)
    assert main(["validate", str(run)]) == 0
    capsys.readouterr()
    _refused(["validate", str(run), "--set", override], capsys, expected)


def test_a_cache_or_run_folder_that_is_a_file_is_refused_by_validate(tmp_path, capsys):
    run = _run_config(tmp_path)
    (tmp_path / "taken").write_text("a file")
    _refused(["validate", str(run), "--set", f"data.cache_dir={tmp_path / 'taken'}"], capsys,
             f"data.cache_dir: {tmp_path / 'taken'} cannot be a folder")
    _refused(["validate", str(run), "--set", f"run.dir={tmp_path / 'taken' / 'run'}"], capsys,
             f"run.dir: {tmp_path / 'taken' / 'run'} cannot be a folder ({tmp_path / 'taken'} is a file)")



def _test_cohort(folder: Path, development: Path, copy_images: bool) -> Path:
    """The development table again under reformatted ids (s01 -> S-1), as a second centre's export."""
    import shutil

    rows = _rows(development)
    for row in rows:
        row["subject_id"] = "S-" + str(int(row["subject_id"][1:]))
        source = development / row["flair"]
        if copy_images:
            (folder / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / row["flair"])
        else:
            row["flair"] = str(source)
    return write_cohort(folder, rows)


@pytest.mark.parametrize(("copy_images", "expected"), [
    (False, "12 of its 12 subjects read image files of development subjects (test S-0 = development s00, "
            "test S-1 = development s01, test S-2 = development s02 and 9 more)"),
    (True, "12 of its 12 subjects have a clinical row identical to a development subject's (test S-0 = development s00"),
])
def test_a_test_cohort_that_is_the_development_cohort_again_is_refused(tmp_path, copy_images, expected):
    from finetune.test_cohort import check_test_cohort, load_test_cohort
    from multimodal.cohort import load_cohort
    from multimodal.errors import CohortError

    development = load_cohort(load_cohort_config(write_cohort(tmp_path / "dev", _rows(tmp_path / "dev"))))
    test = load_test_cohort(_test_cohort(tmp_path / "test", tmp_path / "dev", copy_images))
    with pytest.raises(CohortError) as refused:
        check_test_cohort(test, development, ["flair"])
    assert expected in str(refused.value) and "a fixed test cohort must hold other patients" in str(refused.value)


def test_a_few_chance_matches_with_the_development_cohort_are_warned_in_counts(tmp_path, caplog):
    from finetune.test_cohort import check_test_cohort, load_test_cohort
    from multimodal.cohort import load_cohort

    development = load_cohort(load_cohort_config(write_cohort(tmp_path / "dev", _rows(tmp_path / "dev"))))
    rows = _rows(tmp_path / "test")
    for i, row in enumerate(rows):
        row["subject_id"] = f"t{i:02d}" if i else "S-00"  # one id alike to the development's s00
        row["age"] = row["age"] + (30 if i else 0)  # one clinical row identical to a development subject's
    check_test_cohort(load_test_cohort(write_cohort(tmp_path / "test", rows)), development, ["flair"])
    assert "shares 0 subject ids with the development cohort (1 once letter case, separators and leading zeros " \
           "are ignored) and 1 identical clinical rows" in caplog.text
    assert "s00" not in caplog.text and "S-00" not in caplog.text  # counts only: no subject ids in the log


@pytest.mark.parametrize(("first", "second", "alike"), [
    ("sub-0001", "SUB_1", True), ("S-00", "s00", True), ("p007a", "P-7-A", True),
    ("sub-0102", "sub-1002", False), ("sub-0102", "sub-0012", False), ("sub-1200", "sub-0012", False),
])
def test_ids_are_alike_only_up_to_case_separators_and_leading_zeros(first, second, alike):
    from finetune.test_cohort import _plain_id

    assert (_plain_id(first) == _plain_id(second)) is alike


def test_thousands_separators_are_named_as_such(tmp_path, capsys):
    rows = _rows(tmp_path)
    for i, row in enumerate(rows):
        row["platelets"] = f'"{i + 1},{200 + i}"' if i % 2 else str(180 + i)  # "2,201": a quoted field with a comma
    _refused(["validate", str(write_cohort(tmp_path, rows))], capsys,
             "column 'platelets': holds numbers with a comma, thousands separators or decimal commas")


@pytest.mark.parametrize(("index", "expected"), [
    (True, "header field 1 of 7 has no name (a row index written by pandas' to_csv? write the table with index=False)"),
    (False, "header field 7 of 7 has no name (a trailing comma on every line?)"),
])
def test_an_unnamed_column_is_refused_naming_its_likely_cause(tmp_path, capsys, index, expected):
    cells = _good_cells(tmp_path)
    rows = [[str(i - 1) if i else "", *row] if index else [*row, ""] for i, row in enumerate(cells)]
    _refused(["validate", str(_table(tmp_path, rows))], capsys, expected)


def test_a_missing_value_marker_that_is_also_a_label_value_is_refused(tmp_path, capsys):
    rows = _rows(tmp_path)  # labels 0/1; 0 declared missing for some feature would unlabel every control
    _refused(["validate", str(write_cohort(tmp_path, rows, {"na_values": [0, -999]}))], capsys,
             "column 'recurrence_12m': na_values ['0'] is also a label value here (8 subjects): na_values apply to "
             "every column")
    rows[2]["recurrence_12m"] = "unknown"  # a marker that is no label value still means unlabeled
    cohort, problems = read_cohort(load_cohort_config(write_cohort(tmp_path, rows, {"na_values": ["unknown"]})))
    assert problems == [] and np.isnan(cohort.labels[2]) and cohort.labeled.sum() == 11


def test_an_undeclared_missing_value_code_in_a_numeric_column_is_warned(tmp_path, capsys):
    rows = _rows(tmp_path)
    rows[5]["age"] = -999
    assert main(["validate", str(write_cohort(tmp_path, rows))]) == 0
    assert ("column 'age': holds -999 in 1 row(s), far outside its other values (60 .. 71): a missing-value code? "
            "declare it (na_values: [-999])") in capsys.readouterr().out


def test_validate_names_the_input_files_a_run_config_lacks(tmp_path, capsys):
    run = _run_config(tmp_path)
    text = _refused(["validate", str(run), "--set", f"model.encoders.image.weights={tmp_path / 'medicalnet.safetensors'}",
                     "--set", f"finetune.test_cohort={tmp_path / 'test' / 'cohort.yaml'}"], capsys,
                    f"model.encoders.image.weights: {tmp_path / 'medicalnet.safetensors'} does not exist")
    assert f"finetune.test_cohort: {tmp_path / 'test' / 'cohort.yaml'} does not exist" in text


def test_label_map_keys_that_are_one_label_once_case_is_ignored_are_refused(tmp_path, capsys):
    write_cohort(tmp_path, _rows(tmp_path))
    path = _yaml(tmp_path, "csv: cohort.csv\nimages: {flair: flair}\nlabel_map: {Yes: 1, 'yes ': 0, no: 0}\n")
    _refused(["validate", str(path)], capsys, "label_map names 'Yes' and 'yes ', one label once case and spaces are "
             "ignored (as labels are matched); keep one of them")


def test_joined_exports_and_excel_leftovers(tmp_path, capsys):
    path = write_cohort(tmp_path, _rows(tmp_path))
    table = tmp_path / "cohort.csv"
    good = table.read_text()
    lines = good.splitlines()
    table.write_text("\n".join([*lines[:7], lines[0], *lines[7:]]) + "\n")  # a second export appended
    _refused(["validate", str(path)], capsys, "line 8 repeats the header row (tables joined one after another?)")
    table.write_text("sep=,\n" + good)  # Excel's separator hint
    _refused(["validate", str(path)], capsys, "line 1 ('sep=,') is Excel's separator hint, not a header row")
    table.write_text(",,,,,\n" * 3)  # an export of an empty sheet
    _refused(["validate", str(path)], capsys, "holds empty cells only (not a readable CSV)")
    table.write_text(good + ",,,,,\n,,,,,\n")  # empty spreadsheet rows at the end hold nothing: skipped
    assert main(["validate", str(path)]) == 0
