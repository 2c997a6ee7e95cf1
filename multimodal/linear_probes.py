"""Cross-validated linear probes: how much of a target an embedding holds, linearly.

``probe_factors(embedding (N, D), targets)`` scores every target column: R² (ridge) for a numeric
one, AUROC (logistic) for a binary one, macro one-vs-rest AUROC for a categorical one with more
levels. Used by ``strokessl explain`` (which clinical facts the MRI encoder learned) and by
``benchmarks/factor_probe.py`` (which generator factors each pretraining objective keeps).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

logger = logging.getLogger(__name__)

FOLDS = 5
ALPHAS = np.logspace(-3, 4, 15)  # ridge penalties
CS = np.logspace(-4, 3, 8)  # inverse logistic penalties
Z_CLIP = 10.0  # standardised features are clipped to ±Z_CLIP (see _scaled)
# Logistic probes of wider embeddings first keep this many principal components (fitted in each
# outer fold, no labels read): liblinear's nested CV on 1,024 columns × 3,200 rows ran over 20 min.
LOGISTIC_WIDTH = 256


def _binary(values: pd.Series) -> np.ndarray | None:
    """0/1 array when ``values`` take exactly two distinct values, else None. Which one is 1 (the
    larger as text: 1, "yes", "M") does not change the AUROC: the probe learns the sign."""
    levels = values.unique().tolist()
    return (values == max(levels, key=str)).to_numpy(int) if len(levels) == 2 else None


def _scaled() -> list[Any]:
    """``StandardScaler``, then a clip to ±``Z_CLIP``: a near-dead ReLU channel (non-zero in a few
    subjects), scaled by a fold's tiny std, put a held-out subject at z ≈ 230, R² -13.6, unclipped."""
    return [StandardScaler(), FunctionTransformer(np.clip, kw_args={"a_min": -Z_CLIP, "a_max": Z_CLIP})]


def probe_r2(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Pooled out-of-fold R² of ``StandardScaler (+ clip) + RidgeCV`` on ``x (n, D)`` for ``y (n,)``."""
    model = make_pipeline(*_scaled(), RidgeCV(alphas=ALPHAS))
    predictions = cross_val_predict(model, x, y, cv=KFold(FOLDS, shuffle=True, random_state=seed))
    return float(r2_score(y, predictions))


def table_design(features: pd.DataFrame, continuous: list[str], categorical: list[str]) -> np.ndarray:
    """``(N, K)`` numeric design of a clinical table for a linear model: each continuous column
    median-filled with a missing indicator beside it, each categorical one-hot (missing is a level).
    No statistic is learned from labels; the probes below standardise it inside each fold."""
    blocks = []
    for column in continuous:
        values = pd.to_numeric(features[column], errors="coerce")
        missing = values.isna()
        blocks.append(values.fillna(values.median() if not missing.all() else 0.0).to_numpy(float)[:, None])
        if missing.any():
            blocks.append(missing.to_numpy(float)[:, None])
    if categorical:
        blocks.append(pd.get_dummies(features[categorical].astype(str).where(features[categorical].notna(), "<na>"),
                                     dtype=float).to_numpy())
    return np.hstack(blocks) if blocks else np.zeros((len(features), 0))


def probe_partial_r2(x: np.ndarray, y: np.ndarray, covariates: np.ndarray, seed: int) -> dict[str, float]:
    """What ``x (n, D)`` holds of ``y (n,)`` beyond ``covariates (n, K)`` (the clinical table).

    ``y`` is first regressed on the covariates (ridge, out of fold); the partial R² is the
    out-of-fold R² of a ridge probe from ``x`` on that residual: 1 when the embedding predicts all
    of ``y`` the table cannot, 0 when it adds nothing. Returns ``{"partial_r2", "table_r2"}``
    (``table_r2``: how much of ``y`` the table alone predicts)."""
    folds = KFold(FOLDS, shuffle=True, random_state=seed)
    if covariates.shape[1]:
        from_table = cross_val_predict(make_pipeline(*_scaled(), RidgeCV(alphas=ALPHAS)), covariates, y, cv=folds)
    else:
        from_table = np.full_like(y, y.mean())
    residual = y - from_table
    return {"partial_r2": probe_r2(x, residual, seed), "table_r2": float(r2_score(y, from_table))}


def probe_auroc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Pooled out-of-fold AUROC of ``StandardScaler (+ clip) + LogisticRegressionCV`` on ``x (n, D)`` for
    0/1 ``y`` whose smaller class has at least 3 rows (``D > LOGISTIC_WIDTH``: through that many
    principal components)."""
    minority = int(min(y.sum(), len(y) - y.sum()))
    k = min(FOLDS, minority)
    # No more inner folds than an outer training part has rows of the smaller class (>= this).
    inner = max(2, min(FOLDS, minority * (k - 1) // k))
    # liblinear: lbfgs took ~20x longer on separable (n, D) data, creeping towards large C.
    width = min(LOGISTIC_WIDTH, len(x) * (k - 1) // k)  # no more components than a training fold has rows
    reduce = [PCA(width, random_state=seed)] if x.shape[1] > width else []
    model = make_pipeline(*_scaled(), *reduce, LogisticRegressionCV(
        Cs=CS, cv=StratifiedKFold(inner, shuffle=True, random_state=seed), solver="liblinear"))
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # sklearn >= 1.8 warns of a change to LogisticRegressionCV's attributes
        for category in (ConvergenceWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def probe_multiclass_auroc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Macro one-vs-rest AUROC of out-of-fold class probabilities (``StandardScaler`` (+ clip) + L2
    multinomial logistic regression) on ``x (n, D)`` for the labels ``y (n,)`` (each class >= 3 rows)."""
    _, counts = np.unique(y, return_counts=True)
    folds = StratifiedKFold(n_splits=min(FOLDS, int(counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(*_scaled(), LogisticRegression(C=0.1, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")
    return float(roc_auc_score(y, scores, multi_class="ovr", average="macro"))


RARE = "other (levels under 3 rows)"


def _pool_rare_levels(values: pd.Series, x: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Categorical ``values`` with every level under 3 rows merged into ``RARE`` (CV needs 3 per
    class); if that pool is itself under 3 rows its rows are left out. ``x`` keeps the same rows."""
    counts = values.value_counts()
    rare = counts.index[counts < 3]
    if len(rare) == 0:
        return values, x
    pooled = values.where(~values.isin(rare), RARE)
    keep = (pooled != RARE).to_numpy() if counts[rare].sum() < 3 else np.ones(len(values), dtype=bool)
    return pooled[keep], x[keep]


def probe_factors(embedding: np.ndarray, targets: pd.DataFrame, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Cross-validated linear-probe scores of each target column from ``embedding (N, D)``.

    ``targets``: N rows in the same order; each column uses its non-missing rows. Two distinct
    values: binary (AUROC); numeric: continuous (R²); text with more levels: categorical (macro
    one-vs-rest AUROC); a constant or too small column (a class under 3 rows, under 10 rows) is
    skipped with a log line. Returns
    ``{"r2": {column: R²}, "auroc": {...}, "rows": {column: rows used}, "skipped": {column: why}}``.
    """
    if len(embedding) != len(targets):
        raise ValueError(f"embedding has {len(embedding)} rows but targets has {len(targets)}")
    out: dict[str, dict[str, Any]] = {"r2": {}, "auroc": {}, "rows": {}, "skipped": {}}
    for column in targets.columns:
        keep = targets[column].notna().to_numpy()
        values, x = targets[column][keep], embedding[keep]
        numeric = pd.to_numeric(values, errors="coerce")
        categorical, levels = bool(numeric.isna().any()), values.nunique()
        if categorical:  # pool levels under 3 rows, drop the pool if it is one too
            values, x = _pool_rare_levels(values.astype(str), x)
            if (values == RARE).mean() > 0.5:
                out["skipped"][column] = "most rows hold levels under 3 rows (an id-like or free-text column)"
                logger.info("skipping target %s: %s", column, out["skipped"][column])
                continue
        binary = _binary(values)
        counts = values.astype(str).value_counts()
        if binary is not None and min(binary.sum(), len(binary) - binary.sum()) >= 3:
            out["auroc"][column] = probe_auroc(x, binary, seed)
        elif categorical and len(counts) > 2 and counts.min() >= 3:  # categorical, several levels
            out["auroc"][column] = probe_multiclass_auroc(x, values.astype(str).to_numpy(), seed)
        elif binary is None and not categorical and numeric.nunique() > 1 and len(values) >= 2 * FOLDS:
            out["r2"][column] = probe_r2(x, numeric.to_numpy(float), seed)
        else:
            why = ("constant" if levels < 2 else "a class has fewer than 3 rows"
                   if binary is not None or categorical else f"under {2 * FOLDS} rows")
            out["skipped"][column] = why
            logger.info("skipping target %s: %s (%d rows)", column, why, len(values))
            continue
        out["rows"][column] = len(values)
    return out
