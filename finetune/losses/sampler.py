"""Class-balanced sampling: an alternative to reweighting the loss."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

from finetune.losses._labels import as_binary_labels, class_counts


def balanced_sampler(labels: Any, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` drawing both classes equally often, in expectation.

    Each subject gets weight ``1 / n_class`` of its class, so each class has total weight 1;
    ``len(labels)`` indices are drawn with replacement per epoch (rare positives repeat).
    Pair it with an unweighted loss (``bce``, ``focal`` without α), or the imbalance is
    corrected twice. Pass a seeded ``generator`` for a reproducible order.

    Args:
        labels: training-fold labels (N,) of 0/1, in dataset order.
        generator: drives the draws; ``None`` uses torch's global RNG.

    Raises ``CohortError`` if the labels are not 0/1 or hold a single class.
    """
    n_neg, n_pos = class_counts(labels, "training labels")
    array = torch.as_tensor(as_binary_labels(labels))
    weights = torch.where(array == 1, 1.0 / n_pos, 1.0 / n_neg).to(torch.float64)  # (N,)
    return WeightedRandomSampler(weights, num_samples=len(array), replacement=True,
                                 generator=generator)
