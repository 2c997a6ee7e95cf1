"""Where the truth is known (synthetic cohorts): the oracle-feature logistic regression.

A cohort written by ``strokessl synth`` (or by any generator that follows the same contract) keeps
beside its CSV a ``truth.json`` whose ``image_quantities`` name the ``risk.csv`` columns holding
the true image quantities (log infarct and WMH volumes, atrophy beyond age, ...). The
**oracle-feature LR** is the logistic-regression baseline's design plus those columns, fitted on
the same subjects as the baseline. Its gain over the baseline is what the image offers a linear
model with these labels; the **share of the oracle gain**, (model − LR) / (oracle LR − LR), says
how much of it a model captured. A real cohort has no such files, and nothing here runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from finetune.baselines import fit_predict_baseline
from finetune.metrics import (  # the bootstrap machinery of the other intervals
    _auroc_rows,
    _check_both_classes,
    _index_blocks,
    _percentiles,
    bootstrap_ci,
    check_predictions,
)
from multimodal.cohort import Cohort

logger = logging.getLogger(__name__)

ORACLE = "oracle_features"  # the name under which its probabilities and metrics are stored
# Below this oracle gain (AUROC) a cohort cannot rank image encoders: every share is noise.
MIN_ORACLE_GAIN = 0.03


def true_image_quantities(cohort: Cohort) -> pd.DataFrame | None:
    """``(N, Q)`` true image quantities indexed by subject id, or None when the cohort's folder
    holds no generator truth (every real cohort). Subjects absent from ``risk.csv`` make it None
    too, with a log line: a partial truth would fit the oracle on other subjects than the baseline."""
    folder = Path(cohort.config.csv).parent
    truth_file, risk_file = folder / "truth.json", folder / "risk.csv"
    if not (truth_file.is_file() and risk_file.is_file()):
        return None
    names = json.loads(truth_file.read_text()).get("image_quantities")
    if not names:
        return None
    risk = pd.read_csv(risk_file, dtype={"subject_id": str}).set_index("subject_id")
    absent = [n for n in names if n not in risk.columns]
    missing = [s for s in cohort.ids if s not in risk.index]
    if absent or missing:
        logger.info("generator truth in %s does not cover this cohort (%d columns, %d subjects absent); "
                    "no oracle-feature model", folder, len(absent), len(missing))
        return None
    return risk.loc[cohort.ids, names].astype(float)


def with_truth(frame: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``baseline_frame`` rows with the true image quantities of the same subjects as extra float columns
    (``true_<name>``: the baselines' pipelines read roles by dtype, so they enter as continuous)."""
    return pd.concat([frame, truth.loc[frame.index].add_prefix("true_")], axis=1)


def fit_predict_oracle(train_frame: pd.DataFrame, train_labels: np.ndarray, test_frame: pd.DataFrame,
                       quantities: pd.DataFrame, test_quantities: pd.DataFrame, seed: int) -> np.ndarray:
    """The logistic-regression baseline refit with the true image quantities as extra continuous
    columns. Frames from ``baseline_frame`` (rows = subjects, same index as the quantities).

    Returns (N_test,) probabilities of class 1 in ``test_frame`` row order.
    """
    return fit_predict_baseline("logistic_regression", with_truth(train_frame, quantities), train_labels,
                                with_truth(test_frame, test_quantities), seed)


def oracle_section(y: np.ndarray, model: np.ndarray, baseline: np.ndarray, oracle: np.ndarray, n_resamples: int,
                   seed: int) -> dict[str, Any]:
    """The oracle-feature LR's AUROC (with its bootstrap CI) and the share of its gain over the
    logistic-regression baseline that the model captured (``share_of_oracle_gain``); all (N,)."""
    return {"auroc": bootstrap_ci(y, oracle, 0.5, n_resamples, seed)["auroc"],
            "share": share_of_oracle_gain(y, model, baseline, oracle, n_resamples, seed)}


def share_of_oracle_gain(labels: np.ndarray, model: np.ndarray, baseline: np.ndarray, oracle: np.ndarray,
                         n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """(AUROC(model) − AUROC(baseline)) / (AUROC(oracle) − AUROC(baseline)) on the same subjects.

    ``oracle`` scores a model given the true quantities (``finetune.oracle``); the share is 1 when
    the model gains as much over the baseline as the oracle does, 0 when it gains nothing. All three
    are scored on the same stratified resamples (paired), so the interval reflects the subjects, not
    three independent draws. Resamples whose oracle gain is ≤ 0.005 are left out of the interval (a
    ratio over nothing); ``oracle_gain`` and its interval say how big the prize is.
    All inputs (N,); returns ``{share, lower, upper, oracle_gain, oracle_gain_lower, oracle_gain_upper}``.
    """
    y, pm = check_predictions(labels, model)
    _, pb = check_predictions(labels, baseline)
    _, po = check_predictions(labels, oracle)
    _check_both_classes(y)
    n_neg = int((y == 0).sum())
    gains, prizes = [], []
    for idx in _index_blocks(y, n_resamples, seed):
        base = _auroc_rows(pb[idx], n_neg)
        gains.append(_auroc_rows(pm[idx], n_neg) - base)
        prizes.append(_auroc_rows(po[idx], n_neg) - base)
    gain, prize = np.concatenate(gains), np.concatenate(prizes)
    usable = prize > 0.005
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(usable, gain / prize, np.nan)
    lower, upper = _percentiles(shares, level)
    prize_lower, prize_upper = _percentiles(prize, level)
    auc_b = roc_auc_score(y, pb)
    point = float(roc_auc_score(y, po) - auc_b)
    share = float((roc_auc_score(y, pm) - auc_b) / point) if abs(point) > 1e-12 else float("nan")
    return {"share": share, "lower": lower, "upper": upper, "oracle_gain": point,
            "oracle_gain_lower": prize_lower, "oracle_gain_upper": prize_upper}
