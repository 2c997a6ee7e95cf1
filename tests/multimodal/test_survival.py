"""Survival metrics and the Cox fit against independent references (torchsurv's own metrics, lifelines),
and the synthetic cohort's follow-up against the risk it was drawn from."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index

from multimodal.cox import (
    baseline_survival_at,
    choose_penalty,
    event_probability,
    fit_cox,
    partial_log_likelihood,
)
from multimodal.survival_metrics import (
    bootstrap_survival_metrics,
    brier_at,
    harrell_c,
    inverse_censoring_weights,
    kaplan_meier,
    survival_at,
    td_auroc,
    uno_c,
)
from multimodal.synthetic_clinical import draw_clinical, observed_follow_up

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from torchsurv.metrics.auc import Auc
    from torchsurv.metrics.brier_score import BrierScore
    from torchsurv.metrics.cindex import ConcordanceIndex
    from torchsurv.stats.ipcw import get_ipcw


def _data(n: int = 150, features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, true log hazard, event, time: exponential events, uniform censoring, times on a 0.1 grid (ties)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    log_hazard = x[:, 0] * 0.9 - x[:, 1] * 0.5 if features >= 2 else rng.normal(size=n)
    event_time = np.ceil(rng.exponential(20 * np.exp(-log_hazard)) * 10) / 10
    censor = np.floor(rng.uniform(6, 48, n) * 10) / 10
    return x, log_hazard, event_time <= censor, np.minimum(event_time, censor)


def test_harrell_c_matches_lifelines_with_tied_times_and_risks() -> None:
    _, risk, event, time = _data()
    risk = np.round(risk, 1)  # tied risks count one half
    assert harrell_c(risk, event, time) == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)


def test_ipcw_metrics_match_torchsurv() -> None:
    # continuous times: no event ties with a censoring, where torchsurv's G(t) and our G(t-) agree
    rng = np.random.default_rng(1)
    risk = rng.normal(size=150)
    event_time, censor = rng.exponential(20 * np.exp(-risk)), rng.uniform(6, 48, 150)
    event, time = event_time <= censor, np.minimum(event_time, censor)
    survival = np.exp(-np.exp(risk) * 12 / 20)
    e, t, r = torch.tensor(event), torch.tensor(time, dtype=torch.float32), torch.tensor(risk, dtype=torch.float32)
    weight = get_ipcw(e, torch.tensor(time, dtype=torch.float64)).float()
    at = torch.tensor([12.0])
    weight_at = get_ipcw(e, torch.tensor(time, dtype=torch.float64), at.double()).float()
    assert uno_c(risk, event, time) == pytest.approx(float(ConcordanceIndex()(r, e, t, weight=weight)), abs=1e-5)
    assert uno_c(risk, event, time, tmax=12) == pytest.approx(
        float(ConcordanceIndex()(r, e, t, weight=weight, tmax=torch.tensor(12.0))), abs=1e-5)
    assert td_auroc(risk, event, time, 12) == pytest.approx(
        float(Auc()(r, e, t, new_time=at, weight=weight, weight_new_time=weight_at)[0]), abs=1e-5)
    assert brier_at(survival, event, time, 12) == pytest.approx(float(BrierScore()(
        torch.tensor(survival, dtype=torch.float32)[:, None], e, t, new_time=at, weight=weight,
        weight_new_time=weight_at)[0]), abs=1e-5)


def test_events_tied_with_censorings_are_weighted_by_the_censoring_survival_just_before() -> None:
    # whole months, many patients seen last at the 12-month visit: events tie with censorings. With
    # every predicted survival 1 the Brier score is the IPCW estimate of P(T <= 12), which equals
    # 1 - Kaplan-Meier(12) exactly when events are weighted by 1 / G(t-).
    rng = np.random.default_rng(7)
    event_time = np.ceil(rng.exponential(30, 400))
    censor = np.where(rng.random(400) < 0.6, 12.0, np.ceil(rng.uniform(1, 36, 400)))
    event, time = event_time <= censor, np.minimum(event_time, censor)
    assert (event & (time == 12)).sum() > 3 and (~event & (time == 12)).sum() > 100
    incidence = 1 - survival_at(*kaplan_meier(event, time), 12.0)
    assert brier_at(np.ones(400), event, time, 12.0) == pytest.approx(incidence, abs=1e-6)
    # by hand: 1 event among 6 at risk at month 12, 3 censored there: P(T <= 12) = 1/6 (G(12) would give 2.5/6)
    tiny_time, tiny_event = np.array([12.0, 12, 12, 12, 20, 20]), np.array([1, 0, 0, 0, 0, 0], bool)
    assert brier_at(np.ones(6), tiny_event, tiny_time, 12.0) == pytest.approx(1 / 6)


def test_no_event_gives_undefined_metrics_not_an_error() -> None:
    out = bootstrap_survival_metrics({"m": np.arange(5.0)}, {"m": np.full(5, 0.9)}, np.zeros(5, bool),
                                     np.arange(1.0, 6.0), 3.0, 20, seed=0)
    assert all(np.isnan(entry["value"]) for entry in out["m"].values())
    with pytest.raises(ValueError, match="event must be 0 or 1"):
        harrell_c(np.arange(3.0), np.array([1, 2, 0]), np.arange(3.0))


def test_without_censoring_the_weights_are_one_and_td_auroc_is_the_plain_auroc() -> None:
    _, risk, _, time = _data(seed=2)
    event = np.ones(len(time), bool)
    assert np.allclose(inverse_censoring_weights(event, time), 1.0)
    from sklearn.metrics import roc_auc_score

    assert td_auroc(risk, event, time, 12) == pytest.approx(roc_auc_score(time <= 12, risk))


def test_kaplan_meier_matches_lifelines() -> None:
    from lifelines import KaplanMeierFitter

    _, _, event, time = _data(seed=3)
    times, survival = kaplan_meier(event, time)
    reference = KaplanMeierFitter().fit(time, event)
    for t in (1.0, 6.0, 12.0, 30.0):
        assert survival_at(times, survival, t) == pytest.approx(float(reference.predict(t)), abs=1e-6)
    assert survival_at(times, survival, -1.0) == 1.0
    times, survival = kaplan_meier(np.zeros(3, bool), np.array([2.0, 5.0, 5.0]))  # a group without events
    assert times.tolist() == [2.0, 5.0] and survival.tolist() == [1.0, 1.0]


def test_bootstrap_intervals_hold_the_estimate_and_a_model_equals_itself() -> None:
    _, risk, event, time = _data(seed=4)
    noisy = risk + np.random.default_rng(0).normal(0, 2, len(risk))
    survival = np.full(len(risk), 0.7)
    out = bootstrap_survival_metrics({"good": risk, "noisy": noisy, "same": noisy},
                                     {"good": survival, "noisy": survival, "same": survival}, event, time, 12.0,
                                     200, seed=0, reference="noisy")
    for model in ("good", "noisy"):
        for entry in out[model].values():
            low, high = entry["ci"]
            assert low <= entry["value"] <= high
    assert out["good"]["harrell_c"]["value"] > out["noisy"]["harrell_c"]["value"]
    assert out["delta_vs_noisy"]["good"]["harrell_c"]["ci"][0] > 0  # the true risk orders events better
    assert out["delta_vs_noisy"]["same"]["harrell_c"] == {"value": 0.0, "ci": [0.0, 0.0]}


def test_cox_fit_matches_lifelines_efron() -> None:
    x, _, event, time = _data(n=120, features=5, seed=5)
    beta = fit_cox(x, event, time, penalty=0.0)
    frame = pd.DataFrame(x).assign(T=time, E=event.astype(int))
    reference = CoxPHFitter(penalizer=0.0).fit(frame, "T", "E")  # Efron ties, as ours
    np.testing.assert_allclose(beta, reference.params_.to_numpy(), atol=2e-3)
    assert partial_log_likelihood(x @ beta, event, time) == pytest.approx(reference.log_likelihood_, abs=1e-3)
    # the probability of an event by 12 months from Breslow's baseline, against lifelines' survival function
    s0 = baseline_survival_at(x @ beta, event, time, 12.0)
    # lifelines' Breslow cumulative hazard (at the mean covariates), read as a step function (its
    # predict_survival_function interpolates between event times)
    cumulative = reference.baseline_cumulative_hazard_.iloc[:, 0]
    h0 = float(cumulative[cumulative.index <= 12.0].iloc[-1])
    centred = (x[:5] - x.mean(0)) @ reference.params_.to_numpy()
    expected = 1 - np.exp(-h0 * np.exp(centred))
    np.testing.assert_allclose(event_probability(x[:5] @ beta, s0), expected, atol=2e-3)


def test_the_penalty_grows_when_the_features_are_noise() -> None:
    x, _, event, time = _data(n=120, features=8, seed=6)
    noise = np.random.default_rng(1).normal(size=x.shape)
    signal_penalty, _ = choose_penalty(x, event, time)
    noise_penalty, _ = choose_penalty(noise, event, time)
    assert noise_penalty > signal_penalty


def test_synthetic_follow_up_comes_from_the_true_risk() -> None:
    _, risk = draw_clinical(4000, seed=3)
    followup, event = observed_follow_up(risk)
    label = risk["recurrence_12m"].to_numpy()
    # the latent event time's 12-month indicator is the drawn label, and its share the mean true risk
    assert ((risk["event_time_months"] < 12).to_numpy() == label.astype(bool)).all()
    assert label.mean() == pytest.approx(risk["true_risk"].mean(), abs=0.02)
    # observed: an event by 12 months is a positive; follow-up past 12 months without one is a negative
    seen = ~((event == 0) & (followup < 12))
    assert (label[seen] == ((event == 1) & (followup <= 12))[seen]).all()
    censored_early = (~seen).mean()
    assert 0.05 < censored_early < 0.35  # some subjects leave before the horizon, most do not
    assert harrell_c(risk["true_risk"], event, followup) > 0.7
