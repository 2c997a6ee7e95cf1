"""Stage-free data building blocks: cohort rows → one item per subject, for every stage.

Pretraining, fine-tuning, ``predict`` and the fixed test cohort all build their datasets here
(``build_dataset``), read volumes through one cache rule (``volume_cache``: ``data.cache_dir``
when the run config sets it, else ``<folder of the cohort being read>/.strokessl-cache``), and
share seeding and device moves. An item is::

    {"index": int (cohort position; the memory queue's subject id), "subject_id": str,
     "image": (C, H, W, D) or (views, C, H, W, D), "table": {continuous, categorical, missing},
     "label": () float32 (only when the dataset holds labels)}

A modality the caller does not ask for is left out of the item.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from multimodal.cohort import Cohort
from multimodal.config import AugmentConfig, CohortConfig, RunConfig
from multimodal.errors import ConfigError
from multimodal.imaging import ImageDataset, VolumeCache
from multimodal.tabular import TabularPreprocessor

CACHE_FOLDER = ".strokessl-cache"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (DESIGN.md §5: one seed drives everything)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested dict) batch to ``device``; other values stay as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def resolve_sequences(run_config: RunConfig, cohort: Cohort) -> list[str]:
    """Channels in order: ``imaging.sequences`` or every cohort sequence; unknown names are an error."""
    sequences = list(run_config.imaging.sequences or cohort.sequences)
    unknown = [s for s in sequences if s not in cohort.sequences]
    if unknown:
        raise ConfigError(
            f"imaging.sequences names {unknown}, but cohort {cohort.config.source} has {cohort.sequences}"
        )
    return sequences


def cache_dir_for(run_config: RunConfig, cohort_config: CohortConfig) -> Path:
    """The one cache-folder rule: ``data.cache_dir`` when set, else ``<cohort folder>/.strokessl-cache``
    for the cohort being read (training, test or ``predict`` cohort alike)."""
    if run_config.data.cache_dir is not None:
        return Path(run_config.data.cache_dir)
    return cohort_config.root / CACHE_FOLDER


def volume_cache(run_config: RunConfig, cohort_config: CohortConfig, sequences: list[str]) -> VolumeCache:
    """The MRI cache for ``cohort_config``'s images with the run's imaging settings."""
    return VolumeCache(cache_dir_for(run_config, cohort_config), run_config.imaging, sequences,
                       cohort_config.missing_images, cohort_config.volume_index, run_config.data.cache_dtype)


class MultimodalDataset(Dataset):
    """One item per subject (see the module docstring); ``images`` / ``table`` / ``labels`` may be
    None, and their keys are then absent from the items."""

    def __init__(
        self,
        ids: list[str],
        positions: list[int],
        images: ImageDataset | None,
        table: dict[str, torch.Tensor] | None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.ids = ids
        self.positions = positions
        self.images = images
        self.table = table
        self.labels = torch.as_tensor(labels, dtype=torch.float32) if labels is not None else None

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's augmentations (see ``ImageDataset.set_epoch``)."""
        if self.images is not None:
            self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": self.positions[i], "subject_id": self.ids[i]}
        if self.images is not None:
            item["image"] = self.images[i]["image"]
        if self.table is not None:
            item["table"] = {key: value[i] for key, value in self.table.items()}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


def build_dataset(
    cohort: Cohort,
    ids: list[str] | None = None,
    *,
    cache: VolumeCache | None = None,
    preprocessor: TabularPreprocessor | None = None,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    views: int = 1,
    labels: bool = False,
) -> MultimodalDataset:
    """The dataset of ``ids`` (default: every subject, in cohort order).

    Images come from ``cache`` (None: no image key), augmented with ``augment`` (None: the cached
    volume) in ``views`` independent draws; the table from ``preprocessor`` (None: no table key);
    ``labels=True`` adds each subject's label (the caller keeps only labeled subjects then).
    """
    ids = list(cohort.ids) if ids is None else list(ids)
    position = {s: i for i, s in enumerate(cohort.ids)}
    rows = [position[s] for s in ids]
    images = ImageDataset(cohort.records(ids), cache, augment, seed=seed, views=views) if cache is not None else None
    table = preprocessor.transform_tensors(cohort.features.loc[ids]) if preprocessor is not None else None
    return MultimodalDataset(ids, rows, images, table, cohort.labels[rows] if labels else None)
