"""L2-penalised Cox proportional-hazards regression on a standardised design (torchsurv's likelihood).

``fit_cox`` minimises torchsurv's negative partial log-likelihood (Efron's method for tied event
times) per event plus ``penalty / 2 · ||β||²`` with L-BFGS; ``choose_penalty`` picks the penalty by
the cross-validated partial likelihood of Verweij and van Houwelingen (1993): for each inner fold,
the full-data log-likelihood minus the training part's, both at the training part's β. It needs no
event in the held-out part's own risk sets, so it stays stable with a handful of events per fold.
``baseline_survival_at`` is torchsurv's Breslow estimate of the baseline survival at a horizon; the
probability of an event by the horizon is then ``1 - S0(h) ** exp(risk)``.

torchsurv has the likelihood, the Breslow estimator and the survival function but no fitting routine
for a linear Cox model with its penalty chosen by CV; scikit-survival and lifelines do, but the first
is GPL-3 and the second is not a runtime dependency (both serve as test references).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

with warnings.catch_warnings():  # torchsurv 0.2 decorates with torch.jit.script, deprecated in torch 2.10
    warnings.simplefilter("ignore", FutureWarning)
    from torchsurv.loss.cox import baseline_survival_function, neg_partial_log_likelihood

PENALTIES = tuple(np.logspace(-3, 1, 7))  # per-event L2 strengths on a standardised design
_INNER_FOLDS = 5


def _tensors(event: np.ndarray, time: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(event, bool)), torch.as_tensor(np.asarray(time, np.float32))


def _negative_log_likelihood(risk: torch.Tensor, event: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """torchsurv's negative partial log-likelihood, Efron ties, summed over events."""
    with warnings.catch_warnings():  # torchsurv warns on every call that tied times go through Efron: the intent
        warnings.filterwarnings("ignore", message="Ties in `time` detected", category=UserWarning)
        return neg_partial_log_likelihood(risk, event, time, ties_method="efron", reduction="sum")


def partial_log_likelihood_tensor(risk: torch.Tensor, event: np.ndarray, time: np.ndarray) -> torch.Tensor:
    """As ``partial_log_likelihood``, differentiable in ``(N,)`` ``risk`` (a model's output)."""
    e, t = _tensors(event, time)
    return -_negative_log_likelihood(risk.float(), e.to(risk.device), t.to(risk.device)) if e.any() else risk.sum() * 0.0


def partial_log_likelihood(risk: np.ndarray | torch.Tensor, event: np.ndarray, time: np.ndarray) -> float:
    """Cox partial log-likelihood (Efron ties, summed over events) of ``(N,)`` log relative hazards."""
    with torch.no_grad():
        return float(partial_log_likelihood_tensor(torch.as_tensor(risk, dtype=torch.float32), event, time))


def fit_cox(z: np.ndarray, event: np.ndarray, time: np.ndarray, penalty: float,
            start: np.ndarray | None = None) -> np.ndarray:
    """``(F,)`` coefficients of the L2-penalised Cox model of ``(N, F)`` ``z`` (no intercept: the
    partial likelihood has none); ``start`` warm-starts L-BFGS (a neighbouring penalty's solution)."""
    e, t = _tensors(event, time)
    x = torch.as_tensor(np.asarray(z, np.float32))
    beta = torch.zeros(x.shape[1]) if start is None else torch.as_tensor(np.asarray(start, np.float32)).clone()
    beta.requires_grad_(True)
    events = max(int(e.sum()), 1)
    optimizer = torch.optim.LBFGS([beta], lr=1.0, max_iter=100, tolerance_grad=1e-5, tolerance_change=1e-7,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _negative_log_likelihood(x @ beta, e, t) / events
        loss = loss + 0.5 * penalty * beta.square().sum()
        loss.backward()
        return loss

    if e.any():
        optimizer.step(closure)
    return beta.detach().numpy().astype(np.float64)


def cross_validated_likelihood(z: np.ndarray, event: np.ndarray, time: np.ndarray,
                               penalties: tuple[float, ...] = PENALTIES, seed: int = 0,
                               folds: int = _INNER_FOLDS) -> np.ndarray:
    """``(P,)`` cross-validated partial log-likelihood (Verweij & van Houwelingen) of each penalty,
    over inner folds stratified by event; higher is better."""
    event, time = np.asarray(event, bool), np.asarray(time, float)
    folds = max(2, min(folds, int(event.sum()), int((~event).sum()) if (~event).any() else folds))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = np.zeros(len(penalties))
    for train, _ in split.split(z, event):
        start = None
        for i in np.argsort(penalties)[::-1]:  # strongest first: each fit warm-starts the next
            beta = start = fit_cox(z[train], event[train], time[train], penalties[i], start)
            full = partial_log_likelihood(z @ beta, event, time)
            part = partial_log_likelihood(z[train] @ beta, event[train], time[train])
            scores[i] += full - part
    return scores


def choose_penalty(z: np.ndarray, event: np.ndarray, time: np.ndarray, seed: int = 0,
                   penalties: tuple[float, ...] = PENALTIES) -> tuple[float, float]:
    """The penalty with the highest cross-validated partial likelihood, and that likelihood."""
    scores = cross_validated_likelihood(z, event, time, penalties, seed)
    best = int(np.argmax(scores))
    return float(penalties[best]), float(scores[best])


def baseline_survival_at(risk: np.ndarray, event: np.ndarray, time: np.ndarray, horizon: float) -> float:
    """Breslow's baseline survival ``S0(horizon)`` of the training rows' ``(N,)`` log relative hazards."""
    e, t = _tensors(event, time)
    if not e.any():
        return 1.0
    fitted = baseline_survival_function(torch.as_tensor(risk, dtype=torch.float32), e, t)
    times, survival = fitted["time"].numpy(), fitted["baseline_survival"].numpy()
    before = np.flatnonzero(times <= np.float32(horizon))  # torchsurv returns the times as float32
    return float(survival[before[-1]]) if len(before) else 1.0


def event_probability(risk: np.ndarray, baseline_survival: float) -> np.ndarray:
    """``(N,)`` probability of an event by the horizon, ``1 - S0(h) ** exp(risk)``."""
    return 1.0 - np.power(baseline_survival, np.exp(np.asarray(risk, dtype=float)))
