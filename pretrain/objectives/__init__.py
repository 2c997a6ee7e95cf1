"""Pretraining objectives, one module each, registered by name (the keys of
``pretrain.objectives`` in a run config). Each returns a dict of named terms: the entry
``<name>_loss`` is weighted and summed into the total; the other scalar entries are logged.
"""

from __future__ import annotations

from multimodal.registry import Registry
from pretrain.objectives.clip import clip_loss
from pretrain.objectives.itm import (
    gumbel_noise,
    itm_loss,
    itm_noise,
    near_duplicates,
    sample_negatives,
    table_signature,
)
from pretrain.objectives.masked_tabular import apply_mask, mask_features, masked_tabular_loss
from pretrain.objectives.masked_volume import masked_volume_loss, patch_mask
from pretrain.objectives.queue import EmbeddingQueue
from pretrain.objectives.scarf import scarf_corrupt, scarf_loss
from pretrain.objectives.simclr import simclr_loss

OBJECTIVES = Registry("objective")
for _name, _entry in {"clip": clip_loss, "itm": itm_loss, "masked_tabular": masked_tabular_loss,
                      "masked_volume": masked_volume_loss, "simclr": simclr_loss, "scarf": scarf_loss}.items():
    OBJECTIVES.register(_name)(_entry)
get_objective = OBJECTIVES.lookup  # unknown name: ConfigError naming the nearest one


__all__ = [
    "OBJECTIVES",
    "EmbeddingQueue",
    "apply_mask",
    "clip_loss",
    "get_objective",
    "gumbel_noise",
    "itm_loss",
    "itm_noise",
    "mask_features",
    "masked_tabular_loss",
    "masked_volume_loss",
    "near_duplicates",
    "patch_mask",
    "sample_negatives",
    "scarf_corrupt",
    "scarf_loss",
    "simclr_loss",
    "table_signature",
]
