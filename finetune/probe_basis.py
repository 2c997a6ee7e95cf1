"""``finetune.probe_components: pretraining``: the probe's principal axes from every subject the
pretraining run read, not from the training fold alone.

The subjects are the ones the pretraining run folder names through its ``config.yaml``: its
``cohort`` and ``pretrain.rows`` (unlabeled rows by default, every row with ``all``; its training
and validation split alike). No label is read: the rows only fix the axes along which each
embedding block is reduced (``finetune.probe.fit_linear_probe``'s ``basis``). A subject lacking a
modality the fine-tuning model reads is left out, as pretraining leaves it out of its pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from finetune.init import PretrainingRun
from finetune.model import FusionClassifier, precompute_embeddings
from multimodal.cohort import Cohort, load_cohort
from multimodal.config import RunConfig, load_cohort_config
from multimodal.data import build_dataset, volume_cache
from multimodal.errors import ConfigError
from multimodal.outcome import run_horizon
from multimodal.tabular import TabularPreprocessor

logger = logging.getLogger(__name__)


def pretraining_subjects(run: PretrainingRun) -> tuple[Cohort, list[str]]:
    """The cohort ``run`` was pretrained on and the ids it read (``pretrain.rows``: ``unlabeled``, the
    pretraining default, or ``all``). A cohort that no longer exists is a ``ConfigError``."""
    source = Path(run.config.cohort)
    if not source.is_file():
        raise ConfigError(f"finetune.probe_components: pretraining reads the pretraining cohort {source} of "
                          f"{run.run_dir}, which no longer exists; restore it or use probe_components: fold")
    cohort = load_cohort(load_cohort_config(source), run_horizon(run.config.finetune))
    if run.config.pretrain.get("rows", "unlabeled") == "all":
        return cohort, list(cohort.ids)
    return cohort, [s for s, labeled in zip(cohort.ids, cohort.labeled, strict=True) if not labeled]


def pretraining_basis(model: FusionClassifier, run: PretrainingRun, run_config: RunConfig,
                      preprocessor: TabularPreprocessor, sequences: list[str], others: dict[str, dict],
                      batch_size: int, device: torch.device) -> np.ndarray:
    """``(M, F)`` probe inputs (``forward_from_embeddings``' concatenation, modality order) of the M
    pretraining subjects that have every modality ``model`` reads, by its encoders in ``eval()``
    without augmentation, imaged as the fine-tuning ``run_config`` images its own subjects.
    ``preprocessor`` is the pretraining run's (``--init`` reuses it); ``others`` maps the
    modalities beyond image and table to their encoder arguments."""
    cohort, ids = pretraining_subjects(run)
    cache = None
    if "image" in model.modalities:
        cache = volume_cache(run_config, cohort.config, sequences)
        cache.warm(cohort.records(ids), workers=run_config.data.workers)
    data = build_dataset(cohort, ids, cache=cache, preprocessor=preprocessor if "table" in model.modalities else None,
                         others=others, seed=run_config.seed)
    embedded = precompute_embeddings(model, DataLoader(data, batch_size=batch_size), device)
    complete = np.logical_and.reduce([data.present[m].numpy() for m in model.modalities])
    rows = torch.cat([embedded[m] for m in model.modalities], dim=1).numpy()[complete]
    logger.info("probe components from %d subjects of pretraining run %s", len(rows), run.run_dir)
    return rows
