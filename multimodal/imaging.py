"""MRI volumes: MONAI preprocessing → disk cache → random augmentations (DESIGN.md §1, §6).

One subject record is ``{"subject_id", "image": {sequence: path | None}, "label", "table"}``.

1. ``preprocess_subject`` (deterministic): load each NIfTI (``multimodal.nifti``, which refuses
   files without a usable geometry or with non-finite voxels), resample every sequence onto the
   first present sequence's grid, stack as channels, reorient (RAS), resample to the target
   spacing, find a head mask, crop to it (+ margin), pad/crop to ``spatial_size`` and z-score
   each channel inside the head mask.
2. ``VolumeCache``: one ``<sha256>.safetensors`` per subject, keyed on file stats + settings.
3. ``build_augmentation`` / ``ImageDataset``: MONAI ``Rand*d`` transforms on the cached volume,
   reproducible from (seed, epoch, index) whatever the number of DataLoader workers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    FillHoles,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    Spacingd,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from multimodal.checkpoint import atomic_path
from multimodal.config import (
    CACHE_DTYPES,
    MISSING_IMAGE_POLICIES,
    AugmentConfig,
    ImagingConfig,
    check_choice,
)
from multimodal.errors import ImageError, StrokeSSLError
from multimodal.nifti import is_missing, load_sequence

logger = logging.getLogger(__name__)

CACHE_KEYS = ("image", "head_mask", "modality_mask", "affine")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# --------------------------------------------------------------------------- loading
# --------------------------------------------------------------------------- head mask
def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D array (hand-written: MONAI has none, skimage is not a dependency)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2  # between-class variance
    return float(centres[int(np.argmax(between))])


def head_mask(image: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Head mask (H, W, D) bool from an image (C, H, W, D) using the channels where ``present``.

    Each channel is scaled by its 1st/99th percentiles so no sequence dominates, the mean is
    smoothed (noise speckle in the background must not pass the threshold), thresholded by Otsu,
    reduced to its largest connected component and its holes filled.
    """
    scaled = []
    for channel in image[present]:
        low, high = np.percentile(channel, [1, 99])
        scaled.append(np.clip((channel - low) / max(high - low, 1e-6), 0, 1))
    mean = ndimage.gaussian_filter(np.mean(scaled, axis=0), sigma=1.0)
    if mean.max() - mean.min() < 1e-6:
        return np.zeros(mean.shape, dtype=bool)
    # scipy labelling, as MONAI's KeepLargestConnectedComponent needs scikit-image (not a dependency).
    components, count = ndimage.label(mean > _otsu_threshold(mean.ravel()))
    if count == 0:
        return np.zeros(mean.shape, dtype=bool)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    mask = FillHoles()(torch.from_numpy(components == largest)[None])
    return np.asarray(mask[0], dtype=bool)


def _zscore_in_mask(image: torch.Tensor, mask: torch.Tensor, present: np.ndarray) -> torch.Tensor:
    """Per-channel z-score with statistics inside ``mask``; absent channels stay exactly 0."""
    # NormalizeIntensity(nonzero=True) takes statistics over every non-zero voxel, i.e. the
    # noisy background too, so the head would not come out with mean 0 and std 1.
    out = torch.zeros_like(image)
    for c in np.flatnonzero(present):
        values = image[c][mask]
        out[c] = (image[c] - values.mean()) / values.std().clamp_min(1e-6)
    return out


# --------------------------------------------------------------------------- preprocessing
def preprocess_subject(
    record: dict[str, Any],
    imaging: ImagingConfig,
    sequences: Sequence[str],
    missing_images: str = "error",
    volume_index: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Deterministic preprocessing of one subject.

    Returns plain tensors: ``image`` (C, H, W, D) float32 z-scored in the head, ``head_mask``
    (H, W, D) uint8, ``modality_mask`` (C,) float32 (0 = sequence missing, channel all zero) and
    ``affine`` (4, 4) float64 voxel → world (RAS mm), with (H, W, D) = ``imaging.spatial_size``.
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
        s: load_sequence(subject, s, str(paths[s]), volume_index.get(s))
        for s, p in zip(sequences, present, strict=True)
        if p
    }
    # Resample on the first present sequence's grid *before* orientation/spacing, so fields of
    # view that differ in position, extent and orientation end up aligned voxel for voxel.
    reference, *others = list(data)
    if others:
        data = ResampleToMatchd(others, key_dst=reference, padding_mode="zeros", dtype=np.float32)(data)
    for s in missing:
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
    return {
        "image": _zscore_in_mask(image, final_mask, present).contiguous(),
        "head_mask": final_mask.to(torch.uint8),
        "modality_mask": torch.from_numpy(present.astype(np.float32)),
        "affine": data["image"].affine.to(torch.float64),
    }


# --------------------------------------------------------------------------- disk cache
class VolumeCache:
    """Preprocessed volumes on disk, one ``<cache_dir>/<key>.safetensors`` per subject.

    The key (DESIGN.md §6) hashes each sequence's absolute path, size and mtime_ns, the imaging
    settings that change preprocessing (not augmentation), the missing-image policy, the volume
    indices and the strokessl and MONAI versions, so a touched file or a changed setting never
    reuses a stale entry. ``built`` / ``hits`` count builds and cache hits in this process.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        imaging: ImagingConfig,
        sequences: Sequence[str],
        missing_images: str = "error",
        volume_index: dict[str, int] | None = None,
        dtype: str = "float32",
    ) -> None:
        check_choice("missing_images", missing_images, MISSING_IMAGE_POLICIES)
        check_choice("data.cache_dtype", dtype, CACHE_DTYPES)
        if not sequences:
            raise ValueError("sequences is empty; name at least one MRI sequence")
        self.cache_dir = Path(cache_dir)
        self.imaging = imaging
        self.sequences = list(sequences)
        self.missing_images = missing_images
        self.volume_index = {s: int(v) for s, v in (volume_index or {}).items() if s in self.sequences}
        self.dtype = dtype
        self.built = 0
        self.hits = 0

    def key(self, record: dict[str, Any]) -> str:
        """sha256 hex digest identifying this subject's preprocessed volume."""
        files = []
        for sequence in self.sequences:
            path = record["image"].get(sequence)
            if is_missing(path):
                files.append([sequence, None])
                continue
            path = os.path.abspath(path)
            try:
                stat = os.stat(path)
            except OSError as err:
                raise ImageError(
                    f"subject {record['subject_id']!r}, sequence {sequence!r}: {path} cannot be "
                    f"opened ({err.strerror}); fix the path in the cohort CSV"
                ) from err
            files.append([sequence, path, stat.st_size, stat.st_mtime_ns])
        settings = {
            "files": files,
            "spacing": list(self.imaging.spacing),
            "spatial_size": list(self.imaging.spatial_size),
            "orientation": self.imaging.orientation,
            "head_margin_mm": self.imaging.head_margin_mm,
            # drop_modality caches exactly what error does (complete subjects only): share the entries.
            "missing_images": "error" if self.missing_images == "drop_modality" else self.missing_images,
            "volume_index": sorted(self.volume_index.items()),
            "dtype": self.dtype,  # so switching to float16 really shrinks the cache
            "strokessl": importlib.metadata.version("strokessl"),
            "monai": monai.__version__,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def has_image(self, record: dict[str, Any]) -> bool:
        """False for a subject whose image modality is absent under the policy (``drop_modality``: a
        sequence is missing; ``zero``: every sequence is); such subjects are never preprocessed."""
        present = [not is_missing(record["image"].get(s)) for s in self.sequences]
        if self.missing_images == "drop_modality":
            return all(present)
        return any(present) if self.missing_images == "zero" else True  # error refuses in preprocessing

    def path(self, record: dict[str, Any]) -> Path:
        """Where this subject's entry lives: ``<cache_dir>/<key>.safetensors``."""
        return self.cache_dir / f"{self.key(record)}.safetensors"

    def _read(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The cached tensors, or None (with a warning) when the entry is unusable."""
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            logger.warning("cache entry %s is unreadable (%s); rebuilding it", path, err)
            return None
        expected = (len(self.sequences), *self.imaging.spatial_size)
        if set(tensors) != set(CACHE_KEYS) or tuple(tensors["image"].shape) != expected:
            logger.warning("cache entry %s does not hold a %s volume; rebuilding it", path, expected)
            return None
        tensors["image"] = tensors["image"].float()
        return tensors

    def _ensure(self, record: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
        path = self.path(record)
        if path.is_file():
            tensors = self._read(path)
            if tensors is not None:
                return "hit", tensors
        tensors = preprocess_subject(record, self.imaging, self.sequences, self.missing_images, self.volume_index)
        stored = dict(tensors, image=tensors["image"].to(getattr(torch, self.dtype)))
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
        logger.debug("cached %s", path.name)  # no subject id: logs hold none
        return "built", tensors

    def load(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The subject's volume, built and cached first if needed.

        Returns ``image`` (C, H, W, D) float32, ``head_mask`` (H, W, D) uint8,
        ``modality_mask`` (C,) float32 and ``affine`` (4, 4) float64.
        """
        status, tensors = self._ensure(record)
        if status == "hit":
            self.hits += 1
        else:
            self.built += 1
        return tensors

    def warm(self, records: Sequence[dict[str, Any]], workers: int = 0) -> dict[str, int]:
        """Build every missing entry (``workers`` processes) and return ``{"built", "hit"}``.

        Errors from several subjects are collected and raised together as one ``ImageError``.
        """
        records = [r for r in records if self.has_image(r)]
        loader = DataLoader(
            _WarmDataset(self, records), batch_size=None, num_workers=workers, collate_fn=_identity
        )
        counts = {"built": 0, "hit": 0}
        errors = []
        for status, message in tqdm(loader, total=len(records), desc="caching volumes", unit="subject"):
            if status == "error":
                errors.append(message)
            else:
                counts[status] += 1
        self.built += counts["built"]
        self.hits += counts["hit"]
        if errors:
            shown = " | ".join(errors[:3]) + (f" | and {len(errors) - 3} more" if len(errors) > 3 else "")
            raise ImageError(f"{len(errors)} subject(s) could not be preprocessed: {shown}")
        return counts


def _identity(item: Any) -> Any:
    return item


class _WarmDataset(Dataset):
    """Builds one cache entry per item, so ``warm`` can use DataLoader worker processes."""

    def __init__(self, cache: VolumeCache, records: Sequence[dict[str, Any]]) -> None:
        self.cache, self.records = cache, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[str, str]:
        try:
            return self.cache._ensure(self.records[index])[0], ""
        except StrokeSSLError as err:  # an unusable image, or a cache write the disk refused
            return "error", str(err)


# --------------------------------------------------------------------------- augmentation
def build_augmentation(augment: AugmentConfig, seed: int) -> Compose:
    """MONAI random transforms on key ``"image"`` (C, H, W, D) → same shape, seeded by ``seed``.

    Every transform draws its own parameters per call; axis 0 is left-right (RAS).
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


class ImageDataset(Dataset):
    """Cached volumes of ``records``, randomly augmented when ``augment`` is enabled.

    Item: ``{"subject_id": str, "image": (C, H, W, D) float32, "modality_mask": (C,) float32,
    "label": () float32 (nan = unlabeled)}``, plain tensors. With ``views > 1`` (two augmented
    views for SimCLR) ``image`` is ``(views, C, H, W, D)``, each view drawn independently. The
    augmentation of item ``index`` is drawn from (seed, epoch, index, view), so it does not depend
    on the worker count; call ``set_epoch`` before each epoch (with ``persistent_workers=False``,
    workers get the new epoch).
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        cache: VolumeCache,
        augment: AugmentConfig | None,
        seed: int = 0,
        views: int = 1,
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

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that, with the seed and the index, draws each item's augmentation."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.cache.has_image(record):
            tensors = self.cache.load(record)
            cached, modality_mask = tensors["image"], tensors["modality_mask"]
        else:  # no image modality: an empty volume the model is told about (item "present" in the dataset)
            channels = len(self.cache.sequences)
            cached = torch.zeros(channels, *self.cache.imaging.spatial_size)
            modality_mask = torch.zeros(channels)
        views = [self._augment(cached, modality_mask, index, view) for view in range(self.views)]
        image = views[0] if self.views == 1 else torch.stack(views)
        label = record.get("label")
        return {
            "subject_id": str(record["subject_id"]),
            "image": image,
            "modality_mask": modality_mask,
            "label": torch.tensor(float("nan") if label is None else float(label), dtype=torch.float32),
        }

    def _augment(self, image: torch.Tensor, modality_mask: torch.Tensor, index: int, view: int) -> torch.Tensor:
        """One random draw for (seed, epoch, index, view); the cached volume when not augmenting."""
        if self.transform is not None:
            seed = np.random.SeedSequence([self.seed, self.epoch, index, view]).generate_state(1)[0]
            self.transform.set_random_state(seed=int(seed))
            image = torch.as_tensor(self.transform({"image": image})["image"]).float()
            # Noise and bias must not make a missing sequence's channel look present.
            image = image * modality_mask[:, None, None, None]
        return image.as_subclass(torch.Tensor).contiguous()
