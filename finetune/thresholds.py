"""Decision thresholds chosen on validation data: Youden's J or a target
sensitivity, never a silent 0.5.

Convention everywhere: a subject is predicted positive (high risk) when
``probability >= threshold``, the same rule ``sklearn.metrics.roc_curve`` uses, so the
threshold returned here reproduces the ROC point it was chosen at.
Thresholds are observed probabilities, hence inside [0, 1].
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from finetune.losses._labels import as_binary_labels, class_counts
from multimodal.config_checks import check_choice
from multimodal.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("youden", "sensitivity")


def _probabilities(probabilities: Any, n: int) -> np.ndarray:
    """``probabilities`` (N,) as float64, finite and in [0, 1]; ``ValueError`` otherwise
    (a caller bug: these come from a sigmoid, not from the user)."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"probabilities must have shape ({n},) like the labels, got {array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            "probabilities must be finite and in [0, 1]; apply a sigmoid to logits first"
        )
    return array


def choose_threshold(labels: Any, probabilities: Any, method: str = "youden",
                     target_sensitivity: float | None = None, name: str = "the model") -> float:
    """The decision threshold chosen on validation ``labels`` (N,) 0/1 and ``probabilities`` (N,).

    * ``"youden"``: maximises Youden's J = sensitivity + specificity − 1 over the ROC; among
      ties, the highest threshold (fewest positive calls).
    * ``"sensitivity"``: the highest threshold whose sensitivity is ≥ ``target_sensitivity``
      (in (0, 1]), i.e. the best specificity that still meets the target.

    ``name`` says whose probabilities these are in the warning for classes it cannot separate.
    Returns a threshold in [0, 1] for the rule ``probability >= threshold``. Raises
    ``ConfigError`` for an unknown method or a missing / out-of-range target, ``CohortError`` if
    the labels hold a single class (no ROC exists).
    """
    check_choice("threshold method", method, METHODS)
    target = 0.0
    if method == "sensitivity":
        if target_sensitivity is None:
            raise ConfigError(
                "threshold method 'sensitivity' needs target_sensitivity in (0, 1], e.g. 0.8"
            )
        target = float(target_sensitivity)
        if not 0.0 < target <= 1.0:  # NaN fails too
            raise ConfigError(
                f"target_sensitivity={target_sensitivity!r} is outside (0, 1]; e.g. 0.8 for 80 %"
            )
    y = as_binary_labels(labels, "validation labels")
    class_counts(y, "validation labels")  # raises on a single class
    p = _probabilities(probabilities, y.size)

    # drop_intermediate=False keeps every distinct score: the default drops collinear points,
    # e.g. inside a vertical ROC segment, where the sensitivity rule's answer may lie.
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # thresholds[0] is +inf ("call nobody positive"): not a probability, so never chosen.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # thresholds decreasing

    if method == "youden":
        j = tpr - fpr
        best = int(np.argmax(j))  # first maximum = highest threshold among ties
        if j[best] <= 0.0:
            logger.warning(
                "%s: validation probabilities do not separate the classes (max Youden J = %.3g); "
                "the threshold %.4g calls every subject at or above it positive",
                name, j[best], thresholds[best],
            )
        return float(thresholds[best])

    # Compare counts, not rates, so 0.7 vs 7/10 cannot fail by a rounding error.
    n_pos = int(y.sum())
    needed = target * n_pos
    reached = np.nonzero(np.round(tpr * n_pos) >= needed - 1e-9)[0]
    # tpr reaches 1 at the lowest threshold, so a target in (0, 1] is always met somewhere.
    return float(thresholds[reached[0]])
