"""The clinical half of a synthetic cohort: a complete population, its risk model and the table.

``draw_clinical`` draws the clinical values (with realistic gaps), the latent image quantities
(infarct and WMH volume, atrophy, head size) and the 12-month recurrence risk built from image,
tabular and interaction parts (``WEIGHTS``).
``multimodal.synthetic`` renders the images from the latent quantities.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.special import expit

from multimodal.errors import CohortError


@dataclass(frozen=True)
class RiskProfile:
    """How a synthetic population and its risk are drawn (``strokessl synth --profile``).

    ``standard`` is the original generator: the record predicts much of what the image shows
    (NIHSS tracks the infarct, age and blood pressure the WMH load). ``image`` makes the image's
    own quantities carry risk the record barely predicts: NIHSS is a noisy reading of the infarct,
    WMH load depends little on age and blood pressure, atrophy beyond age varies more, and the
    image part of the logit weighs more.
    """

    name: str
    nihss_noise: float  # SD of NIHSS around its infarct-volume curve
    wmh_log_mean: float  # log WMH volume (ml) at age 70, SBP 140
    wmh_age: float  # log-WMH slope per year of age
    wmh_sbp: float  # ... per mmHg systolic
    wmh_sd: float  # residual SD of log WMH (the part no clinical value predicts)
    atrophy_excess_sd: float  # mm of tissue lost beyond what age explains
    image_terms: tuple[float, float, float]  # log infarct, log WMH, atrophy excess in the image part
    weights: tuple[float, float, float]  # logit weight of the standardised image, tabular, interaction parts


PROFILES = {
    "standard": RiskProfile("standard", nihss_noise=2.0, wmh_log_mean=float(np.log(5)), wmh_age=0.045, wmh_sbp=0.012,
                            wmh_sd=0.7, atrophy_excess_sd=0.5, image_terms=(0.8, 0.6, 0.5), weights=(0.5, 0.45, 1.0)),
    "image": RiskProfile("image", nihss_noise=4.0, wmh_log_mean=float(np.log(8)), wmh_age=0.015, wmh_sbp=0.004,
                         wmh_sd=0.9, atrophy_excess_sd=0.8, image_terms=(0.6, 0.8, 0.7), weights=(1.1, 0.45, 0.5)),
}


def get_profile(name: str) -> RiskProfile:
    """The named profile; an unknown name is a ``CohortError`` listing the choices."""
    if name not in PROFILES:
        raise CohortError(f"unknown synthetic profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def _draw_population(n: int, rng: np.random.Generator, profile: RiskProfile = PROFILES["standard"]) -> pd.DataFrame:
    """True (complete) clinical values and latent image quantities for ``n`` subjects."""
    age = np.clip(rng.normal(70, 12, n), 30, 95).round()
    male = rng.random(n) < 0.56
    bmi = np.clip(rng.normal(27.5, 4.5, n), 17, 48).round(1)
    hypertension = rng.random(n) < expit(0.8 + 0.05 * (age - 70) + 0.08 * (bmi - 27.5))
    diabetes = rng.random(n) < expit(-1.2 + 0.12 * (bmi - 27.5) + 0.02 * (age - 70))
    sbp = np.clip(rng.normal(132 + 16 * hypertension + 0.3 * (age - 70), 17), 90, 230).round()
    dbp = np.clip(0.45 * sbp + rng.normal(18, 8, n), 45, 130).round()
    glucose = np.exp(rng.normal(np.log(105) + 0.45 * diabetes, 0.2)).round()  # mg/dL
    hba1c = np.clip(5.4 + 1.7 * diabetes + 0.01 * (glucose - 110) + rng.normal(0, 0.4, n), 4, 14).round(1)
    ldl = np.clip(rng.normal(3.0 - 0.3 * diabetes, 0.9), 0.8, 7).round(2)  # mmol/L
    hdl = np.clip(rng.normal(1.35 - 0.2 * male, 0.35), 0.5, 3).round(2)
    af = rng.random(n) < expit(-1.9 + 0.08 * (age - 70))
    u = rng.random(n)
    p_current = expit(-1.3 - 0.04 * (age - 70) + 0.3 * male)
    smoking = np.where(u < p_current, "current", np.where(u < p_current + 0.3, "former", "never"))
    # Latent image quantities: AF (cardioembolism) makes bigger infarcts; WMH grows with age and SBP.
    infarct = np.clip(np.exp(rng.normal(np.log(10) + 0.5 * af, 1.2)), 0.3, 150)
    infarct[rng.random(n) < 0.08] = 0.0  # no visible lesion (TIA-like or DWI-negative)
    p = profile
    wmh = np.clip(np.exp(rng.normal(p.wmh_log_mean + p.wmh_age * (age - 70) + p.wmh_sbp * (sbp - 140), p.wmh_sd)),
                  0.2, 80)
    atrophy_excess = rng.normal(0, p.atrophy_excess_sd, n)  # mm of tissue lost beyond what age explains
    atrophy = np.clip(0.05 * np.clip(age - 50, 0, None) + atrophy_excess, 0, 4)
    nihss = np.clip(1 + 2.2 * np.log1p(infarct) + 0.03 * infarct + rng.normal(0, p.nihss_noise, n), 0, 42).round()
    d_dimer = np.exp(rng.normal(np.log(500) + 0.5 * af + 0.15 * np.log1p(infarct), 0.7)).round()
    # Head size: intracranial volume is ~15 % larger in men (~5 % per axis), plus individual spread.
    head_scale = np.clip(1.0 + np.where(male, 0.025, -0.025) + rng.normal(0, 0.03, n), 0.9, 1.1)
    return pd.DataFrame({
        "age": age, "sex": np.where(male, "M", "F"), "bmi": bmi, "systolic_bp": sbp,
        "diastolic_bp": dbp, "glucose": glucose, "hba1c": hba1c, "ldl": ldl, "hdl": hdl,
        "atrial_fibrillation": np.where(af, "yes", "no"), "d_dimer": d_dimer, "smoking": smoking,
        "nihss": nihss, "hypertension": hypertension.astype(int), "diabetes": diabetes.astype(int),
        "infarct_volume_ml": infarct.round(2), "wmh_volume_ml": wmh.round(2),
        "atrophy": atrophy.round(3), "atrophy_excess": (atrophy - 0.05 * np.clip(age - 50, 0, None)).round(3),
        "head_scale": head_scale.round(4),
    })


def image_quantities(risk: pd.DataFrame) -> pd.DataFrame:
    """The true image quantities as they enter the risk (log infarct and WMH volumes, atrophy excess)."""
    return pd.DataFrame({"log1p_infarct_volume_ml": np.log1p(risk["infarct_volume_ml"]),
                         "log_wmh_volume_ml": np.log(risk["wmh_volume_ml"]),
                         "atrophy_excess": risk["atrophy_excess"]}, index=risk.index)


def _raw_components(df: pd.DataFrame, profile: RiskProfile = PROFILES["standard"]) -> np.ndarray:
    """(3, N): image, tabular and interaction parts of the logit before standardisation."""
    log_infarct = (np.log1p(df["infarct_volume_ml"]) - 2.2) / 1.1
    af = (df["atrial_fibrillation"] == "yes").to_numpy(float)
    a, b, c = profile.image_terms
    image = a * log_infarct + b * (np.log(df["wmh_volume_ml"]) - 1.6) / 0.8 + c * df["atrophy_excess"] / 0.5
    tabular = (0.6 * (df["age"] - 70) / 12 + 0.9 * af + 0.4 * (df["hba1c"] - 6) / 1 + 0.4 * df["hypertension"]
               + 0.5 * (df["smoking"] == "current") + 0.2 * (df["smoking"] == "former")
               + 0.3 * (df["systolic_bp"] - 140) / 20 + 0.25 * (df["ldl"] - 3) / 0.9 - 0.2 * (df["hdl"] - 1.3) / 0.35)
    return np.stack([image.to_numpy(float), tabular.to_numpy(float), (af * log_infarct).to_numpy(float)])


@lru_cache(maxsize=8)
def _population_constants(prevalence: float, profile: RiskProfile) -> tuple[np.ndarray, np.ndarray, float]:
    """Component means and SDs on a fixed reference population, and the intercept hitting ``prevalence``.

    Fixed constants (not the cohort's own) keep a subject's risk independent of the cohort size.
    """
    raw = _raw_components(_draw_population(20_000, np.random.default_rng(20240601), profile), profile)
    mean, sd = raw.mean(1), raw.std(1)
    shift = (np.asarray(profile.weights)[:, None] * (raw - mean[:, None]) / sd[:, None]).sum(0)
    low, high = -12.0, 12.0
    for _ in range(60):  # bisection: mean risk is increasing in the intercept
        mid = (low + high) / 2
        low, high = (mid, high) if expit(mid + shift).mean() < prevalence else (low, mid)
    return mean, sd, (low + high) / 2


def draw_clinical(n: int, seed: int = 0, prevalence: float = 0.15,
                  profile: str = "standard") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the clinical table (with missing cells) and the true risk, without any image.

    Returns ``(table, risk)``: ``table`` holds the clinical columns as the CSV stores them (no id,
    label or report); ``risk`` holds the latent quantities, logit components, ``true_risk`` and the
    drawn label ``recurrence_12m`` for every subject, with the latent ``event_time_months`` (its
    12-month indicator is that label) and ``censor_time_months`` (see ``observed_follow_up``). ``write_synthetic_cohort`` uses exactly this,
    so it is also the cheap way to check prevalence on thousands of subjects.
    """
    chosen = get_profile(profile)
    rng = np.random.default_rng([seed, 0])
    truth = _draw_population(n, rng, chosen)
    mean, sd, intercept = _population_constants(float(prevalence), chosen)
    z = (_raw_components(truth, chosen) - mean[:, None]) / sd[:, None]
    parts = np.asarray(chosen.weights)[:, None] * z
    logit = intercept + parts.sum(0)
    latent = ["infarct_volume_ml", "wmh_volume_ml", "atrophy", "atrophy_excess", "head_scale"]
    risk = truth[latent].copy()
    risk["image_component"], risk["tabular_component"], risk["interaction_component"] = parts.round(6)
    risk["intercept"] = round(intercept, 6)
    risk["logit"] = logit.round(6)
    risk["true_risk"] = expit(logit).round(6)
    # One uniform draw gives both the 12-month label and the event time of a constant hazard whose
    # 12-month probability is the true risk, so recurrence_12m == (event time < 12 months) exactly.
    u = rng.random(n)
    risk["recurrence_12m"] = (u < expit(logit)).astype(int)
    follow_rng = np.random.default_rng([seed, 3])  # its own stream: the table's draws do not move
    risk["event_time_months"] = 12.0 * np.log1p(-u) / np.log1p(-expit(logit))
    # Administrative censoring (staggered entry: 9-48 months of possible follow-up) and random loss to
    # follow-up (10 % a year).
    risk["censor_time_months"] = np.minimum(follow_rng.uniform(9.0, 48.0, n),
                                            follow_rng.exponential(12.0 / -np.log(0.9), n))

    # Latent image quantities stay out of the clinical table (head_scale once leaked in: a shortcut
    # that let contrastive pretraining match images to records by head size alone).
    table = truth.drop(columns=latent).astype(object)
    # Missing values: MCAR a few %, HbA1c mostly unmeasured in non-diabetics (MAR), D-dimer often not sent.
    def blank(columns: list[str], p: np.ndarray | float) -> None:
        table.loc[rng.random(n) < p, columns] = None

    for columns, p in ((["bmi"], 0.06), (["systolic_bp", "diastolic_bp"], 0.03), (["glucose"], 0.03),
                       (["ldl", "hdl"], 0.08), (["smoking"], 0.05), (["nihss"], 0.02),
                       (["atrial_fibrillation"], 0.02), (["d_dimer"], 0.30)):
        blank(columns, p)
    blank(["hba1c"], np.where(truth["diabetes"] == 1, 0.08, 0.45))
    for column in ("age", "systolic_bp", "diastolic_bp", "glucose", "d_dimer", "nihss"):
        table[column] = table[column].astype("Float64").astype("Int64")  # integers print without ".0"
    for column in ("bmi", "hba1c", "ldl", "hdl"):
        table[column] = table[column].astype("Float64")
    return table, risk


def observed_follow_up(risk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """What a cohort observes of ``draw_clinical``'s latent times: ``(N,)`` follow-up in months (event or
    last contact, one decimal) and ``(N,)`` 0/1 event. Event times round up and censoring times down, so
    "event by 12 months" and "followed past 12 months" keep the meaning they have for the latent times."""
    event_time, censor_time = risk["event_time_months"].to_numpy(), risk["censor_time_months"].to_numpy()
    event = event_time <= censor_time
    followup = np.where(event, np.ceil(event_time * 10 - 1e-9), np.floor(censor_time * 10)) / 10
    return followup, event.astype(int)
