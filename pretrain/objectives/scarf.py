"""Table-only baseline: SCARF (Bahri et al. 2022, https://arxiv.org/abs/2106.15147).

"For each sample, we randomly select a fraction of its features and replace them by values
drawn from the empirical marginal distribution of each feature" (a random training row's value
of the same feature); NT-Xent then pulls the embeddings of the original and the corrupted row
together. Our rows carry a missing mask, so a replaced feature takes the donor's missing flag
too (the empirical marginal includes missingness).
"""

from __future__ import annotations

import torch

from pretrain.objectives.simclr import ntxent

TABLE_KEYS = ("continuous", "categorical", "missing")


def scarf_corrupt(
    continuous: torch.Tensor,
    categorical: torch.Tensor,
    missing: torch.Tensor,
    pool: dict[str, torch.Tensor],
    rate: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Replace round(rate · F) randomly chosen features of each row by a random pool row's values.

    Args:
        continuous: (B, n_cont) float; categorical: (B, n_cat) long; missing: (B, F) bool,
            F = n_cont + n_cat (``TabularPreprocessor`` tensors).
        pool: the same three keys for M training rows, (M, ...): the empirical marginals.
        rate: share of the F features replaced in each row, in (0, 1).
        generator: random source (its device draws the choices; results follow the batch's device),
            seeded alike on every rank: the draw covers the global (world_size · B) rows and this rank
            keeps its own, so 1 and N processes corrupt the same features.
        rank, world_size: this rank's rows of that draw.

    Returns:
        dict with ``continuous``, ``categorical``, ``missing`` of the input shapes (new tensors).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"scarf_corrupt: rate must be in (0, 1), got {rate}; set pretrain.scarf_corruption")
    missing_keys = [k for k in TABLE_KEYS if k not in pool]
    if missing_keys:
        raise ValueError(f"scarf_corrupt: pool lacks {missing_keys}; pass the training rows' tensors")
    rows, n_cont = continuous.shape
    features = missing.shape[1]
    pool_rows = pool["missing"].shape[0]
    if pool_rows == 0:
        raise ValueError("scarf_corrupt: the pool is empty; it must hold the training rows")
    device = generator.device
    count = max(1, round(rate * features))
    # a random subset of `count` features per row: the smallest `count` of random scores
    mine = slice(rank * rows, (rank + 1) * rows)
    scores = torch.rand(rows * world_size, features, generator=generator, device=device)[mine]
    chosen = scores.argsort(dim=1).argsort(dim=1) < count  # (B, F)
    donor = torch.randint(pool_rows, (rows * world_size, features), generator=generator, device=device)[mine]

    pool_device = pool["missing"].device
    donor, chosen_pool = donor.to(pool_device), chosen.to(pool_device)
    cols = torch.arange(features, device=pool_device)
    donor_missing = pool["missing"][donor, cols]  # (B, F)
    donor_cont = pool["continuous"][donor[:, :n_cont], cols[:n_cont]]  # (B, n_cont)
    donor_cat = pool["categorical"][donor[:, n_cont:], cols[: features - n_cont]]  # (B, n_cat)

    chosen = chosen_pool.to(missing.device)
    return {
        "continuous": torch.where(chosen[:, :n_cont], donor_cont.to(continuous), continuous),
        "categorical": torch.where(chosen[:, n_cont:], donor_cat.to(categorical), categorical),
        "missing": torch.where(chosen, donor_missing.to(missing), missing),
    }


def scarf_loss(original: torch.Tensor, corrupted: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """NT-Xent (lightly, global negatives) between embeddings of original and corrupted rows.

    Args:
        original, corrupted: (B, P) projections of the rows and of their ``scarf_corrupt`` views.
        temperature: softmax temperature (SCARF uses 1.0).

    Returns:
        ``scarf_loss``: scalar.
    """
    if original.shape != corrupted.shape or original.ndim != 2:
        raise ValueError(f"scarf_loss: embeddings {tuple(original.shape)} and {tuple(corrupted.shape)} "
                         "must both be (B, P)")
    return {"scarf_loss": ntxent(float(temperature))(original, corrupted)}
