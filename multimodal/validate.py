"""``strokessl validate``: check a cohort up front and report *all* problems at once.

Errors make the cohort unusable until fixed (missing or unreadable files, duplicate ids,
unmappable labels, 4D or non-3D images, a missing sequence under ``missing_images: error``,
all-empty columns). Warnings are likely mistakes a person should look at (text-like,
id-like or date-like columns used as features, small-integer columns read as continuous,
a column that alone predicts the label almost perfectly).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from multimodal.cohort import Cohort, Problem, read_cohort
from multimodal.config import CohortConfig
from multimodal.dicom_series import choose_series, read_series, scan_folder, series_problem
from multimodal.errors import ImageError
from multimodal.nifti import (
    MIN_FOV_OVERLAP,
    READ_ERRORS,
    field_of_view_problem,
    overlap,
    read_header,
    voxel_sizes,
    world_box,
)
from multimodal.outcome import Horizon

logger = logging.getLogger(__name__)

LEAKAGE_AUROC = 0.9
SMALL_INTEGER_LEVELS = 10
# Numbers exports use for "not recorded"; warned when far outside a continuous column's other values.
MISSING_CODES = (-99999.0, -9999.0, -999.0, -99.0, 999.0, 9999.0, 99999.0)
_DATE_PATTERN = re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}.*)?$")


@dataclass
class ValidationReport:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_cohort(config: CohortConfig, read_images: bool = True, sequences: list[str] | None = None,
                    folds: int | None = None, pretraining: tuple[str, float, int] | None = None,
                    horizon: Horizon | None = None) -> ValidationReport:
    """Check the table and every image file; ``read_images=False`` reads headers only. From a run
    config: ``folds`` (``finetune.folds``) checks there are enough labeled subjects of each class,
    ``pretraining`` (``pretrain.rows``, ``val_fraction``, ``batch_size``) that the pretraining split
    fills one batch; ``horizon`` (``finetune.horizon``) the binary label of a time-to-event outcome."""
    report = ValidationReport()
    cohort, problems = read_cohort(config, horizon)
    report.errors += problems
    _outcome_warnings(cohort, report)
    if not cohort.ids:
        return report
    sequences = sequences or list(config.images)
    unknown = [s for s in sequences if s not in config.images]
    if unknown:
        report.errors.append(Problem(f"imaging.sequences names {unknown}, not in the cohort's images {list(config.images)}"))
        sequences = [s for s in sequences if s in config.images]
    _check_columns_content(cohort, report)
    if folds is not None and cohort.labeled.any():
        labels = cohort.labels[cohort.labeled]
        positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
        if min(positives, negatives) < folds:
            usable = min(positives, negatives)
            advice = (f"set finetune.folds: {usable} or label more subjects" if usable >= 2
                      else "label more subjects of the rarer class (cross-validation needs two of each)")
            report.errors.append(Problem(
                f"finetune.folds {folds} needs {folds} positive and {folds} negative labeled subjects; the cohort has "
                f"{positives} positive and {negatives} negative: {advice}", column=config.label))
    if pretraining is not None:
        rows, val_fraction, batch_size = pretraining
        n = len(cohort.ids) if rows == "all" else int((~cohort.labeled).sum())
        train = n - int(np.ceil(n * val_fraction))
        if train < batch_size:
            which = "subjects" if rows == "all" else "unlabeled subjects"
            report.errors.append(Problem(
                f"pretraining reads {n} {which}; after holding out pretrain.val_fraction {val_fraction} the {train} left "
                f"cannot fill one batch of pretrain.batch_size {batch_size}: lower pretrain.batch_size or "
                f"val_fraction{'' if rows == 'all' else ', or set pretrain.rows: all'}"))
    image_summary = _check_images(cohort, sequences, read_images, report)
    report.summary = _summarise(cohort, image_summary)
    return report


# --------------------------------------------------------------------------- table checks
def _check_columns_content(cohort: Cohort, report: ValidationReport) -> None:
    config = cohort.config
    frame = cohort.features
    labeled = cohort.labeled
    for column in frame.columns:
        values = frame[column]
        present = values.dropna()
        if present.empty:
            report.errors.append(Problem(
                "column is empty for every subject; add it to ignore in the cohort config", column=column,
            ))
            continue
        kind = cohort.feature_types[column]
        as_text = present.astype(str)
        if kind == "categorical":
            unique = as_text.nunique()
            if unique > 20 and unique > 0.5 * len(present) and as_text.str.len().mean() > 20:
                report.warnings.append(Problem(
                    f"looks like free text ({unique} distinct values); declare it under text: in the cohort config",
                    column=column,
                ))
            elif unique == len(present) and len(present) > 10:
                report.warnings.append(Problem(
                    "every value is distinct, like an id; add it to ignore unless it is a real feature", column=column,
                ))
            if as_text.map(lambda v: bool(_DATE_PATTERN.match(v))).mean() > 0.9:
                report.warnings.append(Problem(
                    "looks like dates; derive a numeric feature (e.g. days since onset) or add it to ignore",
                    column=column,
                ))
        else:
            code = _missing_code(present.to_numpy(dtype=float))
            if code is not None:  # a declared na_values marker is missing (NaN) by now
                report.warnings.append(Problem(
                    f"holds {code:g} in {int((present == code).sum())} row(s), far outside its other values "
                    f"({present[present != code].min():g} .. {present[present != code].max():g}): a missing-value "
                    f"code? declare it (na_values: [{code:g}]) unless it is a real value", column=column))
            integers = np.all(np.mod(present.to_numpy(dtype=float), 1) == 0)
            if integers and present.nunique() <= SMALL_INTEGER_LEVELS and column not in config.types:
                report.warnings.append(Problem(
                    f"integer column with {present.nunique()} distinct values read as continuous; "
                    f"if it is a code, set types: {{{column}: categorical}}",
                    column=column,
                ))
            steps = np.diff(np.sort(present.to_numpy(dtype=float)))
            if integers and present.nunique() == len(present) > 10 and np.all(steps == 1):
                report.warnings.append(Problem(
                    "consecutive unique integers, like a row number or id; add it to ignore", column=column,
                ))
        auroc = _univariate_auroc(values, cohort.labels, labeled, kind)
        if auroc is not None and auroc > LEAKAGE_AUROC:
            report.warnings.append(Problem(
                f"alone predicts the label with AUROC {auroc:.2f} (> {LEAKAGE_AUROC}): likely leakage "
                "(recorded after the outcome?); add it to ignore unless you are sure",
                column=column,
            ))
    labels = cohort.labels[labeled]
    if labeled.sum() == 0 and config.label is not None:
        report.warnings.append(Problem("no subject has a label: usable for pretraining only", column=config.label))
    elif len(set(labels.tolist())) == 1:
        report.warnings.append(Problem(f"every labeled subject has label {labels[0]:.0f}", column=config.label))


def _missing_code(values: np.ndarray) -> float | None:
    """The first of ``MISSING_CODES`` in ``values`` lying further outside the other values than their
    whole range (e.g. -999 among ages 60..71), or None."""
    for code in MISSING_CODES:
        others = values[values != code]
        if len(others) < 3 or len(others) == len(values):
            continue
        spread = float(others.max() - others.min())
        if code < others.min() - spread or code > others.max() + spread:
            return code
    return None


def _univariate_auroc(values: pd.Series, labels: np.ndarray, labeled: np.ndarray, kind: str) -> float | None:
    """max(AUROC, 1 - AUROC) of one column against the label on labeled rows, or None."""
    y = labels[labeled]
    if (y == 1).sum() < 5 or (y == 0).sum() < 5:
        return None
    column = values[labeled]
    if kind == "continuous":
        x = column.to_numpy(dtype=float)
        present = np.isfinite(x)
        if present.sum() < 10 or len(np.unique(y[present])) < 2:
            return None
        score = x[present]
        y = y[present]
    else:
        # In-sample event rate per category: a category seen once scores its own label, so
        # only categories seen at least 5 times count (rarer ones share the overall rate).
        text = column.astype(str).where(column.notna(), "<missing>")
        counts = text.map(text.value_counts())
        rate = pd.Series(y, index=text.index).groupby(text).transform("mean")
        score = np.where(counts >= 5, rate, y.mean())
    auroc = float(roc_auc_score(y, score))
    return max(auroc, 1.0 - auroc)


# --------------------------------------------------------------------------- image checks
def _check_images(cohort: Cohort, sequences: list[str], read_images: bool, report: ValidationReport) -> dict[str, Any]:
    config = cohort.config
    shapes: dict[str, Counter] = {s: Counter() for s in sequences}
    spacings: dict[str, Counter] = {s: Counter() for s in sequences}
    orientations: dict[str, Counter] = {s: Counter() for s in sequences}
    dtypes: dict[str, Counter] = {s: Counter() for s in sequences}
    missing_sequence: Counter = Counter()
    boxes: dict[str, dict[str, np.ndarray]] = {}  # subject -> sequence -> world box of its field of view
    items = [(s, q) for s in cohort.ids for q in sequences]
    for subject, sequence in tqdm(items, desc="checking images", unit="file", leave=False, disable=len(items) < 50):
        column = config.images[sequence]
        path = cohort.image_paths[subject][sequence]
        if path is None:
            missing_sequence[sequence] += 1
            problem = Problem(f"no {sequence} image (empty cell)", subject=subject, column=column)
            if config.missing_images == "error":
                problem.message += "; fill it in, or set missing_images: drop | zero | drop_modality in the cohort config"
                report.errors.append(problem)
            continue
        if not path.exists():
            report.errors.append(Problem(f"image file {path} does not exist", subject=subject, column=column))
            continue
        found = (_check_series_folder(report, path, config.series.get(sequence), read_images, subject, column)
                 if path.is_dir() else _check_nifti(report, path, sequence, config, read_images, subject, column))
        if found is None:
            continue
        shape, affine, dtype = found
        problem = field_of_view_problem(shape, affine, config.head_extent_mm)
        if problem is not None:
            _unusable(report, config.missing_images, Problem(f"{path.name} {problem}", subject=subject, column=column))
        else:
            boxes.setdefault(subject, {})[sequence] = world_box(shape, affine)
        zooms = tuple(round(float(z), 2) for z in voxel_sizes(affine))
        shapes[sequence][shape[:3]] += 1
        spacings[sequence][zooms] += 1
        orientations[sequence]["".join(nib.aff2axcodes(affine))] += 1
        dtypes[sequence][dtype] += 1
    for subject, fields in boxes.items():
        (first, reference), *others = fields.items()
        for sequence, box in others:
            share = overlap(box, reference)
            if share < MIN_FOV_OVERLAP:
                _unusable(report, config.missing_images, Problem(
                    f"{cohort.image_paths[subject][sequence].name} shares {share:.0%} of its field of view with the "
                    f"{first} image (at least {MIN_FOV_OVERLAP:.0%} needed): its position (affine) puts it elsewhere; "
                    "re-export it with its real geometry", subject=subject, column=config.images[sequence]))
    return {"shapes": shapes, "spacings": spacings, "orientations": orientations, "dtypes": dtypes,
            "missing": missing_sequence}


def _check_nifti(report: ValidationReport, path: Any, sequence: str, config: CohortConfig, read_images: bool,
                 subject: str, column: str) -> tuple[tuple[int, ...], np.ndarray, str] | None:
    """Header (and with ``read_images`` voxel) checks of one NIfTI file: its ``(shape, affine, dtype)``,
    or None after adding the error that makes it unusable."""
    try:
        image = read_header(str(path))  # format, voxel type, grid size and geometry
    except ImageError as err:
        report.errors.append(Problem(f"image file {err}", subject=subject, column=column))
        return None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3:
        report.errors.append(Problem(f"{path.name} is {len(shape)}D ({shape}); a 3D volume is needed", subject=subject, column=column))
        return None
    if len(shape) == 4 and shape[3] > 1 and sequence not in config.volume_index:
        report.errors.append(Problem(
            f"{path.name} is 4D {shape}; set volume_index: {{{sequence}: N}} in the cohort config to pick a volume",
            subject=subject, column=column,
        ))
        return None
    wanted = config.volume_index.get(sequence, 0)
    if len(shape) == 3 and wanted > 0:  # preprocessing refuses it: say so here, before any training
        report.errors.append(Problem(
            f"{path.name} is 3D (one volume) but volume_index: {{{sequence}: {wanted}}} asks for volume {wanted}; "
            f"every {sequence} file must hold that volume: split the 4D files (keep the volume you want) so "
            "that all are 3D, and drop volume_index", subject=subject, column=column))
        return None
    if len(shape) > 4 or (len(shape) == 4 and sequence in config.volume_index and config.volume_index[sequence] >= shape[3]):
        report.errors.append(Problem(f"{path.name} has shape {shape}, which no volume_index fits", subject=subject, column=column))
        return None
    if read_images:
        try:
            data = np.asanyarray(image.dataobj)
        except READ_ERRORS as err:
            report.errors.append(Problem(f"image file {path} is unreadable ({type(err).__name__}: {err}); "
                                         "re-export it as NIfTI", subject=subject, column=column))
            return None
        if not np.isfinite(data).all():
            report.errors.append(Problem(
                f"{path.name} holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels; fix the export "
                "(or replace them by 0)", subject=subject, column=column))
        elif data.size and float(np.nanmax(data)) == float(np.nanmin(data)):
            report.errors.append(Problem(f"{path.name} is constant ({float(data.flat[0])}): an empty "
                                         "image; re-export it", subject=subject, column=column))
    return shape, image.affine, str(image.get_data_dtype())


def _check_series_folder(report: ValidationReport, path: Any, selector: str | None, read_images: bool,
                         subject: str, column: str) -> tuple[tuple[int, ...], np.ndarray, str] | None:
    """Series checks of one DICOM folder (several series, missing or duplicated slices, spacing,
    orientations, gantry tilt, multi-frame and unreadable files): ``(shape, affine, "DICOM")`` of
    the chosen series, or None after adding the error that makes it unusable."""
    where = path.name
    try:
        scan = scan_folder(str(path))
        series = choose_series(scan, selector, "DICOM folder")
    except ImageError as err:
        report.errors.append(Problem(str(err), subject=subject, column=column))
        return None
    problem = series_problem(series, scan)
    if problem is not None:
        report.errors.append(Problem(f"DICOM folder {where} {problem}", subject=subject, column=column))
        return None
    for warning in series.warnings:
        report.warnings.append(Problem(f"DICOM folder {where}: series {series.label} {warning}", subject=subject,
                                       column=column))
    if read_images:
        try:
            voxels, _ = read_series(str(path), selector, "DICOM folder", scan)
        except ImageError as err:
            report.errors.append(Problem(str(err), subject=subject, column=column))
            return None
        if not np.isfinite(voxels).all() or float(voxels.max()) == float(voxels.min()):
            report.errors.append(Problem(f"DICOM folder {where}: series {series.label} is constant or not finite: "
                                         "an empty image; re-export it", subject=subject, column=column))
            return None
    return series.shape, series.affine, "DICOM"


def _unusable(report: ValidationReport, policy: str, problem: Problem) -> None:
    """A sequence that cannot be a present channel: an error, or under ``zero`` / ``drop_modality``
    a warning that preprocessing will treat it as absent."""
    if policy in ("zero", "drop_modality"):
        problem.message += (f"; missing_images: {policy} makes it "
                            f"{'an absent image modality' if policy == 'drop_modality' else 'an absent (zero) channel'}")
        report.warnings.append(problem)
    else:
        problem.message += "; or set missing_images: zero | drop_modality in the cohort config to use the subject without it"
        report.errors.append(problem)


# --------------------------------------------------------------------------- summary
def _summarise(cohort: Cohort, images: dict[str, Any]) -> dict[str, Any]:
    labeled = cohort.labeled
    columns = {}
    for column in cohort.features.columns:
        values = cohort.features[column]
        entry: dict[str, Any] = {"type": cohort.feature_types[column], "missing": float(values.isna().mean())}
        if cohort.feature_types[column] == "continuous" and values.notna().any():
            entry["range"] = (float(values.min()), float(values.max()))
        else:
            entry["levels"] = int(values.nunique())
        columns[column] = entry
    return {
        "subjects": len(cohort.ids),
        "labeled": int(labeled.sum()),
        "positives": int((cohort.labels == 1).sum()),
        "outcome": dict(cohort.outcome),
        "columns": columns,
        **images,
    }


def _outcome_warnings(cohort: Cohort, report: ValidationReport) -> None:
    """What a person should know about a time-to-event outcome: no horizon (so no binary label from it),
    a label column that disagrees with it at the horizon."""
    config = cohort.config
    if config.time is None or not cohort.ids:
        return
    if not cohort.outcome:
        report.warnings.append(Problem(
            f"time-to-event outcome ({config.time}, {config.event}) without a horizon: validate a run config with "
            "finetune.horizon (e.g. 12 with horizon_unit: months) to see the binary label it gives",
            column=config.time))
    elif cohort.outcome.get("label_column_disagrees"):
        report.warnings.append(Problem(
            f"the label column disagrees with {config.time} / {config.event} at the horizon "
            f"{cohort.outcome['horizon']} for {cohort.outcome['label_column_disagrees']} subject(s); the label at the "
            "horizon is used", column=config.label))


def _outcome_lines(outcome: dict[str, Any]) -> list[str]:
    """The summary's lines on how a time-to-event outcome became the binary label."""
    if not outcome:
        return []
    return [f"  label at the horizon {outcome['horizon']}: {outcome['event_by_horizon']} event(s) by it (1), "
            f"{outcome['followed_past_horizon']} followed past it without one (0), {outcome['censored_before_horizon']} "
            f"censored before it and {outcome['missing_time_or_event']} without time or event (unlabeled)"]


def _top(counter: Counter, k: int = 3) -> str:
    if not counter:
        return "-"
    shown = ", ".join(f"{'x'.join(str(v) for v in key) if isinstance(key, tuple) else key} ({n})" for key, n in counter.most_common(k))
    return shown + (f", +{len(counter) - k} more" if len(counter) > k else "")


def format_report(report: ValidationReport, config: CohortConfig) -> str:
    """Human-readable report: problems first, then the summary tables."""
    lines = [f"Cohort {config.source or config.csv}"]
    summary = report.summary
    if summary:
        labeled, positives = summary["labeled"], summary["positives"]
        prevalence = f" ({100 * positives / labeled:.1f} %)" if labeled else ""
        lines += [
            f"  subjects: {summary['subjects']}   labeled: {labeled}   positives: {positives}{prevalence}"
            f"   unlabeled: {summary['subjects'] - labeled}",
            *_outcome_lines(summary.get("outcome", {})),
            "",
            f"  {'column':<24} {'type':<12} {'missing':>8}  values",
        ]
        for column, entry in summary["columns"].items():
            values = (f"{entry['range'][0]:.4g} .. {entry['range'][1]:.4g}" if "range" in entry
                      else f"{entry.get('levels', 0)} levels")
            lines.append(f"  {column:<24} {entry['type']:<12} {100 * entry['missing']:>7.1f}%  {values}")
        lines += ["", f"  {'sequence':<10} {'shapes (count)':<40} {'spacings mm':<34} orientations / dtypes"]
        for sequence in summary["shapes"]:
            missing = summary["missing"].get(sequence, 0)
            lines.append(
                f"  {sequence:<10} {_top(summary['shapes'][sequence]):<40} {_top(summary['spacings'][sequence]):<34} "
                f"{_top(summary['orientations'][sequence])} / {_top(summary['dtypes'][sequence], 2)}"
                + (f"   missing: {missing}" if missing else "")
            )
    if report.warnings:
        lines += ["", f"{len(report.warnings)} warning(s):"] + [f"  - {w}" for w in report.warnings]
    if report.errors:
        lines += ["", f"{len(report.errors)} error(s):"] + [f"  - {e}" for e in report.errors]
    lines += ["", "OK: the cohort is usable." if report.ok else "FAILED: fix the errors above and run validate again."]
    return "\n".join(lines)
