import numpy as np
from conftest import write_cohort, write_nifti

from multimodal.config import load_cohort_config
from multimodal.validate import format_report, validate_cohort


def good_rows(folder, n=12):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        write_nifti(folder / "img" / f"{i}.nii.gz", rng.random((6, 6, 4)).astype(np.float32))
        out.append({"subject_id": f"s{i}", "flair": f"img/{i}.nii.gz", "recurrence_12m": i % 2, "age": 60 + (i * 7) % 13 + 0.5})
    return out


def errors_of(report):
    return [str(e) for e in report.errors]


def test_all_three_classic_problems_are_reported_together(tmp_path):
    rows = good_rows(tmp_path)
    rows[2]["flair"] = "img/nope.nii.gz"
    rows[5]["recurrence_12m"] = 2
    rows.append(dict(rows[0]))
    report = validate_cohort(load_cohort_config(write_cohort(tmp_path, rows)))
    text = "\n".join(errors_of(report))
    assert "subject s2, column 'flair': image file" in text and "does not exist" in text
    assert "subject s5, column 'recurrence_12m': label '2'" in text
    assert "subject s0, column 'subject_id': id appears more than once" in text
    assert len(report.errors) == 3


def test_image_shape_problems(tmp_path):
    rows = good_rows(tmp_path)
    write_nifti(tmp_path / "img" / "4d.nii.gz", np.random.default_rng(0).normal(size=(6, 6, 4, 3)).astype(np.float32))
    write_nifti(tmp_path / "img" / "2d.nii.gz", np.zeros((6, 6), np.float32))
    (tmp_path / "img" / "bad.nii.gz").write_bytes(b"not a nifti at all")
    rows[0]["flair"], rows[1]["flair"], rows[2]["flair"], rows[3]["flair"] = (
        "img/4d.nii.gz", "img/2d.nii.gz", "img/bad.nii.gz", "")
    path = write_cohort(tmp_path, rows)
    messages = dict((e.subject, e.message) for e in validate_cohort(load_cohort_config(path)).errors)
    assert "4D" in messages["s0"] and "volume_index" in messages["s0"]
    assert "2D" in messages["s1"]
    assert "unreadable" in messages["s2"]
    assert "no flair image" in messages["s3"] and "missing_images" in messages["s3"]
    path = write_cohort(tmp_path, rows, {"volume_index": {"flair": 1}, "missing_images": "zero"})
    errors = {e.subject: e.message for e in validate_cohort(load_cohort_config(path)).errors}
    assert "s0" not in errors and "s3" not in errors  # the 4D file holds volume 1; s3 is zero-filled
    assert "2D" in errors["s1"] and "unreadable" in errors["s2"]
    # a 3D file has no volume 1: preprocessing would refuse it, so validate does
    others = {s: m for s, m in errors.items() if s not in ("s1", "s2")}
    assert others and all("is 3D (one volume) but volume_index: {flair: 1}" in m for m in others.values())


def test_warnings_for_suspicious_columns(tmp_path):
    rows = good_rows(tmp_path, n=30)
    for i, row in enumerate(rows):
        row["leak"] = row["recurrence_12m"] * 10 + (i % 3)
        row["visit"] = f"2024-01-{i % 28 + 1:02d}"
        row["code"] = i % 3
        row["record_no"] = 1000 + i
        row["note"] = f"patient {i} reports mild headache and dizziness since {i} days"
        row["empty"] = ""
    report = validate_cohort(load_cohort_config(write_cohort(tmp_path, rows)))
    warned = {w.column: w.message for w in report.warnings}
    assert "leakage" in warned["leak"]
    assert "dates" in warned["visit"]
    assert "types: {code: categorical}" in warned["code"]
    assert "row number or id" in warned["record_no"]
    assert "free text" in warned["note"]
    assert "age" not in warned
    assert any(e.column == "empty" and "empty for every subject" in e.message for e in report.errors)


def test_summary_counts_and_formatting(small_cohort):
    config = load_cohort_config(small_cohort)
    report = validate_cohort(config)
    assert report.ok
    assert report.summary["subjects"] == 24 and report.summary["labeled"] == 20
    assert report.summary["positives"] == 5
    assert report.summary["columns"]["glucose"]["missing"] == 5 / 24
    assert report.summary["shapes"]["flair"] == {(8, 10, 6): 24}
    text = format_report(report, config)
    assert "positives: 5 (25.0 %)" in text and "8x10x6 (24)" in text and "2.0x2.0x3.0" in text
