"""Subjects without MRI are scored from what they have.

A cohort where both modalities carry the label: positives have a bright lesion in the image and a
shifted clinical value. Removing the image from a share of the subjects (``missing_images:
drop_modality``) must land the model between the table-only model and the full multimodal one;
``predict`` scores a CSV whose image cells are empty for some rows.
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import write_cohort, write_nifti, write_tiny_config

from strokessl.cli import main

N = 96


def _cohort(folder, blank_share: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), axis=-1)
    head = (np.linalg.norm(grid - 7.5, axis=-1) < 7).astype(np.float32)
    labels = (np.arange(N) % 3 == 0).astype(int)  # a third positive
    blank = rng.random(N) < blank_share
    rows = []
    for i, label in enumerate(labels):
        image = head * (100 + 10 * rng.normal(size=head.shape))
        if label or rng.random() < 0.15:  # the lesion: common in positives, rare in negatives
            corner = rng.integers(4, 8, size=3)
            image[corner[0]:corner[0] + 4, corner[1]:corner[1] + 4, corner[2]:corner[2] + 4] *= 3.0 if label else 1.5
        path = f"img/s{i:03d}.nii.gz"
        if not (folder / path).exists():
            write_nifti(folder / path, image.astype(np.float32), np.diag([14.0, 14.0, 14.0, 1.0]))
        rows.append({"subject_id": f"s{i:03d}", "flair": "" if blank[i] else path, "recurrence_12m": label,
                     "marker": round(float(rng.normal(0.8 * label, 1.0)), 3), "age": round(float(rng.normal(70, 8)), 1)})
    return write_cohort(folder, rows, {"missing_images": "drop_modality"}), blank


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("missing")
    full, _ = _cohort(folder / "full")
    partial, blank = _cohort(folder / "partial", blank_share=0.5)
    config = write_tiny_config(folder / "run.yaml", full, pretrain={"objectives": {"clip": 1.0}},
                               finetune={"folds": 3, "repeats": 1, "bootstrap": 100,
                                         "baselines": ["logistic_regression"], "probe_table_embedding": False})
    pretrained = folder / "pretrain"
    assert main(["pretrain", str(config), "--set", f"run.dir={pretrained}"]) == 0
    runs = {}
    for name, cohort, extra in (("full", full, []), ("table", full, ["--set", "finetune.branches=table"]),
                                ("partial", partial, [])):
        runs[name] = folder / name / "run"
        assert main(["finetune", str(config), "--init", str(pretrained), "--set", f"cohort={cohort}",
                     "--set", f"run.dir={runs[name]}", *extra]) == 0
    auroc = {name: json.loads((run / "metrics.json").read_text())["model"]["auroc"]["estimate"]
             for name, run in runs.items()}
    return auroc, runs, partial, blank


def test_auroc_with_images_missing_lies_between_table_only_and_full(results):
    auroc, _, _, blank = results
    assert 0.3 < blank.mean() < 0.7
    assert auroc["table"] + 0.02 < auroc["partial"] < auroc["full"] - 0.02, auroc


def test_predict_scores_rows_with_empty_image_cells(results, tmp_path):
    _, runs, partial, blank = results
    table = pd.read_csv(partial.parent / "cohort.csv", dtype=str, keep_default_na=False)
    table["flair"] = [str(partial.parent / p) if p else "" for p in table["flair"]]
    csv = tmp_path / "new.csv"
    table.drop(columns=["recurrence_12m"]).to_csv(csv, index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(runs["partial"]), "--cohort", str(csv), "--out", str(out)]) == 0
    predicted = pd.read_csv(out).set_index("subject_id")
    assert len(predicted) == N and predicted["probability"].between(0, 1).all()
    # A subject without MRI gets from predict exactly what its fold gave it out of fold.
    oof = pd.read_csv(runs["partial"] / "predictions.csv").set_index("subject_id")
    subject = table["subject_id"][np.flatnonzero(blank)[0]]
    fold = oof.loc[subject, "fold"]
    assert predicted.loc[subject, f"probability_{fold}"] == pytest.approx(oof.loc[subject, "probability"], abs=1e-5)
