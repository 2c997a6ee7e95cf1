"""``strokessl predict RUN --cohort NEW --out PRED.csv``: recurrence risk for new subjects.

Every fold model of the fine-tuning run predicts each subject (with that fold's own tabular
preprocessor); the probabilities are averaged and the threshold chosen on the pooled
out-of-fold predictions (``metrics.json``) assigns the high / low risk group. Unseen categories,
missing values, absent columns and an empty label column are handled as in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from finetune.config import finetune_config
from finetune.inference import ensemble_probabilities
from multimodal.checkpoint import atomic_path
from multimodal.cohort import load_cohort
from multimodal.config import CohortConfig, is_run_config, load_cohort_config, load_run_config
from multimodal.errors import StrokeSSLError

logger = logging.getLogger(__name__)


def new_cohort_config(run_dir: Path, cohort: Path) -> CohortConfig:
    """A cohort.yaml as given, or a bare CSV read with the run's stored column roles."""
    if cohort.suffix.lower() in (".yaml", ".yml"):
        if is_run_config(cohort):
            raise StrokeSSLError(f"{cohort} is a run config; give a cohort.yaml or a CSV to --cohort")
        return load_cohort_config(cohort)
    if not cohort.is_file():
        raise StrokeSSLError(f"cohort file {cohort} does not exist")
    trained_on = load_cohort_config(load_run_config(run_dir / "config.yaml").cohort)
    return dataclasses.replace(trained_on, csv=cohort.resolve(), source=cohort.resolve())


def run_predict(run_dir: str | Path, cohort: str | Path, out: str | Path) -> Path:
    """Write ``out`` (CSV: subject_id, probability, risk_group, one column per fold) and return it."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "model.json").is_file():
        raise StrokeSSLError(f"{run_dir} is not a finished fine-tuning run (no metrics.json / model.json)")
    run_config = load_run_config(run_dir / "config.yaml")
    settings = finetune_config(run_config)
    threshold = float(json.loads((run_dir / "metrics.json").read_text())["threshold"])
    cohort_config = new_cohort_config(run_dir, Path(cohort))
    subjects = load_cohort(cohort_config)
    frame = ensemble_probabilities(run_dir, subjects, settings, run_config.imaging,
                                   cohort_config.root / ".strokessl-cache", run_config.data.workers,
                                   run_config.data.cache_dtype, run_config.seed)
    probability = frame["probability"]
    frame.insert(1, "risk_group", np.where(probability >= threshold, "high", "low"))
    with atomic_path(out) as tmp:
        frame.to_csv(tmp)
    logger.info("predicted %d subjects with %d fold models (threshold %.3f): %s", len(frame), frame.shape[1] - 2,
                threshold, out)
    return out
