"""Cohort tables: read the CSV a user brings, assign column roles, map labels, split patients.

A cohort is one CSV row per subject with an id column, one column of NIfTI paths
per MRI sequence, an optional 0/1 label column (empty = unlabeled) and clinical feature columns.
``load_cohort`` turns it into a ``Cohort``; ``multimodal.validate`` checks everything up front.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from multimodal.cohort_duplicates import case_duplicate_problems, shared_image_problems
from multimodal.cohort_labels import map_labels, na_marker, read_time_to_event
from multimodal.config import CohortConfig
from multimodal.csv_table import read_header, read_records
from multimodal.errors import CohortError, ConfigError
from multimodal.outcome import Horizon, horizon_labels
from multimodal.problems import Problem
from multimodal.tabular import to_numeric_column

logger = logging.getLogger(__name__)


@dataclass
class Cohort:
    """A read and checked cohort table.

    ``features`` holds only clinical feature columns (continuous as float with NaN, categorical
    as the raw strings), indexed by subject id in CSV order.
    """

    config: CohortConfig
    ids: list[str]
    labels: np.ndarray  # (N,) float: 0, 1 or NaN (unlabeled)
    features: pd.DataFrame
    feature_types: dict[str, str]  # column -> continuous | categorical
    image_paths: dict[str, dict[str, Path | None]]  # subject -> sequence -> file (None = absent)
    text: pd.DataFrame = field(default_factory=pd.DataFrame)
    time: np.ndarray | None = None  # (N,) follow-up in config.time_unit (NaN = missing), when the cohort has one
    event: np.ndarray | None = None  # (N,) 0/1 (NaN = missing)
    # how the binary label came from time and event at the run's horizon (multimodal.outcome.horizon_labels)
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def continuous(self) -> list[str]:
        return [c for c, kind in self.feature_types.items() if kind == "continuous"]

    @property
    def categorical(self) -> list[str]:
        return [c for c, kind in self.feature_types.items() if kind == "categorical"]

    @property
    def sequences(self) -> list[str]:
        return list(self.config.images)

    @property
    def labeled(self) -> np.ndarray:
        """(N,) bool: rows with a label."""
        return ~np.isnan(self.labels)

    def records(self, subjects: list[str] | None = None) -> list[dict[str, Any]]:
        """MONAI-style records ``{"subject_id", "image": {sequence: path}, "label"}``."""
        chosen = self.ids if subjects is None else subjects
        position = {s: i for i, s in enumerate(self.ids)}
        return [
            {
                "subject_id": s,
                "image": {k: (str(v) if v is not None else None) for k, v in self.image_paths[s].items()},
                "label": float(self.labels[position[s]]),
            }
            for s in chosen
        ]

    def subset(self, subjects: list[str]) -> Cohort:
        """The same cohort restricted to ``subjects`` (in the given order)."""
        position = {s: i for i, s in enumerate(self.ids)}
        rows = [position[s] for s in subjects]
        return Cohort(
            config=self.config,
            ids=list(subjects),
            labels=self.labels[rows],
            features=self.features.loc[subjects],
            feature_types=dict(self.feature_types),
            image_paths={s: self.image_paths[s] for s in subjects},
            text=self.text.loc[subjects] if not self.text.empty else self.text,
            time=self.time[rows] if self.time is not None else None,
            event=self.event[rows] if self.event is not None else None,
            outcome=dict(self.outcome),
        )


# --------------------------------------------------------------------------- reading
def read_table(config: CohortConfig) -> pd.DataFrame:
    """The cohort CSV as text cells exactly as written (so ids like ``007`` survive and a category
    called ``None`` or ``NA`` stays one), indexed by each row's line in the file. Missing (NaN) are
    empty cells and the user's ``na_values`` only."""
    if not config.csv.is_file():
        raise CohortError(f"cohort table {config.csv} does not exist; fix 'csv' in {config.source}")
    header, lines, rows = read_records(config.csv)
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise CohortError(f"cohort table {config.csv} has duplicate column names {duplicated}; "
                          "rename or remove the repeated columns")
    is_marker = na_marker(config)
    label = header.index(config.label) if config.label in header else -1  # map_labels reads its markers
    cells = [[np.nan if value == "" or (j != label and is_marker(value)) else value for j, value in enumerate(row)]
             for row in rows]
    return pd.DataFrame(cells, columns=header, index=pd.Index(lines, name="line"), dtype=object)


def raw_header(path: Path) -> list[str]:
    """The CSV's header names as written (stripped; a byte-order mark dropped)."""
    return read_header(path)


def check_columns(config: CohortConfig, frame: pd.DataFrame) -> list[Problem]:
    """Every column the config names must exist; suggest the closest one when it doesn't."""
    named: list[tuple[str, str]] = [("id", config.id)]
    named += [(f"images.{seq}", col) for seq, col in config.images.items()]
    if config.label is not None:
        named.append(("label", config.label))
    if config.time is not None:
        named += [("time", config.time), ("event", config.event)]
    named += [("text", c) for c in config.text] + [("ignore", c) for c in config.ignore]
    named += [("features", c) for c in config.features or []] + [("types", c) for c in config.types]
    problems = []
    for key, column in named:
        if column not in frame.columns:
            hint = difflib.get_close_matches(column, list(frame.columns), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; columns are {list(frame.columns)}"
            problems.append(Problem(f"config key {key} names a column not in {config.csv.name}{suggestion}", column=column))
    if not config.images:
        problems.append(Problem("the cohort config names no image columns (images: {sequence: column})"))
    return problems


def feature_columns(config: CohortConfig, frame: pd.DataFrame) -> list[str]:
    """Clinical feature columns: the allow-list if given, else every column without a role."""
    roles = {config.id, config.label, config.time, config.event, *config.images.values(), *config.text, *config.ignore}
    if config.features is not None:
        return [c for c in config.features if c not in roles]
    return [c for c in frame.columns if c not in roles]


def mixed_column_problems(config: CohortConfig, frame: pd.DataFrame, columns: list[str]) -> list[Problem]:
    """A column whose values are mostly numbers with a few words in between (``12O``, ``high``) would
    silently become categorical: one problem per such column, naming the subjects and values."""
    problems = []
    for column in columns:
        if column in config.types:
            continue
        values = frame[column].dropna()
        numeric = pd.to_numeric(values, errors="coerce").notna()
        text = values.astype(str)
        decimal_commas = text.str.fullmatch(r"-?\d+,\d+")
        thousands = text.str.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?")  # 1,200 or 12,500,000.5
        commas = decimal_commas | thousands
        if len(values) and (commas | numeric).mean() >= 0.5 and commas.any():
            examples = ", ".join(f"{frame.at[i, config.id]}: {v!r}" for i, v in list(values[commas].items())[:3])
            what = ("holds decimal commas" if not thousands.any() else
                    "holds numbers with a comma, thousands separators or decimal commas (a comma is never read as "
                    "either: 1,200 could be 1.2 or 1200)")
            problems.append(Problem(f"{what} ({examples}); re-export the table with plain numbers: decimal points, "
                                    "no thousands separators", column=column))
        elif len(values) and 0.5 <= numeric.mean() < 1.0:
            bad = values[~numeric]
            examples = ", ".join(f"{frame.at[i, config.id]}: {v!r}" for i, v in list(bad.items())[:5])
            markers = sorted(set(bad.astype(str)))[:3]
            limits = sorted({v for v in bad.astype(str) if re.fullmatch(r"\s*[<>]=?\s*-?\d+([.,]\d+)?\s*", v)})[:3]
            hint = (f"; {limits} look like detection limits: write a number in those cells (the limit, or half "
                    "of it), since na_values would make them missing") if limits else ""
            problems.append(Problem(
                f"mostly numbers, but {len(bad)} value(s) are not ({examples}); fix those cells, add missing-value "
                f"markers to na_values (e.g. na_values: {markers}), or declare types: {{{column}: categorical}}{hint}",
                column=column))
    return problems


def infer_feature_types(config: CohortConfig, frame: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """Numeric columns are continuous, anything else categorical, unless ``types`` says otherwise."""
    kinds = {}
    for column in columns:
        if column in config.types:
            kinds[column] = config.types[column]
            continue
        values = frame[column].dropna()
        numeric = pd.to_numeric(values, errors="coerce")
        kinds[column] = "continuous" if len(values) and numeric.notna().all() else "categorical"
    return kinds


def resolve_image_path(config: CohortConfig, cell: Any) -> Path | None:
    """An image cell as an absolute path (relative to the CSV's folder); ``None`` when empty. A cell is
    never expanded (``~`` is a folder name here, as in any CSV reader): see ``image_cell_problems``."""
    if pd.isna(cell):
        return None
    path = Path(str(cell))
    return path if path.is_absolute() else (config.root / path)


def image_cell_problems(config: CohortConfig, frame: pd.DataFrame) -> list[Problem]:
    """An image cell starting with ``~`` means a home folder to its writer, but paths in the table
    are relative to its folder or absolute, the same on every machine and account that reads it."""
    problems = []
    for column in config.images.values():
        for subject, cell in zip(frame[config.id], frame[column], strict=True):
            if isinstance(cell, str) and cell.startswith("~"):
                problems.append(Problem(f"image path {cell!r} starts with '~', which is not expanded in the cohort "
                                        "table; write the absolute path (e.g. /home/NAME/...) or one relative to the "
                                        "table's folder", subject=str(subject), column=column))
    return problems


def read_cohort(config: CohortConfig, horizon: Horizon | None = None) -> tuple[Cohort, list[Problem]]:
    """Read the table and collect table-level problems (without touching image files). With a
    time-to-event outcome and a ``horizon`` the labels are those at the horizon (``multimodal.outcome``)."""
    frame = read_table(config)
    problems = check_columns(config, frame)
    if problems:
        return _empty_cohort(config), problems
    ids = frame[config.id]
    for row in frame.index[ids.isna().to_numpy()]:
        problems.append(Problem(f"row {row} of {config.csv.name} has an empty id", column=config.id))
    line = frame.index.to_numpy()[ids.notna().to_numpy()]  # each kept row's line in the CSV (header = line 1)
    frame = frame[ids.notna()].reset_index(drop=True)
    labels, label_problems = map_labels(config, frame)
    problems += label_problems
    time = event = None
    outcome: dict[str, Any] = {}
    if config.time is not None:
        time, event, outcome_problems = read_time_to_event(config, frame)
        problems += outcome_problems
        if horizon is not None:
            derived, outcome = horizon_labels(time, event, horizon.in_unit(config.time_unit))
            outcome["horizon"] = str(horizon)
            if config.label is not None:  # both given: the horizon's label is used; say where they differ
                both = ~np.isnan(labels) & ~np.isnan(derived)
                outcome["label_column_disagrees"] = int((labels[both] != derived[both]).sum())
            labels = derived
    duplicated = frame[config.id].duplicated().to_numpy()
    first_line = {}
    for row, subject in enumerate(frame[config.id]):
        first_line.setdefault(subject, line[row])
    for row in np.flatnonzero(duplicated):
        subject = frame.at[row, config.id]
        problems.append(Problem(f"id appears more than once (row {line[row]}, first in row {first_line[subject]}); "
                                "ids must be unique", subject=str(subject), column=config.id))
        for column in config.images.values():
            path = resolve_image_path(config, frame.at[row, column])
            if path is not None and not path.exists():
                problems.append(Problem(f"image file {path} does not exist", subject=subject, column=column))
    # Keep the first row of a repeated id so the rest of the checks run on a consistent table.
    kept_lines = line[~duplicated]
    frame = frame[~duplicated].reset_index(drop=True)
    labels = labels[~duplicated]
    problems += case_duplicate_problems(config, list(frame[config.id]), kept_lines)
    if frame.empty:
        problems.append(Problem(f"{config.csv.name} has a header but no subject rows; export the data rows too"))
    columns = feature_columns(config, frame)
    problems += mixed_column_problems(config, frame, columns)
    kinds = infer_feature_types(config, frame, columns)
    index = pd.Index(frame[config.id].astype(str), name=config.id)
    parsed: dict[str, pd.Series] = {}
    for column in columns:
        values = frame[column].set_axis(index)
        if kinds[column] == "continuous":
            try:
                values = to_numeric_column(values, column)
            except CohortError as err:
                problems.append(Problem(str(err), column=column))
                values = pd.to_numeric(values, errors="coerce").astype("float64")  # later checks read numbers
        parsed[column] = values
    problems += image_cell_problems(config, frame)
    # One construction, not a column insert per feature (slow and fragmented with thousands of columns).
    features = pd.DataFrame(parsed, index=index)
    image_paths = {
        str(subject): {seq: resolve_image_path(config, frame.at[i, col]) for seq, col in config.images.items()}
        for i, subject in enumerate(frame[config.id])
    }
    problems += shared_image_problems(config, image_paths)
    text = frame[config.text].set_axis(features.index) if config.text else pd.DataFrame(index=features.index)
    cohort = Cohort(config, [str(s) for s in frame[config.id]], labels, features, kinds, image_paths, text,
                    time, event, outcome)
    return cohort, problems


def _empty_cohort(config: CohortConfig) -> Cohort:
    return Cohort(config, [], np.zeros(0), pd.DataFrame(), {}, {})


def load_cohort(config: CohortConfig, horizon: Horizon | None = None) -> Cohort:
    """Read a cohort for training; any table-level problem is one ``CohortError`` listing all. ``horizon``:
    the binary label of a time-to-event outcome (``multimodal.outcome``).

    Subjects lacking a sequence are dropped when ``missing_images: drop`` (with a warning).
    """
    cohort, problems = read_cohort(config, horizon)
    if problems:
        raise CohortError(_join(problems, config))
    if config.missing_images == "drop":
        keep = [s for s in cohort.ids if all(p is not None for p in cohort.image_paths[s].values())]
        if len(keep) < len(cohort.ids):
            logger.warning("dropping %d subject(s) lacking a sequence (missing_images: drop)", len(cohort.ids) - len(keep))
            cohort = cohort.subset(keep)
    return cohort


def with_event_labels(cohort: Cohort) -> Cohort:
    """``cohort`` for the survival task: its labels are the event indicator (0/1) of every subject with
    both follow-up time and event, NaN (unlabeled) otherwise. A cohort without a time-to-event outcome
    is a ``ConfigError`` saying which cohort.yaml keys to add."""
    if cohort.time is None or cohort.event is None:
        raise ConfigError(f"finetune.task: survival needs a time-to-event outcome; cohort {cohort.config.source} names "
                          "none: add time: (follow-up column), time_unit: and event: (0/1 column) to its cohort.yaml")
    known = ~np.isnan(cohort.time) & ~np.isnan(cohort.event)
    return replace(cohort, labels=np.where(known, cohort.event, np.nan),
                   outcome={"survival": True, "with_time_and_event": int(known.sum()),
                            "events": int(np.nansum(cohort.event[known])), "without_time_or_event": int((~known).sum())})


def outcome_names(labels: np.ndarray) -> list[str]:
    """``(N,)`` labels (NaN = unlabeled) as the words projectors and plots show: "0", "1", "unlabeled"."""
    return ["unlabeled" if np.isnan(v) else str(int(v)) for v in labels]


def _join(problems: list[Problem], config: CohortConfig) -> str:
    """One line for the CLI: the same message for many subjects is said once, naming three of them."""
    groups: dict[tuple[str | None, str], list[str]] = {}
    for problem in problems:
        groups.setdefault((problem.column, problem.message), []).append(problem.subject)
    parts = []
    for (column, message), subjects in list(groups.items())[:10]:
        named = [s for s in subjects if s is not None]
        more = f" and {len(named) - 3} more" if len(named) > 3 else ""
        where = [f"subject{'s' if len(named) > 1 else ''} {', '.join(named[:3])}{more}"] if named else []
        where += [f"column {column!r}"] if column is not None else []
        parts.append(f"{', '.join(where)}: {message}" if where else message)
    more = f"; and {len(groups) - 10} more kinds" if len(groups) > 10 else ""
    source = config.source or config.csv
    full_list = ("run `strokessl validate` for the full list" if str(source).endswith((".yaml", ".yml")) else
                 "a cohort.yaml beside the CSV (README, 'Cohort format') lets `strokessl validate` list them all")
    return f"{len(problems)} problem(s) in cohort {source}: {'; '.join(parts)}{more} ({full_list})"


# --------------------------------------------------------------------------- splits
def _check_stratifiable(labels: np.ndarray, k: int, what: str) -> None:
    positives = int((labels == 1).sum())
    negatives = int((labels == 0).sum())
    if min(positives, negatives) == 0:
        only = "positive" if negatives == 0 else "negative"
        raise CohortError(
            f"{what}: every one of the {positives + negatives} labeled subjects is {only}; cross-validation needs "
            "both classes: check the label column and label_map, or label subjects of the other class"
        )
    if k > positives or k > negatives:
        raise CohortError(
            f"{what}: cannot stratify {k} folds with {positives} positive and {negatives} negative "
            f"labeled subjects; use at most {min(positives, negatives)} folds or label more subjects"
        )


def stratified_folds(
    ids: list[str], labels: np.ndarray, k: int, seed: int, groups: list[str] | None = None
) -> list[tuple[list[str], list[str]]]:
    """K patient-level stratified folds as ``(train_ids, test_ids)``; every id is tested once.

    ``groups`` (e.g. a patient id when a patient has several rows) keeps a group in one fold.
    """
    labels = np.asarray(labels, dtype=float)
    if np.isnan(labels).any():
        raise CohortError("folds need labeled subjects only; drop rows with an empty label first")
    if k < 2:
        raise CohortError(f"K-fold cross-validation needs k >= 2, got {k}")
    _check_stratifiable(labels, k, "cross-validation")
    index = np.arange(len(ids))
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels, groups)
    return [([ids[i] for i in train], [ids[i] for i in test]) for train, test in splits]


def stratified_split(
    ids: list[str], labels: np.ndarray, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Hold out ``fraction`` of subjects, stratified by label; unlabeled rows form their own stratum."""
    if not 0.0 < fraction < 1.0:
        raise CohortError(f"split fraction must be between 0 and 1, got {fraction}")
    labels = np.asarray(labels, dtype=float)
    strata = np.where(np.isnan(labels), -1, labels).astype(int)
    counts = np.bincount(strata + 1)
    held = round(fraction * len(ids)) if fraction * len(ids) >= 1 else 1
    # too few held out to hold every stratum (or a stratum of one): a plain random split
    stratify = strata if (counts[counts > 0] >= 2).all() and held >= (counts > 0).sum() else None
    train, held_out = train_test_split(list(ids), test_size=fraction, random_state=seed, stratify=stratify)
    return list(train), list(held_out)
