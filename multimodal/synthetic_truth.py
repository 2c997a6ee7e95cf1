"""``truth.json`` of a synthetic cohort: what a benchmark needs to know that a real cohort cannot say.

The prevalence, the AUROC the true risk and its image / tabular parts reach, which ``risk.csv``
columns hold the true image quantities (the oracle-feature models read them), and how censoring
shaped the observed follow-up with the concordance the true risk reaches on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from multimodal.survival_metrics import harrell_c
from multimodal.synthetic_clinical import get_profile, image_quantities


def truth_summary(risk: pd.DataFrame, prevalence: float, n: int, grid: int, seed: int, sequences: list[str],
                  profile: str) -> dict:
    """Prevalence, the AUROC reachable from the true risk and from its image / tabular parts, and
    which ``risk.csv`` columns hold the true image quantities (an oracle-feature model reads them)."""
    b = risk["intercept"].to_numpy()
    scores = {"bayes": risk["true_risk"].to_numpy(),
              "image_only": expit(b + risk["image_component"].to_numpy()),
              "tabular_only": expit(b + risk["tabular_component"].to_numpy())}
    y, lab = risk["drawn_label"].to_numpy(), risk["labeled"].to_numpy(bool)

    def auroc(score: np.ndarray, mask: np.ndarray) -> float | None:
        return float(roc_auc_score(y[mask], score[mask])) if len(set(y[mask])) == 2 else None

    return {
        "prevalence": prevalence, "mean_true_risk": float(risk["true_risk"].mean()),
        "label_rate_labeled": float(y[lab].mean()) if lab.any() else None,
        "generator": "strokessl", "profile": profile,
        "image_quantities": list(image_quantities(risk).columns),
        "intercept": float(b[0]),
        "weights": dict(zip(("image", "tabular", "interaction"), get_profile(profile).weights, strict=True)),
        "auroc": {f"{name}_{where}": auroc(s, m) for name, s in scores.items()
                  for where, m in (("labeled", lab), ("all", np.ones_like(lab)))},
        "follow_up": _follow_up_truth(risk[lab]),
        "n": n, "grid": grid, "seed": seed, "sequences": sequences,
    }


def _follow_up_truth(labeled: pd.DataFrame) -> dict:
    """How censoring shaped the labeled subjects' observed outcome, and the concordance the true risk
    reaches on it (Harrell's C of a constant-hazard model: the ordering every survival model aims at)."""
    time, event = labeled["followup_months"].to_numpy(float), labeled["event"].to_numpy(bool)
    censored_early = (~event) & (time < 12.0)
    c = harrell_c(labeled["true_risk"].to_numpy(float), event, time) if event.any() else None
    return {"events": int(event.sum()), "events_by_12_months": int((event & (time <= 12.0)).sum()),
            "censored_before_12_months": int(censored_early.sum()),
            "negatives_censored_before_12_months": int((censored_early & (labeled["drawn_label"] == 0)).sum()),
            "median_follow_up_months": float(np.median(time)) if len(time) else None,
            "harrell_c_true_risk": c}
