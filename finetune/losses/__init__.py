"""Imbalance-aware losses for the binary recurrence logit, registered by name (``finetune.loss``
in a run config), and a class-balanced sampler.

Every loss is an ``nn.Module`` with ``forward(logits: (B,), targets: (B,) float 0/1) -> ()``.
Data-derived arguments (positive weight, class counts, prior) are constructor arguments stored
as buffers and computed from the training fold by the caller (``loss_arguments``), never
inside the loss.

    >>> from finetune.losses import create_loss, loss_arguments
    >>> loss_fn = create_loss("focal", gamma=2.0)
    >>> loss_fn = create_loss("weighted_bce", **loss_arguments("weighted_bce", [0, 0, 0, 1]))
"""

from __future__ import annotations

from finetune.losses._labels import class_counts
from finetune.losses._registry import (
    LOSSES,
    create_loss,
    loss_arguments,
    register_loss,
)
from finetune.losses.class_balanced import ClassBalancedLoss, effective_number_weights
from finetune.losses.focal import FocalLoss, focal_terms
from finetune.losses.logit_adjusted import LogitAdjustedLoss
from finetune.losses.sampler import balanced_sampler
from finetune.losses.weighted_bce import WeightedBCELoss, bce, positive_weight

__all__ = [
    "LOSSES",
    "ClassBalancedLoss",
    "FocalLoss",
    "LogitAdjustedLoss",
    "WeightedBCELoss",
    "balanced_sampler",
    "bce",
    "class_counts",
    "create_loss",
    "effective_number_weights",
    "focal_terms",
    "loss_arguments",
    "positive_weight",
    "register_loss",
]
