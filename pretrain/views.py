"""The augmentation of pretraining's image views (``pretrain.simclr_views``).

``standard`` uses ``imaging.augment`` as it is. Its affine (±10° rotation, ±10 % zoom, 4-voxel
shifts), bias field and wide gamma were measured to erase white-matter lesions and atrophy at 7 mm
voxels: a rescaling changes the apparent ventricle size (atrophy is exactly that), and a 2-voxel
lesion loses its peak to interpolation, bias and contrast curves. Two views that differ in those
quantities teach SimCLR to ignore them.

``lesion_preserving`` keeps what makes them visible: no zoom, rotation of at most ~3°, shifts of at
most one voxel (linear interpolation by a sub-voxel shift keeps the peak of a 2-voxel lesion),
no bias field, a mild gamma (0.9–1.1) and the configured noise and flips.
"""

from __future__ import annotations

import dataclasses

from multimodal.config import AugmentConfig

SIMCLR_VIEWS = ("standard", "lesion_preserving")
MAX_ROTATION = 0.05  # radians (~3 degrees)
MAX_TRANSLATION = 1.0  # voxels
MILD_GAMMA = (0.9, 1.1)


def lesion_preserving(augment: AugmentConfig) -> AugmentConfig:
    """``augment`` with every transform that changes apparent size or lesion contrast tamed:
    rotation and shift capped (``MAX_ROTATION``, ``MAX_TRANSLATION``), zoom and bias field off,
    gamma within ``MILD_GAMMA``; probabilities, noise and flips as configured."""
    return dataclasses.replace(
        augment,
        rotate_range=min(augment.rotate_range, MAX_ROTATION),
        scale_range=0.0,
        translate_range=min(augment.translate_range, MAX_TRANSLATION),
        bias_field_prob=0.0,
        gamma_range=MILD_GAMMA,
    )


def view_augmentation(augment: AugmentConfig, views: str) -> AugmentConfig:
    """The augmentation of the training views for ``pretrain.simclr_views`` = ``views``."""
    return lesion_preserving(augment) if views == "lesion_preserving" else augment
