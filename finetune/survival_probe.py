"""The survival probe and the Cox baseline: Cox models on one training fold (``finetune.task: survival``).

The probe reads what the binary probe reads (``finetune.probe``: frozen embedding blocks reduced to
their leading principal components, each weighted by its own α, beside the baseline's table design)
and fits an L2-penalised Cox model (``multimodal.cox``) in place of the logistic regression: α and
the penalty are chosen together on the inner cross-validated partial likelihood, so an embedding
enters only as far as it orders held-out events better, and α = 0 falls back to the Cox model of
the table. The coefficients fold into the classifier's final ``Linear`` exactly as the binary
probe's do, so the fold model's output is a log relative hazard (centred on the training fold).

``fit_predict_cox_baseline`` is the Cox proportional-hazards baseline: the logistic-regression
baseline's design (standardised values, missing indicators, one-hot categoricals) fitted from the
training fold, the same penalised Cox fit, the penalty by the same inner CV.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from finetune.baselines import linear_design
from finetune.probe import PROBE_COMPONENTS, reduce_blocks, search_group_weights
from multimodal.cox import baseline_survival_at, choose_penalty, event_probability, fit_cox


def fit_cox_probe(features: np.ndarray, event: np.ndarray, time: np.ndarray, horizon: float, seed: int,
                  groups: np.ndarray | None = None, components: int | None = PROBE_COMPONENTS,
                  basis: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the survival probe on one training fold.

    Args:
        features: (N, F) frozen embeddings and table design of the training fold.
        event, time: (N,) 0/1 events and follow-up times (the horizon's unit).
        horizon: where the baseline survival is read (``probability = 1 - S0(h) ** exp(risk)``).
        seed, groups, components, basis: as for ``finetune.probe.fit_linear_probe``.

    Returns:
        ``weight (F,)`` and ``bias`` on the raw features (the log relative hazard, centred on the
        fold), ``penalty`` and ``group_weights`` (the chosen values), ``baseline_survival`` (Breslow's
        S0 at the horizon), ``risk_cut`` (the fold's median risk: above it is the high-risk group) and
        the unfolded parts LP-FT's layers read (see ``fit_linear_probe``; ``intercept`` 0).
    """
    x = np.asarray(features, dtype=np.float64)
    event, time = np.asarray(event, bool), np.asarray(time, float)
    if event.sum() < 2:
        raise ValueError("the survival probe needs at least 2 events in the training fold")
    block = reduce_blocks(x, groups, components, basis)
    z = block.z

    # Coordinate ascent over (α, penalty): the penalty for every block at α = 1, then α at that penalty,
    # then the penalty again at the chosen α: a quarter of the Cox fits of the full grid (each is an
    # L-BFGS run in Python, ~50 ms), with the same grid of candidates.
    start, _ = choose_penalty(z, event, time, seed)

    def fit(weight: np.ndarray) -> tuple[float, None]:
        return choose_penalty(z * weight, event, time, seed, penalties=(start,))[1], None

    weight, _ = search_group_weights(block.groups, fit)
    penalty, _ = choose_penalty(z * weight, event, time, seed)
    beta = fit_cox(z * weight, event, time, penalty)
    coef = block.projection @ (beta * weight / block.scale)  # (F,) on the raw features
    bias = -float(coef @ block.mean)
    risk = x @ coef + bias
    blocks = sorted(set(block.groups.tolist()) - {0})
    return {"weight": coef, "bias": bias, "penalty": penalty,
            "group_weights": {int(b): float(weight[block.groups == b][0]) for b in blocks},
            "baseline_survival": baseline_survival_at(risk, event, time, horizon),
            "risk_cut": float(np.median(risk)), "mean": block.mean, "projection": block.projection,
            "scale": block.scale, "reduced_groups": block.groups, "reduced_coef": beta * weight, "intercept": 0.0}


def fit_predict_cox_baseline(train_frame: pd.DataFrame, event: np.ndarray, time: np.ndarray,
                             test_frame: pd.DataFrame, horizon: float, seed: int) -> dict[str, Any]:
    """The Cox baseline on the table: fitted on ``train_frame`` (``baseline_frame`` rows), scored on
    ``test_frame``. Returns the test rows' ``risk`` (log relative hazard) and ``probabilities`` (event
    by the horizon), the ``penalty``, ``baseline_survival`` and ``risk_cut`` (as for the probe)."""
    design = linear_design()
    empty = [c for c in train_frame.columns if train_frame[c].isna().all()]  # nothing to learn from
    train_frame, test_frame = train_frame.drop(columns=empty), test_frame.drop(columns=empty, errors="ignore")
    x = np.asarray(design.fit_transform(train_frame), dtype=np.float64)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    mean = x.mean(0)
    z = (x - mean) / scale
    event, time = np.asarray(event, bool), np.asarray(time, float)
    penalty, _ = choose_penalty(z, event, time, seed)
    beta = fit_cox(z, event, time, penalty)
    train_risk = z @ beta
    s0 = baseline_survival_at(train_risk, event, time, horizon)
    test_x = np.asarray(design.transform(test_frame[train_frame.columns]), dtype=np.float64)
    risk = ((test_x - mean) / scale) @ beta
    return {"risk": risk, "probabilities": event_probability(risk, s0), "penalty": penalty,
            "baseline_survival": s0, "risk_cut": float(np.median(train_risk))}
