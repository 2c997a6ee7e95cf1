"""Which saliency methods are about the model at this run's grid: the model randomisation check.

Adebayo et al. (NeurIPS 2018, "Sanity checks for saliency maps"): a map that barely changes when the
model's learned weights are replaced by random ones shows the input (edges, bright voxels), not what
the model learned. For a few of the gallery's subjects each method's map is computed with the trained
image encoders and with re-initialised copies (``saliency.randomised_copy``); the method passes when
the Spearman rank correlation of the two maps' magnitudes inside the head stays under
``MAX_RANK_CORRELATION`` (median over the subjects checked). The gallery shows only methods that pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from finetune.explain.saliency import ImageScore, subject_image
from finetune.explain.scorer import Scorer
from multimodal.cohort import Cohort

MAX_RANK_CORRELATION = 0.5  # trained vs randomised map: above this the map is mostly the input's
Maps = Callable[[dict[str, np.ndarray], list[ImageScore]], dict[str, np.ndarray]]


def randomisation_check(scorers: list[Scorer], cohort: Cohort, subjects: list[str], maps: Maps) -> dict[str, Any]:
    """``{method: {"rank_correlation": [per subject], "median", "passes"}}`` for every map ``maps`` makes
    (``scorers[i]`` scores ``subjects[i]``: out of fold for the run's own subjects)."""
    correlations: dict[str, list[float]] = {}
    for scorer, subject in zip(scorers, subjects, strict=True):
        image, groups = subject_image(scorer, cohort, subject)
        trained = maps(image, groups)
        _, random_groups = subject_image(scorer, cohort, subject, randomised=True)
        randomised = maps(image, random_groups)
        inside = image["head_mask"]
        for (name, a), b in zip(trained.items(), randomised.values(), strict=True):
            method = name.split(" (")[0]  # "Grad-CAM (layer3)" -> "Grad-CAM"
            x, y = np.abs(a[inside]), np.abs(b[inside])
            # a constant map (the randomised model's flat Grad-CAM) shares no ranking with anything
            rho = 0.0 if np.ptp(x) == 0 or np.ptp(y) == 0 else float(spearmanr(x, y).statistic)
            correlations.setdefault(method, []).append(rho)
    return {method: {"rank_correlation": values, "median": float(np.median(values)),
                     "passes": bool(np.median(values) < MAX_RANK_CORRELATION)}
            for method, values in correlations.items()}
