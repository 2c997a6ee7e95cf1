"""Class-balanced loss: per-class weights from the effective number of samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from finetune.losses._checks import check_finite, check_inputs
from finetune.losses._labels import class_counts
from finetune.losses._registry import register_loss
from finetune.losses.focal import focal_terms

BASES = ("bce", "focal")


def effective_number_weights(samples_per_class: Sequence[int], beta: float) -> torch.Tensor:
    """Class weights ``(1 − β) / (1 − β^n_c)`` normalised to sum to the number of classes C.

    Cui et al. 2019, Sec. 3–4: ``(1 − β^n) / (1 − β)`` is the effective number of samples of a
    class with n samples; its inverse is the weight. β = 0 gives equal weights, β → 1 inverse
    class frequency. Returns a float32 tensor (C,) in the order of ``samples_per_class``.
    """
    beta = check_finite("beta", beta, low=0.0, high=1.0, high_open=True,
                        fix="use 0 <= beta < 1 (0.9, 0.99, 0.999 or 0.9999 in the paper)")
    counts = list(samples_per_class)
    if len(counts) < 2:
        raise ValueError(f"samples_per_class={counts!r} needs a count per class (n_neg, n_pos)")
    for count in counts:
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise ValueError(
                f"samples_per_class={counts!r} must hold positive whole counts; a class absent "
                "from the training fold cannot be weighted (use fewer folds)"
            )
    # Python floats (double) so that β^n for n in the thousands is not rounded to 1 − ε errors.
    raw = [(1.0 - beta) / (1.0 - beta ** int(n)) for n in counts]
    total = sum(raw)
    return torch.tensor([w * len(counts) / total for w in raw], dtype=torch.float32)


@register_loss("class_balanced")
class ClassBalancedLoss(nn.Module):
    """Class-balanced loss, Cui et al. 2019 ("Class-Balanced Loss Based on Effective Number of
    Samples", CVPR, eq. 5 with the sigmoid / focal losses of Sec. 4).

    ``CB(z, y) = w_y · L(z, y)``, averaged over the batch, with
    ``w_c = (1 − β) / (1 − β^n_c)`` normalised so that ``w_0 + w_1 = 2`` and ``L`` either BCE or
    the focal term ``−(1 − p_t)^γ log p_t`` (the class weight then plays the role of focal α).
    With one logit for two classes each subject carries the weight of its own class.

    Args:
        samples_per_class: ``(n_neg, n_pos)`` counted on the training fold by the caller.
        beta: β in [0, 1); 0.999 by default (the paper's best choices are 0.99–0.9999).
        base: ``"bce"`` or ``"focal"``.
        gamma: focal γ ≥ 0, used only when ``base="focal"``.

    Shape:
        logits (B,) raw recurrence logits; targets (B,) float 0/1. Returns a scalar ``()``.
    """

    class_weights: torch.Tensor

    def __init__(self, samples_per_class: Sequence[int], beta: float = 0.999, base: str = "bce",
                 gamma: float = 2.0) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"base={base!r} is not one of {list(BASES)}")
        self.base = base
        self.gamma = check_finite("gamma", gamma, low=0.0, fix="use gamma >= 0 (2.0 in Lin et al.)")
        self.beta = float(beta)
        self.register_buffer("class_weights", effective_number_weights(samples_per_class, beta))
        if self.class_weights.numel() != 2:
            raise ValueError(
                f"samples_per_class={list(samples_per_class)!r}: a binary logit needs exactly "
                "(n_neg, n_pos)"
            )

    @staticmethod
    def arguments_from_labels(labels: Any) -> dict[str, Any]:
        """``{"samples_per_class": (n_neg, n_pos)}`` of training-fold labels (N,)."""
        return {"samples_per_class": class_counts(labels, "training labels")}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets)
        gamma = self.gamma if self.base == "focal" else 0.0  # γ = 0: focal term is BCE
        loss = focal_terms(logits, targets, gamma)  # (B,)
        w_neg, w_pos = self.class_weights.to(logits.dtype)
        return ((targets * w_pos + (1.0 - targets) * w_neg) * loss).mean()

    def extra_repr(self) -> str:
        weights = [round(w, 4) for w in self.class_weights.tolist()]
        return f"beta={self.beta}, base={self.base!r}, gamma={self.gamma}, class_weights={weights}"
