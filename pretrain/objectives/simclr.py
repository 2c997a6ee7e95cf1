"""Image-only baseline: SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

Two augmented views of each volume, NT-Xent between their projections. The loss is lightly's
``NTXentLoss`` with ``gather_distributed=True`` (negatives span the global batch; the identity
gather in a single process), wrapped so it returns a named term like the other objectives.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from lightly.loss import NTXentLoss


@lru_cache(maxsize=8)
def ntxent(temperature: float) -> NTXentLoss:
    """One stateless lightly ``NTXentLoss`` per temperature (no memory bank, global negatives)."""
    if temperature <= 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}; e.g. simclr_temperature: 0.1")
    return NTXentLoss(temperature=temperature, gather_distributed=True)


def simclr_loss(view1: torch.Tensor, view2: torch.Tensor, temperature: float = 0.1) -> dict[str, torch.Tensor]:
    """NT-Xent between the projections of two views.

    Args:
        view1, view2: (B, P) projections of two augmentations of the same B volumes (lightly
            L2-normalises them).
        temperature: softmax temperature.

    Returns:
        ``simclr_loss``: scalar.
    """
    if view1.shape != view2.shape or view1.ndim != 2:
        raise ValueError(f"simclr_loss: views {tuple(view1.shape)} and {tuple(view2.shape)} must both be (B, P)")
    return {"simclr_loss": ntxent(float(temperature))(view1, view2)}
