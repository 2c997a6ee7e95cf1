"""Linear probe head: L2 logistic regression on frozen embeddings + the baseline's tabular features.

With a few dozen positives an MLP head trained by SGD and stopped on a handful of validation
positives overfits and loses to plain logistic regression on the table (measured: issue 8). The
probe is the evaluation MMCL and TIP use for their encoders, extended so that the multimodal
model starts where the tabular baseline is: its inputs are

    [frozen image embedding (B, Di)] + [frozen table embedding (B, Dt)] + [table design (B, F)]

where the design is what the logistic-regression baseline reads (robust z-scores with missing
at 0, one missing indicator per feature, one-hot categoricals). Every column is standardised on
the training fold and the L2 strength ``C`` is chosen by an inner stratified 5-fold CV on log
loss (scikit-learn's ``LogisticRegressionCV``, ``class_weight="balanced"``), so pretrained
features enter only as far as they lower held-out loss. The fitted coefficients are folded back
into the classifier's final ``nn.Linear`` (standardisation included), so a probe fold model is an
ordinary ``FusionClassifier`` with ``head_layers=0``: saved as safetensors, reloaded by
``predict`` and attributed by Captum like any other.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from torch import nn

logger = logging.getLogger(__name__)

_CS = np.logspace(-4, 2, 13)  # the L2 grid of the logistic-regression baseline
_INNER_FOLDS = 5


class TableDesign(nn.Module):
    """The logistic-regression baseline's inputs from the preprocessor's tensors, no parameters.

    ``{continuous (B, n_cont), categorical (B, n_cat) int64 (0 = missing / unseen), missing
    (B, n_cont + n_cat) bool} -> (B, n_cont + n_cont + n_cat + sum(sizes - 1))``: continuous
    z-scores (0 where missing), the missing mask as 0/1, then one-hot categoricals without the
    missing bucket (the mask carries it).
    """

    def __init__(self, num_continuous: int, category_sizes: list[int]) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.category_sizes = list(category_sizes)
        n_features = num_continuous + len(self.category_sizes)
        self.num_features: int = num_continuous + n_features + sum(s - 1 for s in self.category_sizes)

    def forward(self, table: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = table["missing"]
        parts = [table["continuous"].float(), missing.float()] if self.num_continuous else [missing.float()]
        categorical = table.get("categorical")
        for j, size in enumerate(self.category_sizes):
            if size > 1:  # (B, size - 1): drop bucket 0 (missing / unseen)
                parts.append(F.one_hot(categorical[:, j], size)[:, 1:].float())
        return torch.cat(parts, dim=1)


class ProbeTable(nn.Module):
    """Tabular input of the probe: ``[encoder(table) (B, Dt), TableDesign(table) (B, F)]``, or the
    design alone when ``encoder`` is None. Used as the classifier's table encoder."""

    def __init__(self, encoder: nn.Module | None, num_continuous: int, category_sizes: list[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.design = TableDesign(num_continuous, category_sizes)
        self.num_features: int = self.design.num_features + (encoder.num_features if encoder is not None else 0)

    def forward(self, table: dict[str, torch.Tensor]) -> torch.Tensor:
        design = self.design(table)
        return design if self.encoder is None else torch.cat([self.encoder(table), design], dim=1)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """Fit the probe on one training fold.

    Args:
        features: (N, F) frozen embeddings and table design of the training fold.
        labels: (N,) 0/1.
        seed: drives the inner CV splits.

    Returns:
        ``weight (F,)`` and ``bias`` acting on the *raw* features (standardisation folded in),
        ``C`` (the chosen L2 strength) and ``oof_probabilities (N,)``: each training subject's
        probability from a model fitted without its inner fold at that ``C``, for the decision
        threshold and recalibration (in-sample probabilities would be optimistic).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0  # a constant column (an absent category) gets weight 0 anyway
    z = (x - mean) / scale
    folds = min(_INNER_FOLDS, int(min(y.sum(), len(y) - y.sum())))
    if folds < 2:
        raise ValueError("the linear probe needs at least 2 positives and 2 negatives in the training fold")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    search = LogisticRegressionCV(Cs=list(_CS), cv=cv, scoring="neg_log_loss", class_weight="balanced",
                                  max_iter=5000, random_state=seed)
    _pure_l2(search)
    search.fit(z, y)
    c = float(np.atleast_1d(search.C_)[0])
    oof = cross_val_predict(LogisticRegression(C=c, class_weight="balanced", max_iter=5000), z, y, cv=cv,
                            method="predict_proba")[:, 1]
    coef = search.coef_[0] / scale
    bias = float(search.intercept_[0] - (coef * mean).sum())
    logger.debug("linear probe: C %.4g over %d features", c, x.shape[1])
    return {"weight": coef, "bias": bias, "C": c, "oof_probabilities": oof}


def _pure_l2(classifier: LogisticRegressionCV) -> None:
    # Pure L2 stated the way scikit-learn >= 1.8 wants it (``penalty`` deprecated there).
    available = classifier.get_params(deep=False)
    if available.get("penalty") == "deprecated":
        classifier.set_params(l1_ratios=(0.0,))
    if "use_legacy_attributes" in available:
        classifier.set_params(use_legacy_attributes=False)


@torch.no_grad()
def load_probe(linear: nn.Linear, fit: dict[str, Any]) -> None:
    """Copy a ``fit_linear_probe`` result into the classifier's final ``Linear(F, 1)``."""
    weight = torch.as_tensor(fit["weight"], dtype=linear.weight.dtype)
    if linear.weight.shape != (1, weight.numel()):
        raise ValueError(f"probe has {weight.numel()} weights, the head expects {tuple(linear.weight.shape)}")
    linear.weight.copy_(weight[None])
    linear.bias.fill_(fit["bias"])
