"""finetune.metrics: point metrics against scikit-learn and hand values, calibration fits against
independent optimisers, and the statistical behaviour of the stratified bootstraps."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from scipy.stats import fisher_exact, norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from finetune.metrics import (
    METRICS,
    _batch_metrics,
    bootstrap_ci,
    calibration_intercept_slope,
    classification_metrics,
    expected_calibration_error,
    paired_bootstrap_delta_auroc,
    risk_groups,
    stratified_bootstrap_indices,
    summarise_folds,
)


def binormal(n_pos, n_neg, d, rng):
    """Scores N(0,1) for negatives, N(d,1) for positives: true AUROC = Φ(d/√2). As probabilities."""
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    return y, expit(rng.normal(size=n_pos + n_neg) + d * y - 1.0)


def test_point_metrics_on_a_hand_example():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    m = classification_metrics(y, p, threshold=0.5)
    # predicted positive: 0.8, 0.6, 0.9 → TP 2, FP 1, FN 1, TN 2
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["auroc"] == pytest.approx(7 / 9)  # positive > negative in 7 of 9 pairs
    # ranked 0.9+, 0.8+, 0.6−, 0.4−, 0.35+: precision at each positive 1, 1, 3/5
    assert m["auprc"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["prevalence"] == 0.5 and m["n"] == 6


def test_threshold_is_inclusive():
    m = classification_metrics(np.array([0, 1]), np.array([0.2, 0.5]), threshold=0.5)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


@pytest.mark.parametrize("n", [7, 60, 601])
def test_vectorised_resample_metrics_equal_the_sklearn_point_metrics(n):
    """The bootstrap's NumPy metrics are the same definitions as the point estimates, ties included."""
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    p = np.round(expit(rng.normal(size=n) + y), 1)  # rounding makes many ties
    point = classification_metrics(y, p, threshold=0.4)
    order = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)]  # negatives first, as resampled
    batch = _batch_metrics(np.stack([p[order], p[order]]), int((y == 0).sum()), 0.4, METRICS)
    for name in METRICS:
        assert batch[name][0] == pytest.approx(point[name], rel=1e-9, abs=1e-12, nan_ok=True), name
        assert batch[name][1] == batch[name][0] or np.isnan(batch[name][0])


def test_ece_hand_values():
    # ten equal-mass bins of ten subjects at p = 0.0, 0.1, …, 0.9 with k events in bin k → 0
    p = np.repeat(np.arange(10) / 10, 10)
    y = np.concatenate([np.r_[np.ones(k), np.zeros(10 - k)] for k in range(10)]).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    y[99] = 1  # last bin: 10 events at p = 0.9 → |0.9 − 1.0| · 10/100
    assert expected_calibration_error(y, p) == pytest.approx(0.01)
    y[54] = 0  # bin 0.5 now has 4 events: + |0.5 − 0.4| · 10/100
    assert expected_calibration_error(y, p) == pytest.approx(0.02)
    # two bins: |0.1 − 0.2| / 2 + |0.7 − 0.5| / 2
    p2 = np.r_[np.full(10, 0.1), np.full(10, 0.7)]
    y2 = np.r_[[1, 1] + [0] * 8, [1] * 5 + [0] * 5]
    assert expected_calibration_error(y2, p2, bins=2) == pytest.approx(0.15)
    # 23 subjects in 10 bins: sizes 3, 3, 3, 2, …, 2 (np.array_split), a loop reference
    rng = np.random.default_rng(0)
    p3, y3 = rng.random(23), (rng.random(23) < 0.4).astype(int)
    order = np.argsort(p3)
    reference = sum(len(g) / 23 * abs(p3[g].mean() - y3[g].mean()) for g in np.array_split(order, 10))
    assert expected_calibration_error(y3, p3) == pytest.approx(reference)


def test_ece_keeps_tied_probabilities_in_one_bin():
    # a constant predictor: one bin, |0.5 − 8/48| (splitting the ties by label gave 0.5)
    y = np.r_[np.ones(8), np.zeros(40)].astype(int)
    assert expected_calibration_error(y, np.full(48, 0.5)) == pytest.approx(0.5 - 8 / 48)
    # two distinct values: two bins whatever the bin count, and row order does not matter
    p = np.r_[np.full(30, 0.2), np.full(18, 0.6)]
    y = np.r_[np.ones(6), np.zeros(24), np.ones(9), np.zeros(9)].astype(int)
    expected = 30 / 48 * abs(0.2 - 6 / 30) + 18 / 48 * abs(0.6 - 9 / 18)
    order = np.random.default_rng(0).permutation(48)
    assert expected_calibration_error(y[order], p[order]) == pytest.approx(expected)


def test_ece_is_zero_for_perfectly_calibrated_bins():
    p = np.repeat([0.0, 0.25, 0.5, 0.75, 1.0], 4)
    y = np.array([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    assert expected_calibration_error(y, p, bins=5) == pytest.approx(0.0)


def test_calibration_fits_match_independent_optimisers():
    rng = np.random.default_rng(3)
    p = expit(rng.normal(size=400))
    y = (rng.random(400) < expit(0.7 * logit(p) + 0.3)).astype(int)
    intercept, slope = calibration_intercept_slope(y, p)
    x = logit(p)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[:, None], y)
    assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-4)

    def negative_log_likelihood(a):
        eta = a + x
        return np.sum(np.logaddexp(0, eta) - y * eta)

    assert intercept == pytest.approx(minimize_scalar(negative_log_likelihood).x, abs=1e-4)


def test_calibration_recovers_truth_and_flags_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=20000)
    y = (rng.random(z.size) < expit(z)).astype(int)
    intercept, slope = calibration_intercept_slope(y, expit(z))
    assert slope == pytest.approx(1.0, abs=0.06)
    assert intercept == pytest.approx(0.0, abs=0.05)
    _, over_slope = calibration_intercept_slope(y, expit(2 * z))  # too extreme
    assert over_slope == pytest.approx(0.5, abs=0.05)
    under_intercept, _ = calibration_intercept_slope(y, expit(z - 1))  # risks underestimated
    assert under_intercept == pytest.approx(1.0, abs=0.1)


def test_calibration_slope_of_strongly_overconfident_predictions_converges():
    # Plain Newton from slope 1 diverged here (seen with gradient boosting: p from 1e-4 to
    # 0.99, true slope ~0.3) and the slope came out NaN; step halving must find the optimum.
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.0, size=320)
    y = (rng.random(z.size) < expit(z - 1.5)).astype(int)
    p = expit(4 * (z - 1.5) + rng.normal(0, 2.0, z.size))
    _, slope = calibration_intercept_slope(y, p)
    x = logit(np.clip(p, 1e-6, 1 - 1e-6))
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(x[:, None], y)
    assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-4) and slope < 0.5
    interval = bootstrap_ci(y, p, 0.5, 500, 0, metrics=["calibration_slope"])["calibration_slope"]
    assert interval["lower"] <= slope <= interval["upper"]


def test_calibration_is_nan_where_undefined():
    assert np.isnan(calibration_intercept_slope(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))[1])
    assert all(np.isnan(calibration_intercept_slope(np.zeros(5, int), np.full(5, 0.3))))
    m = classification_metrics(np.zeros(5, int), np.full(5, 0.3), 0.5)
    assert np.isnan(m["auroc"]) and m["specificity"] == 1.0


def test_every_resample_keeps_both_classes_and_the_class_counts():
    y = np.r_[np.zeros(47, int), np.ones(3, int)]
    np.random.default_rng(1).shuffle(y)
    idx = stratified_bootstrap_indices(y, 500, np.random.default_rng(0))
    assert idx.shape == (500, 50)
    assert (y[idx].sum(1) == 3).all()
    assert (y[idx[:, :47]] == 0).all() and (y[idx[:, 47:]] == 1).all()
    assert len(np.unique(idx[:, 47:])) == 3  # draws come from the positives only


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = {}
    for n_pos, n_neg in ((40, 160), (400, 1600)):
        y, p = binormal(n_pos, n_neg, 1.0, rng)
        ci = bootstrap_ci(y, p, threshold=0.4)
        assert set(ci) == set(METRICS)
        for name, row in ci.items():
            assert row["lower"] <= row["estimate"] <= row["upper"] or name == "ece", name  # ECE is biased
        assert ci["auroc"]["estimate"] == pytest.approx(roc_auc_score(y, p))
        widths[n_pos] = ci["auroc"]["upper"] - ci["auroc"]["lower"]
    assert widths[400] < 0.5 * widths[40]  # ∝ 1/√N: expect a ratio of about 1/√10 ≈ 0.32


def test_bootstrap_is_reproducible_and_seeded():
    y, p = binormal(20, 80, 1.0, np.random.default_rng(5))
    a = bootstrap_ci(y, p, 0.4, n_resamples=300, seed=1, metrics=["auroc", "brier"])
    assert a == bootstrap_ci(y, p, 0.4, n_resamples=300, seed=1, metrics=["auroc", "brier"])
    assert a != bootstrap_ci(y, p, 0.4, n_resamples=300, seed=2, metrics=["auroc", "brier"])
    assert set(a) == {"auroc", "brier"}


def test_auroc_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(2024)
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    reps = 200
    covered = 0
    for rep in range(reps):
        y, p = binormal(50, 150, d, rng)
        ci = bootstrap_ci(y, p, 0.5, n_resamples=1000, seed=rep, metrics=["auroc"])["auroc"]
        covered += ci["lower"] <= truth <= ci["upper"]
    assert 0.88 <= covered / reps <= 0.99


def test_bootstrap_is_nan_safe_on_separable_data():
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    p = np.r_[np.linspace(0.05, 0.4, 30), np.linspace(0.6, 0.95, 10)]
    ci = bootstrap_ci(y, p, 0.5, n_resamples=200)
    assert ci["auroc"] == {"estimate": 1.0, "lower": 1.0, "upper": 1.0}
    assert np.isnan(ci["calibration_slope"]["lower"])  # undefined in every resample, no exception


def test_paired_delta_auroc():
    rng = np.random.default_rng(7)
    y, good = binormal(60, 240, 1.5, rng)
    same = paired_bootstrap_delta_auroc(y, good, good.copy())
    assert same == {"delta": 0.0, "lower": 0.0, "upper": 0.0, "p_value": 1.0}
    weak = expit(rng.normal(size=y.size) + 0.2 * y)
    better = paired_bootstrap_delta_auroc(y, good, weak)
    assert better["delta"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert 0 < better["lower"] < better["delta"] < better["upper"]
    assert better["p_value"] < 0.01
    worse = paired_bootstrap_delta_auroc(y, weak, good)
    assert worse["upper"] < 0 and worse["p_value"] == better["p_value"]


def test_paired_bootstrap_uses_the_same_resamples_for_both_models():
    """A monotone transform of a model leaves every resampled AUROC unchanged → Δ is exactly 0."""
    y, p = binormal(30, 70, 1.0, np.random.default_rng(1))
    out = paired_bootstrap_delta_auroc(y, p, p**3, n_resamples=500)
    assert out["lower"] == pytest.approx(0.0, abs=1e-12) and out["upper"] == pytest.approx(0.0, abs=1e-12)


def test_risk_groups_against_a_hand_table_and_scipy():
    # high risk: 10 subjects, 6 events; low risk: 30 subjects, 3 events
    y = np.r_[np.ones(6), np.zeros(4), np.ones(3), np.zeros(27)].astype(int)
    p = np.r_[np.full(10, 0.7), np.full(30, 0.1)]
    out = risk_groups(y, p, threshold=0.7)
    assert out["high"] == {"n": 10, "events": 6, "event_rate": 0.6}
    assert out["low"] == {"n": 30, "events": 3, "event_rate": 0.1}
    assert out["relative_risk"] == pytest.approx(6.0)
    odds_ratio, p_value = fisher_exact([[6, 4], [3, 27]])
    assert out["fisher_p_value"] == pytest.approx(p_value)
    assert out["odds_ratio"] == pytest.approx(odds_ratio)
    assert out["fisher_p_value"] < 0.01
    empty = risk_groups(y, p, threshold=0.9)
    assert empty["high"]["n"] == 0 and np.isnan(empty["relative_risk"]) and empty["fisher_p_value"] == 1.0


def test_summarise_folds():
    folds = [{"auroc": 0.7, "f1": 0.2, "note": "x"}, {"auroc": 0.8, "f1": float("nan"), "note": "y"}]
    out = summarise_folds(folds)
    assert set(out) == {"auroc", "f1"}
    assert out["auroc"]["mean"] == pytest.approx(0.75)
    assert out["auroc"]["std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert out["f1"] == {"mean": 0.2, "std": pytest.approx(float("nan"), nan_ok=True), "n": 1.0}


@pytest.mark.parametrize(("labels", "probabilities", "message"), [
    ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0/1"),
    ([0, 1], [-1.5, 2.0], "pass sigmoid"),
    ([0, 1, 1], [0.1, 0.2], "equal length"),
])
def test_bad_inputs_raise_clear_errors(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(labels), np.array(probabilities), 0.5)


def test_bootstrap_refuses_one_class_and_unknown_metrics():
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_ci(np.zeros(10, int), np.full(10, 0.2), 0.5)
    with pytest.raises(ValueError, match="unknown metrics"):
        bootstrap_ci(np.array([0, 1]), np.array([0.2, 0.8]), 0.5, metrics=["auc"])


def test_every_estimate_lies_in_its_own_interval_and_ece_is_bias_corrected(monkeypatch):
    """Resampled ECE is biased upward: on these calibrated samples of 300 its plain percentile interval
    lies wholly above the estimate. The reported ECE interval is shifted by the bootstrap bias, and
    every metric's estimate lies inside its own 95 % interval."""
    from finetune import metrics

    def sample(seed):
        rng = np.random.default_rng(seed)
        p = rng.uniform(0.02, 0.5, 300)
        return (rng.random(300) < p).astype(int), p  # calibrated by construction

    seeds = (2, 7, 15)
    for seed in seeds:
        y, p = sample(seed)
        result = metrics.bootstrap_ci(y, p, 0.3, n_resamples=400, seed=seed)
        for name, ci in result.items():
            if np.isfinite(ci["estimate"]):
                assert ci["lower"] - 1e-9 <= ci["estimate"] <= ci["upper"] + 1e-9, (seed, name, ci)
    monkeypatch.setattr(metrics, "BIAS_CORRECTED", ())  # the plain percentile interval, for contrast
    for seed in seeds:
        plain = metrics.bootstrap_ci(*sample(seed), 0.3, n_resamples=400, seed=seed, metrics=["ece"])["ece"]
        assert plain["lower"] > plain["estimate"]
