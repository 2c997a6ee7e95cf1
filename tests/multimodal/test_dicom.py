"""DICOM series folders as image input: grouping, slice order, world geometry and series problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import write_cohort, write_nifti
from pydicom.data import get_testdata_file
from scipy.spatial.transform import Rotation

from multimodal.config import CohortConfig, ImagingConfig
from multimodal.dicom_series import read_series, scan_folder
from multimodal.dicom_writer import write_series
from multimodal.errors import ConfigError, ImageError
from multimodal.imaging import preprocess_subject
from multimodal.validate import validate_cohort
from multimodal.volume_cache import VolumeCache


def rewrite(path: Path, **tags: object) -> None:
    """Set header tags of one written slice in place."""
    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)



def _volume(shape=(12, 10, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1000, shape).round()


def _affine(spacing=(1.5, 1.2, 3.0), rotation=None, origin=(-10.0, 20.0, -5.0), shear=None) -> np.ndarray:
    linear = np.diag(spacing).astype(float)
    if rotation is not None:
        linear = Rotation.from_euler("xyz", rotation, degrees=True).as_matrix() @ linear
    if shear is not None:  # the slice axis leans along the first voxel axis (gantry tilt)
        linear[:, 2] += shear * linear[:, 0] / np.linalg.norm(linear[:, 0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return affine


def _same_world_voxels(original: np.ndarray, affine: np.ndarray, read: np.ndarray, read_affine: np.ndarray) -> None:
    """Every voxel of ``original`` is found, at the same world point, in ``read`` (independent of how
    the reader orders its axes)."""
    ijk = np.indices(original.shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    back = np.linalg.inv(read_affine)
    found = np.round(back[:3, :3] @ world + back[:3, 3:]).astype(int)
    assert np.abs(back[:3, :3] @ world + back[:3, 3:] - found).max() < 1e-3  # lands on voxel centres
    assert ((found >= 0) & (found < np.array(read.shape)[:, None])).all()
    np.testing.assert_allclose(read[tuple(found)], original.reshape(-1), atol=0.5)


@pytest.mark.parametrize("case", ["axial", "sagittal", "oblique", "tilted"])
def test_a_series_reads_back_with_its_voxels_and_world_geometry(tmp_path: Path, case: str) -> None:
    volume = _volume()
    affine = {"axial": _affine(), "oblique": _affine(rotation=(12, -7, 20)), "tilted": _affine(shear=0.6),
              # sagittal slices: the slice axis is world x
              "sagittal": _affine()[:, [1, 2, 0, 3]]}[case]
    write_series(tmp_path / "s", volume, affine)
    read, read_affine = read_series(str(tmp_path / "s"), None, "test")
    _same_world_voxels(volume, affine, read, read_affine)
    warnings = next(iter(scan_folder(str(tmp_path / "s")).series.values())).warnings
    assert bool(warnings) == (case == "tilted") and all("gantry tilt" in w for w in warnings)


def test_slices_are_ordered_by_position_not_by_file_name_or_instance_number(tmp_path: Path) -> None:
    volume, affine = _volume(), _affine(rotation=(0, 25, 0))
    names = [f"IM{n:04d}" for n in np.random.default_rng(1).permutation(volume.shape[2])]  # no suffix, shuffled
    write_series(tmp_path / "s", volume, affine, names=names)
    read, read_affine = read_series(str(tmp_path / "s"), None, "test")
    _same_world_voxels(volume, affine, read, read_affine)


def test_two_series_in_one_folder_need_a_choice_and_either_can_be_chosen(tmp_path: Path) -> None:
    flair, dwi = _volume(seed=1), _volume(seed=2)
    write_series(tmp_path / "study", flair, _affine(), description="AX FLAIR", names=[f"a{k}.dcm" for k in range(8)])
    write_series(tmp_path / "study", dwi, _affine(), description="DWI b1000", uid="1.2.826.0.1.99",
                 names=[f"b{k}.dcm" for k in range(8)])
    with pytest.raises(ImageError, match=r"holds 2 DICOM series: .*AX FLAIR.*1\.2\.826\.0\.1\.99 \(DWI b1000"):
        read_series(str(tmp_path / "study"), None, "subject 's1'")
    for selector, expected in (("AX FLAIR", flair), ("1.2.826.0.1.99", dwi), ("dwi", dwi)):
        read, read_affine = read_series(str(tmp_path / "study"), selector, "test")
        _same_world_voxels(expected, _affine(), read, read_affine)
    with pytest.raises(ImageError, match="'T1' matches 0 of the DICOM series"):
        read_series(str(tmp_path / "study"), "T1", "test")


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", r"misses 1 slice\(s\)"),
    ("duplicate", "duplicated slice position"),
    ("spacing", "non-uniform slice spacing"),
    ("orientation", "mixes 2 slice orientations"),
    ("multiframe", "multi-frame"),
    ("truncated", "unreadable DICOM file"),
])
def test_series_problems_are_named(tmp_path: Path, damage: str, message: str) -> None:
    paths = write_series(tmp_path / "s", _volume(), _affine())
    if damage == "missing":
        paths[3].unlink()
    elif damage == "duplicate":
        shutil.copy(paths[3], tmp_path / "s" / "copy.dcm")
        rewrite(tmp_path / "s" / "copy.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    elif damage == "spacing":
        position = pydicom.dcmread(paths[3]).ImagePositionPatient
        rewrite(paths[3], ImagePositionPatient=[position[0], position[1], float(position[2]) + 1.0])
    elif damage == "orientation":
        rewrite(paths[3], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    elif damage == "multiframe":
        rewrite(paths[3], NumberOfFrames=2)
    else:
        paths[3].write_bytes(paths[3].read_bytes()[:400])
    with pytest.raises(ImageError, match=message):
        read_series(str(tmp_path / "s"), None, "test")


def test_a_dicom_file_shipped_with_pydicom_reads_with_its_header_geometry(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small.dcm"))
    shutil.copy(source, tmp_path / source.name)
    ds = pydicom.dcmread(source)
    read, affine = read_series(str(tmp_path), None, "test")
    expected = ds.pixel_array.T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(read[:, :, 0], expected)
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    lps_origin = np.array(ds.ImagePositionPatient, float)
    np.testing.assert_allclose(affine[:3, 3], lps_origin * [-1, -1, 1])
    np.testing.assert_allclose(affine[:3, 0], row * float(ds.PixelSpacing[1]) * [-1, -1, 1])
    np.testing.assert_allclose(affine[:3, 1], col * float(ds.PixelSpacing[0]) * [-1, -1, 1])


def _tiny_head(shape=(20, 22, 18)) -> np.ndarray:
    x, y, z = np.indices(shape)
    centre = (np.array(shape) - 1) / 2
    inside = (((x - centre[0]) / 8) ** 2 + ((y - centre[1]) / 9) ** 2 + ((z - centre[2]) / 7) ** 2) < 1
    return inside * (400 + 300 * np.sin(x / 2.0) * np.cos(y / 3.0)) + 5


def test_a_series_folder_preprocesses_like_the_same_volume_as_nifti(tmp_path: Path) -> None:
    head, affine = _tiny_head(), _affine(spacing=(4.0, 4.0, 5.0), rotation=(0, 0, 8))
    write_nifti(tmp_path / "head.nii.gz", head.astype(np.float32), affine)
    write_series(tmp_path / "head_dicom", head, affine)
    imaging = ImagingConfig(spacing=(6.0, 6.0, 6.0), spatial_size=(16, 16, 16))
    from_nifti = preprocess_subject({"subject_id": "s1", "image": {"flair": str(tmp_path / "head.nii.gz")}},
                                    imaging, ["flair"])
    from_dicom = preprocess_subject({"subject_id": "s1", "image": {"flair": str(tmp_path / "head_dicom")}},
                                    imaging, ["flair"])
    np.testing.assert_allclose(from_dicom["affine"].numpy(), from_nifti["affine"].numpy(), atol=1e-4)
    # int16 storage rounds each voxel by up to slope / 2 = 0.25 of ~700: ~0.002 after the z-score
    np.testing.assert_allclose(from_dicom["image"].numpy(), from_nifti["image"].numpy(), atol=0.01)


@pytest.mark.parametrize("geometry", ["as_written", "oblique"])
def test_a_synthetic_subject_as_a_shuffled_dicom_series_preprocesses_like_its_nifti(tmp_path: Path,
                                                                                    geometry: str) -> None:
    import nibabel as nib

    from multimodal.synthetic import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "c", n=2, grid=24, seed=3)
    image = nib.load(cohort.parent / "images" / "sub-0001_flair.nii.gz")
    volume, affine = np.asarray(image.dataobj, dtype=np.float64), image.affine.copy()
    if geometry == "oblique":  # the same voxels, turned 20 degrees about two axes in world space
        turn = np.eye(4)
        turn[:3, :3] = Rotation.from_euler("xz", (20, 20), degrees=True).as_matrix()
        affine = turn @ affine
        write_nifti(tmp_path / "oblique.nii.gz", volume.astype(np.float32), affine)
    nifti = tmp_path / "oblique.nii.gz" if geometry == "oblique" else cohort.parent / "images" / "sub-0001_flair.nii.gz"
    names = [f"IM{k:04d}" for k in np.random.default_rng(0).permutation(volume.shape[2])]  # file order shuffled
    write_series(tmp_path / "series", volume, affine, names=names, slope=None, intercept=None)
    imaging = ImagingConfig(spacing=(10.0, 10.0, 10.0), spatial_size=(24, 24, 24))
    read = {kind: preprocess_subject({"subject_id": "s", "image": {"flair": str(path)}}, imaging, ["flair"])
            for kind, path in (("nifti", nifti), ("dicom", tmp_path / "series"))}
    np.testing.assert_allclose(read["dicom"]["affine"].numpy(), read["nifti"]["affine"].numpy(), atol=1e-4)
    difference = np.abs(read["dicom"]["image"].numpy() - read["nifti"]["image"].numpy()).max()
    assert difference < 1e-3  # int16 storage over the volume's range: a step of 1/32000 of it before the z-score


def test_synth_writes_some_subjects_as_dicom_series_that_validate(tmp_path: Path) -> None:
    from multimodal.synthetic import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "c", n=8, grid=12, seed=2, dicom_fraction=0.25)
    import pandas as pd

    table = pd.read_csv(cohort.parent / "cohort.csv")
    series = [p for p in table["flair"] if not str(p).endswith(".nii.gz")]
    assert len(series) == 2 and all((cohort.parent / p).is_dir() for p in series)
    report = validate_cohort(_load(cohort))
    assert not report.errors, report.errors
    assert report.summary["dtypes"]["flair"]["DICOM"] == 2


def test_the_cache_key_changes_when_a_slice_changes(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", _tiny_head(), _affine(spacing=(4.0, 4.0, 5.0)))
    cache = VolumeCache(tmp_path / "cache", ImagingConfig(spacing=(6.0, 6.0, 6.0), spatial_size=(16, 16, 16)),
                        ["flair"])
    record = {"subject_id": "s1", "image": {"flair": str(tmp_path / "s")}}
    before = cache.key(record)
    ds = pydicom.dcmread(paths[4])
    ds.RescaleIntercept = -99.0
    ds.save_as(paths[4], enforce_file_format=True)
    next_run = VolumeCache(tmp_path / "cache", cache.imaging, ["flair"])  # the sources are checked once per run
    assert next_run.key(record) != before


def test_validate_names_the_subject_and_the_series_to_choose(tmp_path: Path) -> None:
    study = tmp_path / "images" / "s1"
    write_series(study, _tiny_head(), _affine(spacing=(9.0, 9.0, 10.0)), description="AX FLAIR",
                 names=[f"f{k}.dcm" for k in range(18)])
    write_series(study, _tiny_head(), _affine(spacing=(9.0, 9.0, 10.0)), description="DWI",
                 names=[f"d{k}.dcm" for k in range(18)])
    rows = [{"subject_id": "s1", "study": "images/s1", "age": 70, "recurrence_12m": 1}]
    cohort_yaml = write_cohort(tmp_path, rows, {"images": {"flair": "study"}})
    report = validate_cohort(_load(cohort_yaml))
    assert any(p.subject == "s1" and "holds 2 DICOM series" in p.message and "DWI" in p.message for p in report.errors)
    chosen = write_cohort(tmp_path, rows, {"images": {"flair": "study", "dwi": "study"},
                                           "series": {"flair": "AX FLAIR", "dwi": "DWI"}})
    report = validate_cohort(_load(chosen))
    assert not [p for p in report.errors if "DICOM" in p.message], report.errors
    assert report.summary["dtypes"]["flair"] == {"DICOM": 1}


def test_series_names_a_known_sequence_and_text() -> None:
    with pytest.raises(ConfigError, match="series names sequence 't1'"):
        CohortConfig(csv=Path("c.csv"), images={"flair": "f"}, series={"t1": "T1"})
    with pytest.raises(ConfigError, match=r"series\.flair must be a SeriesDescription"):
        CohortConfig(csv=Path("c.csv"), images={"flair": "f"}, series={"flair": 3})


def _load(cohort_yaml: Path) -> CohortConfig:
    from multimodal.config import load_cohort_config

    return load_cohort_config(cohort_yaml)


def test_a_cohort_of_dicom_studies_runs_through_every_stage_from_the_cli(tmp_path: Path) -> None:
    """Each subject's FLAIR and DWI written as two series in one study folder, picked by ``series:``."""
    import nibabel as nib
    import pandas as pd
    import yaml
    from conftest import write_tiny_config

    from multimodal.synthetic import write_synthetic_cohort
    from strokessl.cli import main

    source = write_synthetic_cohort(tmp_path / "nifti", n=24, grid=16, labeled_fraction=1.0, seed=4, prevalence=0.3)
    table = pd.read_csv(source.parent / "cohort.csv", dtype={"subject_id": str})
    for row in table.itertuples():
        for sequence, description in (("flair", "AX T2 FLAIR"), ("dwi", "DWI b1000 TRACE")):
            image = nib.load(source.parent / getattr(row, sequence))
            write_series(tmp_path / "dicom" / "studies" / row.subject_id, np.asanyarray(image.dataobj, dtype=float),
                         image.affine, description=description, slope=1.0, intercept=0.0,
                         names=[f"{sequence}_{k:03d}.dcm" for k in range(image.shape[2])])
    table["study"] = "studies/" + table["subject_id"]
    table.drop(columns=["flair", "dwi"]).to_csv(tmp_path / "dicom" / "cohort.csv", index=False)
    roles = yaml.safe_load(source.read_text())
    roles["images"] = {"flair": "study", "dwi": "study"}
    roles["series"] = {"flair": "FLAIR", "dwi": "DWI"}
    cohort = tmp_path / "dicom" / "cohort.yaml"
    cohort.write_text(yaml.safe_dump(roles))
    config = write_tiny_config(tmp_path / "run.yaml", cohort,
                               finetune={"folds": 2, "repeats": 1, "bootstrap": 100, "mode": "frozen", "head": "probe"})
    runs = tmp_path / "runs"
    assert main(["validate", str(config)]) == 0
    assert main(["pretrain", str(config), "--set", f"run.dir={runs / 'pretrain'}"]) == 0
    assert main(["finetune", str(config), "--init", str(runs / "pretrain"), "--set", f"run.dir={runs / 'ft'}"]) == 0
    assert main(["predict", str(runs / "ft"), "--cohort", str(cohort), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 24
