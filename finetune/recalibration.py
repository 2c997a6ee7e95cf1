"""Optional Platt recalibration of each fold model on its inner-validation split.

Imbalance-aware losses train the logit to rank, not to estimate risk: weighted BCE shifts it by
about log(pos_weight), so raw probabilities overstate risk (ECE ≈ 0.3 in
``benchmarks/results/finetune_eval.md``). With ``finetune.recalibration: platt`` each fold fits
``logit P(y=1) = intercept + slope · logit(p)`` on its inner-validation predictions (the split
that already chooses the epoch and the threshold, never the held-out fold) and applies it to
everything that fold model predicts, ``predict`` included. The map is increasing, so each fold's
AUROC is unchanged; the threshold is chosen on the recalibrated probabilities.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from multimodal.config_checks import check_choice

logger = logging.getLogger(__name__)

RECALIBRATIONS = ("none", "platt")
_CLIP = 1e-6  # keeps logit(p) finite for p = 0 or 1


def fit_recalibration(method: str, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any] | None:
    """``None`` for ``none``; for ``platt`` ``{method, intercept, slope}`` fit on (N,) labels and
    probabilities (Platt 1999, with his smoothed targets). Falls back to the identity (with a
    warning) for one class or a slope <= 0 (the model ranks validation subjects backwards)."""
    check_choice("finetune.recalibration", method, RECALIBRATIONS)
    if method == "none":
        return None
    y = np.asarray(labels, dtype=int)
    x = logit(np.clip(np.asarray(probabilities, dtype=float), _CLIP, 1 - _CLIP))
    identity = {"method": "platt", "intercept": 0.0, "slope": 1.0}
    if y.min() == y.max():
        logger.warning("Platt recalibration needs both classes in the inner-validation split; the fold keeps "
                       "its raw probabilities")
        return identity
    # Platt's smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2): with ~50 validation subjects the
    # unsmoothed fit runs to a huge slope when the classes barely overlap (they were the split
    # that chose the epoch). Each subject enters twice, as a 1 and a 0 weighted by its target, so
    # scikit-learn's unpenalised logistic regression fits exactly Platt's likelihood.
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        np.r_[x, x][:, None], np.r_[np.ones_like(y), np.zeros_like(y)], sample_weight=np.r_[target, 1 - target])
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if slope <= 0:
        logger.warning("Platt recalibration slope %.3f <= 0 on this inner-validation split; the fold keeps "
                       "its raw probabilities", slope)
        return identity
    return {"method": "platt", "intercept": intercept, "slope": slope}


def apply_recalibration(probabilities: np.ndarray, recalibration: dict[str, Any] | None) -> np.ndarray:
    """(N,) probabilities through a fold's stored recalibration (``None`` or the identity: unchanged)."""
    p = np.asarray(probabilities)
    if recalibration is None or (recalibration["intercept"] == 0.0 and recalibration["slope"] == 1.0):
        return p
    x = logit(np.clip(p, _CLIP, 1 - _CLIP))
    return expit(recalibration["intercept"] + recalibration["slope"] * x)
