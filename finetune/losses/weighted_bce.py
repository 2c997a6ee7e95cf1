"""Binary cross-entropy with a positive-class weight, and plain BCE (for the balanced sampler)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.losses._checks import check_finite, check_inputs
from finetune.losses._labels import class_counts
from finetune.losses._registry import register_loss


def positive_weight(labels: Any) -> float:
    """``n_neg / n_pos`` of training-fold ``labels`` (N,) of 0/1: the ``pos_weight`` that gives
    both classes the same total weight. Raises ``CohortError`` if a class is absent."""
    n_neg, n_pos = class_counts(labels, "training labels")
    return n_neg / n_pos


@register_loss("weighted_bce")
class WeightedBCELoss(nn.Module):
    """Binary cross-entropy on logits with a weight on the positive term.

    ``L = mean_i[ -w · y_i · log σ(z_i) − (1 − y_i) · log(1 − σ(z_i)) ]``, the weighted
    likelihood of King & Zeng 2001 ("Logistic Regression in Rare Events Data") as implemented by
    ``torch.nn.functional.binary_cross_entropy_with_logits(pos_weight=w)``.

    Args:
        pos_weight: weight ``w > 0`` of positive subjects, usually ``positive_weight(labels)``
            = n_neg / n_pos of the training fold (computed by the caller, never here).

    Shape:
        logits (B,) raw recurrence logits; targets (B,) float 0/1. Returns a scalar ``()``.
    """

    pos_weight: torch.Tensor

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        weight = check_finite("pos_weight", pos_weight, low=0.0, low_open=True,
                              fix="pass n_neg / n_pos of the training fold (positive_weight(labels))")
        self.register_buffer("pos_weight", torch.tensor(weight))

    @staticmethod
    def arguments_from_labels(labels: Any) -> dict[str, Any]:
        """``{"pos_weight": n_neg / n_pos}`` of training-fold labels (N,)."""
        return {"pos_weight": positive_weight(labels)}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets)
        return F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight.to(logits.dtype)
        )

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight.item():.4g}"


@register_loss("bce")
def bce() -> nn.Module:
    """Unweighted BCE (``pos_weight = 1``): use it with ``balanced_sampler``, which already
    rebalances the batches, so the imbalance is not corrected twice."""
    return WeightedBCELoss(pos_weight=1.0)
