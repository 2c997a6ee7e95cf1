"""Logit-adjusted loss for a single binary logit."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.losses._checks import check_finite, check_inputs
from finetune.losses._labels import class_counts
from finetune.losses._registry import register_loss


@register_loss("logit_adjusted")
class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted loss, Menon et al. 2021 ("Long-tail learning via logit adjustment", ICLR,
    eq. 10): softmax cross-entropy on ``f_y(x) + τ · log π_y``.

    For two classes and one logit ``z = f_1 − f_0`` this is BCE on the shifted logit
    ``z + τ · (log π_1 − log π_0)``. With few positives (π_1 < π_0) the shift is negative, so
    training has to push positives' raw logits further up: the margin grows for the rare class.

    At prediction time the **raw** logit ``z`` is used, without the shift; that is the point
    (the raw scores estimate the balanced-error-optimal classifier). ``σ(z)`` is then not
    calibrated to the training prevalence; the decision threshold is still chosen on
    validation data (``finetune.thresholds``).

    Args:
        prior: π_1, the positive rate of the training fold in (0, 1), computed by the caller.
        tau: τ ≥ 0 (1.0 by default, the paper's choice); τ = 0 is plain BCE.

    Shape:
        logits (B,) raw recurrence logits; targets (B,) float 0/1. Returns a scalar ``()``.
    """

    adjustment: torch.Tensor

    def __init__(self, prior: float, tau: float = 1.0) -> None:
        super().__init__()
        prior = check_finite("prior", prior, low=0.0, high=1.0, low_open=True, high_open=True,
                             fix="pass the positive rate of the training fold (n_pos / n)")
        self.tau = check_finite("tau", tau, low=0.0, fix="use tau >= 0 (1.0 in the paper)")
        self.prior = prior
        self.register_buffer(
            "adjustment", torch.tensor(self.tau * (math.log(prior) - math.log1p(-prior)))
        )

    @staticmethod
    def arguments_from_labels(labels: Any) -> dict[str, Any]:
        """``{"prior": n_pos / n}`` of training-fold labels (N,)."""
        n_neg, n_pos = class_counts(labels, "training labels")
        return {"prior": n_pos / (n_neg + n_pos)}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets)
        return F.binary_cross_entropy_with_logits(logits + self.adjustment.to(logits.dtype), targets)

    def extra_repr(self) -> str:
        return f"prior={self.prior:.4g}, tau={self.tau}"
