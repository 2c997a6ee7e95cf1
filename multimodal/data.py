"""Stage-free data building blocks: cohort rows → one item per subject, for every stage.

Pretraining, fine-tuning, ``predict`` and the fixed test cohort all build their datasets here
(``build_dataset``), read volumes through one cache rule (``volume_cache``: ``data.cache_dir``
when the run config sets it, else ``<folder of the cohort being read>/.strokessl-cache``), and
share seeding and device moves. An item is::

    {"index": int (cohort position; the memory queue's subject id), "subject_id": str,
     "image": (C, H, W, D) or (views, C, H, W, D), "table": {continuous, categorical, missing},
     "<other modality>": tensor from its registered reader,
     "present": {modality: () bool}, False where the subject lacks that modality,
     "label": () float32 (only when the dataset holds labels)}

A modality the caller does not ask for is left out of the item. A subject lacks the image
modality when its cohort's ``missing_images`` policy says so (``VolumeCache.has_image``), the
table when every clinical feature is missing, another modality when its reader says so.

Modalities beyond image and table register a reader here (``@register_modality("report")``):
``reader(cohort, ids, args) -> (inputs (N, ...), present (N,) bool)``, ``args`` being the
encoder's ``model.encoders.<modality>.args``; with an encoder file registering its encoders for
that modality and a ``model.encoders`` entry, that is all a new modality needs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from multimodal.cohort import Cohort
from multimodal.config import AugmentConfig, CohortConfig, RunConfig
from multimodal.errors import ConfigError
from multimodal.imaging import ImageDataset
from multimodal.registry import Registry
from multimodal.tabular import TabularPreprocessor
from multimodal.volume_cache import VolumeCache

logger = logging.getLogger(__name__)

CACHE_FOLDER = ".strokessl-cache"
BUILT_IN_MODALITIES = ("image", "table")  # read by VolumeCache and TabularPreprocessor
ModalityReader = Callable[[Cohort, list[str], dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
MODALITY_READERS = Registry("modality reader")


def register_modality(name: str) -> Callable[[ModalityReader], ModalityReader]:
    """Decorator registering the reader of modality ``name`` (see the module docstring)."""
    if name in BUILT_IN_MODALITIES:
        raise ValueError(f"modality {name!r} is built in")
    return MODALITY_READERS.register(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: one seed drives everything."""
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


def encoder_sizes(modalities: list[str], sequences: list[str],
                  preprocessor: TabularPreprocessor) -> dict[str, dict[str, Any]]:
    """What the data fixes of each modality's encoder (``build_encoder``'s ``from_data``): image
    ``in_channels`` (one per MRI sequence), table the preprocessor's feature counts, others nothing."""
    fixed = {"image": {"in_channels": len(sequences)},
             "table": {"num_continuous": len(preprocessor.continuous), "category_sizes": preprocessor.category_sizes}}
    return {m: fixed.get(m, {}) for m in modalities}


def cache_dir_for(run_config: RunConfig, cohort_config: CohortConfig) -> Path:
    """The one cache-folder rule: ``data.cache_dir`` when set, else ``<cohort folder>/.strokessl-cache``
    for the cohort being read (training, test or ``predict`` cohort alike)."""
    if run_config.data.cache_dir is not None:
        return Path(run_config.data.cache_dir)
    return cohort_config.root / CACHE_FOLDER


def volume_cache(run_config: RunConfig, cohort_config: CohortConfig, sequences: list[str]) -> VolumeCache:
    """The MRI cache for ``cohort_config``'s images with the run's imaging settings."""
    return VolumeCache(cache_dir_for(run_config, cohort_config), run_config.imaging, sequences,
                       cohort_config.missing_images, cohort_config.volume_index, run_config.data.cache_dtype,
                       cohort_config.head_extent_mm, cohort_config.series)


class MultimodalDataset(Dataset):
    """One item per subject (see the module docstring). ``images`` / ``table`` / ``others``
    (modality -> (N, ...) inputs) / ``labels`` may be None or empty, and their keys are then absent
    from the items; ``present`` maps each modality given to its (N,) bool presence."""

    def __init__(
        self,
        ids: list[str],
        positions: list[int],
        images: ImageDataset | None,
        table: dict[str, torch.Tensor] | None,
        labels: np.ndarray | None = None,
        others: dict[str, torch.Tensor] | None = None,
        present: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.ids = ids
        self.positions = positions
        self.images = images
        self.table = table
        self.others = others or {}
        self.labels = torch.as_tensor(labels, dtype=torch.float32) if labels is not None else None
        self.present = present if present is not None else _all_present(len(ids), images, table, self.others)

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's augmentations (see ``ImageDataset.set_epoch``)."""
        if self.images is not None:
            self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``i``, or ``(epoch, i)``: item ``i`` augmented as in that epoch (a sampler carrying
        the epoch to persistent workers, ``pretrain.data.EpochSampler``)."""
        epoch, i = key if isinstance(key, tuple) else (None, key)
        item: dict[str, Any] = {"index": self.positions[i], "subject_id": self.ids[i]}
        if self.images is not None:
            image = self.images.item(i, epoch)
            item["image"] = image["image"]
            if "augment_seeds" in image:  # augmented on the device (multimodal.imaging.DeviceAugmentation)
                item["augment"] = {"seeds": image["augment_seeds"], "channels": image["modality_mask"]}
        if self.table is not None:
            item["table"] = {key: value[i] for key, value in self.table.items()}
        for modality, inputs in self.others.items():
            item[modality] = inputs[i]
        item["present"] = {modality: flags[i] for modality, flags in self.present.items()}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


def _all_present(n: int, images: Any, table: Any, others: dict[str, Any]) -> dict[str, torch.Tensor]:
    names = [m for m, given in (("image", images), ("table", table)) if given is not None] + list(others)
    return {m: torch.ones(n, dtype=torch.bool) for m in names}


def modality_presence(cohort: Cohort, ids: list[str], cache: VolumeCache | None,
                      others: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{modality: (N,) bool}`` for the image (when ``cache`` is given), the raw clinical row and
    every modality of ``others``: which subjects of ``ids`` have what."""
    present = {"table": cohort.features.loc[ids].notna().any(axis=1).to_numpy()}
    if cache is not None:
        present["image"] = np.array([cache.has_image(r) for r in cohort.records(ids)], dtype=bool)
    for modality, args in others.items():
        present[modality] = MODALITY_READERS.lookup(modality)(cohort, ids, args)[1].numpy().astype(bool)
    return present


def fit_encoders_to_data(encoders: dict[str, nn.Module], dataset: MultimodalDataset) -> None:
    """Fit the data-dependent state of every encoder that has one (``fit_to_data(inputs (N, ...),
    present (N,))``, e.g. the report encoder's IDF weights) on ``dataset``'s rows, the training rows
    of the stage building the encoders; that state is a buffer, so it travels with the weights.
    Encoders loaded from a pretraining run keep the state they trained with: the caller passes only
    the encoders it built fresh."""
    for modality, encoder in encoders.items():
        if hasattr(encoder, "fit_to_data") and modality in dataset.others:
            encoder.fit_to_data(dataset.others[modality], dataset.present[modality])


def modalities_with_data(cohort: Cohort, ids: list[str], modalities: list[str],
                         others: dict[str, dict[str, Any]]) -> list[str]:
    """``modalities`` less each one beyond image and table that no subject of ``ids`` has (the report
    of a cohort without ``text:`` columns), with a log line: such a cohort runs exactly as it would
    without that ``model.encoders`` entry. ``others``: modality -> its encoder args."""
    kept = []
    for modality in modalities:
        if modality in others and not MODALITY_READERS.lookup(modality)(cohort, ids, others[modality])[1].any():
            logger.info("cohort %s has no %s for any subject; the run leaves the %s modality out",
                        cohort.config.source, modality, modality)
            continue
        kept.append(modality)
    return kept


def table_present(table: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(N,)`` bool: rows with at least one clinical feature (an empty row is an absent table)."""
    return ~table["missing"].bool().all(dim=1)


def build_dataset(
    cohort: Cohort,
    ids: list[str] | None = None,
    *,
    cache: VolumeCache | None = None,
    preprocessor: TabularPreprocessor | None = None,
    others: dict[str, dict[str, Any]] | None = None,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    views: int = 1,
    labels: bool = False,
    deferred_augment: bool = False,
) -> MultimodalDataset:
    """The dataset of ``ids`` (default: every subject, in cohort order).

    Images come from ``cache`` (None: no image key), augmented with ``augment`` (None: the cached
    volume) in ``views`` independent draws; the table from ``preprocessor`` (None: no table key);
    ``others`` maps further modalities to their encoder args, read by their registered readers;
    ``labels=True`` adds each subject's label (the caller keeps only labeled subjects then);
    ``deferred_augment=True`` leaves the augmentation to the training device (items carry
    ``augment``: ``seeds`` (views,) and ``channels`` (C,), for ``multimodal.imaging.DeviceAugmentation``).
    """
    ids = list(cohort.ids) if ids is None else list(ids)
    position = {s: i for i, s in enumerate(cohort.ids)}
    rows = [position[s] for s in ids]
    present: dict[str, torch.Tensor] = {}
    images = table = None
    if cache is not None:
        records = cohort.records(ids)
        images = ImageDataset(records, cache, augment, seed=seed, views=views, deferred=deferred_augment)
        present["image"] = torch.tensor([cache.has_image(r) for r in records], dtype=torch.bool)
    if preprocessor is not None:
        table = preprocessor.transform_tensors(cohort.features.loc[ids])
        present["table"] = table_present(table)
    inputs = {}
    for modality, args in (others or {}).items():
        inputs[modality], present[modality] = MODALITY_READERS.lookup(modality)(cohort, ids, args)
    return MultimodalDataset(ids, rows, images, table, cohort.labels[rows] if labels else None, inputs, present)
