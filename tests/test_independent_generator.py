"""The independent cohort generator (benchmarks/independent_generator.py): files, no leakage of the
latent truth into the table, determinism, images that follow the latents, consistent world space."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

# benchmarks/ is a folder of scripts, not a package: import the module by its file name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import independent_anatomy as head
import independent_generator as gen
import independent_record as record

from multimodal.errors import CohortError

GRID = 40  # in-plane matrix of the test cohorts (native protocols: 60-96)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four subjects, half labeled, small grid."""
    out = tmp_path_factory.mktemp("independent") / "cohort"
    return gen.write_independent_cohort(out, 4, grid=GRID, seed=3).parent


def test_files_and_columns(cohort: Path) -> None:
    config = yaml.safe_load((cohort / "cohort.yaml").read_text())
    assert config["images"] == {"flair": "flair_file", "dwi": "dwi_file"}
    table = pd.read_csv(cohort / "cohort.csv", dtype=str, keep_default_na=False)
    assert list(table.columns[:3]) == ["subject_id", "flair_file", "dwi_file"]
    assert set(record.CLINICAL) <= set(table.columns) and record.LABEL in table.columns
    assert set(config["types"]) <= set(table.columns)
    for column in ("flair_file", "dwi_file"):
        assert all((cohort / path).is_file() for path in table[column])
    risk = pd.read_csv(cohort / "risk.csv")
    for column in ("subject_id", "labeled", "drawn_label", "true_risk", "logit", "image_component",
                   "tabular_component"):
        assert column in risk.columns
    np.testing.assert_allclose(risk["logit"] - risk["image_component"] - risk["tabular_component"],
                               risk["logit"].iloc[0] - risk["image_component"].iloc[0]
                               - risk["tabular_component"].iloc[0], atol=1e-4)  # one intercept
    # Labeled subjects carry their drawn label; the others an empty cell.
    labeled = risk["labeled"].to_numpy() == 1
    assert labeled.sum() == 2
    assert (table[record.LABEL].to_numpy()[~labeled] == "").all()
    assert (table[record.LABEL].to_numpy()[labeled].astype(int) == risk["drawn_label"].to_numpy()[labeled]).all()
    truth = json.loads((cohort / "truth.json").read_text())
    assert truth["generator"] == "independent" and truth["n"] == 4 and truth["seed"] == 3
    assert set(truth["auroc"]) == {"bayes_labeled", "image_only_labeled", "tabular_only_labeled"}
    assert set(truth["image_quantities"]) <= set(risk.columns)
    # The latent image quantities never reach the clinical table.
    assert not set(truth["image_quantities"]) & set(table.columns)
    assert not {"wmh_ml", "lacunes", "infarct_ml", "territory", "svd_burden"} & set(table.columns)


def test_headers_and_dtypes(cohort: Path) -> None:
    for path in sorted((cohort / "images").glob("*.nii.gz")):
        image = nib.load(path)
        assert image.ndim == 3
        assert int(image.header["qform_code"]) > 0 and int(image.header["sform_code"]) > 0
        assert image.get_data_dtype() in (np.int16, np.float32)
        assert np.isfinite(np.asarray(image.dataobj)).all()


def test_same_seed_same_csv_and_refuses_occupied_folder(cohort: Path, tmp_path: Path) -> None:
    again = gen.write_independent_cohort(tmp_path / "again", 4, grid=GRID, seed=3).parent
    assert (again / "cohort.csv").read_bytes() == (cohort / "cohort.csv").read_bytes()
    assert (again / "risk.csv").read_bytes() == (cohort / "risk.csv").read_bytes()
    with pytest.raises(CohortError, match="already holds"):
        gen.write_independent_cohort(again, 4, grid=GRID, seed=3)


def _world_centroid(path: Path) -> np.ndarray:
    """World position (mm) of the centre of the head's tissue voxels (a threshold from the median
    above-mean voxel, so a large bright infarct does not take the mask over)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    ijk = np.argwhere(data > 0.4 * np.median(data[data > data.mean()]))
    return nib.affines.apply_affine(image.affine, ijk).mean(axis=0)


def test_sequences_share_world_space(cohort: Path) -> None:
    table = pd.read_csv(cohort / "cohort.csv", dtype=str)
    for _, row in table.iterrows():
        flair = _world_centroid(cohort / row["flair_file"])
        dwi = _world_centroid(cohort / row["dwi_file"])
        assert np.linalg.norm(flair - dwi) < 5.0, (row["subject_id"], flair, dwi)


def test_bigger_infarct_renders_bigger_dwi_lesion() -> None:
    """Eight MCA infarcts from 1 to 150 ml: the DWI volume above a bright threshold follows them."""
    _, truth = record.draw_independent_table(8, seed=5)
    volumes = np.geomspace(1.0, 150.0, 8)
    protocol = gen.scaled(gen.PROTOCOLS["dwi"][1], 64)
    measured = []
    for i, ml in enumerate(volumes):
        subject = truth.iloc[i].copy()
        subject["territory"], subject["main_infarct_ml"], subject["infarct_ml"] = "mca", ml, ml
        subject["n_territories"] = 1
        rng = np.random.default_rng([11, i])
        anatomy = head.make_anatomy(subject, rng)
        affine = gen.affine_for(protocol, np.zeros(3))
        image = gen.render(anatomy, subject, "dwi", protocol, affine, np.zeros(3), np.eye(3), rng)
        tissue = np.median(image[image > image.mean()])
        voxel_ml = float(np.prod(protocol.spacing)) / 1000.0
        measured.append(float((image > 2.0 * tissue).sum()) * voxel_ml)
    rho = spearmanr(volumes, measured).statistic
    assert rho > 0.7, (volumes.round(1), np.round(measured, 1))
