"""The optional fixed test cohort (``finetune.test_cohort``), scored once cross-validation is done.

The deep model is the run's fold models averaged (as ``strokessl predict`` does) at the threshold
chosen on the pooled out-of-fold predictions; each baseline is refit on every labeled subject of
the development cohort and used at its own pooled out-of-fold threshold. Nothing about the test
cohort (no statistic, threshold or stopping decision) is learned from it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune.baselines import baseline_frame, fit_predict_baseline
from finetune.config import FinetuneConfig
from finetune.inference import ensemble_probabilities, load_fold_models
from finetune.metrics import bootstrap_ci, paired_bootstrap_delta_auroc, risk_groups
from finetune.oracle import ORACLE, fit_predict_oracle, oracle_section, true_image_quantities
from finetune.plots import plot_calibration, plot_roc
from multimodal.checkpoint import atomic_path
from multimodal.cohort import Cohort, load_cohort, with_event_labels
from multimodal.cohort_duplicates import file_key
from multimodal.config import load_cohort_config
from multimodal.errors import CohortError
from multimodal.outcome import Horizon
from multimodal.run_folder import run_paths
from multimodal.text import run_documents

logger = logging.getLogger(__name__)

# A test cohort with at least this share of its subjects' clinical rows found in the development cohort
# is refused (a few can match by chance); rows with fewer present values than MIN_ROW_VALUES are not compared.
OVERLAP_REFUSED = 0.5
MIN_ROW_VALUES = 3


def load_test_cohort(path: str | Path, horizon: Horizon | None = None, survival: bool = False) -> Cohort:
    """The labeled subjects of the test cohort (at ``horizon`` for a time-to-event outcome; with
    ``survival`` those with follow-up time and event); both classes (events and non-events) must be present."""
    cohort = load_cohort(load_cohort_config(path), None if survival else horizon)
    if survival:
        cohort = with_event_labels(cohort)
    labeled = [s for s, has in zip(cohort.ids, cohort.labeled, strict=True) if has]
    unlabeled = len(cohort.ids) - len(labeled)
    if unlabeled:
        logger.warning("test cohort %s: %d subjects without a label are left out", path, unlabeled)
    cohort = cohort.subset(labeled)
    if len(set(cohort.labels.tolist())) < 2:
        raise CohortError(f"test cohort {path} needs labeled subjects of both classes (has {len(cohort.ids)} "
                          f"labeled, {int(np.nansum(cohort.labels))} positive)")
    return cohort


def check_test_cohort(test: Cohort, development: Cohort, sequences: list[str]) -> None:
    """Refuse a test cohort that is the development table, reads one of its image files, repeats the
    clinical rows of ``OVERLAP_REFUSED`` of its subjects or lacks a sequence the model reads; warn about
    subject ids found in both (ids like sub-0001 may recur across centres) and the odd identical row."""
    if test.config.csv.resolve() == development.config.csv.resolve():
        raise CohortError(f"finetune.test_cohort {test.config.source} reads the development table "
                          f"{development.config.csv}; a fixed test cohort must hold other subjects")
    missing = [s for s in sequences if s not in test.sequences]
    if missing:
        raise CohortError(f"test cohort {test.config.source} lacks the sequences {missing} the model reads; "
                          "add them to its cohort.yaml images or fine-tune with finetune.branches=table")
    images, rows = _overlap(test, development)
    for pairs, what in ((images, "read image files of development subjects"),
                        (rows, "have a clinical row identical to a development subject's")):
        if pairs and (pairs is images or len(pairs) >= OVERLAP_REFUSED * len(test.ids)):
            examples = ", ".join(f"test {t} = development {d}" for t, d in pairs[:3])
            more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
            raise CohortError(f"finetune.test_cohort {test.config.source}: {len(pairs)} of its {len(test.ids)} subjects "
                              f"{what} ({examples}{more}): the same patients again, perhaps under reformatted ids, "
                              "would score the model on its own training data; a fixed test cohort must hold other "
                              "patients")
    shared = set(test.ids) & set(development.ids)
    alike = {_plain_id(s) for s in test.ids} & {_plain_id(s) for s in development.ids}
    # Counts only: subject ids stay out of logs (privacy by default).
    if shared or rows or len(alike) > len(shared):
        logger.warning("test cohort %s shares %d subject ids with the development cohort (%d once letter case, "
                       "separators and leading zeros are ignored) and %d identical clinical rows: make sure they are "
                       "other patients", test.config.source, len(shared), len(alike), len(rows))


def _plain_id(subject: str) -> str:
    """An id without letter case, separators or leading zeros: ``sub-0001`` and ``SUB_1`` are alike."""
    # Only the zeros that lead a run of digits: sub-0102 and sub-1002 stay apart.
    return re.sub(r"(?<!\d)0+(?=\d)", "", re.sub(r"[^0-9a-z]", "", subject.casefold()))


def _overlap(test: Cohort, development: Cohort) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(test id, development id)`` pairs that read one image file, and pairs whose clinical rows are
    identical (rows with at least ``MIN_ROW_VALUES`` values present over the shared columns)."""
    owner = {file_key(p): s for s, paths in development.image_paths.items() for p in paths.values() if p is not None}
    images = []
    for subject, paths in test.image_paths.items():
        found = [owner[key] for key in (file_key(p) for p in paths.values() if p is not None) if key in owner]
        if found:
            images.append((subject, found[0]))
    columns = [c for c in development.features.columns if c in test.features.columns]
    rows: list[tuple[str, str]] = []
    if len(columns) < MIN_ROW_VALUES:
        return images, rows
    seen: dict[tuple[Any, ...], str] = {}
    for subject, values in zip(development.ids, development.features[columns].itertuples(index=False), strict=True):
        key = _row_key(values)
        if key is not None:
            seen.setdefault(key, subject)
    for subject, values in zip(test.ids, test.features[columns].itertuples(index=False), strict=True):
        key = _row_key(values)
        if key is not None and key in seen:
            rows.append((subject, seen[key]))
    return images, rows


def _row_key(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A clinical row compared across cohorts (numbers by value, words by spelling); None when too few
    values are present for a match to mean the same patient."""
    key = []
    for value in values:
        if pd.isna(value):
            key.append(None)
            continue
        try:
            key.append(round(float(value), 6))
        except (TypeError, ValueError):
            key.append(str(value).strip().casefold())
    return tuple(key) if sum(v is not None for v in key) >= MIN_ROW_VALUES else None


def evaluate_test_cohort(run_dir: Path, settings: FinetuneConfig, development: Cohort,
                         test: Cohort, thresholds: dict[str, float], seed: int) -> dict[str, Any]:
    """Score ``test`` (from :func:`load_test_cohort`); writes ``test_predictions.csv`` and ``report/test_*.png``.

    ``thresholds`` maps ``model`` and each baseline name to its pooled out-of-fold threshold.
    Returns ``{cohort, n, positives, threshold, model, baselines, delta_auroc, risk_groups}`` with
    the same stratified bootstrap intervals as the cross-validated metrics.
    """
    models = load_fold_models(run_dir)
    frame = ensemble_probabilities(models, test)
    y = test.labels.astype(int)
    p = frame["probability"].to_numpy()
    frame.insert(0, "label", y)
    frame.insert(2, "risk_group", np.where(p >= thresholds["model"], "high", "low"))
    # the baselines read what the model reads: the table, and the report text when it does
    train_frame = baseline_frame(development.features, development.continuous, development.categorical,
                                 run_documents(development, list(development.ids), models.others))
    test_frame = baseline_frame(test.features, development.continuous, development.categorical,
                                run_documents(test, list(test.ids), models.others))
    result: dict[str, Any] = {
        "cohort": str(settings.test_cohort), "n": len(y), "positives": int(y.sum()),
        "threshold": thresholds["model"],
        "model": bootstrap_ci(y, p, thresholds["model"], settings.bootstrap, seed),
        "baselines": {}, "delta_auroc": {}, "risk_groups": risk_groups(y, p, thresholds["model"]),
    }
    curves = {"model": p}
    for name in settings.baselines:
        q = fit_predict_baseline(name, train_frame, development.labels.astype(int), test_frame, seed)
        frame[name] = q
        curves[name] = q
        result["baselines"][name] = bootstrap_ci(y, q, thresholds[name], settings.bootstrap, seed)
        result["delta_auroc"][name] = paired_bootstrap_delta_auroc(y, p, q, settings.bootstrap, seed)
    truth = {name: true_image_quantities(c) for name, c in (("development", development), ("test", test))}
    if all(t is not None for t in truth.values()) and "logistic_regression" in settings.baselines:  # synthetic cohorts only
        q = fit_predict_oracle(train_frame, development.labels.astype(int), test_frame, truth["development"],
                               truth["test"], seed)
        frame[ORACLE] = q
        result[ORACLE] = oracle_section(y, p, frame["logistic_regression"].to_numpy(), q, settings.bootstrap, seed)
    with atomic_path(run_dir / "test_predictions.csv") as tmp:
        pd.DataFrame(frame).to_csv(tmp)
    plot_roc(y, curves, run_paths(run_dir).report / "test_roc.png", title="ROC curve: fixed test cohort")
    plot_calibration(y, p, run_paths(run_dir).report / "test_calibration.png", title="Calibration: fixed test cohort")
    logger.info("test cohort %s: %d subjects, %d positive, AUROC %.3f", settings.test_cohort, len(y), int(y.sum()),
                result["model"]["auroc"]["estimate"])
    return result
