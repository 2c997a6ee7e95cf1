"""Synthetic cohort: real format, reproducibility, image content and the risk model's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from multimodal.config import load_cohort_config
from multimodal.errors import StrokeSSLError
from multimodal.synthetic import draw_clinical, write_synthetic_cohort

N, GRID = 16, 24


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    write_synthetic_cohort(out, n=N, grid=GRID, labeled_fraction=0.5, seed=1, sequences=("flair", "dwi", "t1"))
    return out


def test_writes_a_loadable_cohort(cohort_dir: Path) -> None:
    config = load_cohort_config(cohort_dir / "cohort.yaml")
    assert config.csv == (cohort_dir / "cohort.csv").resolve()
    assert config.images == {"flair": "flair", "dwi": "dwi", "t1": "t1"}
    assert config.label == "recurrence_12m" and config.text == ["report"]
    table = pd.read_csv(config.csv)
    assert len(table) == N and table["subject_id"].is_unique
    expected = {"age", "sex", "systolic_bp", "diastolic_bp", "glucose", "hba1c", "ldl", "hdl",
                "atrial_fibrillation", "d_dimer", "smoking", "nihss", "hypertension", "diabetes", "bmi"}
    assert expected <= set(table.columns)
    assert set(config.types) <= set(table.columns)
    reports = table["report"].dropna()
    assert 0 < len(reports) < N and reports.str.len().min() > 20  # some subjects have no report
    for column in ("flair", "dwi", "t1"):
        assert all((cohort_dir / p).is_file() for p in table[column])


def test_images_are_3d_with_varied_geometry_and_storage(cohort_dir: Path) -> None:
    dtypes, codes = set(), set()
    for i in range(1, N + 1):
        images = {s: nib.load(cohort_dir / f"images/sub-{i:04d}_{s}.nii.gz") for s in ("flair", "dwi", "t1")}
        for image in images.values():
            assert image.ndim == 3 and max(image.shape) <= GRID
            assert np.isfinite(image.get_fdata()).all()
            dtypes.add(image.get_data_dtype().str)
            codes.add(nib.aff2axcodes(image.affine))
        assert not np.allclose(images["flair"].affine, images["dwi"].affine)
        # DWI has the thickest slices: its largest voxel edge beats FLAIR's smallest.
        assert max(images["dwi"].header.get_zooms()) > min(images["flair"].header.get_zooms())
    assert {"<i2", "<f4"} <= dtypes and any(d.startswith(">") for d in dtypes)
    assert len(codes) >= 3


def test_labels_blank_for_the_unlabeled_share(cohort_dir: Path) -> None:
    table = pd.read_csv(cohort_dir / "cohort.csv", dtype={"recurrence_12m": "Int64"})
    risk = pd.read_csv(cohort_dir / "risk.csv")
    labeled = table["recurrence_12m"].notna().to_numpy()
    assert labeled.sum() == N // 2
    assert (risk["labeled"].to_numpy(bool) == labeled).all()
    assert (table["recurrence_12m"][labeled].to_numpy() == risk["drawn_label"][labeled].to_numpy()).all()
    text = (cohort_dir / "cohort.csv").read_text().splitlines()
    assert sum(line.endswith(",") for line in text[1:]) == N - N // 2  # label is the last column, empty


def test_risk_file_adds_up(cohort_dir: Path) -> None:
    risk = pd.read_csv(cohort_dir / "risk.csv")
    parts = risk[["intercept", "image_component", "tabular_component", "interaction_component"]].sum(axis=1)
    np.testing.assert_allclose(parts, risk["logit"], atol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-risk["logit"])), risk["true_risk"], atol=1e-5)
    truth = json.loads((cohort_dir / "truth.json").read_text())
    assert truth["prevalence"] == 0.15
    assert {"bayes_all", "image_only_all", "tabular_only_all", "bayes_labeled"} <= set(truth["auroc"])


def test_same_seed_same_csv_other_seed_differs(tmp_path: Path) -> None:
    def csv(name: str, seed: int) -> bytes:
        write_synthetic_cohort(tmp_path / name, n=4, grid=10, seed=seed)
        return (tmp_path / name / "cohort.csv").read_bytes()

    first = csv("a", 7)
    assert csv("b", 7) == first
    assert csv("c", 8) != first


def _world_points(image: nib.Nifti1Image) -> np.ndarray:
    ijk = np.indices(image.shape).reshape(3, -1)
    return image.affine[:3, :3] @ ijk + image.affine[:3, 3:]


def test_infarct_is_bright_on_dwi_in_the_reported_hemisphere(cohort_dir: Path) -> None:
    table = pd.read_csv(cohort_dir / "cohort.csv")
    risk = pd.read_csv(cohort_dir / "risk.csv")
    volume = risk["infarct_volume_ml"].to_numpy()

    def contrast(i: int) -> float:  # brightest voxels vs. the head's typical signal (scale-free)
        data = nib.load(cohort_dir / table["dwi"][i]).get_fdata()
        head = data[data > 0.2 * np.percentile(data, 99)]
        return float(np.percentile(data, 99.9) / np.median(head))

    contrasts = np.array([contrast(i) for i in range(N)])
    big, small = np.flatnonzero(volume > 20), np.flatnonzero(volume < 2)
    assert len(big) >= 2 and len(small) >= 1
    assert contrasts[big].min() > 2 * contrasts[small].max()
    assert spearmanr(volume, contrasts)[0] > 0.6
    for i in big:  # world x of the brightest DWI voxels: left hemisphere is x < 0 (RAS+)
        image = nib.load(cohort_dir / table["dwi"][i])
        data = image.get_fdata().ravel()
        x = _world_points(image)[0, data >= np.percentile(data, 99.5)]
        if not isinstance(table["report"][i], str):
            continue  # no report for this subject
        side = "left" if "left" in table["report"][i] else "right"
        assert np.sign(np.median(x)) == (-1 if side == "left" else 1), table["subject_id"][i]


def test_sequences_align_in_world_space(cohort_dir: Path) -> None:
    """Sample DWI and T1 at FLAIR voxel positions: they correlate best unshifted (vs 20 mm)."""
    for i in range(1, 7):
        flair = nib.load(cohort_dir / f"images/sub-{i:04d}_flair.nii.gz")
        reference = flair.get_fdata().ravel()
        for sequence in ("dwi", "t1"):
            moving = nib.load(cohort_dir / f"images/sub-{i:04d}_{sequence}.nii.gz")
            to_voxel = np.linalg.inv(moving.affine)
            scores = []
            for shift in ([0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20], [0, 0, -20]):
                vox = to_voxel[:3, :3] @ (_world_points(flair) + np.array(shift)[:, None]) + to_voxel[:3, 3:]
                inside = np.all((vox > -0.5) & (vox < np.array(moving.shape)[:, None] - 0.5), axis=0)
                sampled = ndi.map_coordinates(moving.get_fdata(), vox, order=1, mode="nearest")
                scores.append(np.corrcoef(reference[inside], sampled[inside])[0, 1])
            assert scores[0] > 0.5 and scores[0] > max(scores[1:]) + 0.02, (i, sequence, scores)


@pytest.mark.parametrize("prevalence", [0.10, 0.15, 0.20])
def test_prevalence_and_oracle_aurocs(prevalence: float) -> None:
    from sklearn.metrics import roc_auc_score

    _, risk = draw_clinical(4000, seed=3, prevalence=prevalence)
    assert abs(risk["true_risk"].mean() - prevalence) < 0.015
    assert abs(risk["recurrence_12m"].mean() - prevalence) < 0.025
    y = risk["recurrence_12m"]
    bayes = roc_auc_score(y, risk["true_risk"])
    image = roc_auc_score(y, risk["image_component"])
    tabular = roc_auc_score(y, risk["tabular_component"])
    assert bayes > max(image, tabular) + 0.03
    assert 0.66 < image < 0.80 and 0.64 < tabular < 0.78


def test_clinical_missingness_and_nihss() -> None:
    table, risk = draw_clinical(3000, seed=4)
    missing = table.isna().mean()
    assert missing["age"] == 0 and missing["sex"] == 0
    assert 0.25 < missing["d_dimer"] < 0.35
    diabetic = table["diabetes"] == 1
    assert table["hba1c"][~diabetic].isna().mean() > 3 * table["hba1c"][diabetic].isna().mean()  # MAR
    rho = pd.Series(table["nihss"].astype(float)).corr(risk["infarct_volume_ml"], method="spearman")
    assert rho > 0.6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 1}, "n must be at least 2"),
        ({"labeled_fraction": 1.5}, "labeled_fraction"),
        ({"sequences": ("flair", "pet")}, "sequences"),
        ({"sequences": ("dwi",)}, "sequences"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(StrokeSSLError, match=message):
        write_synthetic_cohort(tmp_path / "out", **{"grid": 10, **kwargs})
    assert not (tmp_path / "out" / "cohort.csv").exists()


def test_refuses_to_overwrite_a_cohort(tmp_path: Path) -> None:
    (tmp_path / "cohort.csv").write_text("subject_id\n")
    with pytest.raises(StrokeSSLError, match="choose an empty"):
        write_synthetic_cohort(tmp_path, n=2, grid=10)


def test_latent_image_quantities_stay_out_of_the_clinical_table(cohort_dir: Path) -> None:
    # The generator's hidden image quantities (risk.csv) must not be clinical features: one that
    # leaked (head_scale) let contrastive pretraining match images to records by head size.
    header = set(pd.read_csv(cohort_dir / "cohort.csv", nrows=0).columns)
    latent = {"infarct_volume_ml", "wmh_volume_ml", "atrophy", "atrophy_excess", "head_scale"}
    assert latent <= set(pd.read_csv(cohort_dir / "risk.csv", nrows=0).columns)
    assert not header & latent


def test_infarct_masks_lie_on_the_first_sequence_and_sit_in_its_bright_dwi(cohort_dir: Path) -> None:
    """Replayed masks: the first sequence's grid and affine, a volume close to the latent one, and the
    DWI (where infarct is the brightest tissue) brighter inside the mask than in the rest of the head."""
    from multimodal.synthetic_masks import write_infarct_masks

    truth = write_infarct_masks(cohort_dir)
    risk = pd.read_csv(cohort_dir / "risk.csv")
    checked = 0
    for _, row in risk.iterrows():
        mask = nib.load(str(truth / f"{row.subject_id}_infarct.nii.gz"))
        flair = nib.load(str(cohort_dir / "images" / f"{row.subject_id}_flair.nii.gz"))
        assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine)
        fraction = np.asarray(mask.dataobj)
        ml = fraction.sum() * abs(np.linalg.det(mask.affine[:3, :3])) / 1000
        # Sampled at ~9 mm voxels, a small infarct loses some partial volume: compare the larger ones.
        assert ml <= row.infarct_volume_ml * 1.2 + 1.0
        if row.infarct_volume_ml >= 10:
            assert ml == pytest.approx(row.infarct_volume_ml, rel=0.3)
            # The DWI has its own grid: bring the mask over in world space (nearest neighbour).
            dwi = nib.load(str(cohort_dir / "images" / f"{row.subject_id}_dwi.nii.gz"))
            from nibabel.processing import resample_from_to

            inside = np.asarray(resample_from_to(mask, dwi, order=1).dataobj) > 0.5
            signal = np.asarray(dwi.dataobj, dtype=float)
            head = signal > np.percentile(signal, 60)
            assert signal[inside].mean() > 1.5 * signal[head & ~inside].mean()
            checked += 1
    assert checked >= 2
