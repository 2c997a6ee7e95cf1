"""Cohort tables: read the CSV a user brings, assign column roles, map labels, split patients.

A cohort (DESIGN.md §2) is one CSV row per subject with an id column, one column of NIfTI paths
per MRI sequence, an optional 0/1 label column (empty = unlabeled) and clinical feature columns.
``load_cohort`` turns it into a ``Cohort``; ``multimodal.validate`` checks everything up front.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from multimodal.config import CohortConfig
from multimodal.csv_table import read_header, read_records
from multimodal.errors import CohortError
from multimodal.tabular import to_numeric_column

logger = logging.getLogger(__name__)

DEFAULT_LABEL_MAP = {
    "0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1, "no": 0, "yes": 1,
}


@dataclass
class Problem:
    """One thing wrong with the cohort, tied to a subject and/or column where it applies."""

    message: str
    subject: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


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


def na_marker(config: CohortConfig) -> Callable[[str], bool]:
    """Whether a (stripped) cell is one of the cohort's ``na_values``: the same text, or the same number."""
    markers = {str(v).strip() for v in config.na_values}
    numbers = {float(v) for v in config.na_values if _is_number(v)}
    return lambda value: value in markers or (bool(numbers) and _is_number(value) and float(value) in numbers)


def raw_header(path: Path) -> list[str]:
    """The CSV's header names as written (stripped; a byte-order mark dropped)."""
    return read_header(path)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def check_columns(config: CohortConfig, frame: pd.DataFrame) -> list[Problem]:
    """Every column the config names must exist; suggest the closest one when it doesn't."""
    named: list[tuple[str, str]] = [("id", config.id)]
    named += [(f"images.{seq}", col) for seq, col in config.images.items()]
    if config.label is not None:
        named.append(("label", config.label))
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
    roles = {config.id, config.label, *config.images.values(), *config.text, *config.ignore}
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


def map_labels(config: CohortConfig, frame: pd.DataFrame) -> tuple[np.ndarray, list[Problem]]:
    """Labels as (N,) float 0/1/NaN and a problem per unmappable value."""
    if config.label is None:
        return np.full(len(frame), np.nan), []
    mapping = DEFAULT_LABEL_MAP if config.label_map is None else {
        str(k).strip().casefold(): int(v) for k, v in config.label_map.items()
    }
    labels = np.full(len(frame), np.nan)
    problems = []
    is_marker = na_marker(config)
    clashes = []
    for i, (subject, value) in enumerate(zip(frame[config.id], frame[config.label], strict=True)):
        if pd.isna(value):
            continue
        key = str(value).strip().casefold()
        if is_marker(str(value)):
            if key in mapping or (config.label_map is None and _is_number(key) and float(key) in (0.0, 1.0)):
                clashes.append(str(value))
            continue  # a declared marker: unlabeled
        if key not in mapping and config.label_map is None and _is_number(key) and float(key) in (0.0, 1.0):
            labels[i] = float(key)  # 1.00, +1, 0e0: the numbers 0 and 1 however written
            continue
        if key not in mapping:
            problems.append(Problem(
                f"label {value!r} is not one of {sorted(mapping)}; fix the value or set label_map in the "
                "cohort config" + _unknown_hint(value),
                subject=str(subject), column=config.label,
            ))
            continue
        labels[i] = mapping[key]
    if clashes:  # na_values apply to every column: a marker that is also a label would unlabel those subjects
        problems.append(Problem(
            f"na_values {sorted(set(clashes))} {'are' if len(set(clashes)) > 1 else 'is'} also a label value here "
            f"({len(clashes)} subjects): na_values apply to every column, so these subjects would read as unlabeled; "
            "remove it from na_values (and recode that feature's cells), or set label_map", column=config.label))
    present = frame[config.label].map(lambda v: np.nan if isinstance(v, str) and is_marker(v) else v)
    coding = _other_binary_coding(present) if config.label_map is None else None
    if coding is not None:  # e.g. 1/2: its 1s read as events would be wrong, so the whole column is refused
        return np.full(len(frame), np.nan), [Problem(coding, column=config.label)]
    return labels, problems


def _other_binary_coding(values: pd.Series) -> str | None:
    """A problem when a label column holds exactly two numbers other than 0 and 1 (1/2, -1/1)."""
    present = values.dropna().astype(str).str.strip()
    if present.empty or not present.map(_is_number).all():
        return None
    numbers = present.astype(float)
    levels = sorted(set(numbers))
    if len(levels) != 2 or set(levels) <= {0.0, 1.0}:
        return None
    low, high = levels
    counts = f"{int((numbers == low).sum())} and {int((numbers == high).sum())} subjects"
    return (f"labels are coded {low:g}/{high:g} ({counts}), not 0/1; say which value is the event with label_map, "
            f"e.g. label_map: {{{low:g}: 0, {high:g}: 1}} (or {{{low:g}: 1, {high:g}: 0}})")


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


def _unknown_hint(value: Any) -> str:
    """How to declare a word that means "unknown": ``na_values`` applies to every column, so a
    number there (9 for unknown) would also blank that number in the clinical features."""
    text = str(value).strip()
    if pd.notna(pd.to_numeric(text, errors="coerce")):
        return ""
    return f", or add {text!r} to its na_values if it means unknown"


def read_cohort(config: CohortConfig) -> tuple[Cohort, list[Problem]]:
    """Read the table and collect table-level problems (without touching image files)."""
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
            if path is not None and not path.is_file():
                problems.append(Problem(f"image file {path} does not exist", subject=subject, column=column))
    # Keep the first row of a repeated id so the rest of the checks run on a consistent table.
    kept_lines = line[~duplicated]
    frame = frame[~duplicated].reset_index(drop=True)
    labels = labels[~duplicated]
    problems += _case_duplicate_problems(config, list(frame[config.id]), kept_lines)
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
    cohort = Cohort(config, [str(s) for s in frame[config.id]], labels, features, kinds, image_paths, text)
    return cohort, problems


def _case_duplicate_problems(config: CohortConfig, ids: list[str], lines: np.ndarray) -> list[Problem]:
    """Ids that differ only in letter case (``S01``, ``s01``) are one subject entered twice, as far as
    anyone can tell: split across folds, its two rows would leak."""
    first: dict[str, tuple[str, int]] = {}
    problems = []
    for subject, line in zip(ids, lines, strict=True):
        other, other_line = first.setdefault(str(subject).casefold(), (subject, line))
        if other != subject:
            problems.append(Problem(f"id differs from {other!r} (row {other_line}) only in letter case (row {line}): "
                                    "the same subject twice? make the ids unique beyond letter case",
                                    subject=str(subject), column=config.id))
    return problems


def file_key(path: Path) -> Any:
    """What makes two paths one file: the device and inode where it exists (symlinks, hard links,
    ``..``), else the resolved path."""
    try:
        stat = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (stat.st_dev, stat.st_ino)


def shared_image_problems(config: CohortConfig, image_paths: dict[str, dict[str, Path | None]]) -> list[Problem]:
    """One problem per image cell that names a file another cell already names: two subjects with one
    scan (a copied row: the scan would sit in a training and a test fold at once) or two sequences of
    one subject reading the same file (two copies of one channel)."""
    owner: dict[Any, tuple[str, str]] = {}
    problems = []
    for subject, paths in image_paths.items():
        for sequence, path in paths.items():
            if path is None:
                continue
            first_subject, first_sequence = owner.setdefault(file_key(path), (subject, sequence))
            if (first_subject, first_sequence) == (subject, sequence):
                continue
            if first_subject == subject:
                message = (f"the {sequence} and {first_sequence} cells name the same file {path.name}; each "
                           "sequence needs its own file")
            else:
                message = (f"{sequence} file {path.name} is also subject {first_subject}'s {first_sequence} image: "
                           "one scan for two subjects would sit in training and test folds at once; give each "
                           "subject its own scan, or remove the repeated row")
            problems.append(Problem(message, subject=subject, column=config.images[sequence]))
    return problems


def _empty_cohort(config: CohortConfig) -> Cohort:
    return Cohort(config, [], np.zeros(0), pd.DataFrame(), {}, {})


def load_cohort(config: CohortConfig) -> Cohort:
    """Read a cohort for training; any table-level problem is one ``CohortError`` listing all.

    Subjects lacking a sequence are dropped when ``missing_images: drop`` (with a warning).
    """
    cohort, problems = read_cohort(config)
    if problems:
        raise CohortError(_join(problems, config))
    if config.missing_images == "drop":
        keep = [s for s in cohort.ids if all(p is not None for p in cohort.image_paths[s].values())]
        if len(keep) < len(cohort.ids):
            logger.warning("dropping %d subject(s) lacking a sequence (missing_images: drop)", len(cohort.ids) - len(keep))
            cohort = cohort.subset(keep)
    return cohort


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
    stratify = strata if (counts[counts > 0] >= 2).all() else None
    train, held_out = train_test_split(list(ids), test_size=fraction, random_state=seed, stratify=stratify)
    return list(train), list(held_out)
