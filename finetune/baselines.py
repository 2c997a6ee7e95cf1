"""Classical baselines on the clinical table, run in the same folds and metrics as the deep model.

Every fine-tuning report shows where deep learning stands against two scikit-learn models:

- ``logistic_regression``: standardised continuous values (median-imputed) + a missing
  indicator per feature + one-hot categoricals, L2 logistic regression with
  ``class_weight="balanced"`` whose strength ``C`` is chosen by an inner stratified 5-fold CV on
  log loss (``LogisticRegressionCV``): with ~50 positives and ~30 inputs the default ``C=1``
  overfits (measured on the 1,600-subject synthetic cohort: AUROC 0.625 at C=1, 0.703 at 0.01),
  and a weak baseline would flatter the deep model.
- ``gradient_boosting``: ``HistGradientBoostingClassifier`` on raw values, NaN kept (it routes
  missing values natively) and categoricals as categories, ``class_weight="balanced"``.

When the model reads report text, the baselines read the same text (``baseline_frame``'s
``documents``, one column ``TEXT_COLUMN``), so "the model beats logistic regression" stays a fair
sentence: logistic regression adds the TF-IDF of word 1-2-grams and character 3-5-grams (fitted
on the training fold, terms in at least two of its reports), gradient boosting the leading
``REPORT_COMPONENTS`` components of that TF-IDF (trees on thousands of sparse columns are slow
and no better). A subject without a report has an all-zero text block.

Both are single scikit-learn ``Pipeline`` objects, so every statistic (medians, means,
vocabularies) is learned inside ``fit`` from the training fold only. The pipelines pick columns
by dtype, so they take any frame built by ``baseline_frame``: continuous columns float64 with
NaN, categorical columns ``object`` holding canonical strings or NaN. Typical use per fold::

    frame = baseline_frame(cohort.features, cohort.continuous, cohort.categorical)
    probs = fit_predict_baseline("gradient_boosting", frame.loc[train], y_train, frame.loc[test], seed)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from multimodal.errors import CohortError
from multimodal.registry import Registry
from multimodal.tabular import canonical_category, to_numeric_column

logger = logging.getLogger(__name__)

# An entry builds an unfitted pipeline from a seed and classifier parameters (already checked
# against the classifier's ``get_params()`` by ``create_baseline``).
BaselineEntry = Callable[[int, dict[str, Any]], Pipeline]
BASELINES = Registry("baseline")
register_baseline = BASELINES.register

# Column roles come from dtypes (see ``baseline_frame``): numbers are continuous, anything
# else (object strings) categorical. This lets one pipeline serve any cohort's columns.
TEXT_COLUMN = "__report__"  # baseline_frame's column of report documents (only when the model reads text)
REPORT_COMPONENTS = 32  # gradient boosting's components of the report TF-IDF
_CONTINUOUS = make_column_selector(dtype_include="number")
_CATEGORICAL = make_column_selector(pattern=f"^(?!{TEXT_COLUMN}$)", dtype_exclude="number")
_ALL = make_column_selector(pattern=f"^(?!{TEXT_COLUMN}$)")
_TEXT = make_column_selector(pattern=f"^{TEXT_COLUMN}$")

# Prefix the gradient-boosting ColumnTransformer gives its encoded categorical columns.
_CATEGORICAL_PREFIX = "categorical__"


# --------------------------------------------------------------------------- entries
def linear_design() -> ColumnTransformer:
    """The logistic-regression baseline's design, unfitted: standardised continuous values (median-imputed),
    a missing indicator per column and one-hot categoricals (the Cox baseline reads it too)."""
    continuous = Pipeline([
        # Median imputation only fills the hole; the missing indicator below carries the
        # information that the value was absent. ``keep_empty_features`` keeps a column that
        # is all-missing in the training fold (as 0) so the output width never depends on it.
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
    ])
    return ColumnTransformer(
        [
            ("continuous", continuous, _CONTINUOUS),
            # features="all": one indicator per input column, even if the training fold had no
            # gap there, so a value missing only at predict time is still flagged.
            ("missing", MissingIndicator(features="all"), _ALL),
            # Unseen categories at predict time become an all-zero block instead of an error.
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), _CATEGORICAL),
            ("text", report_tfidf(), _TEXT),  # selects nothing (and is skipped) without a text column
        ],
        sparse_threshold=0.0,
    )


def _documents(frame: pd.DataFrame) -> np.ndarray:
    """The text column as ``(N,)`` strings, "" for a subject without a report."""
    return frame.iloc[:, 0].fillna("").astype(str).to_numpy()


def report_tfidf() -> Pipeline:
    """TF-IDF of the report column, unfitted: word 1-2-grams and character 3-5-grams seen in at least
    two training reports (at most 2,000 character n-grams), sublinear term frequencies."""
    return Pipeline([
        ("documents", FunctionTransformer(_documents)),
        ("tfidf", FeatureUnion([
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            ("characters", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, max_features=2000,
                                           sublinear_tf=True)),
        ])),
    ])


class ReportComponents(TransformerMixin, BaseEstimator):
    """The report column -> its leading TF-IDF components (latent semantic analysis), dense.

    A transformer of its own (a Pipeline of the two would do) because gradient boosting's pandas-output
    ColumnTransformer needs ``get_feature_names_out`` from each part, which ``TfidfVectorizer`` lacks."""

    def __init__(self, components: int = REPORT_COMPONENTS, seed: int = 0) -> None:
        self.components, self.seed = components, seed

    def fit(self, frame: pd.DataFrame, y: Any = None) -> ReportComponents:
        tfidf = report_tfidf().fit(frame)
        width = tfidf.transform(frame).shape[1]
        self.tfidf_ = tfidf
        self.svd_ = TruncatedSVD(max(1, min(self.components, width - 1)), random_state=self.seed).fit(
            tfidf.transform(frame))
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.svd_.transform(self.tfidf_.transform(frame))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array([f"report_component{i}" for i in range(self.svd_.n_components)], dtype=object)


@register_baseline("logistic_regression")
def _logistic_regression(seed: int, params: dict[str, Any]) -> Pipeline:
    """Standardised continuous + missing indicators + one-hot categoricals → balanced LR, C by inner CV."""
    # Log loss, not AUROC, picks C: AUROC ignores the coefficients' scale, so many C tie and the
    # tie goes to the smallest, whose near-constant probabilities then pool badly across folds.
    classifier = LogisticRegressionCV(
        Cs=list(np.logspace(-4, 2, 13)), cv=StratifiedKFold(5, shuffle=True, random_state=seed),
        scoring=neg_log_loss, class_weight="balanced", max_iter=5000, random_state=seed)
    pure_l2(classifier)
    classifier.set_params(**params)
    return Pipeline([("features", linear_design()), ("classifier", classifier)])


@register_baseline("gradient_boosting")
def _gradient_boosting(seed: int, params: dict[str, Any]) -> Pipeline:
    """Raw values with NaN + categoricals as categories → balanced HistGradientBoosting.

    Early stopping is off: with ~50 positives per cohort its internal 10 % validation split
    would hold a handful of positives and stop on noise. ``max_iter`` etc. can be overridden.
    """
    classifier = HistGradientBoostingClassifier(
        categorical_features="from_dtype",
        class_weight="balanced",
        early_stopping=False,
        random_state=seed,
    )
    classifier.set_params(**params)
    # HistGradientBoosting accepts at most ``max_bins`` categories per feature. Our own
    # OrdinalEncoder groups the rarest ones into one "infrequent" code so a high-cardinality
    # column (a hospital code, say) cannot fail the fit; unseen or missing values map to NaN,
    # which the trees route as missing.
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=classifier.max_bins,
    )
    features = ColumnTransformer(
        [("categorical", encoder, _CATEGORICAL), ("continuous", "passthrough", _CONTINUOUS),
         ("text", ReportComponents(seed=seed), _TEXT)],
        verbose_feature_names_out=True,
    ).set_output(transform="pandas")
    return Pipeline([
        ("features", features),
        # Mark the encoded columns as pandas categories so ``categorical_features="from_dtype"``
        # finds them without knowing the cohort's column names when the pipeline is built.
        ("as_category", FunctionTransformer(_encoded_as_category)),
        ("classifier", classifier),
    ])


def neg_log_loss(estimator: LogisticRegression | LogisticRegressionCV, x: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's ``neg_log_loss`` scorer for a binary logistic regression, computed directly.

    The string scorer validates its inputs on each of the 13 Cs x 5 inner folds it scores per fit (x 16
    block weightings in a probe): 40 % of a probe's time (cProfile). Same clipping of p to [eps, 1 - eps] as ``log_loss``.
    """
    # (F,) and () while LogisticRegressionCV scores its path, (1, F) and (1,) on a fitted estimator
    logit = x @ np.ravel(estimator.coef_) + np.ravel(estimator.intercept_)[0]
    eps = np.finfo(np.float64).eps
    p = np.clip(expit(logit), eps, 1.0 - eps)
    positive = np.asarray(y) == estimator.classes_[-1]
    return float(np.mean(np.where(positive, np.log(p), np.log1p(-p))))


def pure_l2(classifier: LogisticRegressionCV) -> None:
    """Ask ``classifier`` for pure L2 the way scikit-learn >= 1.8 wants it (``penalty`` is
    deprecated there; older releases take the default L2 and would warn about l1_ratios)."""
    available = classifier.get_params(deep=False)
    if available.get("penalty") == "deprecated":
        classifier.set_params(l1_ratios=(0.0,))
    if "use_legacy_attributes" in available:
        classifier.set_params(use_legacy_attributes=False)


def _encoded_as_category(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the ordinal-encoded categorical columns a pandas ``category`` dtype (NaN stays missing)."""
    columns = [c for c in frame.columns if str(c).startswith(_CATEGORICAL_PREFIX)]
    return frame.astype(dict.fromkeys(columns, "category")) if columns else frame


# --------------------------------------------------------------------------- factory
def create_baseline(name: str, seed: int, **kwargs: Any) -> Pipeline:
    """An unfitted scikit-learn pipeline for baseline ``name``.

    ``kwargs`` override the classifier's parameters (``Cs=[0.1]``, ``max_iter=200``,
    ``learning_rate=0.05``); ``None`` values are dropped so unset config keys keep the defaults.
    Raises ``ConfigError`` for an unknown name (listing the registry and the nearest name) or a
    parameter the classifier does not have. Fit it on a frame from ``baseline_frame``.
    """
    entry = BASELINES.lookup(name)
    params = {key: value for key, value in kwargs.items() if value is not None}
    BASELINES.check_arguments(name, params, sorted(entry(seed, {}).named_steps["classifier"].get_params(deep=False)))
    return entry(seed, params)


# --------------------------------------------------------------------------- inputs
def baseline_frame(
    cohort_features: pd.DataFrame, continuous: list[str], categorical: list[str],
    documents: list[str | None] | None = None,
) -> pd.DataFrame:
    """The frame both baselines take: continuous then categorical columns, same index, and with
    ``documents`` (one report per row, None for none) a last column ``TEXT_COLUMN``.

    Continuous columns become float64 (NaN = missing; text is a ``CohortError``). Categorical
    cells go through ``canonical_category`` so ``'Yes'``/``'yes'`` and ``1``/``1.0`` are one
    category, stored as ``object`` with NaN for missing: the dtype is how the pipelines tell
    the roles apart, and NaN (not ``None``) is the marker ``MissingIndicator`` looks for. A named
    column absent from ``cohort_features`` enters as all-missing with a warning, as absent
    features do for the deep model.
    """
    overlap = sorted(set(continuous) & set(categorical))
    if overlap:
        raise CohortError(f"columns {overlap} are both continuous and categorical; give each one role")
    absent = [c for c in [*continuous, *categorical] if c not in cohort_features.columns]
    if absent:
        logger.warning("baseline features %s are absent from the table; they enter as missing", absent)
    index = cohort_features.index
    columns: dict[str, pd.Series] = {}
    for column in continuous:
        if column in absent:
            columns[column] = pd.Series(np.nan, index=index, dtype="float64")
        else:
            columns[column] = to_numeric_column(cohort_features[column], column)
    for column in categorical:
        values = [np.nan] * len(index) if column in absent else [
            np.nan if (code := canonical_category(v)) is None else code for v in cohort_features[column]
        ]
        columns[column] = pd.Series(values, index=index, dtype=object)
    if documents is not None:
        if len(documents) != len(index):
            raise ValueError(f"baseline_frame: {len(documents)} documents for {len(index)} rows")
        columns[TEXT_COLUMN] = pd.Series([np.nan if d is None else d for d in documents], index=index, dtype=object)
    return pd.DataFrame(columns, index=index)


def _check_labels(labels: Any, n_rows: int) -> np.ndarray:
    """Training labels as (N,) int 0/1 with both classes present; anything else is a ``CohortError``."""
    labels = np.asarray(labels, dtype=float).reshape(-1)
    if labels.shape[0] != n_rows:
        raise CohortError(f"baseline got {labels.shape[0]} labels for {n_rows} training rows")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise CohortError("baseline labels must be 0 or 1 (drop unlabeled rows before fitting)")
    if len(np.unique(labels)) < 2:
        raise CohortError("the training fold holds one class only; a baseline needs positives and negatives")
    return labels.astype(int)


def _align_columns(test_frame: pd.DataFrame, train_frame: pd.DataFrame) -> pd.DataFrame:
    """The test frame in the training column order; absent columns all-missing (train dtype)."""
    absent = [c for c in train_frame.columns if c not in test_frame.columns]
    if absent:
        logger.warning("baseline test rows lack columns %s; they enter as missing", absent)
    extra = [c for c in test_frame.columns if c not in train_frame.columns]
    if extra:
        logger.warning("baseline test rows have columns %s unseen in training; ignoring them", extra)
    return pd.DataFrame({
        column: test_frame[column] if column in test_frame.columns
        else pd.Series(np.nan, index=test_frame.index, dtype=train_frame[column].dtype)
        for column in train_frame.columns
    }, index=test_frame.index)


def fit_predict_baseline(
    name: str,
    train_frame: pd.DataFrame,
    train_labels: Any,
    test_frame: pd.DataFrame,
    seed: int,
    **kwargs: Any,
) -> np.ndarray:
    """Fit baseline ``name`` on the training fold and return P(class 1) for the test rows.

    Args:
        name: a key of ``BASELINES``.
        train_frame: (N_train, F) from ``baseline_frame``; the only rows any statistic is fit on.
        train_labels: (N_train,) 0/1.
        test_frame: (N_test, F) from ``baseline_frame``; unseen categories and missing values
            are fine, and absent columns enter as missing. Columns missing in every training
            row are dropped from both frames (nothing can be learned from them).
        seed: the run's seed (``random_state`` of the classifier).
        kwargs: classifier parameters, as for ``create_baseline``.

    Returns:
        (N_test,) float64 probabilities of class 1, in ``test_frame`` row order.
    """
    model = create_baseline(name, seed, **kwargs)
    labels = _check_labels(train_labels, len(train_frame))
    # A column with no value in the training fold carries nothing to learn, and
    # HistGradientBoosting (sklearn 1.9) fails to bin an all-NaN numeric column; drop it here.
    empty = [c for c in train_frame.columns if train_frame[c].isna().all()]
    if empty:
        logger.info("baseline %s: columns %s are missing in every training row; dropped", name, empty)
        train_frame = train_frame.drop(columns=empty)
        test_frame = test_frame.drop(columns=[c for c in empty if c in test_frame.columns])
    if train_frame.shape[1] == 0:
        raise CohortError("baseline has no feature with a value in the training fold")
    _fit_to_size(model.named_steps["classifier"], labels, kwargs)
    model.fit(train_frame, labels)
    if len(test_frame) == 0:
        return np.zeros(0, dtype=np.float64)
    probs = model.predict_proba(_align_columns(test_frame, train_frame))
    positive = list(model.classes_).index(1)
    result = np.asarray(probs[:, positive], dtype=np.float64)
    if len(result) > 1 and np.ptp(result) == 0.0:
        logger.warning("baseline %s predicts %.3g for every subject of this fold (trained on %d subjects, %d "
                       "positive): within the fold it ranks nobody, and pooled over folds only the folds' offsets "
                       "differ", name, result[0], len(labels), labels.sum())
    return result


def _fit_to_size(classifier: Any, labels: np.ndarray, overridden: dict[str, Any]) -> None:
    """Shrink the settings a small training fold cannot meet (scikit-learn's defaults assume hundreds
    of rows), unless the caller set them: no more inner CV folds than the smaller class has subjects,
    and at most a third of the fold per leaf, since 20 per leaf left a 24-subject fold without a
    single split (a constant prediction, measured)."""
    smallest = int(np.bincount(labels, minlength=2).min())
    if isinstance(classifier, LogisticRegressionCV) and overridden.get("cv") is None:
        cv = classifier.cv
        if isinstance(cv, StratifiedKFold) and smallest < cv.n_splits:
            classifier.set_params(cv=StratifiedKFold(max(2, smallest), shuffle=True, random_state=cv.random_state))
    if isinstance(classifier, HistGradientBoostingClassifier) and overridden.get("min_samples_leaf") is None:
        classifier.set_params(min_samples_leaf=min(classifier.min_samples_leaf, max(1, len(labels) // 3)))
