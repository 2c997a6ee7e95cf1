"""Pretraining objectives, one module each, named by the keys of ``pretrain.objectives`` in a run
config. Each returns a dict of named terms: the entry ``<name>_loss`` is weighted and summed into the
total; the other scalar entries are logged. The objectives read different parts of a step (pairs,
views, masks), so ``pretrain.loop.PretrainStep`` calls each by name; ``OBJECTIVES`` lists those names
for the config check (a new objective is a module here, a branch in the step and its name below).
"""

from __future__ import annotations

from pretrain.objectives.clip import clip_loss, paired_clip_loss
from pretrain.objectives.itm import (
    gumbel_noise,
    itm_loss,
    itm_noise,
    near_duplicates,
    sample_negatives,
    table_signature,
)
from pretrain.objectives.masked_tabular import mask_features, masked_tabular_loss
from pretrain.objectives.masked_volume import masked_volume_loss, patch_mask
from pretrain.objectives.queue import EmbeddingQueue
from pretrain.objectives.scarf import scarf_corrupt, scarf_loss
from pretrain.objectives.simclr import simclr_loss

OBJECTIVES = ("clip", "itm", "masked_tabular", "masked_volume", "scarf", "simclr")


__all__ = [
    "OBJECTIVES",
    "EmbeddingQueue",
    "clip_loss",
    "gumbel_noise",
    "itm_loss",
    "itm_noise",
    "mask_features",
    "masked_tabular_loss",
    "masked_volume_loss",
    "near_duplicates",
    "paired_clip_loss",
    "patch_mask",
    "sample_negatives",
    "scarf_corrupt",
    "scarf_loss",
    "simclr_loss",
    "table_signature",
]
