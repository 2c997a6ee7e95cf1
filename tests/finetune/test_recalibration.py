"""Platt recalibration: the fit against an independent optimiser, its effect, and its fallbacks."""

import logging

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit

from finetune.metrics import calibration_intercept_slope
from finetune.recalibration import apply_recalibration, fit_recalibration
from multimodal.errors import ConfigError


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with true risk expit(z - 1.5) and predictions that are too extreme and too high."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, n)
    y = (rng.random(n) < expit(z - 1.5)).astype(int)
    return y, expit(2.5 * z + 0.5)


def test_platt_fit_matches_an_independent_optimiser():
    y, p = _overconfident(300, 0)
    fit = fit_recalibration("platt", y, p)
    x = logit(p)
    # Platt's smoothed targets
    t = np.where(y == 1, (y.sum() + 1) / (y.sum() + 2), 1 / (len(y) - y.sum() + 2))

    def negative_log_likelihood(ab: np.ndarray) -> float:
        eta = ab[0] + ab[1] * x
        return float(np.sum(np.logaddexp(0, eta) - t * eta))

    reference = minimize(negative_log_likelihood, [0.0, 1.0], method="Nelder-Mead",
                         options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000}).x
    assert [fit["intercept"], fit["slope"]] == pytest.approx(list(reference), abs=1e-4)


def test_platt_makes_held_out_predictions_calibrated_and_keeps_their_order():
    y_val, p_val = _overconfident(400, 1)
    y_test, p_test = _overconfident(20000, 2)
    fit = fit_recalibration("platt", y_val, p_val)
    q = apply_recalibration(p_test, fit)
    before, after = calibration_intercept_slope(y_test, p_test), calibration_intercept_slope(y_test, q)
    assert abs(after[0]) < abs(before[0]) and abs(after[1] - 1) < abs(before[1] - 1)
    assert after[1] == pytest.approx(1.0, abs=0.2) and after[0] == pytest.approx(0.0, abs=0.2)
    assert (np.diff(q[np.argsort(p_test)]) >= 0).all()  # increasing map: ranking (AUROC) unchanged


def test_none_is_the_identity_and_unknown_methods_are_config_errors():
    y, p = _overconfident(50, 3)
    assert fit_recalibration("none", y, p) is None
    assert np.array_equal(apply_recalibration(p, None), p)
    with pytest.raises(ConfigError, match=r"finetune\.recalibration"):
        fit_recalibration("isotonic", y, p)


def test_separated_classes_get_a_finite_slope_from_the_smoothed_targets():
    fit = fit_recalibration("platt", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert 0 < fit["slope"] < 10 and np.isfinite(fit["intercept"])  # unsmoothed, it runs to infinity


@pytest.mark.parametrize("labels, probabilities", [
    ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]),   # one class
    ([1, 1, 0, 0, 1, 0], [0.1, 0.2, 0.8, 0.9, 0.3, 0.7]),  # ranked backwards: slope < 0
])
def test_undefined_or_backward_fits_fall_back_to_the_identity(labels, probabilities, caplog):
    with caplog.at_level(logging.WARNING):
        fit = fit_recalibration("platt", np.array(labels), np.array(probabilities))
    assert (fit["intercept"], fit["slope"]) == (0.0, 1.0) and "raw probabilities" in caplog.text
