"""The record and the latent truth of the independent generator (``independent_generator.py``):
clinical values with gaps, latent image quantities and the risk model, drawn without images
(``draw_independent_table``), and the calibration check of the oracle-feature gain (``check_oracle``)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when run from a checkout

from multimodal.errors import CohortError

LABEL = "recurrence_12m"
# The true image quantities, as they enter the risk model (risk.csv columns, truth.json).
IMAGE_QUANTITIES = ["log_infarct_ml", "log_wmh_ml", "log1p_lacunes", "atrophy_z", "n_territories"]
# Integer-coded columns of cohort.csv and how to read them (cohort.yaml ``types``).
TYPES = {
    "sex": "categorical", "smoking": "categorical", "hypertension": "categorical",
    "diabetes": "categorical", "atrial_fibrillation": "categorical", "prior_stroke_tia": "categorical",
    "statin": "categorical", "carotid_stenosis_50": "categorical",
    # Whole numbers that are measurements, not codes.
    "nihss": "continuous", "sbp": "continuous", "dbp": "continuous", "egfr": "continuous",
}
CONTINUOUS = ["age", "nihss", "sbp", "dbp", "glucose", "hba1c", "ldl", "bmi", "egfr", "onset_to_scan_h"]
CATEGORICAL = ["sex", "hypertension", "diabetes", "atrial_fibrillation", "prior_stroke_tia", "smoking",
               "antithrombotic", "statin", "carotid_stenosis_50"]
CLINICAL = ["age", "sex", "nihss", "sbp", "dbp", "glucose", "hba1c", "ldl", "hypertension", "diabetes",
            "atrial_fibrillation", "prior_stroke_tia", "smoking", "bmi", "egfr", "antithrombotic", "statin",
            "carotid_stenosis_50", "onset_to_scan_h"]
# Risk model (logit per unit; the two parts are scaled by TAB_SCALE / IMG_SCALE).
TAB_SCALE = 0.55
IMG_SCALE = 1.2
_REFERENCE_N = 20_000
_REFERENCE_SEED = 987_654


# =========================================================================== record + latents
def _bernoulli(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """0/1 draws with probabilities ``p``."""
    return (rng.random(p.shape) < p).astype(int)


def _draw_subjects(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """True clinical values, latent image quantities and both logit parts (no intercept, no gaps)."""
    age = np.clip(rng.normal(70.0, 12.0, n), 25.0, 97.0)
    male = _bernoulli(rng, np.full(n, 0.56))
    bmi = np.clip(rng.normal(27.0 + 0.6 * male, 4.5, n), 16.0, 50.0)
    htn = _bernoulli(rng, expit(-0.9 + 0.06 * (age - 60.0)))
    diabetes = _bernoulli(rng, expit(-1.5 + 0.02 * (age - 70.0) + 0.09 * (bmi - 27.0)))
    af = _bernoulli(rng, expit(-1.7 + 0.07 * (age - 70.0)))
    prior = _bernoulli(rng, expit(-1.5 + 0.03 * (age - 70.0)))
    smoke_u = rng.random(n)
    p_current = expit(-1.3 - 0.05 * (age - 65.0))
    smoking = np.where(smoke_u < p_current, 2, np.where(smoke_u < p_current + 0.3, 1, 0))
    statin_before = _bernoulli(rng, 0.2 + 0.35 * prior)
    ldl = np.clip(rng.normal(3.1, 0.95, n) - 0.9 * statin_before, 0.8, 7.0)
    sbp = 134.0 + 14.0 * htn + 0.3 * (age - 70.0) + rng.normal(0.0, 18.0, n)
    dbp = 0.45 * sbp + 18.0 + rng.normal(0.0, 9.0, n)
    hba1c = 5.4 + 0.02 * (bmi - 27.0) + diabetes * (1.4 + np.abs(rng.normal(0.0, 1.2, n))) + rng.normal(0, 0.35, n)
    glucose = np.clip(5.2 + 0.9 * (hba1c - 5.5) + np.abs(rng.normal(0.0, 1.2, n)), 3.0, 30.0)
    egfr = np.clip(96.0 - 0.75 * (age - 50.0) - 8.0 * diabetes + rng.normal(0.0, 15.0, n), 5.0, 130.0)
    stenosis = _bernoulli(rng, expit(-2.0 + 0.04 * (age - 70.0) + 0.7 * (smoking == 2) + 0.4 * diabetes + 0.3 * htn))
    onset_h = np.exp(rng.normal(np.log(5.0), 0.8, n))

    # Small-vessel disease: one shared burden, seen (noisily) as WMH and lacunes; age and
    # hypertension explain only part of it.
    svd = rng.normal(0.0, 1.0, n)
    log_wmh = 1.7 + 0.04 * (age - 70.0) + 0.3 * htn + 0.006 * (sbp - 140.0) + 0.75 * svd + rng.normal(0, 0.55, n)
    log_wmh = np.clip(log_wmh, np.log(0.1), np.log(90.0))
    lacunes = rng.poisson(np.exp(-1.0 + 0.03 * (age - 70.0) + 0.35 * htn + 0.25 * diabetes + 0.7 * svd))
    lacunes = np.minimum(lacunes, 12)
    atrophy = 0.045 * (age - 70.0) + 0.15 * diabetes + 0.2 * svd + rng.normal(0.0, 0.9, n)

    # The index infarct: lacunar (small deep) or cortical in a territory; embolic sources (AF,
    # stenosis) seed extra infarcts in other territories.
    lacunar = _bernoulli(rng, expit(-1.3 + 0.5 * htn + 0.4 * diabetes - 1.1 * af + 0.3 * svd))
    territory = np.where(lacunar == 1, "lacunar",
                         rng.choice(["mca", "pca", "aca"], size=n, p=[0.66, 0.2, 0.14]))
    main_ml = np.where(lacunar == 1, np.exp(rng.normal(np.log(0.7), 0.5, n)),
                       np.exp(rng.normal(np.log(14.0), 1.35, n)))
    main_ml = np.clip(main_ml, 0.15, 260.0)
    extra = np.where(_bernoulli(rng, expit(-2.4 + 1.9 * af + 0.8 * stenosis)) == 1,
                     1 + _bernoulli(rng, np.full(n, 0.35)), 0)
    extra_ml = np.array([float(np.sum(np.exp(rng.normal(np.log(1.5), 0.8, int(k))))) for k in extra])
    infarct_ml = main_ml + extra_ml
    side = rng.choice([-1, 1], size=n)
    weight = pd.Series(territory).map({"mca": 1.15, "aca": 0.9, "pca": 0.6, "lacunar": 1.0}).to_numpy()
    nihss_mean = np.exp(0.2 + 0.42 * np.log1p(main_ml) * weight + rng.normal(0.0, 0.6, n)) - 1.0
    nihss = np.clip(rng.poisson(np.maximum(nihss_mean, 0.05)), 0, 38)

    # Discharge medication: most AF patients anticoagulated, the rest left on antiplatelets.
    u = rng.random(n)
    antithrombotic = np.where(af == 1, np.where(u < 0.68, "anticoagulant", np.where(u < 0.95, "antiplatelet", "none")),
                              np.where(u < 0.07, "none", np.where(u < 0.8, "antiplatelet", "dual_antiplatelet")))
    statin = np.maximum(statin_before, _bernoulli(rng, np.full(n, 0.75)))

    tabular = TAB_SCALE * (
        0.032 * (age - 70.0) + 0.28 * htn + 0.008 * (sbp - 140.0) + 0.25 * diabetes + 0.12 * (hba1c - 6.0)
        + 0.45 * af + 0.75 * af * (antithrombotic != "anticoagulant") + 0.6 * prior
        + 0.45 * (smoking == 2) + 0.12 * (smoking == 1) + 0.2 * (ldl - 3.0) - 0.25 * statin
        + 0.7 * stenosis + 0.012 * np.maximum(60.0 - egfr, 0.0)
    )
    quantities = {
        "log_infarct_ml": np.log(infarct_ml), "log_wmh_ml": log_wmh, "log1p_lacunes": np.log1p(lacunes),
        "atrophy_z": atrophy, "n_territories": 1 + extra,
    }
    image = IMG_SCALE * (
        0.22 * (quantities["log_infarct_ml"] - 2.0) + 0.45 * (log_wmh - 1.7) + 0.6 * quantities["log1p_lacunes"]
        + 0.35 * atrophy + 0.6 * extra
    )
    return pd.DataFrame({
        "age": age, "sex": np.where(male == 1, 1, 2), "nihss": nihss, "sbp": sbp, "dbp": dbp,
        "glucose": glucose, "hba1c": hba1c, "ldl": ldl, "hypertension": htn, "diabetes": diabetes,
        "atrial_fibrillation": af, "prior_stroke_tia": prior, "smoking": smoking, "bmi": bmi, "egfr": egfr,
        "antithrombotic": antithrombotic, "statin": statin, "carotid_stenosis_50": stenosis,
        "onset_to_scan_h": onset_h,
        **quantities, "wmh_ml": np.exp(log_wmh), "lacunes": lacunes, "infarct_ml": infarct_ml,
        "main_infarct_ml": main_ml, "territory": territory, "side": side, "svd_burden": svd,
        "image_component": image, "tabular_component": tabular,
    })


@functools.lru_cache(maxsize=16)
def intercept_for(prevalence: float) -> float:
    """The intercept whose mean risk over a fixed 20,000-subject reference draw is ``prevalence``."""
    if not 0.0 < prevalence < 1.0:
        raise CohortError(f"prevalence must lie in (0, 1), got {prevalence}")
    ref = _draw_subjects(_REFERENCE_N, np.random.default_rng(_REFERENCE_SEED))
    linear = (ref["image_component"] + ref["tabular_component"]).to_numpy()
    lo, hi = -15.0, 15.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expit(mid + linear).mean() < prevalence else (lo, mid)
    return 0.5 * (lo + hi)


# Share of empty cells per column (missing completely at random unless noted in _gaps).
MISSING = {"nihss": 0.05, "sbp": 0.03, "dbp": 0.03, "glucose": 0.08, "ldl": 0.22, "hypertension": 0.04,
           "diabetes": 0.04, "atrial_fibrillation": 0.06, "prior_stroke_tia": 0.07, "smoking": 0.16,
           "bmi": 0.27, "egfr": 0.3, "antithrombotic": 0.1, "statin": 0.08, "carotid_stenosis_50": 0.35,
           "onset_to_scan_h": 0.2}
DECIMALS = {"age": 1, "sbp": 0, "dbp": 0, "glucose": 1, "hba1c": 1, "ldl": 2, "bmi": 1, "egfr": 0,
            "onset_to_scan_h": 1}


def _gaps(truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The record as a clinic holds it: rounded values, integer codes, empty cells."""
    record = pd.DataFrame(index=truth.index)
    for column in CLINICAL:
        values = truth[column]
        if column in DECIMALS:
            values = values.round(DECIMALS[column])
            values = values.astype("Int64") if DECIMALS[column] == 0 else values.astype("Float64")
        elif column != "antithrombotic":
            values = values.astype("Int64")
        record[column] = values
    for column, share in MISSING.items():
        record.loc[rng.random(len(record)) < share, column] = pd.NA
    # HbA1c is measured mostly in known diabetics (missing 12 %) and rarely otherwise (missing 45 %).
    share = np.where(truth["diabetes"] == 1, 0.12, 0.45)
    record.loc[rng.random(len(record)) < share, "hba1c"] = pd.NA
    return record


def draw_independent_table(n: int, seed: int = 0, labeled_fraction: float = 0.5,
                           prevalence: float = 0.15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw ``n`` subjects without rendering: ``(record, truth)``, both indexed by subject id.

    ``record`` holds the clinical columns as cohort.csv writes them (``pd.NA`` = empty cell) and
    ``recurrence_12m`` (``pd.NA`` for the unlabeled); ``truth`` holds the true clinical values, the
    latent image quantities, ``logit``, ``true_risk``, ``image_component``, ``tabular_component``,
    ``drawn_label`` and ``labeled``. The same seed gives the same draw; rendering uses other streams.
    """
    if n < 1:
        raise CohortError(f"n must be at least 1, got {n}")
    if not 0.0 <= labeled_fraction <= 1.0:
        raise CohortError(f"labeled_fraction must lie in [0, 1], got {labeled_fraction}")
    rng = np.random.default_rng([seed, 1])
    truth = _draw_subjects(n, rng)
    truth.index = pd.Index([f"IG{i:05d}" for i in range(n)], name="subject_id")
    truth["logit"] = intercept_for(prevalence) + truth["image_component"] + truth["tabular_component"]
    truth["true_risk"] = expit(truth["logit"])
    truth["drawn_label"] = _bernoulli(rng, truth["true_risk"].to_numpy())
    labeled = np.zeros(n, dtype=int)
    labeled[rng.permutation(n)[: round(n * labeled_fraction)]] = 1
    truth["labeled"] = labeled
    record = _gaps(truth, rng)
    record[LABEL] = pd.array(np.where(labeled == 1, truth["drawn_label"], 0), dtype="Int64")
    record.loc[labeled == 0, LABEL] = pd.NA
    return record, truth


def auroc_or_none(y: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC, or None when ``y`` holds one class only."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def check_oracle(n_train: int = 600, n_test: int = 600, seed: int = 0, prevalence: float = 0.15) -> dict[str, Any]:
    """Test AUROC of the benchmark's logistic regression (``finetune.baselines``) on the record,
    and with the true image quantities added (the oracle-feature LR), plus the Bayes AUROC."""
    from finetune.baselines import baseline_frame, create_baseline

    record, truth = draw_independent_table(n_train + n_test, seed, labeled_fraction=1.0, prevalence=prevalence)
    frame = baseline_frame(record[CLINICAL], CONTINUOUS, CATEGORICAL)
    oracle = pd.concat([truth[IMAGE_QUANTITIES].astype(float), frame], axis=1)
    y = truth["drawn_label"].to_numpy()
    train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    result: dict[str, Any] = {"n_train": n_train, "n_test": n_test, "seed": seed,
                              "train_positives": int(y[train].sum()), "test_positives": int(y[test].sum())}
    for name, x in (("lr_record", frame), ("lr_record_plus_image_quantities", oracle)):
        model = create_baseline("logistic_regression", seed).fit(x.iloc[train], y[train])
        result[name] = auroc_or_none(y[test], model.predict_proba(x.iloc[test])[:, 1])
    for name, column in (("bayes", "true_risk"), ("image_only", "image_component"),
                         ("tabular_only", "tabular_component")):
        result[name] = auroc_or_none(y[test], truth[column].to_numpy()[test])
    return result
