"""Classical baselines: they learn a simulated signal, survive odd predict rows, fit on train only."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.utils.class_weight import compute_sample_weight

from finetune.baselines import (
    BASELINES,
    baseline_frame,
    create_baseline,
    fit_predict_baseline,
)
from multimodal.errors import CohortError, ConfigError

CONTINUOUS = ["age", "glucose", "nihss"]
CATEGORICAL = ["sex", "site", "smoker"]
N_TRAIN = 360


def _simulate(n: int = 480, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Raw cohort features (as ``Cohort.features`` holds them) and a label driven by them.

    The label depends on two continuous features, two categorical ones and on glucose being
    missing, so both baselines have signal in every kind of input. Cells are missing at random
    (about 15 %), categorical spellings vary ('Yes'/'yes', 1/1.0), and a site ``'rare'`` exists
    only in the held-out rows.
    """
    rng = np.random.default_rng(seed)
    age = rng.normal(70, 10, n)
    glucose = rng.normal(6, 1, n)
    nihss = rng.gamma(2.0, 3.0, n)
    sex = rng.choice(["M", "F"], n)
    site = rng.choice(["a", "b", "c"], n)
    smoker = rng.choice(["Yes", "no"], n)
    glucose_missing = rng.random(n) < 0.2
    logit = (
        0.08 * (age - 70) + 0.9 * (glucose - 6) * ~glucose_missing + 1.0 * glucose_missing
        + 1.2 * (sex == "M") + 1.0 * (site == "c") - 1.2
    )
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    features = pd.DataFrame(
        {"age": age, "glucose": np.where(glucose_missing, np.nan, glucose), "nihss": nihss,
         "sex": sex, "site": site, "smoker": smoker},
        index=pd.Index([f"s{i:03d}" for i in range(n)], name="subject_id"),
    ).astype({"sex": object, "site": object, "smoker": object})
    for column in ["age", "nihss", "sex", "smoker"]:
        features.loc[rng.random(n) < 0.15, column] = np.nan
    # Spelling variants that must land in one category.
    features.loc[features.index[::7], "smoker"] = features["smoker"].iloc[::7].map(
        {"Yes": "yes", "no": "NO"}
    )
    features.loc[features.index[N_TRAIN::5], "site"] = "rare"
    return features, labels


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    raw, labels = _simulate()
    return baseline_frame(raw, CONTINUOUS, CATEGORICAL), labels


@pytest.fixture(scope="module")
def split(data: tuple[pd.DataFrame, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    frame, labels = data
    return frame.iloc[:N_TRAIN], labels[:N_TRAIN], frame.iloc[N_TRAIN:], labels[N_TRAIN:]


# --------------------------------------------------------------------------- inputs
def test_baseline_frame_types_and_canonical_categories() -> None:
    raw = pd.DataFrame(
        {"age": ["70", None, "81.5"], "smoker": ["Yes", "yes", None], "grade": [1, 1.0, np.nan]},
        index=["a", "b", "c"],
    )
    frame = baseline_frame(raw, ["age"], ["smoker", "grade"])
    assert list(frame.columns) == ["age", "smoker", "grade"]
    assert list(frame.index) == ["a", "b", "c"]
    assert frame["age"].dtype == np.float64 and np.isnan(frame.at["b", "age"])
    assert frame["smoker"].dtype == object and frame["grade"].dtype == object
    assert frame["smoker"].tolist()[:2] == ["yes", "yes"] and pd.isna(frame.at["c", "smoker"])
    assert frame["grade"].tolist()[:2] == ["1", "1"] and pd.isna(frame.at["c", "grade"])


def test_baseline_frame_errors_and_absent_columns(caplog: pytest.LogCaptureFixture) -> None:
    raw = pd.DataFrame({"age": ["70", "old"], "sex": ["M", "F"]})
    with pytest.raises(CohortError, match="age"):
        baseline_frame(raw, ["age"], ["sex"])
    with pytest.raises(CohortError, match="both continuous and categorical"):
        baseline_frame(raw, ["sex"], ["sex"])
    with caplog.at_level(logging.WARNING, logger="finetune.baselines"):
        frame = baseline_frame(raw, ["bmi"], ["sex", "site"])
    assert "absent" in caplog.text
    assert frame["bmi"].dtype == np.float64 and frame["bmi"].isna().all()
    assert frame["site"].dtype == object and frame["site"].isna().all()


# --------------------------------------------------------------------------- registry
def test_registry_names() -> None:
    assert sorted(BASELINES) == ["gradient_boosting", "logistic_regression"]


def test_unknown_name_and_parameter_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'logistic_regression'.*gradient_boosting"):
        create_baseline("logistic_regresion", seed=0)
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        create_baseline("gradient_boosting", seed=0, learning_rat=0.1)


def test_kwargs_override_classifier_and_none_keeps_default() -> None:
    model = create_baseline("logistic_regression", seed=0, Cs=[0.05], max_iter=None)
    classifier = model.named_steps["classifier"]
    assert classifier.Cs == [0.05] and classifier.max_iter == 5000
    booster = create_baseline("gradient_boosting", seed=3, max_iter=20).named_steps["classifier"]
    assert booster.max_iter == 20 and booster.random_state == 3 and booster.early_stopping is False


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_class_weight_is_balanced(name: str) -> None:
    assert create_baseline(name, seed=0).named_steps["classifier"].class_weight == "balanced"


def test_balanced_logistic_regression_centres_weighted_predictions() -> None:
    # With balanced weights the unpenalised intercept's score equation makes the weighted mean
    # prediction 0.5 on the training rows, not the prevalence (here ~10 %).
    raw, _ = _simulate(seed=1)
    frame = baseline_frame(raw, CONTINUOUS, CATEGORICAL)
    rng = np.random.default_rng(1)
    labels = (rng.random(len(frame)) < 0.1).astype(int)
    probs = fit_predict_baseline("logistic_regression", frame, labels, frame, seed=0)
    weights = compute_sample_weight("balanced", labels)
    assert np.average(probs, weights=weights) == pytest.approx(0.5, abs=1e-3)
    assert probs.mean() > 0.3


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_learns_signal_above_shuffled_control(name: str, split: tuple) -> None:
    x_train, y_train, x_test, y_test = split
    probs = fit_predict_baseline(name, x_train, y_train, x_test, seed=0)
    assert probs.shape == (len(x_test),) and probs.dtype == np.float64
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    auroc = roc_auc_score(y_test, probs)
    shuffled = np.random.default_rng(0).permutation(y_train)
    control = roc_auc_score(y_test, fit_predict_baseline(name, x_train, shuffled, x_test, seed=0))
    assert auroc > 0.65, auroc
    assert auroc > control + 0.1, (auroc, control)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_unseen_categories_missing_rows_and_absent_columns(name: str, split: tuple) -> None:
    x_train, y_train, x_test, _ = split
    odd = x_test.iloc[:6].copy()
    odd["sex"] = "unknown-sex"  # never seen in training
    odd.iloc[2:4] = np.nan  # rows with every feature missing
    probs = fit_predict_baseline(name, x_train, y_train, odd, seed=0)
    assert probs.shape == (6,) and np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    assert probs[2] == pytest.approx(probs[3])  # identical all-missing rows, identical output
    # A test table lacking a feature column: it enters as missing, like an all-missing cell.
    without = fit_predict_baseline(name, x_train, y_train, odd.drop(columns=["glucose"]), seed=0)
    blanked = fit_predict_baseline(name, x_train, y_train, odd.assign(glucose=np.nan), seed=0)
    np.testing.assert_allclose(without, blanked)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_column_missing_in_every_training_row_is_dropped(name: str, split: tuple) -> None:
    x_train, y_train, x_test, _ = split
    train = x_train.assign(glucose=np.nan, smoker=np.nan).astype({"smoker": object})
    probs = fit_predict_baseline(name, train, y_train, x_test, seed=0)
    reference = fit_predict_baseline(
        name, train.drop(columns=["glucose", "smoker"]), y_train, x_test, seed=0
    )
    np.testing.assert_allclose(probs, reference)


def test_gradient_boosting_high_cardinality_category(split: tuple) -> None:
    # More distinct values than max_bins: the encoder groups the rare ones instead of failing.
    x_train, y_train, x_test, _ = split
    train = x_train.assign(site=[f"h{i}" for i in range(len(x_train))])
    probs = fit_predict_baseline("gradient_boosting", train, y_train, x_test, seed=0, max_bins=32)
    assert np.isfinite(probs).all()


def test_gradient_boosting_same_seed_same_predictions(split: tuple) -> None:
    x_train, y_train, x_test, _ = split
    first = fit_predict_baseline("gradient_boosting", x_train, y_train, x_test, seed=7)
    second = fit_predict_baseline("gradient_boosting", x_train, y_train, x_test, seed=7)
    np.testing.assert_array_equal(first, second)


def test_gradient_boosting_sees_categories_and_nan(split: tuple) -> None:
    x_train, y_train, _, _ = split
    model = create_baseline("gradient_boosting", seed=0).fit(x_train, y_train)
    classifier = model.named_steps["classifier"]
    n_categorical = len(CATEGORICAL)
    # Categoricals are flagged as such (first in the encoded frame), continuous kept raw with NaN.
    assert classifier.is_categorical_.tolist() == [True] * n_categorical + [False] * len(CONTINUOUS)
    encoded = model[:-1].transform(x_train)
    assert np.isnan(encoded["continuous__glucose"]).sum() == x_train["glucose"].isna().sum()
    np.testing.assert_array_equal(encoded["continuous__age"], x_train["age"])


# --------------------------------------------------------------------------- leakage
def test_logistic_pipeline_learns_from_training_rows_only(data: tuple, split: tuple) -> None:
    frame, _ = data
    x_train, y_train, _, _ = split
    model = create_baseline("logistic_regression", seed=0).fit(x_train, y_train)
    features = model.named_steps["features"]
    continuous = features.named_transformers_["continuous"]
    medians = x_train[CONTINUOUS].median().to_numpy()
    np.testing.assert_allclose(continuous.named_steps["impute"].statistics_, medians)
    imputed_means = x_train[CONTINUOUS].fillna(x_train[CONTINUOUS].median()).mean().to_numpy()
    np.testing.assert_allclose(continuous.named_steps["scale"].mean_, imputed_means)
    all_rows_means = frame[CONTINUOUS].fillna(frame[CONTINUOUS].median()).mean().to_numpy()
    assert not np.allclose(continuous.named_steps["scale"].mean_, all_rows_means)
    # The one-hot vocabulary is the training fold's: 'rare' exists only in held-out rows.
    site_categories = list(features.named_transformers_["categorical"].categories_[1])
    assert site_categories == ["a", "b", "c"]
    assert "rare" in set(frame["site"])
    # Inputs: scaled continuous, an indicator per feature, one-hot categoricals.
    names = list(features.get_feature_names_out())
    assert [n for n in names if n.startswith("missing__")] == [
        f"missing__missingindicator_{c}" for c in CONTINUOUS + CATEGORICAL
    ]
    assert "categorical__smoker_yes" in names and "categorical__smoker_Yes" not in names


def test_labels_are_checked(split: tuple) -> None:
    x_train, y_train, x_test, _ = split
    with pytest.raises(CohortError, match="one class"):
        fit_predict_baseline("logistic_regression", x_train, np.zeros(len(x_train)), x_test, seed=0)
    with pytest.raises(CohortError, match="0 or 1"):
        fit_predict_baseline("logistic_regression", x_train, np.full(len(x_train), np.nan), x_test, seed=0)
    with pytest.raises(CohortError, match="labels for"):
        fit_predict_baseline("logistic_regression", x_train, y_train[:-1], x_test, seed=0)


def test_logistic_regression_strength_is_chosen_by_inner_cross_validation(split: tuple) -> None:
    # Reference: plain LogisticRegression at every C of the grid, scored by the same inner folds.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x_train, y_train, _, _ = split
    model = create_baseline("logistic_regression", seed=3).fit(x_train, y_train)
    classifier = model.named_steps["classifier"]
    inputs = model.named_steps["features"].transform(x_train)
    folds = StratifiedKFold(5, shuffle=True, random_state=3)
    scores = [cross_val_score(LogisticRegression(C=c, class_weight="balanced", max_iter=5000), inputs, y_train,
                              cv=folds, scoring="neg_log_loss").mean() for c in classifier.Cs]
    chosen = list(classifier.Cs).index(float(np.ravel(classifier.C_)[0]))
    # LogisticRegressionCV warm-starts along the C path, so near-tied scores may differ in the
    # last digits: the chosen C must score within 1e-3 of the best, and beat the grid's ends.
    assert scores[chosen] >= max(scores) - 1e-3, (scores, chosen)
    assert scores[chosen] > min(scores[0], scores[-1])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_fold_of_24_subjects_still_learns_without_warnings(name: str, data: tuple, recwarn) -> None:
    """scikit-learn's defaults assume hundreds of rows: 20 per leaf left no split (a constant 0.5)
    and 5 inner folds with 4 positives warned; the baselines size both to the fold."""
    frame, labels = data
    train = np.r_[np.flatnonzero(labels == 1)[:4], np.flatnonzero(labels == 0)[:20]]
    probs = fit_predict_baseline(name, frame.iloc[train], labels[train], frame.iloc[N_TRAIN:], seed=0)
    assert np.ptp(probs) > 0.01
    assert roc_auc_score(labels[N_TRAIN:], probs) > 0.55
    assert not [w for w in recwarn if "least populated class" in str(w.message)]


def test_a_constant_baseline_is_called_out(data: tuple, caplog: pytest.LogCaptureFixture) -> None:
    frame, labels = data
    train = np.r_[np.flatnonzero(labels == 1)[:4], np.flatnonzero(labels == 0)[:20]]
    with caplog.at_level(logging.WARNING, logger="finetune.baselines"):  # the user's 20 per leaf: no split
        fit_predict_baseline("gradient_boosting", frame.iloc[train], labels[train], frame.iloc[N_TRAIN:], seed=0,
                             min_samples_leaf=20)
    assert "predicts 0.5 for every subject of this fold (trained on 24 subjects, 4 positive)" in caplog.text


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_read_report_text_when_given(name: str) -> None:
    """A hidden cause only the report states (a large infarct, in varied words, sometimes absent):
    with the documents each baseline scores clearly higher than on the table alone."""
    raw, labels = _simulate(seed=3)
    rng = np.random.default_rng(3)
    large = rng.random(len(labels)) < 0.3
    labels = np.where(large, (rng.random(len(labels)) < 0.8).astype(int), labels)
    words = {True: ["large infarct", "extensive MCA infarct"], False: ["small infarct", "no acute infarct"]}
    documents = [None if rng.random() < 0.15 else f"{rng.choice(words[bool(b)])}, no haemorrhage" for b in large]
    scores = {}
    for with_text in (False, True):
        frame = baseline_frame(raw, CONTINUOUS, CATEGORICAL, documents if with_text else None)
        probs = fit_predict_baseline(name, frame.iloc[:N_TRAIN], labels[:N_TRAIN], frame.iloc[N_TRAIN:], seed=0)
        scores[with_text] = roc_auc_score(labels[N_TRAIN:], probs)
    assert scores[True] > scores[False] + 0.05, scores
