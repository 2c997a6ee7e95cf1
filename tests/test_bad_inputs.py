"""Bad inputs from real exports: each one is a one-line refusal (exit 2) or a documented handling.

Every case builds a small cohort, breaks one thing and runs ``strokessl validate`` through the CLI:
a refusal must exit 2, name what is wrong in the report, and never show a library traceback; a
handled case must pass. The same table, with the outcome in words, is ``docs/robustness.md``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import write_cohort, write_nifti

from strokessl.cli import main

N = 12


def _image(seed: int) -> np.ndarray:
    data = np.zeros((10, 10, 8), np.float32)
    data[2:8, 2:8, 1:7] = 100 + 10 * np.random.default_rng(seed).normal(size=(6, 6, 6))
    return data


def _rows(folder: Path) -> list[dict]:
    rows = []
    for i in range(N):
        write_nifti(folder / "img" / f"s{i:02d}.nii.gz", _image(i), np.diag([2.0, 2.0, 3.0, 1.0]))
        rows.append({"subject_id": f"s{i:02d}", "flair": f"img/s{i:02d}.nii.gz", "recurrence_12m": (i % 3 == 0 and 1) or 0,
                     "age": 60 + i, "glucose": round(5 + 0.1 * i, 1), "sex": "MF"[i % 2]})
    return rows


def _csv(folder: Path, text: str, config: dict | None = None) -> Path:
    (folder / "cohort.csv").write_text(text)
    data = {"csv": "cohort.csv", "images": {"flair": "flair"}, **(config or {})}
    (folder / "cohort.yaml").write_text(yaml.safe_dump(data))
    return folder / "cohort.yaml"


def _edit(change, config: dict | None = None):
    """A case that edits the good rows (and the folder) before writing the cohort."""
    def build(folder: Path) -> Path:
        rows = _rows(folder)
        change(rows, folder)
        return write_cohort(folder, rows, config)
    return build


def _set(row: int, column: str, value):
    def change(rows, folder):
        rows[row][column] = value
    return change


AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _replace_image(data: np.ndarray | None = None, affine: np.ndarray = AFFINE, raw: bytes | None = None):
    def change(rows, folder):
        path = folder / rows[3]["flair"]
        if raw is not None:
            path.write_bytes(raw)
        else:
            nib.save(nib.Nifti1Image(data, affine), str(path))
    return change


def _zero_voxel_size(rows, folder):
    image = nib.Nifti1Image(_image(3), None)
    image.header["pixdim"][1:4] = [0.0, 2.0, 3.0]  # no qform / sform and a zero voxel size
    nib.save(image, str(folder / rows[3]["flair"]))


def _singular_sform(rows, folder):
    image = nib.Nifti1Image(_image(3), None)
    image.header.set_sform(np.diag([0.0, 2.0, 3.0, 1.0]), code=1)  # an sform that collapses one axis
    nib.save(image, str(folder / rows[3]["flair"]))


def _nan_image():
    data = _image(3)
    data[5, 5, 4] = np.nan
    return _replace_image(data)


def _no_geometry(rows, folder):
    image = nib.Nifti1Image(_image(3), None)  # qform and sform codes 0
    nib.save(image, str(folder / rows[3]["flair"]))


def _header_only(folder):
    return _csv(folder, "subject_id,flair,recurrence_12m,age\n")


def _duplicate_header(folder):
    _rows(folder)
    lines = ["subject_id,flair,recurrence_12m,age,age"] + [f"s{i:02d},img/s{i:02d}.nii.gz,{i % 2},{60 + i},{61 + i}"
                                                          for i in range(N)]
    return _csv(folder, "\n".join(lines) + "\n")


def _semicolons(folder):
    _rows(folder)
    lines = ["subject_id;flair;recurrence_12m;glucose"] + [f"s{i:02d};img/s{i:02d}.nii.gz;{i % 2};5,{i}" for i in range(N)]
    return _csv(folder, "\n".join(lines) + "\n")


def _decimal_commas(folder):
    _rows(folder)
    lines = ["subject_id,flair,recurrence_12m,glucose"] + [f's{i:02d},img/s{i:02d}.nii.gz,{i % 2},"5,{i}"' for i in range(N)]
    return _csv(folder, "\n".join(lines) + "\n")


def _byte_order_mark(folder):
    rows = _rows(folder)
    path = write_cohort(folder, rows)
    csv = folder / "cohort.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # Excel's "CSV UTF-8"
    return path


def _latin1(folder):
    rows = _rows(folder)
    path = write_cohort(folder, rows)
    csv = folder / "cohort.csv"
    csv.write_bytes(csv.read_bytes().replace(b",M\n", b",M\xe9\n", 1))  # a latin-1 byte
    return path


def _empty_file(folder):
    return _csv(folder, "")


def _many_columns(folder):
    rows = _rows(folder)
    rng = np.random.default_rng(0)
    for row in rows:
        row.update({f"lab_{j:04d}": round(float(rng.normal()), 3) for j in range(2000)})
    return write_cohort(folder, rows)


def _crlf(folder):
    path = write_cohort(folder, _rows(folder))
    csv = folder / "cohort.csv"
    csv.write_bytes(csv.read_bytes().replace(b"\n", b"\r\n"))
    return path


# (name, builder, expected exit code, text the report or error must contain)
CASES = [
    ("duplicate column header", _duplicate_header, 2, "duplicate column names ['age']"),
    ("header-only CSV", _header_only, 2, "no subject rows"),
    ("empty file", _empty_file, 2, "not a readable CSV"),
    ("semicolon-separated CSV", _semicolons, 2, "semicolon-separated"),
    ("decimal commas", _decimal_commas, 2, "decimal commas"),
    ("stray text in a numeric column", _edit(_set(4, "glucose", "12O")), 2, "s04: '12O'"),
    ("a word in a declared continuous column", _edit(_set(5, "glucose", "high"), {"types": {"glucose": "continuous"}}),
     2, "s05: 'high'"),
    ("NaN voxels", _edit(_nan_image()), 2, "NaN or infinite voxels"),
    ("constant image", _edit(_replace_image(np.zeros((10, 10, 8), np.float32))), 2, "is constant"),
    ("no qform / sform", _edit(_no_geometry), 2, "no orientation"),
    ("zero voxel size, no qform / sform", _edit(_zero_voxel_size), 2, "no orientation"),
    ("singular sform", _edit(_singular_sform), 2, "degenerate affine"),
    ("truncated NIfTI", _edit(_replace_image(raw=b"\x1f\x8b\x08\x00")), 2, "unreadable"),
    ("4D image without volume_index", _edit(_replace_image(np.stack([_image(3)] * 2, -1))), 2, "volume_index"),
    ("volume_index out of range", _edit(_replace_image(np.stack([_image(3)] * 2, -1)), {"volume_index": {"flair": 5}}),
     2, "no volume_index fits"),
    ("volume_index beyond a 3D file", _edit(_replace_image(np.stack([_image(3)] * 2, -1)), {"volume_index": {"flair": 1}}),
     2, "is 3D (one volume) but volume_index: {flair: 1}"),
    ("a detection limit in a numeric column", _edit(_set(4, "glucose", "<0.5")), 2,
     "['<0.5'] look like detection limits: write a number"),
    ("missing image file", _edit(_set(2, "flair", "img/nowhere.nii.gz")), 2, "does not exist"),
    ("image path is a folder", _edit(_set(2, "flair", "img")), 2, "s02"),
    ("empty image cell (missing_images: error)", _edit(_set(2, "flair", "")), 2, "missing_images"),
    ("label outside the label map", _edit(_set(1, "recurrence_12m", "maybe")), 2, "'maybe'"),
    ("duplicate subject id", _edit(_set(1, "subject_id", "s00")), 2, "more than once"),
    ("empty subject id", _edit(_set(1, "subject_id", "")), 2, "empty id"),
    ("config names an absent column", _edit(lambda rows, folder: None, {"label": "recurence_12m"}), 2,
     "did you mean 'recurrence_12m'"),
    ("unknown cohort.yaml key", _edit(lambda rows, folder: None, {"missing_image": "zero"}), 2,
     "did you mean 'missing_images'"),
    ("bad missing_images value", _edit(lambda rows, folder: None, {"missing_images": "skip"}), 2, "missing_images"),
    ("an all-empty feature column", _edit(lambda rows, folder: [r.update(bmi="") for r in rows]), 2,
     "empty for every subject"),
    ("non-UTF-8 bytes", _latin1, 2, "not a readable CSV"),
    # handled: validate passes
    ("byte-order mark (Excel CSV UTF-8)", _byte_order_mark, 0, "usable"),
    ("Windows line endings", _crlf, 0, "usable"),
    ("2,000 feature columns", _many_columns, 0, "usable"),
    ("missing-value marker declared", _edit(_set(4, "glucose", "-999"), {"na_values": [-999]}), 0, "usable"),
    ("empty image cell with missing_images: drop_modality", _edit(_set(2, "flair", ""),
                                                                 {"missing_images": "drop_modality"}), 0, "usable"),
]


@pytest.mark.parametrize(("name", "build", "code", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, build, code, expected, tmp_path, capsys):
    assert_validate_outcome(build(tmp_path), code, expected, capsys)


def assert_validate_outcome(cohort: Path, code: int, expected: str, capsys) -> str:
    """``strokessl validate cohort`` exits ``code`` and says ``expected``, with no traceback and, when it
    refuses, one line on stderr (the details in the report). Returns what it printed."""
    assert main(["validate", str(cohort)]) == code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert expected in text, text[-2000:]
    assert "Traceback" not in text
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1
    return text


@pytest.mark.parametrize(("labels", "expected"), [([1] * 2 + [0] * 10, "set finetune.folds: 2"),
                                                  ([0] * 12, "cross-validation needs two of each")])
def test_too_few_labeled_subjects_for_the_folds(tmp_path, capsys, labels, expected):
    rows = _rows(tmp_path)
    for row, label in zip(rows, labels, strict=True):
        row["recurrence_12m"] = label
    cohort = write_cohort(tmp_path, rows)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"cohort": str(cohort), "finetune": {"folds": 3}}))
    assert main(["validate", str(run)]) == 2
    assert expected in capsys.readouterr().out
    # finetune refuses the same cohort before any training, in one line
    assert main(["finetune", str(run), "--set", "finetune.mode=scratch", "--set", f"run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert ("every one of the 12 labeled subjects is negative" in err) if not any(labels) else ("at most 2 folds" in err)


def test_too_few_subjects_to_pretrain_is_caught_by_validate(tmp_path, capsys):
    cohort = write_cohort(tmp_path, _rows(tmp_path))  # 12 subjects, all labeled
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"cohort": str(cohort), "finetune": {"folds": 2},
                                   "pretrain": {"batch_size": 16, "rows": "unlabeled"}}))
    assert main(["validate", str(run)]) == 2
    assert "pretraining reads 0 unlabeled subjects" in capsys.readouterr().out
    run.write_text(yaml.safe_dump({"cohort": str(cohort), "finetune": {"folds": 2},
                                   "pretrain": {"batch_size": 4, "rows": "all", "val_fraction": 0.25}}))
    assert main(["validate", str(run)]) == 0
