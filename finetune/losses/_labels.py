"""Class counts of a binary label vector, shared by the loss helpers, the sampler and
``finetune.thresholds``: one place that decides what a valid label vector is."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from multimodal.errors import CohortError


def as_binary_labels(labels: Any, what: str = "labels") -> np.ndarray:
    """``labels`` (N,) as an int64 NumPy array of 0/1; anything else is a ``CohortError``.

    Accepts NumPy arrays, tensors (any device) and sequences of bool / int / float 0 and 1.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise CohortError(f"{what} must be one-dimensional (N,), got shape {array.shape}")
    if array.size == 0:
        raise CohortError(f"{what} is empty; a training or validation fold needs subjects")
    if array.dtype.kind not in "biuf":
        raise CohortError(f"{what} must hold 0/1, got dtype {array.dtype}")
    values = np.unique(array)
    # NaN fails both comparisons below, so an unlabeled subject that slipped through is caught.
    if not np.all((values == 0) | (values == 1)):
        raise CohortError(
            f"{what} must hold only 0 and 1, found {values[:5].tolist()}; drop unlabeled "
            "subjects before splitting folds"
        )
    return array.astype(np.int64)


def class_counts(labels: Any, what: str = "labels") -> tuple[int, int]:
    """``(n_neg, n_pos)`` of a 0/1 label vector (N,), for the caller to pass into a loss.

    Compute it on the training fold only (never the whole cohort: that leaks the test labels).
    Raises ``CohortError`` if either class is absent.
    """
    array = as_binary_labels(labels, what)
    n_pos = int(array.sum())
    n_neg = int(array.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        present = "positives" if n_pos else "negatives"
        raise CohortError(
            f"{what} hold a single class ({array.size} {present}, no "
            f"{'negatives' if n_pos else 'positives'}); class weights, priors and thresholds need "
            "both. Use fewer folds or a larger validation fraction so every split has both classes"
        )
    return n_neg, n_pos
