"""A second, independent synthetic stroke cohort: a recipe that gains only on our own generator is
tuned to it, so the quality benchmark also reports the default on this one.

    python benchmarks/independent_generator.py OUT --n N --seed S [--labeled-fraction F] [--prevalence P]
        [--grid G] [--workers W] [--t1] [--check-oracle]

Written from a short description of stroke imaging, not from ``multimodal/synthetic*.py``: a
procedural head (noise-perturbed superquadric skull, scalp and brain; a cortical ribbon folded by
the zero sets of a random plane-wave field, so sulci are thin CSF sheets that widen with atrophy;
analytic deep grey nuclei and lateral/third ventricles), small-vessel disease (periventricular
caps and bands, punctate deep foci, lacunes with a gliotic rim), acute infarcts as irregular blobs
clipped to vascular-territory wedges (MCA, ACA, PCA) or small deep lacunar infarcts, one to three
territories (the embolic pattern). Every sequence is evaluated analytically at its own voxel
centres (two samples across each slice for partial volume), so a subject's FLAIR and DWI agree in
world space whatever their grids, orientations (RAS, LPS, LAS, oblique) and dtypes. The risk model
is its own: a logistic link on clinical factors (with an atrial-fibrillation x no-anticoagulation
interaction) plus image quantities (log infarct volume, log WMH volume, lacune count, atrophy,
territories) that the record predicts only partly.

Writes ``OUT/images/<id>_{flair,dwi}.nii.gz``, ``OUT/cohort.csv``, ``OUT/cohort.yaml``,
``OUT/risk.csv`` (the latent truth, never a column of cohort.csv) and ``OUT/truth.json``; see
``write_independent_cohort``. ``draw_independent_table`` draws the record and the latents alone
(no images), for calibration: ``--check-oracle`` fits the benchmark's logistic regression with and
without the true image quantities on a 600 / 600 split drawn that way.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from scipy.spatial import cKDTree
from scipy.special import expit
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when run from a checkout

from multimodal.errors import CohortError

logger = logging.getLogger("independent_generator")

LABEL = "recurrence_12m"
SEQUENCES = ("flair", "dwi")
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
# Periventricular band thickness (mm) = (ml of periventricular WMH / PV_ML_AT_1MM) ** PV_POWER: measured
# on 1.5 mm grids of 8 heads (median), so the rendered volume follows the latent one.
PV_ML_AT_1MM = 8.8
PV_POWER = 0.74


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


def _auroc(y: np.ndarray, score: np.ndarray) -> float | None:
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
        result[name] = _auroc(y[test], model.predict_proba(x.iloc[test])[:, 1])
    for name, column in (("bayes", "true_risk"), ("image_only", "image_component"),
                         ("tabular_only", "tabular_component")):
        result[name] = _auroc(y[test], truth[column].to_numpy()[test])
    return result


# =========================================================================== anatomy
class PlaneWaves:
    """A smooth random field: a normalised sum of cosines of random directions at one wavelength."""

    def __init__(self, rng: np.random.Generator, count: int, wavelength_mm: float, dims: int = 3) -> None:
        directions = rng.normal(size=(count, dims))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.k = (2.0 * np.pi / wavelength_mm * directions).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, count).astype(np.float32)
        self.scale = np.float32(np.sqrt(2.0 / count))  # unit variance

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.cos(points @ self.k.T + self.phase) @ np.full(len(self.phase), self.scale, dtype=np.float32)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from x, y, z angles in degrees (applied x, then y, then z)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid_radius(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Normalised radius (1 on the surface) of an axis-aligned ellipsoid."""
    return np.sqrt((((points - np.float32(centre)) / np.float32(axes)) ** 2).sum(axis=1))


def _ellipsoid_distance(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Signed distance (mm, along the ray from the centre) to an ellipsoid's surface."""
    d = points - np.float32(centre)
    r = np.sqrt(((d / np.float32(axes)) ** 2).sum(axis=1))
    return np.linalg.norm(d, axis=1) * (1.0 - 1.0 / np.maximum(r, 1e-6))


# Tissue codes.
AIR, SCALP, SKULL, CSF, GM, WM, DEEP_GM, WMH, LACUNE, RIM, INFARCT = range(11)
# Deep grey nuclei (centre for the right side, semi-axes), mirrored left.
NUCLEI = [((11.0, -13.0, 5.0), (8.0, 13.0, 8.0)),    # thalamus
          ((23.0, 4.0, 1.0), (7.0, 14.0, 9.0)),      # lentiform nucleus
          ((13.0, 14.0, 11.0), (5.0, 8.0, 7.0))]     # caudate head
# Ventricles (centre for the right side, semi-axes); the last one is the midline third ventricle.
VENTRICLES = [((7.5, -4.0, 16.0), (3.8, 22.0, 5.0)),   # bodies
              ((10.0, 20.0, 10.0), (4.2, 9.0, 6.5)),   # frontal horns
              ((16.0, -29.0, 9.0), (4.5, 9.0, 7.0)),   # trigones / occipital horns
              ((28.0, -6.0, -12.0), (2.5, 11.0, 2.5)),  # temporal horns
              ((0.0, -6.0, 2.0), (1.3, 10.0, 6.0))]    # third ventricle
# Vascular-territory wedges, right side: apex, axis, cosine of the half-angle.
TERRITORIES = {"mca": ((14.0, 3.0, -3.0), (1.0, 0.05, 0.35), 0.5),
               "aca": ((5.0, 12.0, 2.0), (0.05, 0.6, 1.0), 0.72),
               "pca": ((10.0, -20.0, -6.0), (0.3, -1.0, 0.15), 0.72)}


@dataclass
class Anatomy:
    """One subject's head in head coordinates (mm; x right, y anterior, z superior)."""

    icv_axes: np.ndarray
    brain_fraction: float
    exponent: float
    skull_mm: float
    scalp_mm: float
    shape_field: PlaneWaves
    shape_amp: float
    folds: PlaneWaves
    fold_wavelength: float
    sulcal_depth: float
    sulcal_width: float
    ribbon: float
    fissure: float
    ventricle_scale: float
    pv_thickness: float
    texture: PlaneWaves
    irregular: PlaneWaves
    foci: np.ndarray         # (k, 4): centre xyz, radius — punctate WMH
    lacunes: np.ndarray      # (k, 4)
    infarcts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str, int]]  # centre, axes, rotation, territory, side

    def ventricles(self) -> list[tuple[np.ndarray, np.ndarray]]:
        v = self.ventricle_scale
        out = []
        for centre, axes in VENTRICLES:
            scaled = np.array([axes[0] * v, axes[1] * np.sqrt(v), axes[2] * v])
            for sign in ((1.0, -1.0) if centre[0] else (1.0,)):
                c = np.array(centre) * np.array([sign * (1 + 0.15 * (v - 1)), 1.0, 1.0])
                out.append((c, scaled))
        return out

    def perturbation(self, points: np.ndarray) -> np.ndarray:
        """The surface wobble (a factor about 1) in the direction of each point."""
        norm = np.linalg.norm(points, axis=1, keepdims=True) + np.float32(1e-6)
        return np.float32(1.0) + np.float32(self.shape_amp) * self.shape_field(points * (np.float32(40.0) / norm))

    def radial(self, points: np.ndarray, axes: np.ndarray, wobble: np.ndarray | None = None) -> np.ndarray:
        """Signed distance (mm, radial) to the perturbed superquadric with ``axes``."""
        wobble = self.perturbation(points) if wobble is None else wobble
        norm = np.linalg.norm(points, axis=1) + np.float32(1e-6)
        axes = axes.astype(np.float32)
        z_axis = np.where(points[:, 2] < 0, axes[2] * np.float32(0.78), axes[2])  # flatter base
        e = np.float32(self.exponent)
        r = ((np.abs(points[:, 0]) / axes[0]) ** e + (np.abs(points[:, 1]) / axes[1]) ** e
             + (np.abs(points[:, 2]) / z_axis) ** e) ** (np.float32(1.0) / e)
        r = r / wobble
        return norm * (np.float32(1.0) - np.float32(1.0) / np.maximum(r, np.float32(1e-6)))


def _brain_points(anat: Anatomy, rng: np.random.Generator, count: int, depth: tuple[float, float],
                  min_ventricle_mm: float, region: np.ndarray | None = None) -> np.ndarray:
    """``count`` random points in the brain at ``depth`` mm below its surface, away from the ventricles
    (inside the ellipsoid ``region`` = centre xyz + semi-axes when given)."""
    out: list[np.ndarray] = []
    brain_axes = anat.icv_axes * anat.brain_fraction
    for _ in range(20):
        if region is None:
            cand = rng.uniform(-1.0, 1.0, (4 * count + 16, 3)) * brain_axes
        else:
            cand = region[:3] + rng.uniform(-1.0, 1.0, (4 * count + 16, 3)) * region[3:]
        d = -anat.radial(cand, brain_axes)
        vent = np.min([_ellipsoid_distance(cand, c, a) for c, a in anat.ventricles()], axis=0)
        keep = (d > depth[0]) & (d < depth[1]) & (vent > min_ventricle_mm)
        out.extend(cand[keep])
        if len(out) >= count:
            break
    return np.array(out[:count]).reshape(-1, 3)


def make_anatomy(subject: pd.Series, rng: np.random.Generator) -> Anatomy:
    """A subject's head from its latents (atrophy, WMH, lacunes, infarcts) and sex."""
    size = (1.03 if subject["sex"] == 1 else 0.97) * rng.normal(1.0, 0.03)
    icv_axes = np.array([77.0, 96.0, 72.0]) * size * rng.normal(1.0, 0.025, 3)
    atrophy = float(subject["atrophy_z"])
    fold_wavelength = float(rng.uniform(20.0, 26.0))  # gyral spacing (mm)
    anat = Anatomy(
        icv_axes=icv_axes,
        brain_fraction=float(np.clip(0.965 - 0.013 * atrophy, 0.88, 0.99)),
        exponent=float(rng.uniform(1.85, 2.15)),
        skull_mm=float(rng.uniform(3.5, 5.0)), scalp_mm=float(rng.uniform(2.5, 4.0)),
        shape_field=PlaneWaves(rng, 6, 55.0), shape_amp=float(rng.uniform(0.015, 0.03)),
        folds=PlaneWaves(rng, 10, fold_wavelength), fold_wavelength=fold_wavelength,
        sulcal_depth=float(rng.uniform(9.0, 13.0)),
        sulcal_width=float(np.clip(1.6 + 0.9 * atrophy + rng.normal(0, 0.3), 0.6, 6.0)),
        ribbon=float(rng.uniform(2.0, 3.5)),
        fissure=float(np.clip(1.5 + 0.8 * atrophy, 0.8, 5.0)),
        ventricle_scale=float(np.clip(1.15 + 0.22 * atrophy + rng.normal(0, 0.08), 0.75, 2.1)),
        pv_thickness=0.0,
        texture=PlaneWaves(rng, 8, 9.0), irregular=PlaneWaves(rng, 8, 14.0),
        foci=np.zeros((0, 4)), lacunes=np.zeros((0, 4)), infarcts=[],
    )
    # WMH: ~70 % periventricular (band thickness grows with the load), the rest punctate foci.
    wmh_ml = float(subject["wmh_ml"])
    anat.pv_thickness = float((0.7 * wmh_ml / PV_ML_AT_1MM) ** PV_POWER)
    deep_mm3 = 0.3 * wmh_ml * 1000.0
    radii: list[float] = []
    while sum(4.19 * r ** 3 for r in radii) < deep_mm3 and len(radii) < 120:
        radii.append(float(rng.uniform(1.0, 4.0)))
    if radii:
        centres = _brain_points(anat, rng, len(radii), (12.0, 45.0), 5.0)
        anat.foci = np.column_stack([centres, radii[: len(centres)]])
    count = int(subject["lacunes"])
    if count:
        # Deep grey nuclei and the deep white matter of either hemisphere.
        sides = rng.choice([-1.0, 1.0], size=count)
        centres = np.concatenate([
            _brain_points(anat, rng, int((sides == s).sum()), (15.0, 80.0), 2.0,
                          np.array([s * 17.0, 0.0, 8.0, 14.0, 24.0, 16.0]))
            for s in (-1.0, 1.0) if (sides == s).any()])
        anat.lacunes = np.column_stack([centres, rng.uniform(1.5, 7.5, len(centres))])
    anat.infarcts = _infarcts(subject, anat, rng)
    return anat


def _surface_depth(anat: Anatomy, apex: np.ndarray, axis: np.ndarray) -> float:
    """Distance from ``apex`` along ``axis`` to the brain surface."""
    t = np.linspace(0.0, 120.0, 241)[:, None]
    inside = anat.radial(apex + t * axis, anat.icv_axes * anat.brain_fraction) < 0
    return float(t[np.argmin(inside), 0]) if not inside.all() else 120.0


def _infarcts(subject: pd.Series, anat: Anatomy, rng: np.random.Generator) -> list[Any]:
    """The index infarct and any embolic extras: (centre, semi-axes, rotation, territory, side)."""
    side = int(subject["side"])
    volumes = [(str(subject["territory"]), side, float(subject["main_infarct_ml"]))]
    extra_ml = float(subject["infarct_ml"] - subject["main_infarct_ml"])
    n_extra = int(subject["n_territories"]) - 1
    if n_extra:
        pool = [(t, s) for t in ("mca", "aca", "pca") for s in (-1, 1) if (t, s) != volumes[0][:2]]
        shares = rng.dirichlet(np.ones(n_extra))
        for j, pick in enumerate(rng.choice(len(pool), n_extra, replace=False)):
            volumes.append((*pool[pick], extra_ml * shares[j]))
    out = []
    for territory, s, ml in volumes:
        r_eq = 0.94 * (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # the ragged border adds ~20 %
        aspect = np.exp(rng.normal(0.0, 0.2, 3))
        aspect /= np.prod(aspect) ** (1.0 / 3.0)
        rotation = _rotation(rng.uniform(-180, 180, 3))
        if territory == "lacunar":
            centre = _brain_points(anat, rng, 1, (20.0, 80.0), 3.0, np.array([s * 18.0, -2.0, 6.0, 8.0, 14.0, 8.0]))
            centre = centre[0] if len(centre) else np.array([s * 18.0, -2.0, 6.0])
        else:
            apex, axis, _ = TERRITORIES[territory]
            apex = np.array(apex) * np.array([s, 1, 1])
            axis = np.array(axis) * np.array([s, 1, 1])
            axis = axis / np.linalg.norm(axis) + rng.normal(0.0, 0.12, 3)
            axis /= np.linalg.norm(axis)
            reach = _surface_depth(anat, apex, axis)
            centre = apex + axis * max(reach - 0.7 * r_eq, 0.35 * reach)
        out.append((centre, r_eq * aspect, rotation, territory, s))
    return out


def _in_territory(points: np.ndarray, territory: str, side: int, irregular: np.ndarray) -> np.ndarray:
    """Whether each point lies in the territory's wedge (its border ragged by ``irregular``)."""
    apex, axis, cos_half = TERRITORIES[territory]
    apex = np.array(apex) * np.array([side, 1, 1])
    axis = np.array(axis) * np.array([side, 1, 1])
    axis = axis / np.linalg.norm(axis)
    d = points - apex
    cos = d @ axis / (np.linalg.norm(d, axis=1) + 1e-6)
    return (cos > cos_half + 0.08 * irregular) & (points[:, 0] * side > -2.0)


def _nearest_spot(points: np.ndarray, spots: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest spot centre and that spot's radius (0 where none is within reach)."""
    dist, idx = cKDTree(spots[:, :3]).query(points, distance_upper_bound=spots[:, 3].max() + margin)
    hit = idx < len(spots)
    radius = np.zeros(len(points))
    radius[hit] = spots[idx[hit], 3]
    return dist, radius


def label_points(points: np.ndarray, anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Tissue code per point (head coordinates, mm, float32) and a texture value (about 0 ± 1)."""
    labels = np.full(len(points), AIR, dtype=np.int8)
    texture = np.zeros(len(points), dtype=np.float32)
    # The surface wobble matters near the surfaces only: evaluate it in a shell around them.
    wobble = np.ones(len(points), dtype=np.float32)
    plain = anat.radial(points, anat.icv_axes, wobble) / (np.linalg.norm(points, axis=1) + np.float32(1e-6))
    shell = np.flatnonzero((plain > -0.45) & (plain < 0.2))  # normalised radius 0.7-1.25
    wobble[shell] = anat.perturbation(points[shell])
    s_icv = anat.radial(points, anat.icv_axes, wobble)
    labels[s_icv < anat.skull_mm + anat.scalp_mm] = SCALP
    labels[s_icv < anat.skull_mm] = SKULL
    inner = np.flatnonzero(s_icv < 0)
    p = points[inner]
    s_brain = anat.radial(p, anat.icv_axes * anat.brain_fraction, wobble[inner])
    sub = np.full(len(p), CSF, dtype=np.int8)
    brain = np.flatnonzero(s_brain < 0)
    q = p[brain]
    depth = -s_brain[brain]
    texture[inner[brain]] = anat.texture(q)
    # Cortex: a ribbon under the surface, lining sulci (zero sets of the fold field) and the fissure.
    outer = np.flatnonzero(depth < anat.sulcal_depth + anat.ribbon)
    sulcus = np.full(len(q), np.inf, dtype=np.float32)
    sulcus[outer] = np.abs(anat.folds(q[outer])) * np.float32(anat.fold_wavelength / (2.0 * np.pi))
    half = anat.sulcal_width / 2.0
    fissure = np.abs(q[:, 0]) - anat.fissure / 2.0
    upper = q[:, 2] > -5.0 - 0.2 * np.abs(q[:, 1])
    tissue = np.full(len(q), WM, dtype=np.int8)
    grey = (depth < anat.ribbon) | ((depth < anat.sulcal_depth + anat.ribbon) & (sulcus < half + anat.ribbon))
    grey |= upper & (depth < 45.0) & (fissure < anat.ribbon)
    tissue[grey] = GM
    tissue[(depth < anat.sulcal_depth) & (sulcus < half)] = CSF
    tissue[upper & (depth < 40.0) & (fissure < 0)] = CSF
    # Deep structures live in a central box: evaluate them there only.
    reach = 8.0 * anat.pv_thickness + 2.0
    box = np.flatnonzero((np.abs(q[:, 0]) < 45.0 + reach) & (np.abs(q[:, 1]) < 48.0 + reach)
                         & (np.abs(q[:, 2] - 2.0) < 30.0 + reach))
    c = q[box]
    irregular_box = anat.irregular(c) if anat.pv_thickness > 0 else None
    nuclei = np.min([_ellipsoid_radius(c, np.array(ce) * np.array([s, 1, 1]), np.array(a))
                     for ce, a in NUCLEI for s in (-1, 1)], axis=0)
    central = tissue[box]
    central[nuclei < 1.0] = DEEP_GM
    vent = np.min([_ellipsoid_distance(c, ce, a) for ce, a in anat.ventricles()], axis=0)
    # Periventricular caps (frontal and occipital horns) and bands, ragged by the irregular field.
    if anat.pv_thickness > 0:
        caps = np.exp(-(((c[:, 1] - 26.0) / 11.0) ** 2)) + np.exp(-(((c[:, 1] + 36.0) / 11.0) ** 2))
        band = anat.pv_thickness * (0.3 + 2.5 * caps) * np.maximum(1.0 + 0.9 * irregular_box, 0.0)
        central[(central == WM) & (vent < band)] = WMH
    central[vent < 0] = CSF
    tissue[box] = central
    white = np.flatnonzero((tissue == WM) | (tissue == DEEP_GM))
    if len(anat.foci) and len(white):
        dist, radius = _nearest_spot(q[white], anat.foci, 0.0)
        tissue[white[dist < radius]] = WMH
    if len(anat.lacunes) and len(white):
        dist, radius = _nearest_spot(q[white], anat.lacunes, 1.2)
        tissue[white[dist < radius + 1.2]] = RIM
        tissue[white[dist < radius]] = LACUNE
    for centre, axes, rotation, territory, side in anat.infarcts:
        near = np.flatnonzero(((q - centre.astype(np.float32)) ** 2).sum(axis=1) < (1.6 * axes.max()) ** 2)
        if not len(near):
            continue
        irregular = anat.irregular(q[near])
        local = (q[near] - centre) @ rotation / axes
        r = np.linalg.norm(local, axis=1) * (1.0 + 0.28 * irregular)
        hit = (r < 1.0) & (tissue[near] != CSF) & (tissue[near] != LACUNE)
        if territory != "lacunar":
            hit &= _in_territory(q[near], territory, side, irregular)
        tissue[near[hit]] = INFARCT
    sub[brain] = tissue
    labels[inner] = sub
    return labels, texture


# =========================================================================== scanners
@dataclass(frozen=True)
class Protocol:
    """One acquisition: matrix, voxel size (mm), axis codes, slice tilt, stored dtype, SNR."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    oblique_deg: float
    dtype: str
    snr: float


PROTOCOLS = {
    "flair": [Protocol("flair_a", (80, 96, 26), (2.6, 2.4, 6.5), "RAS", 0.0, "int16", 24.0),
              Protocol("flair_b", (96, 96, 32), (2.4, 2.4, 5.0), "LPS", 0.0, "float32", 30.0),
              Protocol("flair_c", (88, 88, 24), (2.5, 2.6, 7.0), "LAS", 12.0, "int16", 20.0)],
    "dwi": [Protocol("dwi_a", (64, 64, 24), (3.6, 3.6, 6.5), "LPS", 0.0, "int16", 9.0),
            Protocol("dwi_b", (72, 72, 28), (3.2, 3.2, 5.5), "RAS", 8.0, "float32", 12.0),
            Protocol("dwi_c", (60, 64, 22), (3.8, 3.6, 7.0), "LAS", 0.0, "int16", 8.0)],
    "t1": [Protocol("t1_a", (72, 88, 64), (2.4, 2.6, 2.6), "RAS", 0.0, "int16", 28.0),
           Protocol("t1_b", (80, 96, 56), (2.2, 2.4, 3.0), "LPS", 6.0, "float32", 32.0),
           Protocol("t1_c", (68, 84, 60), (2.5, 2.7, 2.8), "LAS", 0.0, "int16", 24.0)],
}
# Tissue intensities (index = tissue code; infarct handled separately).
CONTRAST = {
    "flair": np.array([0.0, 0.55, 0.06, 0.12, 0.78, 0.58, 0.72, 1.25, 0.14, 1.15, 0.0], dtype=np.float32),
    "dwi": np.array([0.0, 0.12, 0.03, 0.08, 0.62, 0.50, 0.58, 0.62, 0.10, 0.55, 0.0], dtype=np.float32),
    "t1": np.array([0.0, 0.9, 0.05, 0.15, 0.5, 0.75, 0.55, 0.62, 0.13, 0.5, 0.0], dtype=np.float32),
}
# Where each voxel is sampled across its slice (fractions of the slice thickness); more samples
# give partial volume in thick slices at proportional cost.
SLICE_SAMPLES = (0.0,)
_AXES = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def scaled(protocol: Protocol, grid: int | None) -> Protocol:
    """``protocol`` with its in-plane matrix brought to about ``grid`` voxels (same field of view)."""
    if grid is None:
        return protocol
    factor = grid / 96.0
    shape = tuple(max(6, round(s * factor)) for s in protocol.shape)
    spacing = tuple(float(sp * s / t) for sp, s, t in zip(protocol.spacing, protocol.shape, shape, strict=True))
    return Protocol(protocol.name, shape, spacing, protocol.orientation, protocol.oblique_deg,  # type: ignore[arg-type]
                    protocol.dtype, protocol.snr)


def affine_for(protocol: Protocol, fov_centre: np.ndarray) -> np.ndarray:
    """Voxel-to-world (RAS mm) affine whose grid centre lies at ``fov_centre``."""
    directions = np.array([_AXES[c] for c in protocol.orientation], dtype=float).T
    linear = _rotation(np.array([protocol.oblique_deg, 0.0, 0.0])) @ directions @ np.diag(protocol.spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = fov_centre - linear @ ((np.array(protocol.shape) - 1) / 2.0)
    return affine


def render(anat: Anatomy, subject: pd.Series, sequence: str, protocol: Protocol, affine: np.ndarray,
           head_centre: np.ndarray, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sequence's voxel array (float32, arbitrary scale before storage)."""
    shape = protocol.shape
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    # Voxel index -> head coordinates in one affine map: pose^T (A ijk + t - head centre).
    linear = (pose.T @ affine[:3, :3]).astype(np.float32)
    contrast = CONTRAST[sequence]
    onset = float(subject["onset_to_scan_h"])
    if sequence == "flair":  # FLAIR turns bright a few hours after onset
        infarct = float(np.clip(0.55 + 0.7 * (1.0 - np.exp(-onset / 5.0)), 0.5, 1.25))
    elif sequence == "t1":  # acute infarcts: faintly dark on T1
        infarct = float(rng.uniform(0.45, 0.6))
    else:
        infarct = float(rng.uniform(1.8, 2.5))
    total = np.zeros(len(ijk), dtype=np.float32)
    offsets = SLICE_SAMPLES
    for offset in offsets:
        shift = pose.T @ (affine[:3, :3] @ np.array([0.0, 0.0, offset]) + affine[:3, 3] - head_centre)
        points = ijk @ linear.T + shift.astype(np.float32)
        labels, texture = label_points(points, anat)
        value = contrast[labels] * (np.float32(1.0) + np.float32(0.05) * texture)
        lesion = labels == INFARCT
        value[lesion] = infarct * (1.0 + 0.08 * texture[lesion])
        total += value
    image = (total / len(offsets)).reshape(shape)
    # Smooth multiplicative bias field over the field of view, then Rician noise.
    grid = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    gx, gy, gz = np.meshgrid(*grid, indexing="ij", sparse=True)
    strength = 0.25 if sequence == "dwi" else 0.15
    b = rng.normal(0.0, strength, 6).astype(np.float32)
    image *= np.exp(b[0] * gx + b[1] * gy + b[2] * gz + b[3] * gx * gy + b[4] * (gx ** 2 - 0.3) + b[5] * gz ** 2)
    sigma = 0.55 / protocol.snr
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(sigma)
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)


def _save(image: np.ndarray, affine: np.ndarray, protocol: Protocol, path: Path, rng: np.random.Generator) -> None:
    """Store ``image`` in the protocol's dtype at a random intensity scale, qform and sform set."""
    if protocol.dtype == "int16":
        data = np.clip(np.round(image * rng.uniform(600.0, 2400.0)), -32768, 32767).astype(np.int16)
    else:
        data = (image * rng.uniform(0.5, 300.0)).astype(np.float32)
    nifti = nib.Nifti1Image(data, affine)
    nifti.header.set_xyzt_units("mm", "sec")
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=2 if protocol.name.endswith("b") else 1)
    nifti.header["descrip"] = f"independent generator {protocol.name}".encode()
    nib.save(nifti, str(path))


def render_subject(subject_id: str, subject: pd.Series, out: Path, seed: int, index: int,
                   grid: int | None, sequences: tuple[str, ...] = SEQUENCES) -> dict[str, str]:
    """Render and save every sequence of one subject; returns {sequence: path relative to ``out``}."""
    rng = np.random.default_rng([seed, 2, index])
    anat = make_anatomy(subject, rng)
    head_centre = rng.normal(0.0, [6.0, 8.0, 6.0]) + np.array([0.0, 10.0, 15.0])
    pose = _rotation(rng.normal(0.0, [6.0, 2.5, 3.0]))
    site = int(rng.integers(3))
    paths = {}
    for j, sequence in enumerate(sequences):
        choice = site if rng.random() < 0.8 else int(rng.integers(3))
        protocol = scaled(PROTOCOLS[sequence][(choice + j) % 3], grid)
        affine = affine_for(protocol, head_centre + rng.normal(0.0, 4.0, 3))
        image = render(anat, subject, sequence, protocol, affine, head_centre, pose, rng)
        relative = f"images/{subject_id}_{sequence}.nii.gz"
        _save(image, affine, protocol, out / relative, rng)
        paths[sequence] = relative
    return paths


# =========================================================================== the cohort
def _render_job(job: tuple[str, pd.Series, Path, int, int, int | None, tuple[str, ...]]) -> dict[str, str]:
    """``render_subject`` on one argument tuple (picklable for a process pool)."""
    return render_subject(*job)


def write_independent_cohort(out: str | Path, n: int, grid: int | None = None, labeled_fraction: float = 0.5,
                             seed: int = 0, prevalence: float = 0.15, *, workers: int = 1,
                             sequences: tuple[str, ...] = SEQUENCES) -> Path:
    """Write an ``n``-subject cohort into ``out``; returns ``out/cohort.yaml``.

    ``grid``: None keeps the native protocols (in-plane matrices 60-96); an integer brings every
    in-plane matrix to about that many voxels at the same field of view (small grids for tests).
    Files: ``images/<id>_<seq>.nii.gz``, ``cohort.csv`` (ids, image paths, clinical columns with
    empty cells, ``recurrence_12m`` empty for the unlabeled), ``cohort.yaml``, ``risk.csv`` (latent
    truth per subject) and ``truth.json`` (image-quantity names, prevalence, oracle AUROCs on the
    labeled subjects). ``workers`` > 1 renders in that many processes (the same files: every
    subject draws from its own seeded stream). ``sequences``: any of flair, dwi, t1 (T1 is off by
    default: it doubles the rendering time). Raises ``CohortError`` if ``out`` already holds a
    cohort.csv.
    """
    out = Path(out)
    if (out / "cohort.csv").exists():
        raise CohortError(f"{out} already holds a cohort.csv; choose an empty folder")
    if grid is not None and grid < 8:
        raise CohortError(f"grid must be at least 8 voxels, got {grid}")
    unknown = sorted(set(sequences) - set(PROTOCOLS))
    if unknown or not sequences:
        raise CohortError(f"sequences {list(sequences)}: choose from {sorted(PROTOCOLS)}")
    record, truth = draw_independent_table(n, seed, labeled_fraction, prevalence)
    (out / "images").mkdir(parents=True, exist_ok=True)
    columns: dict[str, list[str]] = {f"{s}_file": [] for s in sequences}
    start = time.perf_counter()
    jobs = [(subject_id, truth.loc[subject_id], out, seed, i, grid, tuple(sequences))
            for i, subject_id in enumerate(truth.index)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rendered = list(tqdm(pool.map(_render_job, jobs, chunksize=4), total=n, desc="rendering", unit="subject"))
    else:
        rendered = [_render_job(job) for job in tqdm(jobs, desc="rendering", unit="subject")]
    for paths in rendered:
        for sequence, path in paths.items():
            columns[f"{sequence}_file"].append(path)
    elapsed = time.perf_counter() - start
    logger.info("rendered %d subjects in %.1f s (%.3f s per subject)", n, elapsed, elapsed / max(n, 1))

    table = pd.concat([pd.DataFrame(columns, index=truth.index), record], axis=1)
    table.to_csv(out / "cohort.csv", index=True, lineterminator="\n")
    config = {"csv": "cohort.csv", "id": "subject_id", "images": {s: f"{s}_file" for s in sequences},
              "label": LABEL, "types": TYPES}
    (out / "cohort.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    risk = truth[["labeled", "drawn_label", "true_risk", "logit", "image_component", "tabular_component",
                  *IMAGE_QUANTITIES, "wmh_ml", "lacunes", "infarct_ml", "territory", "svd_burden"]]
    risk.to_csv(out / "risk.csv", index=True, lineterminator="\n", float_format="%.6g")
    lab = truth[truth["labeled"] == 1]
    y = lab["drawn_label"].to_numpy()
    info = {
        "generator": "independent", "image_quantities": IMAGE_QUANTITIES, "prevalence": prevalence,
        "auroc": {"bayes_labeled": _auroc(y, lab["true_risk"].to_numpy()),
                  "image_only_labeled": _auroc(y, lab["image_component"].to_numpy()),
                  "tabular_only_labeled": _auroc(y, lab["tabular_component"].to_numpy())},
        "n": n, "seed": seed, "labeled": len(lab), "labeled_positives": int(y.sum()), "grid": grid,
        "seconds_per_subject": round(elapsed / max(n, 1), 4),
    }
    (out / "truth.json").write_text(json.dumps(info, indent=2) + "\n")
    return out / "cohort.yaml"


def main(argv: list[str] | None = None) -> int:
    """CLI: write a cohort (or, with ``--check-oracle``, report the calibration figures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (must not hold a cohort.csv)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled-fraction", type=float, default=0.5)
    parser.add_argument("--prevalence", type=float, default=0.15)
    parser.add_argument("--grid", type=int, default=None, help="in-plane matrix (default: native protocols)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--t1", action="store_true", help="also render a T1 (about doubles the time)")
    parser.add_argument("--check-oracle", action="store_true",
                        help="no images: LR test AUROC with and without the true image quantities (600 / 600)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.check_oracle:
        logger.info("%s", json.dumps(check_oracle(seed=args.seed, prevalence=args.prevalence)))
        return 0
    path = write_independent_cohort(args.out, args.n, args.grid, args.labeled_fraction, args.seed, args.prevalence,
                                    workers=args.workers, sequences=(*SEQUENCES, "t1") if args.t1 else SEQUENCES)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
