"""Pretraining data: cohort rows → (cached MRI volume, preprocessed clinical row) pairs.

The tabular preprocessor is fitted on the training split only and saved in the run folder;
MRI volumes come from the disk cache (built once, on the main process) and are augmented in the
DataLoader workers. The sampler is a ``DistributedSampler`` in every case (one replica when not
distributed), so the data order is a function of (seed, epoch) alone and a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from multimodal.cohort import Cohort, load_cohort, stratified_split
from multimodal.config import AugmentConfig, CohortConfig, RunConfig
from multimodal.data import (
    BUILT_IN_MODALITIES,
    MultimodalDataset,
    build_dataset,
    modalities_with_data,
    modality_presence,
    resolve_sequences,
    volume_cache,
)
from multimodal.errors import StrokeSSLError
from multimodal.outcome import run_horizon
from multimodal.run_folder import run_paths
from multimodal.tabular import TabularPreprocessor
from pretrain import distributed
from pretrain.config import PretrainConfig
from pretrain.model import pretrain_modalities
from pretrain.views import view_augmentation

logger = logging.getLogger(__name__)


@dataclass
class PretrainData:
    cohort: Cohort
    sequences: list[str]
    modalities: list[str]  # what the model reads (pretrain_modalities)
    preprocessor: TabularPreprocessor
    train: MultimodalDataset
    val: MultimodalDataset
    table_pool: dict[str, torch.Tensor]  # training rows' tensors: SCARF's empirical marginals
    augment: AugmentConfig  # the training views' augmentation (run on the device with augment_on: device)


def pretraining_subjects(cohort: Cohort, rows: str) -> list[str]:
    """The subjects pretraining reads: unlabeled ones (default) or all."""
    if rows == "all":
        return list(cohort.ids)
    chosen = [s for s, labeled in zip(cohort.ids, cohort.labeled, strict=True) if not labeled]
    if not chosen:
        raise StrokeSSLError(
            f"cohort {cohort.config.source} has no unlabeled subjects to pretrain on; "
            "set pretrain.rows: all to pretrain on every subject (labels are never read)"
        )
    return chosen


def build_pretrain_data(
    run_config: RunConfig, cohort_config: CohortConfig, pretrain: PretrainConfig, run_dir: Path
) -> PretrainData:
    """Split, fit (or reload) the preprocessor, warm the MRI cache and build both datasets.

    Subjects lacking a modality pretraining reads are left out (no pair can be formed with them)."""
    # a time-to-event outcome's label at the horizon decides who is labeled (censored subjects are not)
    cohort = load_cohort(cohort_config, run_horizon(run_config.finetune))
    subjects = pretraining_subjects(cohort, pretrain.rows)
    modalities = pretrain_modalities(run_config.model, pretrain)
    others = {m: run_config.model.encoders[m].args for m in modalities if m not in BUILT_IN_MODALITIES}
    modalities = modalities_with_data(cohort, subjects, modalities, others)
    others = {m: args for m, args in others.items() if m in modalities}
    sequences = resolve_sequences(run_config, cohort)
    cache = volume_cache(run_config, cohort_config, sequences)
    use_images = "image" in modalities
    if use_images:  # first: under missing_images zero / drop_modality preprocessing says whose image is usable
        # Each process builds its share of the missing entries (rank 0 alone, with the others waiting at
        # the barrier, would outlast NCCL's 10-minute timeout on a cohort of tens of thousands), then
        # reads the headers of the others' entries (cheap: hits read no volume).
        records = cohort.records(subjects)
        counts = cache.warm(records[distributed.rank()::distributed.world_size()], workers=run_config.data.workers)
        logger.info("rank %d of %d: %d MRI cache entries built, %d already cached", distributed.rank(),
                    distributed.world_size(), counts["built"], counts["hit"])
        distributed.barrier()
        if distributed.world_size() > 1:
            cache.warm(records, workers=run_config.data.workers)
    present = modality_presence(cohort, subjects, cache if use_images else None, others)
    # image and table form every pair; a subject lacking another modality (a report) stays, and the
    # pairs with that modality skip it (pretrain.objectives.paired_clip_loss)
    paired = [m for m in modalities if m in BUILT_IN_MODALITIES]
    for m in modalities:
        if m not in paired and not present[m].all():
            logger.info("%d of %d pretraining subjects have no %s; they pretrain without it",
                        int((~present[m]).sum()), len(subjects), m)
    complete = np.logical_and.reduce([present[m] for m in paired])
    if not complete.all():
        lacking = {m: int((~present[m]).sum()) for m in paired if not present[m].all()}
        logger.warning("pretraining skips %d subject(s) lacking a modality it pairs (%s)", int((~complete).sum()),
                       ", ".join(f"{n} without {m}" for m, n in lacking.items()))
        subjects = [s for s, keep in zip(subjects, complete, strict=True) if keep]
    position = {s: i for i, s in enumerate(cohort.ids)}
    labels = cohort.labels[[position[s] for s in subjects]]
    train_ids, val_ids = stratified_split(subjects, labels, pretrain.val_fraction, run_config.seed)
    if len(train_ids) < pretrain.batch_size * distributed.world_size() * pretrain.accumulate_steps:
        accumulated = f" x {pretrain.accumulate_steps} accumulated micro-batches" if pretrain.accumulate_steps > 1 else ""
        raise StrokeSSLError(
            f"{len(train_ids)} training subjects cannot fill one optimiser step of "
            f"{pretrain.batch_size} x {distributed.world_size()} process(es){accumulated}; lower pretrain.batch_size"
            f"{' or pretrain.accumulate_steps' if accumulated else ''} or pretrain.val_fraction, or use pretrain.rows: all"
        )
    logger.info("pretraining on %d subjects, %d held out for validation", len(train_ids), len(val_ids))

    preprocessor_path = run_paths(run_dir).preprocessor
    if preprocessor_path.is_file():  # resume: the state the run started with
        preprocessor = TabularPreprocessor.load(preprocessor_path)
    else:
        preprocessor = TabularPreprocessor(cohort.continuous, cohort.categorical).fit(cohort.features.loc[train_ids])
        if distributed.is_main():
            preprocessor.save(preprocessor_path)

    use_table = "table" in modalities

    simclr = "simclr" in pretrain.objectives
    # with simclr, pretrain.simclr_views chooses the training views' augmentation (every view: with clip
    # beside, the first one meets the table too)
    augment = view_augmentation(run_config.imaging.augment, pretrain.simclr_views if simclr else "standard")

    def dataset(ids: list[str], train: bool) -> MultimodalDataset:
        views = 2 if train and simclr else 1
        return build_dataset(cohort, ids, cache=cache if use_images else None,
                             preprocessor=preprocessor if use_table else None, others=others,
                             augment=augment if train else None, seed=run_config.seed, views=views,
                             deferred_augment=train and pretrain.augment_on == "device")

    train = dataset(train_ids, True)
    pool = train.table if train.table is not None else preprocessor.transform_tensors(cohort.features.loc[train_ids])
    return PretrainData(cohort, sequences, modalities, preprocessor, train, dataset(val_ids, False), pool, augment)


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` that yields ``(epoch, index)``: each item's augmentation follows the
    sampler's epoch, so persistent DataLoader workers (which keep their own copy of the dataset and
    never see ``set_epoch`` on the main process's) draw each new epoch's views."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in super().__iter__())


def make_loader(
    dataset: MultimodalDataset, batch_size: int, workers: int, seed: int, train: bool
) -> DataLoader:
    """Training: an ``EpochSampler`` (one replica when not distributed) whose order depends on
    (seed, epoch) only — call ``loader.sampler.set_epoch`` — dropping the last incomplete batch,
    since gathered contrastive batches must have the same size on every rank. Evaluation: every
    subject in order (evaluation runs on the main process). Workers persist between epochs (no
    re-forking, no cold start each epoch); batches are pinned when a GPU is there.
    """
    sampler = None
    if train:
        sampler = EpochSampler(
            dataset, num_replicas=distributed.world_size(), rank=distributed.rank(),
            shuffle=True, seed=seed, drop_last=True,
        )
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        drop_last=train, pin_memory=torch.cuda.is_available(), worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
    )


def _seed_worker(worker_id: int) -> None:
    # Augmentations are seeded per item; this only pins NumPy for anything else a worker draws.
    np.random.seed(torch.initial_seed() % 2**32)
