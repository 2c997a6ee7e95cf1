"""``strokessl predict RUN --cohort NEW --out PRED.csv``: recurrence risk for new subjects.

Every fold model of the fine-tuning run predicts each subject (with that fold's own tabular
preprocessor); the probabilities are averaged and the threshold chosen on the pooled
out-of-fold predictions (``metrics.json``) assigns the high / low risk group. A survival run
(its recorded facts name the task) writes the mean log relative hazard (``risk_score``) and the
probability of recurrence by its horizon (``probability_by_12_months``, say), each fold's beside. Unseen categories,
missing values and absent columns are handled as in training; a bare CSV is read with the column
roles recorded in the run folder (``run.json``'s facts), and its label column is optional.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from finetune.inference import ensemble_probabilities, load_fold_models
from multimodal.checkpoint import atomic_path
from multimodal.cohort import load_cohort, raw_header
from multimodal.config import (
    CohortConfig,
    cohort_roles,
    is_run_config,
    load_cohort_config,
    load_run_config,
)
from multimodal.config_mapping import from_dict
from multimodal.errors import StrokeSSLError
from multimodal.run_folder import FINETUNING, check_output, require_run, run_facts, run_paths

logger = logging.getLogger(__name__)


def new_cohort_config(run_dir: Path, cohort: Path) -> CohortConfig:
    """A cohort.yaml as given, or a bare CSV read with the column roles the run was trained with.

    A bare CSV may leave out the label column (new subjects have no outcome yet) and the text columns
    (its subjects then have no report)."""
    if cohort.suffix.lower() in (".yaml", ".yml"):
        if is_run_config(cohort):
            raise StrokeSSLError(f"{cohort} is a run config; give a cohort.yaml or a CSV to --cohort")
        return load_cohort_config(cohort)
    if not cohort.is_file():
        raise StrokeSSLError(f"cohort file {cohort} does not exist")
    roles = run_facts(run_dir).column_roles or None
    if roles is None:  # a run folder from before the roles were stored: its training cohort.yaml, if still there
        training = load_run_config(run_paths(run_dir).config).cohort
        if not Path(training).is_file():
            raise StrokeSSLError(f"{run_dir} predates stored column roles and its training cohort {training} is gone; "
                                 "give --cohort a cohort.yaml that names the columns of your CSV")
        roles = cohort_roles(load_cohort_config(training))
    config = from_dict(CohortConfig, {**roles, "csv": str(cohort.resolve())})
    config.source = cohort.resolve()
    header = raw_header(cohort)
    if config.label is not None and config.label not in header:
        config.label = None  # no outcome column: every subject is scored, none is counted as labeled
    absent_text = [c for c in config.text if c not in header]
    if absent_text:  # rows without a report are scored as subjects without one (a missing modality)
        logger.info("%s has no text column %s: its subjects are scored without it", cohort.name, absent_text)
        config.text = [c for c in config.text if c in header]
    return config


def check_feature_columns(known: list[str], given: list[str], allow_missing: bool) -> None:
    """Refuse a table whose clinical columns differ from the ones the model was trained on (an export
    tool that renamed or upper-cased them would otherwise turn every feature into "missing"), unless
    ``allow_missing`` (then absent ones enter as missing values, with a warning)."""
    absent = [c for c in known if c not in given]
    unknown = [c for c in given if c not in known]
    if not absent and not unknown:
        return
    lowered = {c.casefold().strip(): c for c in known}
    hints = [f"{c!r} looks like {lowered[c.casefold().strip()]!r}" for c in unknown if c.casefold().strip() in lowered]
    detail = (f"the model's features {absent} are absent" if absent else "") + \
        ("; " if absent and unknown else "") + (f"columns {unknown} are not features it knows" if unknown else "")
    if unknown or not allow_missing:
        hint = f" ({'; '.join(hints)})" if hints else ""
        what = ("rename the columns to the training names, or list extra columns under ignore: in a cohort.yaml"
                if unknown else "rename the columns, or pass --allow-missing-features to score them as missing")
        raise StrokeSSLError(f"the cohort's clinical columns differ from training: {detail}{hint}; {what}")
    logger.warning("features %s are absent: scored as missing values (--allow-missing-features)", absent)


def run_predict(run_dir: str | Path, cohort: str | Path, out: str | Path, allow_missing_features: bool = False) -> Path:
    """Write ``out`` (CSV: subject_id, probability, risk_group, one column per fold) and return it. ``out``
    may not lie in a run folder nor be one of the cohort's files (table, config, images); its folder is made."""
    run_dir = Path(run_dir)
    require_run(run_dir, (FINETUNING,), "predict")
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():  # "new/" names a folder even before it exists
        raise StrokeSSLError(f"--out {out} is a folder; give a file name such as {Path(out) / 'predictions.csv'}")
    out = Path(out)
    threshold = float(json.loads(run_paths(run_dir).metrics.read_text())["threshold"])
    cohort_config = new_cohort_config(run_dir, Path(cohort))
    if cohort_config.missing_images == "error":  # new subjects without MRI are scored from what they have
        cohort_config.missing_images = "drop_modality"
    subjects = load_cohort(cohort_config)
    images = [path for paths in subjects.image_paths.values() for path in paths.values() if path is not None]
    check_output(out, [Path(cohort), cohort_config.csv, *([cohort_config.source] if cohort_config.source else []),
                       *images])
    models = load_fold_models(run_dir)
    if "table" in models.modalities:
        check_feature_columns(models.folds[0].preprocessor.feature_names, list(subjects.features.columns),
                              allow_missing_features)
    frame = ensemble_probabilities(models, subjects)
    probability = frame["probability"]
    frame.insert(frame.columns.get_loc("probability") + 1, "risk_group",
                 np.where(probability >= threshold, "high", "low"))
    horizon = run_facts(run_dir).horizon
    if models.settings.task == "survival" and horizon:  # the probability is that of recurrence by the horizon
        frame = frame.rename(columns={"probability": f"probability_by_{horizon['value']:g}_{horizon['unit']}"})
    with atomic_path(out) as tmp:
        frame.to_csv(tmp)
    logger.info("predicted %d subjects with %d fold models (threshold %.3f): %s", len(frame), len(models.folds),
                threshold, out)
    return out
