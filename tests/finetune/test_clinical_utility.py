"""Decision curves and calibration at the horizon against hand-worked numbers and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.clinical_utility import (
    THRESHOLDS,
    decision_curve,
    net_benefit,
    net_benefit_survival,
    survival_calibration,
    treat_all,
)


def test_net_benefit_by_hand() -> None:
    # 10 subjects, 3 events; at threshold 0.2 (odds 1/4) the model treats 4 subjects: 2 events, 2 not
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    probabilities = np.array([0.9, 0.5, 0.1, 0.3, 0.25, 0.1, 0.1, 0.05, 0.05, 0.05])
    assert net_benefit(labels, probabilities, (0.2,))[0] == pytest.approx(2 / 10 - 2 / 10 * 0.25)
    assert treat_all(labels, (0.2,))[0] == pytest.approx(0.3 - 0.7 * 0.25)
    # a perfect model's net benefit is the prevalence at every threshold
    assert np.allclose(net_benefit(labels, labels * 0.99, (0.1, 0.3, 0.5)), 0.3)


def test_without_censoring_the_survival_curve_is_the_binary_one() -> None:
    rng = np.random.default_rng(0)
    time = rng.uniform(0, 30, 200)
    event = np.ones(200, bool)  # everyone followed until the event: recurrence by 12 months is known
    probabilities = np.clip(1 - time / 30 + rng.normal(0, 0.2, 200), 0, 1)
    labels = time <= 12
    np.testing.assert_allclose(net_benefit_survival(event, time, probabilities, 12.0),
                               net_benefit(labels, probabilities), atol=1e-6)
    np.testing.assert_allclose(net_benefit_survival(event, time, None, 12.0), treat_all(labels), atol=1e-6)


def test_decision_curve_holds_every_model_and_the_reference_strategies() -> None:
    labels = np.array([0, 1, 0, 1, 0, 0])
    curve = decision_curve({"model": np.linspace(0.1, 0.6, 6)}, labels=labels)
    assert curve["thresholds"] == list(THRESHOLDS)
    assert set(curve["net_benefit"]) == {"model", "treat_all", "treat_none"}
    assert curve["net_benefit"]["treat_none"] == [0.0] * len(THRESHOLDS)


def test_calibration_at_the_horizon_reads_kaplan_meier() -> None:
    rng = np.random.default_rng(1)
    risk = rng.uniform(0.05, 0.6, 2000)
    hazard = -np.log(1 - risk) / 12  # constant hazards whose 12-month probability is ``risk``
    event_time, censor = rng.exponential(1 / hazard), rng.uniform(6, 40, 2000)
    event, time = event_time <= censor, np.minimum(event_time, censor)
    calibrated = survival_calibration(event, time, risk, 12.0)
    for group in calibrated["groups"]:  # the true probabilities are calibrated, censoring notwithstanding
        assert group["observed"] == pytest.approx(group["predicted"], abs=0.05)
    shifted = survival_calibration(event, time, risk / 2, 12.0)
    assert shifted["mean_predicted"] < shifted["observed"] - 0.1
