"""Clinical utility: decision-curve net benefit and calibration at the horizon, for both tasks.

Net benefit at a threshold probability ``pt`` (Vickers & Elkin 2006) weighs true against false
positives by the odds ``pt / (1 - pt)`` a clinician accepts when treating above ``pt``:
``NB = TP / N - FP / N · pt / (1 - pt)``; treating everyone gives ``prevalence - (1 - prevalence) ·
pt / (1 - pt)`` and treating no one 0. With censored follow-up the event rates among those treated
are Kaplan–Meier estimates at the horizon (Vickers et al. 2008): ``NB = (1 - S_treated(h)) · P(treated)
- S_treated(h) · P(treated) · pt / (1 - pt)``. Written here: none of our dependencies has decision
curves (``dcurves`` would be a new dependency for these few lines).

Calibration at the horizon for survival: equal-mass groups of predicted probability, each against
its Kaplan–Meier observed recurrence by the horizon (the binary task's reliability diagram compares
with event rates, ``finetune.metrics``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.metrics import _bin_starts
from multimodal.survival_metrics import kaplan_meier, survival_at

THRESHOLDS = tuple(np.round(np.arange(0.01, 0.51, 0.01), 2))  # threshold probabilities of the decision curve
TABLE_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.30)  # the rows reports print


def _odds(thresholds: np.ndarray) -> np.ndarray:
    return thresholds / (1 - thresholds)


def net_benefit(labels: np.ndarray, probabilities: np.ndarray,
                thresholds: tuple[float, ...] = THRESHOLDS) -> np.ndarray:
    """``(T,)`` net benefit of treating subjects whose ``(N,)`` probability is at least each threshold."""
    y, p, t = np.asarray(labels, bool), np.asarray(probabilities, float), np.asarray(thresholds, float)
    treated = p[None, :] >= t[:, None]  # (T, N)
    tp, fp = (treated & y).sum(1), (treated & ~y).sum(1)
    return (tp - fp * _odds(t)) / len(y)


def treat_all(labels: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> np.ndarray:
    """``(T,)`` net benefit of treating everyone."""
    prevalence, t = float(np.mean(np.asarray(labels, bool))), np.asarray(thresholds, float)
    return prevalence - (1 - prevalence) * _odds(t)


def net_benefit_survival(event: np.ndarray, time: np.ndarray, probabilities: np.ndarray | None, horizon: float,
                         thresholds: tuple[float, ...] = THRESHOLDS) -> np.ndarray:
    """``(T,)`` net benefit at ``horizon`` with censored follow-up (Kaplan–Meier event rates); treating
    everyone when ``probabilities`` is None."""
    event, time, t = np.asarray(event, bool), np.asarray(time, float), np.asarray(thresholds, float)
    out = np.zeros(len(t))
    for i, threshold in enumerate(t):
        treated = np.ones(len(time), bool) if probabilities is None else np.asarray(probabilities) >= threshold
        if not treated.any():
            continue
        survival = survival_at(*kaplan_meier(event[treated], time[treated]), horizon)
        share = treated.mean()
        out[i] = (1 - survival) * share - survival * share * _odds(threshold)
    return out


def decision_curve(probabilities: dict[str, np.ndarray], labels: np.ndarray | None = None,
                   event: np.ndarray | None = None, time: np.ndarray | None = None,
                   horizon: float | None = None) -> dict[str, Any]:
    """Net benefit of every model in ``probabilities`` (``{name: (N,)}``), of treating all and of
    treating none, over ``THRESHOLDS``: from binary ``labels``, or from censored ``event`` / ``time``
    at ``horizon``. Returns ``{"thresholds": [...], "net_benefit": {name: [...], "treat_all": [...],
    "treat_none": [...]}}``."""
    if labels is not None:
        curves = {name: net_benefit(labels, p) for name, p in probabilities.items()}
        curves["treat_all"] = treat_all(labels)
    else:
        assert event is not None and time is not None and horizon is not None
        curves = {name: net_benefit_survival(event, time, p, horizon) for name, p in probabilities.items()}
        curves["treat_all"] = net_benefit_survival(event, time, None, horizon)
    curves["treat_none"] = np.zeros(len(THRESHOLDS))
    return {"thresholds": list(THRESHOLDS), "net_benefit": {k: [float(v) for v in c] for k, c in curves.items()}}


def survival_calibration(event: np.ndarray, time: np.ndarray, probabilities: np.ndarray, horizon: float,
                         bins: int = 5) -> dict[str, Any]:
    """Calibration at the horizon: per equal-mass group of ``(N,)`` predicted probability of recurrence
    by ``horizon``, the mean prediction and the Kaplan–Meier observed recurrence by then; and the same
    for the whole cohort (calibration in the large)."""
    event, time, p = np.asarray(event, bool), np.asarray(time, float), np.asarray(probabilities, float)
    order = np.argsort(p, kind="stable")
    starts = _bin_starts(len(p), bins)
    groups = []
    for start, stop in zip(starts, [*starts[1:], len(p)], strict=True):
        rows = order[start:stop]
        observed = 1 - survival_at(*kaplan_meier(event[rows], time[rows]), horizon)
        groups.append({"n": len(rows), "predicted": float(p[rows].mean()), "observed": float(observed)})
    return {"groups": groups, "mean_predicted": float(p.mean()),
            "observed": float(1 - survival_at(*kaplan_meier(event, time), horizon))}
