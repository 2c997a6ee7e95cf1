"""MRI volumes: MONAI preprocessing → disk cache → random augmentations.

One subject record is ``{"subject_id", "image": {sequence: path | None}, "label", "table"}``.

1. ``preprocess_subject`` (deterministic): load each NIfTI or DICOM series folder
   (``multimodal.nifti``, which refuses files without a usable geometry or with non-finite voxels), check each field of view holds a
   head and overlaps the first sequence's, resample every sequence onto the first usable
   sequence's grid, stack as channels, reorient (RAS), resample to the target spacing, find a
   head mask (``multimodal.head``), check the head's extent and each channel's signal in it, crop
   to it (+ margin), pad/crop to ``spatial_size`` and z-score each channel inside the head mask.
2. ``multimodal.volume_cache.VolumeCache``: one ``<sha256>.safetensors`` per subject, keyed on
   file content + settings.
3. ``build_augmentation`` / ``ImageDataset``: MONAI ``Rand*d`` transforms on the cached volume,
   reproducible from (seed, epoch, index) whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    Spacingd,
)
from torch.utils.data import Dataset

from multimodal.config import (
    HEAD_EXTENT_MM,
    MISSING_IMAGE_POLICIES,
    AugmentConfig,
    ImagingConfig,
)
from multimodal.config_checks import check_choice
from multimodal.errors import ImageError
from multimodal.finite import require_finite
from multimodal.head import channel_problem, head_mask, mask_extent_mm, zscore_in_mask
from multimodal.nifti import (
    MIN_FOV_OVERLAP,
    field_of_view_problem,
    is_missing,
    load_sequence,
    overlap,
    world_box,
)

if TYPE_CHECKING:  # the cache builds volumes with preprocess_subject; ImageDataset only reads it
    from multimodal.volume_cache import VolumeCache

logger = logging.getLogger(__name__)

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# --------------------------------------------------------------------------- preprocessing
def _absent_image(imaging: ImagingConfig, channels: int) -> dict[str, torch.Tensor]:
    """The entry of a subject whose image modality is absent: zeros and an all-zero modality mask."""
    size = tuple(imaging.spatial_size)
    return {"image": torch.zeros(channels, *size), "head_mask": torch.zeros(size, dtype=torch.uint8),
            "modality_mask": torch.zeros(channels), "affine": torch.eye(4, dtype=torch.float64)}


class _Unusable:
    """Sequences that cannot enter as a present channel, and what the missing-image policy does."""

    def __init__(self, subject: str, policy: str) -> None:
        self.subject, self.policy, self.reasons = subject, policy, {}

    def add(self, sequence: str, reason: str) -> None:
        self.reasons.setdefault(sequence, reason)

    def settle(self) -> bool:
        """Raise under ``error`` / ``drop``; warn otherwise. True when the whole image modality is
        then absent (``drop_modality`` with any unusable sequence)."""
        if not self.reasons:
            return False
        shown = "; ".join(f"subject {self.subject!r}, sequence {s!r}: {r}" for s, r in self.reasons.items())
        if self.policy in ("error", "drop"):
            raise ImageError(f"{shown}; fix the file, or set missing_images: zero | drop_modality in the cohort "
                             "config to use the subject without it")
        effect = "its image modality is absent" if self.policy == "drop_modality" else "an absent (zero) channel"
        logger.warning("%s: %s (missing_images: %s)", shown, effect, self.policy)  # the subject must be named to fix it
        return self.policy == "drop_modality"


def preprocess_subject(
    record: dict[str, Any],
    imaging: ImagingConfig,
    sequences: Sequence[str],
    missing_images: str = "error",
    volume_index: dict[str, int] | None = None,
    head_extent_mm: tuple[float, float] = HEAD_EXTENT_MM,
    series: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Deterministic preprocessing of one subject.

    Returns plain tensors: ``image`` (C, H, W, D) float32 z-scored in the head, ``head_mask``
    (H, W, D) uint8, ``modality_mask`` (C,) float32 (0 = sequence absent, channel all zero) and
    ``affine`` (4, 4) float64 voxel → world (RAS mm), with (H, W, D) = ``imaging.spatial_size``.

    A sequence that cannot be a present channel (a field of view outside ``head_extent_mm``, one
    that misses the first sequence's, no signal inside the head; likewise a head smaller than
    ``head_extent_mm``) is an ``ImageError``, or under ``missing_images: zero`` an absent channel
    and under ``drop_modality`` an absent image modality (all-zero ``modality_mask``), with a warning.
    """
    check_choice("missing_images", missing_images, MISSING_IMAGE_POLICIES)
    subject = str(record["subject_id"])
    paths = record["image"]
    volume_index = volume_index or {}
    present = np.array([not is_missing(paths.get(s)) for s in sequences])
    missing = [s for s, p in zip(sequences, present, strict=True) if not p]
    if missing and missing_images != "zero":
        raise ImageError(
            f"subject {subject!r} has no image for sequence(s) {missing}; give the file, or set "
            "missing_images: zero (empty channel), drop (skip the subject) or drop_modality (score it from its "
            "other modalities) in the cohort config"
        )
    if not present.any():
        raise ImageError(f"subject {subject!r} has no image for any of {list(sequences)}")

    data: dict[str, Any] = {
        s: load_sequence(subject, s, str(paths[s]), volume_index.get(s), (series or {}).get(s))
        for s, p in zip(sequences, present, strict=True)
        if p
    }
    unusable = _Unusable(subject, missing_images)
    for s, img in data.items():
        problem = field_of_view_problem(img.shape[1:], img.affine.numpy(), head_extent_mm)
        if problem is not None:
            unusable.add(s, f"{paths[s]} {problem}")
    usable = [s for s in data if s not in unusable.reasons]
    if usable:
        boxes = {s: world_box(data[s].shape[1:], data[s].affine.numpy()) for s in usable}
        for s in usable[1:]:
            share = overlap(boxes[s], boxes[usable[0]])
            if share < MIN_FOV_OVERLAP:
                unusable.add(s, f"{paths[s]} shares {share:.0%} of its field of view with the {usable[0]} image "
                                f"(at least {MIN_FOV_OVERLAP:.0%} needed): its position (affine) puts it elsewhere; "
                                "re-export it with its real geometry")
    if unusable.settle() or not (usable := [s for s in data if s not in unusable.reasons]):
        return _absent_image(imaging, len(sequences))
    present = np.array([s in usable for s in sequences])
    data = {s: data[s] for s in usable}
    # Resample on the first usable sequence's grid *before* orientation/spacing, so fields of
    # view that differ in position, extent and orientation end up aligned voxel for voxel.
    reference, *others = usable
    if others:
        data = ResampleToMatchd(others, key_dst=reference, padding_mode="zeros", dtype=np.float32)(data)
    for s in sequences:
        if s not in data:
            data[s] = torch.zeros_like(data[reference])  # keeps the reference grid's metadata
    data = Compose([
        ConcatItemsd(keys=list(sequences), name="image"),
        # Explicit labels: nibabel affines are RAS whatever the MetaTensor's "space" says.
        Orientationd(keys="image", axcodes=imaging.orientation, labels=_RAS_LABELS),
        Spacingd(keys="image", pixdim=imaging.spacing, padding_mode="zeros", dtype=np.float32),
    ])(data)

    mask = head_mask(data["image"].numpy(), present)
    if not mask.any():
        raise ImageError(f"subject {subject!r}: no head found (images empty or constant); check the files")
    extent = mask_extent_mm(mask, imaging.spacing)
    if extent.min() < head_extent_mm[0]:
        for s in usable:
            unusable.add(s, f"the head found spans only {' x '.join(f'{v:.0f}' for v in extent)} mm, less than "
                            f"head_extent_mm ({head_extent_mm[0]:g} mm along every axis); check the files "
                            "(or lower head_extent_mm in the cohort config if these are not human heads)")
        unusable.settle()
        return _absent_image(imaging, len(sequences))
    data = {
        "image": data["image"],
        "head_mask": MetaTensor(torch.from_numpy(mask.astype(np.uint8))[None], meta=data["image"].meta),
    }
    keys = ["image", "head_mask"]
    margin = [math.ceil(imaging.head_margin_mm / s) for s in imaging.spacing]
    data = Compose([
        CropForegroundd(keys, source_key="head_mask", margin=margin, allow_smaller=True),
        # Pads with 0 = the MRI background, before normalisation shifts it.
        ResizeWithPadOrCropd(keys, spatial_size=imaging.spatial_size, mode="constant"),
    ])(data)

    image = data["image"].as_tensor().float()
    final_mask = data["head_mask"].as_tensor()[0].bool()
    for c, s in enumerate(sequences):
        problem = channel_problem(image[c], final_mask) if present[c] else None
        if problem is not None:
            unusable.add(s, f"{paths[s]} {problem} after resampling onto the {reference} grid")
            present[c] = False
    if unusable.settle() or not present.any():
        return _absent_image(imaging, len(sequences))
    out = {
        "image": zscore_in_mask(image, final_mask, present).contiguous(),
        "head_mask": final_mask.to(torch.uint8),
        "modality_mask": torch.from_numpy(present.astype(np.float32)),
        "affine": data["image"].affine.to(torch.float64),
    }
    require_finite(out["image"][None], [subject], "the preprocessed volume",
                   "check the image files' intensities (and report it: this should not happen)")
    return out


# --------------------------------------------------------------------------- augmentation
def build_augmentation(augment: AugmentConfig, seed: int, device: torch.device | None = None) -> Compose:
    """MONAI random transforms on key ``"image"`` (C, H, W, D) → same shape, seeded by ``seed``.

    Every transform draws its own parameters per call; axis 0 is left-right (RAS). ``device``: where
    the affine's sampling grid is built (None: the CPU; the volume is resampled where it lies).
    """
    rotate, scale, translate = augment.rotate_range, augment.scale_range, augment.translate_range
    coeff = augment.bias_field_coeff
    transforms = Compose([
        RandAffined(
            keys="image",
            prob=augment.affine_prob,
            # one (-r, r) range per spatial axis, as MONAI reads a 3-tuple of floats
            rotate_range=(rotate, rotate, rotate),
            scale_range=(scale, scale, scale),  # MONAI adds 1: factor in 1 ± scale
            translate_range=(translate, translate, translate),  # voxels
            padding_mode="border",  # the volume's edge is background after the head crop
            device=device,
        ),
        RandFlipd(keys="image", prob=augment.flip_prob, spatial_axis=0),
        RandGaussianNoised(keys="image", prob=augment.noise_prob, std=augment.noise_std),
        # Symmetric coefficients so the field darkens as often as it brightens.
        RandBiasFieldd(keys="image", prob=augment.bias_field_prob, coeff_range=(-coeff, coeff)),
        # retain_stats keeps the z-scored mean and std; only the contrast curve changes.
        RandAdjustContrastd(keys="image", prob=augment.gamma_prob, gamma=augment.gamma_range, retain_stats=True),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


def augmentation_seed(seed: int, epoch: int, index: int, view: int) -> int:
    """The seed of item ``index``'s view ``view`` in ``epoch``: independent of worker count and device."""
    return int(np.random.SeedSequence([seed, epoch, index, view]).generate_state(1)[0])


def apply_augmentation(transform: Compose, image: torch.Tensor, modality_mask: torch.Tensor,
                       seed: int) -> torch.Tensor:
    """``transform`` drawn from ``seed`` on ``image`` (C, H, W, D), where it lies (CPU or GPU).

    Every transform draws from one ``RandomState`` of ``seed``: ``Compose.set_random_state`` would
    build one per transform (and per inner transform), measured at a quarter of the loader's time
    per subject at 32³."""
    state = np.random.RandomState(seed)
    for member in transform.transforms:
        if isinstance(member, Randomizable):
            member.set_random_state(state=state)
    image = torch.as_tensor(transform({"image": image})["image"]).float()
    # Noise and bias must not make a missing sequence's channel look present.
    return image * modality_mask.to(image.device)[:, None, None, None]


class DeviceAugmentation:
    """``ImageDataset``'s augmentation, run on the batch's device after the loader (GPU runs whose
    loader workers cannot keep up): the draws are those the loader would have made, per item.

    ``__call__(image (B, C, H, W, D), seeds (B, V), channels (B, C))`` → ``(B, C, H, W, D)`` when
    ``V`` = 1, else ``(B, V, C, H, W, D)``."""

    def __init__(self, augment: AugmentConfig, seed: int, device: torch.device) -> None:
        self.transform = build_augmentation(augment, seed, device)

    def __call__(self, image: torch.Tensor, seeds: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        views = [[apply_augmentation(self.transform, image[b], channels[b], int(s)) for s in seeds[b].tolist()]
                 for b in range(len(image))]
        out = torch.stack([torch.stack(v) for v in views])  # (B, V, C, H, W, D)
        return out[:, 0] if seeds.shape[1] == 1 else out


class ImageDataset(Dataset):
    """Cached volumes of ``records``, randomly augmented when ``augment`` is enabled.

    Item: ``{"subject_id": str, "image": (C, H, W, D) float32, "modality_mask": (C,) float32,
    "label": () float32 (nan = unlabeled)}``, plain tensors. With ``views > 1`` (two augmented
    views for SimCLR) ``image`` is ``(views, C, H, W, D)``, each view drawn independently. The
    augmentation of item ``index`` is drawn from (seed, epoch, index, view), so it does not depend
    on the worker count; call ``set_epoch`` before each epoch, or ask for ``item(index, epoch)``
    (what persistent DataLoader workers do, their sampler carrying the epoch).

    ``deferred=True`` (augmentation on the training device, ``DeviceAugmentation``): ``image`` is
    the cached volume (C, H, W, D), un-augmented, and the item adds ``augment_seeds`` (views,) int64,
    the seeds the loader would have drawn with.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        cache: VolumeCache,
        augment: AugmentConfig | None,
        seed: int = 0,
        views: int = 1,
        deferred: bool = False,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.views = views
        self.records = list(records)
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        enabled = augment is not None and augment.enabled
        self.transform: Compose | None = build_augmentation(augment, seed) if enabled else None
        self.deferred = deferred and enabled

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that, with the seed and the index, draws each item's augmentation."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """Item ``index`` augmented as in ``epoch`` (default: the one ``set_epoch`` chose)."""
        epoch = self.epoch if epoch is None else epoch
        record = self.records[index]
        if self.cache.has_image(record):
            tensors = self.cache.load(record)
            cached, modality_mask = tensors["image"], tensors["modality_mask"]
        else:  # no image modality: an empty volume the model is told about (item "present" in the dataset)
            channels = len(self.cache.sequences)
            cached = torch.zeros(channels, *self.cache.imaging.spatial_size)
            modality_mask = torch.zeros(channels)
        # the seeds only when augmenting: evaluation items draw nothing
        seeds = [augmentation_seed(self.seed, epoch, index, view) for view in range(self.views)
                 ] if self.transform is not None else [0] * self.views
        label = record.get("label")
        item = {
            "subject_id": str(record["subject_id"]),
            "modality_mask": modality_mask,
            "label": torch.tensor(float("nan") if label is None else float(label), dtype=torch.float32),
        }
        if self.deferred:
            return {**item, "image": cached.as_subclass(torch.Tensor).contiguous(),
                    "augment_seeds": torch.tensor(seeds, dtype=torch.int64)}
        views = [self._augment(cached, modality_mask, seed) for seed in seeds]
        return {**item, "image": views[0] if self.views == 1 else torch.stack(views)}

    def _augment(self, image: torch.Tensor, modality_mask: torch.Tensor, seed: int) -> torch.Tensor:
        """One random draw from ``seed``; the cached volume when not augmenting."""
        if self.transform is not None:
            image = apply_augmentation(self.transform, image, modality_mask, seed)
        return image.as_subclass(torch.Tensor).contiguous()
