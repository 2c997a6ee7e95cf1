"""Optional objective: masked feature reconstruction (BERT-style masking of clinical features,
as in VIME, Yoon et al. 2020, and the masked-tabular term of multimodal tabular–imaging SSL).

A random share of the *present* features of each row is hidden (entered as missing), and the
model predicts them from the fused representation: MSE for continuous, cross-entropy for
categorical features. Values that were missing in the data are never targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pretrain import distributed


def mask_features(missing: torch.Tensor, rate: float, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Choose max(1, round(rate · present)) present features per row (none in an all-missing row).

    Args:
        missing: (B, F) bool, True where the value is missing.
        rate: share of each row's present features to mask, in (0, 1).
        generator: random source (draws on its device; the mask follows ``missing``'s device), seeded
            alike on every rank: the scores cover the global (world_size · B) rows, this rank keeps its own.
        rank, world_size: this rank's rows of that draw.

    Returns:
        (B, F) bool mask, True = hidden and reconstructed; never True where ``missing``.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"mask_features: rate must be in (0, 1), got {rate}; set pretrain.mask_rate")
    present = (~missing).sum(dim=1)  # (B,)
    count = torch.where(present > 0, (present.float() * rate).round().long().clamp(min=1), 0)
    rows = missing.shape[0]
    scores = torch.rand((rows * world_size, missing.shape[1]), generator=generator, device=generator.device)
    scores = scores[rank * rows:(rank + 1) * rows].to(missing.device)
    scores = scores.masked_fill(missing, 2.0)  # missing features sort last
    order = scores.argsort(dim=1).argsort(dim=1)
    return (order < count[:, None]) & ~missing


def masked_tabular_loss(
    pred_continuous: torch.Tensor,
    pred_logits: Sequence[torch.Tensor],
    continuous: torch.Tensor,
    categorical: torch.Tensor,
    missing: torch.Tensor,
    mask: torch.Tensor,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean reconstruction loss over the masked, present features.

    Args:
        pred_continuous: (B, n_cont) predicted standardised values.
        pred_logits: n_cat tensors (B, K_j + 1), logits over each categorical's codes.
        continuous: (B, n_cont) true values; categorical: (B, n_cat) true codes.
        missing: (B, n_cont + n_cat) bool, True where the true value is missing.
        mask: (B, n_cont + n_cat) bool from ``mask_features``.
        gather: divide by the target count of all ranks (identity when not distributed), so DDP's
            gradient average equals the single-process mean over the global batch.

    Returns:
        ``masked_tabular_loss``: scalar; squared errors and cross-entropies averaged together over
        the target features; 0 (with gradient) when nothing is masked.
    """
    n_cont, n_cat = continuous.shape[1], categorical.shape[1]
    if len(pred_logits) != n_cat or pred_continuous.shape != continuous.shape:
        raise ValueError(f"masked_tabular_loss: need pred_continuous {tuple(continuous.shape)} and "
                         f"{n_cat} categorical logit tensors; got {tuple(pred_continuous.shape)} and {len(pred_logits)}")
    target = mask & ~missing  # (B, F)
    total = pred_continuous.sum() * 0.0  # keeps the graph when nothing is masked
    squared = (pred_continuous.float() - continuous.float()) ** 2
    total = total + squared[target[:, :n_cont]].sum()
    for j, logits in enumerate(pred_logits):
        rows = target[:, n_cont + j]
        if rows.any():
            total = total + F.cross_entropy(logits[rows].float(), categorical[rows, j], reduction="sum")
    count, world = target.sum().to(total.dtype), 1
    if gather:
        count, world = distributed.all_reduce_sum(count), distributed.world_size()
    return {"masked_tabular_loss": total * (world / count.clamp(min=1))}
