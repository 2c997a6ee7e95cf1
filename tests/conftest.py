"""Shared fixtures: tiny NIfTI files and cohort tables written into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


# A 16^3 grid at 14 mm holds a whole synthetic head (grid-16 cohorts): what end-to-end tests run on.
TINY_IMAGING = {
    "seed": 0,
    "data": {"workers": 0},
    "imaging": {"spacing": [14.0, 14.0, 14.0], "spatial_size": [16, 16, 16], "head_margin_mm": 7.0},
}


# The tests' phantoms are millimetres across (a 6x6x4 grid of 1 mm voxels), no human head: cohorts
# written here accept any field of view and head from 1 mm to 1 m (the default, 30-400 mm, would refuse them).
TINY_HEADS = {"head_extent_mm": [1.0, 1000.0]}


def write_cohort(folder: Path, rows: list[dict], config: dict | None = None) -> Path:
    """Write ``cohort.csv`` (from row dicts, empty string or None = empty cell) and ``cohort.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join("" if row.get(c) is None else str(row[c]) for c in columns) for row in rows]
    (folder / "cohort.csv").write_text("\n".join(lines) + "\n")
    data = {"csv": "cohort.csv", "id": "subject_id", "images": {"flair": "flair"}, "label": "recurrence_12m",
            **TINY_HEADS}
    data.update(config or {})
    (folder / "cohort.yaml").write_text(yaml.safe_dump(data))
    return folder / "cohort.yaml"


@pytest.fixture
def small_cohort(tmp_path: Path) -> Path:
    """24 subjects, one 8x10x6 FLAIR each, labels 1/0 alternating in blocks, 4 unlabeled."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        write_nifti(tmp_path / "img" / f"s{i:02d}.nii.gz", rng.normal(size=(8, 10, 6)).astype(np.float32),
                    np.diag([2.0, 2.0, 3.0, 1.0]))
        label = "" if i >= 20 else ("yes" if i % 4 == 0 else "no")
        rows.append({
            "subject_id": f"s{i:02d}", "flair": f"img/s{i:02d}.nii.gz", "recurrence_12m": label,
            "age": round(float(rng.normal(70, 10)), 1), "sex": "MF"[i % 2], "glucose": "" if i % 5 == 0 else round(float(rng.normal(6, 1)), 2),
        })
    return write_cohort(tmp_path, rows)


# The encoders and pretraining settings of the end-to-end CLI tests (16³ volumes, seconds per run).
TINY_ENCODERS = {"image": {"name": "resnet3d_10", "args": {"widen_factor": 0.25}},
                 "table": {"name": "ft_transformer", "args": {"dim": 16, "depth": 1, "heads": 2}}}
TINY_PRETRAIN = {"epochs": 1, "batch_size": 8, "rows": "all", "val_fraction": 0.2, "projection_dim": 16,
                 "projection_hidden": 32}


def write_tiny_config(path: Path, cohort: Path, pretrain: dict | None = None, finetune: dict | None = None,
                      encoders: dict | None = None) -> Path:
    """A run config for ``cohort`` with the tiny encoders (``encoders`` entries replace modalities of
    ``TINY_ENCODERS``); ``pretrain`` entries override ``TINY_PRETRAIN``."""
    path.write_text(yaml.safe_dump({**TINY_IMAGING, "cohort": str(cohort),
                                    "model": {"encoders": {**TINY_ENCODERS, **(encoders or {})}},
                                    "pretrain": {**TINY_PRETRAIN, **(pretrain or {})}, "finetune": finetune or {}}))
    return path
