"""pretrain.simclr_views: lesion-preserving views keep a small lesion's contrast and the ventricles'
size where the standard ones do not; the setting is validated and reaches a CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_pretrain_run import cohort, write_config  # noqa: F401 - the module's cohort fixture, reused

from multimodal.config import AugmentConfig, RunConfig
from multimodal.config_mapping import from_dict
from multimodal.errors import ConfigError
from multimodal.imaging import build_augmentation
from pretrain.config import pretrain_config
from pretrain.views import MAX_ROTATION, lesion_preserving, view_augmentation
from strokessl.cli import main

BRAIN, CSF, LESION = 0.5, -1.0, 3.0  # z-scored intensities
LESION_AT = (slice(10, 12), slice(20, 22), slice(14, 16))  # a 2³ white-matter lesion
AROUND = (slice(8, 14), slice(18, 24), slice(12, 18))  # where a shift of <= 2 voxels leaves it
CENTRE = (slice(8, 24),) * 3


def head() -> torch.Tensor:
    """(2, 32, 32, 32): a head (sphere of brain, dark background), central ventricles, one lesion."""
    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), axis=-1)
    radius = np.linalg.norm(grid - 15.5, axis=-1)
    volume = np.where(radius < 13, BRAIN, -1.5).astype(np.float32)
    volume[radius < 4] = CSF
    volume[LESION_AT] = LESION
    return torch.from_numpy(np.stack([volume, volume]))


def changes(augment: AugmentConfig, draws: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Relative changes of the lesion's peak over brain and of the ventricle volume, per draw."""
    def contrast(image: torch.Tensor) -> float:
        return float(image[0][AROUND].max()) - BRAIN

    def ventricles(image: torch.Tensor) -> int:
        return int((image[0][CENTRE] < (BRAIN + CSF) / 2).sum())

    image = head()
    transform = build_augmentation(augment, seed=0)
    peak, size = [], []
    for seed in range(draws):
        transform.set_random_state(seed=seed)
        view = torch.as_tensor(transform({"image": image.clone()})["image"]).float()
        peak.append(contrast(view) / contrast(image) - 1.0)
        size.append(ventricles(view) / ventricles(image) - 1.0)
    return np.abs(peak), np.abs(size)


# every transform applied in every draw: the strength of each kind of view, not the luck of a draw
ALWAYS = AugmentConfig(affine_prob=1.0, noise_prob=1.0, bias_field_prob=1.0, gamma_prob=1.0)


def test_lesion_preserving_views_keep_lesion_contrast_and_ventricle_size():
    peak, size = changes(lesion_preserving(ALWAYS))
    assert peak.max() < 0.2 and size.max() < 0.2, (peak, size)
    standard_peak, standard_size = changes(ALWAYS)
    assert np.median(standard_peak) > 0.2 and np.median(standard_size) > 0.2, (standard_peak, standard_size)


def test_lesion_preserving_caps_what_changes_size_and_contrast():
    tame = lesion_preserving(ALWAYS)
    assert tame.scale_range == 0.0 and tame.bias_field_prob == 0.0
    assert tame.rotate_range == MAX_ROTATION and tame.translate_range == 1.0
    assert 0.9 <= tame.gamma_range[0] <= tame.gamma_range[1] <= 1.1
    assert (tame.noise_prob, tame.noise_std, tame.flip_prob) == (ALWAYS.noise_prob, ALWAYS.noise_std, ALWAYS.flip_prob)
    gentle = AugmentConfig(rotate_range=0.01, translate_range=0.5)
    assert lesion_preserving(gentle).rotate_range == 0.01 and lesion_preserving(gentle).translate_range == 0.5
    assert view_augmentation(ALWAYS, "standard") is ALWAYS


def test_the_setting_is_validated():
    def config(**pretrain):
        return pretrain_config(from_dict(RunConfig, {"cohort": "c.yaml", "pretrain": pretrain}))

    assert config().simclr_views == "standard"
    assert config(simclr_views="lesion_preserving").simclr_views == "lesion_preserving"
    with pytest.raises(ConfigError, match=r"pretrain.simclr_views.*did you mean 'lesion_preserving'"):
        config(simclr_views="lesion_preserve")
    with pytest.raises(ConfigError, match=r"pretrain\.simclr_views"):
        config(simclr_views="strong")


def test_a_simclr_run_with_lesion_preserving_views(tmp_path, cohort, monkeypatch):  # noqa: F811 - imported fixture
    import pretrain.run

    seen = []
    real = pretrain.run.build_pretrain_data

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pretrain.run, "build_pretrain_data", spy)
    config = write_config(tmp_path, cohort, epochs=1, objectives={"simclr": 1.0}, simclr_views="lesion_preserving")
    assert main(["pretrain", str(config)]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[0]["train/simclr_loss"] > 0
    affine = next(t for t in seen[0].train.images.transform.transforms if type(t).__name__ == "RandAffined")
    assert tuple(affine.rand_affine.rand_affine_grid.scale_range) == (0.0, 0.0, 0.0)  # no zoom in the views
