"""The label column and missing-value markers of a cohort table: which cells are missing, which
label each remaining cell means, and the codings that would be read wrongly (1/2 for 0/1, a
marker that is also a label value)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from multimodal.config import CohortConfig
from multimodal.problems import Problem

DEFAULT_LABEL_MAP = {
    "0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1, "no": 0, "yes": 1,
}


def na_marker(config: CohortConfig) -> Callable[[str], bool]:
    """Whether a (stripped) cell is one of the cohort's ``na_values``: the same text, or the same number."""
    markers = {str(v).strip() for v in config.na_values}
    numbers = {float(v) for v in config.na_values if _is_number(v)}
    return lambda value: value in markers or (bool(numbers) and _is_number(value) and float(value) in numbers)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


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


def _unknown_hint(value: Any) -> str:
    """How to declare a word that means "unknown": ``na_values`` applies to every column, so a
    number there (9 for unknown) would also blank that number in the clinical features."""
    text = str(value).strip()
    if pd.notna(pd.to_numeric(text, errors="coerce")):
        return ""
    return f", or add {text!r} to its na_values if it means unknown"


def read_time_to_event(config: CohortConfig, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """The ``time`` column as ``(N,)`` float (its ``time_unit``) and ``event`` as ``(N,)`` float 0/1,
    NaN where empty or a ``na_values`` marker, with a problem per cell that is neither: a time that is
    no number or negative, an event that is not 0/1 (or true/false, yes/no)."""
    problems = []
    time = np.full(len(frame), np.nan)
    event = np.full(len(frame), np.nan)
    for i, (subject, t, e) in enumerate(zip(frame[config.id], frame[config.time], frame[config.event], strict=True)):
        if not pd.isna(t):
            value = float(t) if _is_number(t) else np.nan
            if np.isfinite(value) and value >= 0:
                time[i] = value
            else:
                problems.append(Problem(f"follow-up time {t!r} is not a number of {config.time_unit} >= 0; fix the "
                                        "cell, leave it empty, or add the marker to na_values",
                                        subject=str(subject), column=config.time))
        if not pd.isna(e):
            key = str(e).strip().casefold()
            if key in DEFAULT_LABEL_MAP or (_is_number(key) and float(key) in (0.0, 1.0)):
                event[i] = float(DEFAULT_LABEL_MAP.get(key, float(key) if _is_number(key) else 0))
            else:
                problems.append(Problem(f"event {e!r} is not 0/1 (1 = recurrence seen, 0 = none by the last "
                                        "follow-up); fix the cell or leave it empty", subject=str(subject),
                                        column=config.event))
    return time, event, problems
