"""The stage-free dataset builder: which subjects have which modality, under each image policy."""

import numpy as np
import pytest
import torch
from conftest import write_cohort, write_nifti

from multimodal.cohort import load_cohort
from multimodal.config import ImagingConfig, load_cohort_config
from multimodal.data import build_dataset
from multimodal.tabular import TabularPreprocessor
from multimodal.volume_cache import VolumeCache


def _cohort(tmp_path, policy):
    rng = np.random.default_rng(0)
    head = np.zeros((12, 12, 12), np.float32)
    head[2:10, 2:10, 2:10] = 100
    rows = []
    for i in range(4):
        for sequence in ("flair", "dwi"):
            write_nifti(tmp_path / f"{sequence}{i}.nii.gz", head + rng.normal(size=head.shape).astype(np.float32))
        rows.append({"subject_id": f"s{i}", "flair": "" if i == 3 else f"flair{i}.nii.gz",
                     "dwi": "" if i >= 2 else f"dwi{i}.nii.gz", "recurrence_12m": i % 2,
                     "age": "" if i == 1 else 60 + i, "sex": "" if i == 1 else "MF"[i % 2]})
    path = write_cohort(tmp_path, rows, {"images": {"flair": "flair", "dwi": "dwi"}, "missing_images": policy})
    return load_cohort(load_cohort_config(path))


@pytest.mark.parametrize(("policy", "has_image"), [("zero", [True, True, True, False]),
                                                   ("drop_modality", [True, True, False, False])])
def test_presence_follows_the_missing_image_policy(tmp_path, policy, has_image):
    # s2 lacks dwi, s3 lacks both sequences, s1 has an empty clinical row
    cohort = _cohort(tmp_path, policy)
    imaging = ImagingConfig(spacing=(2.0, 2.0, 2.0), spatial_size=(8, 8, 8), head_margin_mm=2.0)
    cache = VolumeCache(tmp_path / "cache", imaging, ["flair", "dwi"], policy,
                        head_extent_mm=cohort.config.head_extent_mm)  # the phantoms are 12 mm across
    preprocessor = TabularPreprocessor(cohort.continuous, cohort.categorical).fit(cohort.features)
    dataset = build_dataset(cohort, cache=cache, preprocessor=preprocessor, labels=True)
    assert dataset.present["image"].tolist() == has_image
    assert dataset.present["table"].tolist() == [True, False, True, True]
    absent = dataset[3]
    assert absent["image"].shape == (2, 8, 8, 8) and not absent["image"].any()  # never read from disk
    assert absent["present"] == {"image": torch.tensor(False), "table": torch.tensor(True)}
    assert absent["label"] == 1.0
    if policy == "zero":  # s2: the missing dwi channel is empty, the flair channel is not
        image = dataset[2]["image"]
        assert image[0].abs().sum() > 0 and not image[1].any()
