"""Focal loss for a single binary logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.losses._checks import check_finite, check_inputs
from finetune.losses._registry import register_loss


def focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-subject focal term ``−(1 − p_t)^γ · log p_t`` (B,), without α.

    ``p_t`` is the probability given to the true class. Written with log-sigmoids of the signed
    margin ``z_t = (2y − 1)·z``: ``log p_t = log σ(z_t)`` and ``log(1 − p_t) = log σ(−z_t)``, so
    neither ``1 − σ(z)`` (which rounds to 0 for large z) nor a power of 0 (whose gradient is
    undefined for γ < 1) is ever formed. Targets must be 0/1 (not smoothed).

    Shape: logits (B,), targets (B,) 0/1 of the same dtype -> (B,).
    """
    signed = (2.0 * targets - 1.0) * logits  # z_t: large positive = confidently right
    log_p_true = F.logsigmoid(signed)
    if gamma == 0.0:
        return -log_p_true  # exactly BCE; skips exp(0 · log(...))
    modulating = torch.exp(gamma * F.logsigmoid(-signed))  # (1 − p_t)^γ
    return -modulating * log_p_true


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss, Lin et al. 2017 ("Focal Loss for Dense Object Detection", ICCV, eq. 5).

    ``FL(p_t) = −α_t · (1 − p_t)^γ · log p_t``, averaged over the batch, with ``p_t = σ(z)`` for
    a positive and ``1 − σ(z)`` for a negative, ``α_t = α`` for a positive and ``1 − α`` for a
    negative. ``(1 − p_t)^γ`` down-weights subjects the model already classifies well, so the
    rare, hard ones dominate the gradient. γ = 0 without α is BCE.

    Args:
        gamma: focusing parameter γ ≥ 0 (the paper's default 2.0).
        alpha: weight of positives in (0, 1), negatives get ``1 − α``; ``None`` (default) weights
            both classes 1. The paper's 0.25 suits detection, where γ already suppresses the
            easy negatives; with 10–20 % positives a caller may pass e.g. the training fold's
            negative rate instead. Stored as a buffer, computed by the caller.

    Shape:
        logits (B,) raw recurrence logits; targets (B,) float 0/1. Returns a scalar ``()``.
    """

    alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = check_finite("gamma", gamma, low=0.0, fix="use gamma >= 0 (2.0 in the paper)")
        if alpha is None:
            self.register_buffer("alpha", None)
        else:
            value = check_finite("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True,
                                 fix="alpha weights positives and must be in (0, 1), or None")
            self.register_buffer("alpha", torch.tensor(value))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets)
        loss = focal_terms(logits, targets, self.gamma)  # (B,)
        if self.alpha is not None:
            alpha = self.alpha.to(logits.dtype)
            loss = (targets * alpha + (1.0 - targets) * (1.0 - alpha)) * loss
        return loss.mean()

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else round(self.alpha.item(), 4)
        return f"gamma={self.gamma}, alpha={alpha}"
