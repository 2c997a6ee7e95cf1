"""Bad images, cache faults and non-finite outputs: refused in one line, or handled as documented.

Sibling of ``tests/test_bad_inputs.py`` (the same table in ``docs/robustness.md``). The first part
runs ``strokessl validate`` on small cohorts whose heads are human-sized at coarse voxels (the
default ``head_extent_mm``, unlike the shared test helpers' phantoms); the rest preprocesses,
caches and predicts: a legal image in any unit gives the volume its other units give, an image
that cannot be a present channel is an error or (``missing_images: zero | drop_modality``) an
absent one, the cache follows file content, and no NaN is ever written as a probability.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_cohort, write_nifti, write_tiny_config
from safetensors.torch import load_file, save_file
from test_bad_inputs import _image, assert_validate_outcome

from multimodal.config import ImagingConfig
from multimodal.errors import ImageError
from multimodal.imaging import preprocess_subject
from multimodal.synthetic import write_synthetic_cohort
from multimodal.volume_cache import VolumeCache
from strokessl.cli import main

N = 12
HUMAN = {"head_extent_mm": [30.0, 400.0]}  # the default bounds, written out
COARSE = np.diag([8.0, 8.0, 8.0, 1.0])  # 10 x 10 x 8 voxels = 80 x 80 x 64 mm, the head 48 mm across
METRE_AWAY = COARSE + np.array([[0, 0, 0, 1000.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


# --------------------------------------------------------------------------- validate
def _cohort(change=None, config: dict | None = None, sequences: tuple[str, ...] = ("flair",)):
    """A builder: N subjects with one coarse image per sequence, ``change(rows, folder)`` applied."""
    def build(folder: Path) -> Path:
        rows = []
        for i in range(N):
            row = {"subject_id": f"s{i:02d}", "recurrence_12m": int(i % 3 == 0), "age": 60 + i}
            for q, sequence in enumerate(sequences):
                row[sequence] = f"img/s{i:02d}_{sequence}.nii.gz"
                write_nifti(folder / row[sequence], _image(10 * i + q), COARSE)
            rows.append(row)
        if change is not None:
            change(rows, folder)
        return write_cohort(folder, rows, {**HUMAN, "images": {s: s for s in sequences}, **(config or {})})
    return build


def _put(save, name: str, sequence: str = "flair"):
    """Subject s03's ``sequence`` becomes the file ``save(path)`` writes under ``img/<name>``."""
    def change(rows, folder):
        path = folder / "img" / name
        save(path)
        rows[3][sequence] = f"img/{name}"
    return change


def _nifti(data: np.ndarray, affine: np.ndarray = COARSE):
    return lambda path: nib.save(nib.Nifti1Image(data, affine), str(path))


def _renamed(write_as: str):
    """A NIfTI written as ``write_as`` (.nii or .nii.gz) and then given the other suffix."""
    def save(path):
        real = path.with_name("real" + write_as)
        nib.save(nib.Nifti1Image(_image(3), COARSE), str(real))
        real.rename(path)
    return save


def _huge_grid(path):
    nib.save(nib.Nifti1Image(_image(3), COARSE), str(path))
    raw = bytearray(path.read_bytes())
    raw[42:48] = struct.pack("<3h", 30000, 30000, 30000)  # dim[1:4]: a damaged header
    path.write_bytes(bytes(raw))


def _rgb(path):
    data = np.zeros((10, 10, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    data["R"] = (_image(3) > 50) * 200
    nib.save(nib.Nifti1Image(data, COARSE), str(path))


def _dwi_a_metre_away(rows, folder):
    write_nifti(folder / rows[3]["dwi"], _image(3), METRE_AWAY)


def _folder_as_image(rows, folder):
    (folder / "img" / "s03.nii.gz").mkdir()
    rows[3]["flair"] = "img/s03.nii.gz"


TWO = ("flair", "dwi")
# (name, builder, expected exit code, text the report or error must contain)
CASES = [
    ("Analyze .hdr/.img pair", _cohort(_put(lambda p: nib.save(nib.AnalyzeImage(_image(3), COARSE), str(p)),
                                            "s03.hdr")), 2, "Analyze 7.5 .hdr/.img pair, which has no trustworthy"),
    ("complex-valued volume", _cohort(_put(_nifti(_image(3).astype(np.complex64)), "s03.nii")), 2,
     "holds complex64 voxels; export it as a scalar 3D NIfTI"),
    ("RGB volume", _cohort(_put(_rgb, "s03.nii")), 2, "RGB / structured voxels; export it as a scalar 3D NIfTI"),
    (".nii.gz that is not compressed", _cohort(_put(_renamed(".nii"), "s03.nii.gz")), 2,
     "is not gzip-compressed; rename it to end in .nii"),
    (".nii that is gzip-compressed", _cohort(_put(_renamed(".nii.gz"), "s03.nii")), 2,
     "is gzip-compressed but named s03.nii; rename it to end in .nii.gz"),
    ("header claims a 30000^3 grid", _cohort(_put(_huge_grid, "s03.nii")), 2, "claims a grid of 30000 x 30000 x 30000"),
    ("image path is a folder", _cohort(_folder_as_image), 2, "s03.nii.gz holds no readable DICOM slices; give a DICOM series folder or a NIfTI file"),
    ("a single slice", _cohort(_put(_nifti(_image(3)[:, :, 4:5]), "s03.nii.gz")), 2, "is a single slice (10 x 10 x 1"),
    ("a 4 x 15 x 14 mm field of view", _cohort(_put(_nifti(np.random.default_rng(0).random((2, 15, 14), np.float32),
                                                           np.diag([2.0, 1.0, 1.0, 1.0])), "s03.nii.gz")), 2,
     "covers only 4 x 15 x 14 mm"),
    ("280 mm voxels", _cohort(_put(_nifti(_image(3), np.diag([280.0, 280.0, 280.0, 1.0])), "s03.nii.gz")), 2,
     "more than any head"),
    ("DWI a metre from the FLAIR", _cohort(_dwi_a_metre_away, sequences=TWO), 2,
     "shares 0% of its field of view with the"),
    ("DWI a metre away, missing_images: drop_modality", _cohort(_dwi_a_metre_away, {"missing_images": "drop_modality"},
                                                               TWO), 0, "makes it an absent image modality"),
    ("DWI a metre away, missing_images: zero", _cohort(_dwi_a_metre_away, {"missing_images": "zero"}, TWO), 0,
     "makes it an absent (zero) channel"),
]


@pytest.mark.parametrize(("name", "build", "code", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_image(name, build, code, expected, tmp_path, capsys):
    text = assert_validate_outcome(build(tmp_path), code, expected, capsys)
    assert "s03" in text  # the subject is named, refused or warned


# --------------------------------------------------------------------------- preprocessing
IMAGING = ImagingConfig(spacing=(4.0, 4.0, 4.0), spatial_size=(16, 16, 16), head_margin_mm=4.0)
GRID = np.diag([4.0, 4.0, 4.0, 1.0])  # 18^3 voxels = 72 mm


def _head(seed: int = 0, shape: tuple[int, int, int] = (18, 18, 18)) -> np.ndarray:
    """A noisy ellipsoid (~56 x 48 x 40 mm at 4 mm) with structure inside, in a noisy background."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).astype(float) - (np.array(shape)[:, None, None, None] - 1) / 2
    inside = ((ijk / np.array([7.0, 6.0, 5.0])[:, None, None, None]) ** 2).sum(0) <= 1
    data = np.abs(rng.normal(0, 5, shape))
    data[inside] = 100 + 20 * np.sin(ijk[0][inside]) + rng.normal(0, 3, inside.sum())
    return data


def _write(tmp_path: Path, name: str, data: np.ndarray, affine: np.ndarray = GRID, dtype=np.float32) -> str:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data.astype(dtype), affine), str(path))
    return str(path)


def _preprocess(paths: dict[str, str], policy: str = "error") -> dict[str, torch.Tensor]:
    return preprocess_subject({"subject_id": "sub-7", "image": paths}, IMAGING, list(paths), policy)


@pytest.mark.parametrize(("scale", "dtype"), [(3.0e38, np.float32), (1e-9, np.float32), (1e300, np.float64)],
                         ids=["FLAIR near the float32 maximum", "ADC in m2/s", "float64 beyond the float32 range"])
def test_an_image_in_any_legal_unit_gives_the_same_volume(tmp_path, scale, dtype):
    head = _head()
    reference = _preprocess({"flair": _write(tmp_path, "ref.nii", head)})["image"]
    scaled = _preprocess({"flair": _write(tmp_path, "scaled.nii", head / head.max() * scale, dtype=dtype)})["image"]
    assert torch.isfinite(scaled).all()
    assert torch.allclose(scaled, reference, atol=1e-3)


def test_a_sequence_a_metre_away_is_an_error_or_an_absent_channel(tmp_path, caplog):
    far = GRID.copy()
    far[0, 3] = 1000.0
    paths = {"flair": _write(tmp_path, "flair.nii", _head(1)), "dwi": _write(tmp_path, "dwi.nii", _head(2), far)}
    with pytest.raises(ImageError, match=r"sub-7.*'dwi'.*shares 0% of its field of view with the flair image"):
        _preprocess(paths)
    with caplog.at_level(logging.WARNING):
        out = _preprocess(paths, "zero")
    assert out["modality_mask"].tolist() == [1.0, 0.0] and not out["image"][1].any()
    assert "sub-7" in caplog.text and "absent (zero) channel" in caplog.text
    alone = _preprocess({"flair": paths["flair"]})["image"][0]
    assert torch.allclose(out["image"][0], alone, atol=1e-5)  # the far DWI did not shape the head mask


def test_drop_modality_marks_the_image_absent_when_a_sequence_is_unusable(tmp_path):
    record = {"subject_id": "sub-7", "image": {"flair": _write(tmp_path, "flair.nii", _head(1)),
                                               "dwi": _write(tmp_path, "dwi.nii", np.zeros((18, 18, 18)))}}
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["flair", "dwi"], "drop_modality")
    assert cache.has_image(record) is False
    assert not cache.load(record)["modality_mask"].any()
    with pytest.raises(ImageError, match=r"sub-7.*'dwi'.*empty \(all zero\) inside the head"):
        preprocess_subject(record, IMAGING, ["flair", "dwi"])


def test_a_head_of_a_few_millimetres_is_refused(tmp_path):
    data = np.abs(np.random.default_rng(0).normal(0, 5, (18, 18, 18)))
    data[7:11, 7:11, 7:11] = 300  # a 16 mm blob in a 72 mm field of view
    with pytest.raises(ImageError, match=r"sub-7.*the head found spans only \d+ x \d+ x \d+ mm"):
        _preprocess({"flair": _write(tmp_path, "blob.nii", data)})


@pytest.mark.parametrize(("save", "expected"), [
    (lambda p: nib.save(nib.AnalyzeImage(_head().astype(np.float32), GRID), str(p.with_suffix(".hdr"))), "Analyze"),
    (lambda p: nib.save(nib.Nifti1Image(_head().astype(np.complex64), GRID), str(p)), "export it as a scalar"),
], ids=["Analyze", "complex"])
def test_preprocessing_refuses_formats_without_orientation_or_scalar_voxels(tmp_path, save, expected):
    target = tmp_path / "img.nii"
    save(target)
    path = target.with_suffix(".hdr") if expected == "Analyze" else target
    with pytest.raises(ImageError, match=rf"sub-7.*'flair'.*{expected}"):
        _preprocess({"flair": str(path)})


# --------------------------------------------------------------------------- cache
def test_replaced_voxels_with_the_same_size_and_mtime_are_not_served_stale(tmp_path):
    path = Path(_write(tmp_path, "flair.nii", _head(1)))
    record = {"subject_id": "sub-7", "image": {"flair": str(path)}}
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["flair"])
    before = cache.load(record)["image"]
    stat = path.stat()
    _write(tmp_path, "flair.nii", _head(2))  # other voxels, same grid and dtype: same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the modification time kept (cp -p, touch -r)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    next_run = VolumeCache(tmp_path / "cache", IMAGING, ["flair"])  # sources are checked once per run
    after = next_run.load(record)["image"]
    assert next_run.built == 1
    assert torch.equal(after, _preprocess({"flair": str(path)})["image"]) and not torch.equal(after, before)


def test_a_cache_entry_holding_nan_voxels_is_rebuilt(tmp_path, caplog):
    record = {"subject_id": "sub-7", "image": {"flair": _write(tmp_path, "flair.nii", _head(1))}}
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["flair"])
    good = cache.load(record)["image"]
    entry = cache.path(record)
    tensors = load_file(str(entry))
    tensors["image"][0, 8, 8, 8] = float("nan")
    save_file(tensors, str(entry))
    rebuilt = cache.load(record)["image"]
    assert cache.built == 2 and "NaN or infinite" in caplog.text and "rebuilding" in caplog.text
    assert torch.equal(rebuilt, good)


# --------------------------------------------------------------------------- predict
FINETUNE = {"mode": "scratch", "epochs": 1, "batch_size": 8, "folds": 2, "repeats": 1, "bootstrap": 100,
            "hidden": 16, "baselines": ["logistic_regression"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished scratch run on a synthetic cohort and its table with absolute image paths."""
    folder = tmp_path_factory.mktemp("images")
    cohort = write_synthetic_cohort(folder / "cohort", n=24, grid=16, labeled_fraction=1.0, seed=5, prevalence=0.4)
    config = write_tiny_config(folder / "tiny.yaml", cohort, finetune=FINETUNE)
    run = folder / "run"
    assert main(["finetune", str(config), "--set", f"run.dir={run}"]) == 0
    table = pd.read_csv(cohort.parent / "cohort.csv", dtype=str).head(4)
    for column in ("flair", "dwi"):
        table[column] = [str(cohort.parent / p) for p in table[column]]
    return run, table


def _predict(run: Path, table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "new.csv", index=False)
    assert main(["predict", str(run), "--cohort", str(folder / "new.csv"), "--out", str(folder / "risk.csv")]) == 0
    return pd.read_csv(folder / "risk.csv", index_col="subject_id")


def test_predict_scores_a_flair_near_the_float32_maximum_like_the_original(trained, tmp_path):
    run, table = trained
    source = nib.load(table.loc[0, "flair"])
    data = np.asarray(source.dataobj, dtype=np.float64)
    huge = tmp_path / "huge_flair.nii.gz"
    nib.save(nib.Nifti1Image((data / data.max() * 3.3e38).astype(np.float32), source.affine), str(huge))
    original = _predict(run, table, tmp_path / "a")
    changed = table.copy()
    changed.loc[0, "flair"] = str(huge)
    scaled = _predict(run, changed, tmp_path / "b")
    assert scaled["probability"].notna().all()
    assert scaled["probability"].to_numpy() == pytest.approx(original["probability"].to_numpy(), abs=1e-4)


def test_predict_scores_a_misplaced_dwi_from_what_is_left_with_a_warning(trained, tmp_path, caplog):
    run, table = trained
    source = nib.load(table.loc[1, "dwi"])
    far = tmp_path / "far_dwi.nii.gz"
    shifted = source.affine.copy()
    shifted[0, 3] += 1000.0
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), shifted), str(far))
    misplaced, without = table.copy(), table.copy()
    misplaced.loc[1, "dwi"] = str(far)
    without.loc[1, ["flair", "dwi"]] = ""  # no image at all: scored from the clinical record
    with caplog.at_level(logging.WARNING):
        scored = _predict(run, misplaced, tmp_path / "a")
    assert "shares 0% of its field of view" in caplog.text and table.loc[1, "subject_id"] in caplog.text
    reference = _predict(run, without, tmp_path / "b")
    subject = table.loc[1, "subject_id"]
    assert scored.loc[subject, "probability"] == pytest.approx(reference.loc[subject, "probability"], abs=1e-6)


def test_a_nan_probability_is_an_error_naming_the_subject_and_writes_nothing(trained, tmp_path, monkeypatch, capsys):
    import finetune.inference as inference

    run, table = trained
    original = inference.predict_probabilities

    def diverged(*args, **kwargs):  # a fold model whose output is NaN for the second subject
        out = original(*args, **kwargs)
        out[1] = np.nan
        return out

    monkeypatch.setattr(inference, "predict_probabilities", diverged)
    table.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "risk.csv"
    assert main(["predict", str(run), "--cohort", str(tmp_path / "new.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"subject '{table.loc[1, 'subject_id']}'" in err and "NaN or infinite" in err
    assert err.strip().splitlines()[-1].startswith("strokessl predict: error: ") and "Traceback" not in err
    assert not out.exists()
