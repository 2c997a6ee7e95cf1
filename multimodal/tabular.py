"""Clinical-record preprocessing: ``TabularPreprocessor``.

Follows scikit-learn's estimator contract: ``__init__`` stores the column lists, ``fit`` learns
``center_`` / ``scale_`` / ``categories_`` on training rows only, ``transform`` is pure. The
fitted state is plain JSON, so a run folder carries it and prediction on new rows gives the
identical tensors.

Output of ``transform`` (N rows, ``n_cont`` continuous and ``n_cat`` categorical features)::

    continuous   (N, n_cont)           float32  robust z-scores, clipped; 0 where missing
    categorical  (N, n_cat)            int64    0 = unknown or missing, 1..K = vocabulary index
    missing      (N, n_cont + n_cat)   bool     True where the value was missing (explicit mask)

Missing values are never silently imputed: the encoder sees the mask and uses a learned
missing token. scikit-learn's ``StandardScaler`` / ``OneHotEncoder`` don't produce a per-feature
missing mask with an unknown bucket in one JSON-serialisable state, hence this small class.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from multimodal.checkpoint import atomic_write_text
from multimodal.errors import CohortError, StrokeSSLError

logger = logging.getLogger(__name__)

# 1.349 = IQR of a standard normal, so IQR / 1.349 estimates the standard deviation robustly.
_IQR_TO_STD = 1.349
_FORMAT_VERSION = 1


def canonical_category(value: Any) -> str | None:
    """The vocabulary form of a categorical cell: stripped, case-folded; ``None`` when missing.

    Integer-valued floats lose their ``.0`` so a column read as ``1.0`` (pandas does that to
    integer columns with gaps) matches the ``1`` seen in another file.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if value is pd.NA or value is pd.NaT:
        return None
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    if number.is_integer() and "e" not in text.lower():
        return str(int(number))
    return text.casefold()


def to_numeric_column(values: pd.Series, column: str) -> pd.Series:
    """Parse a continuous column to float (NaN = missing); text in it is a ``CohortError``."""
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = parsed.isna() & values.notna() & (values.astype("string").str.strip() != "")
    if bad.any():
        examples = ", ".join(f"{idx}: {values[idx]!r}" for idx in list(values.index[bad])[:5])
        raise CohortError(
            f"column {column!r} is continuous but holds {int(bad.sum())} non-numeric value(s) ({examples}); "
            f"fix the cells, add them to na_values, or declare types: {{{column}: categorical}}"
        )
    return parsed


class TabularPreprocessor:
    """Standardise continuous columns, index categorical ones, and keep a missing mask.

    Args:
        continuous: names of continuous columns, in feature order.
        categorical: names of categorical columns, in feature order (after the continuous ones).
        clip: robust z-scores are clipped to ``[-clip, clip]`` so one outlier can't dominate.
    """

    def __init__(self, continuous: list[str], categorical: list[str], clip: float = 5.0) -> None:
        overlap = set(continuous) & set(categorical)
        if overlap:
            raise StrokeSSLError(f"columns {sorted(overlap)} are both continuous and categorical")
        self.continuous = list(continuous)
        self.categorical = list(categorical)
        self.clip = float(clip)
        self._said_unseen: set[tuple[str, int, tuple[str, ...]]] = set()  # warnings given (see transform)

    # ----------------------------------------------------------------------- fitted state
    @property
    def feature_names(self) -> list[str]:
        """Feature order of the ``missing`` mask: continuous, then categorical."""
        return self.continuous + self.categorical

    @property
    def category_sizes(self) -> list[int]:
        """Embedding rows per categorical feature, counting bucket 0 (unknown / missing)."""
        self._check_fitted()
        return [len(self.categories_[c]) + 1 for c in self.categorical]

    def _check_fitted(self) -> None:
        if not hasattr(self, "center_"):
            raise StrokeSSLError("TabularPreprocessor is not fitted; call fit(training_rows) first")

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        """Learn medians, robust scales and vocabularies from training rows only."""
        self._check_columns(frame, allow_absent=False)
        self.center_: dict[str, float] = {}
        self.scale_: dict[str, float] = {}
        for column in self.continuous:
            values = to_numeric_column(frame[column], column).dropna().to_numpy()
            if values.size == 0:
                raise CohortError(
                    f"continuous column {column!r} has no values in the training rows; "
                    "add it to ignore or check na_values"
                )
            center = float(np.median(values))
            q75, q25 = np.percentile(values, [75, 25])
            scale = float((q75 - q25) / _IQR_TO_STD)
            if not scale > 1e-8:  # more than half the rows share one value: fall back to std
                scale = float(values.std())
            if not scale > 1e-8:
                scale = 1.0  # constant column: z-scores are all 0, mask still carries missingness
            self.center_[column] = center
            self.scale_[column] = scale
        self.categories_: dict[str, list[str]] = {}
        for column in self.categorical:
            canon = frame[column].map(canonical_category).dropna()
            counts = canon.value_counts()
            # Most frequent first, ties by name: a stable order that does not depend on row order.
            order = sorted(counts.index, key=lambda v: (-int(counts[v]), v))
            self.categories_[column] = [str(v) for v in order]
        return self

    def _check_columns(self, frame: pd.DataFrame, allow_absent: bool) -> list[str]:
        absent = [c for c in self.feature_names if c not in frame.columns]
        if absent and not allow_absent:
            raise CohortError(f"table lacks feature columns {absent}; found {list(frame.columns)}")
        if absent:
            logger.warning("columns %s are absent from the table: they enter as missing values", absent)
        return absent

    # ----------------------------------------------------------------------- transform
    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Arrays for ``frame`` (see module docstring). Unseen categories map to bucket 0
        with a warning; absent columns are entirely missing."""
        self._check_fitted()
        absent = set(self._check_columns(frame, allow_absent=True))
        rows = len(frame)
        continuous = np.zeros((rows, len(self.continuous)), dtype=np.float32)
        categorical = np.zeros((rows, len(self.categorical)), dtype=np.int64)
        missing = np.ones((rows, len(self.feature_names)), dtype=bool)
        for j, column in enumerate(self.continuous):
            if column in absent:
                continue
            values = to_numeric_column(frame[column], column).to_numpy()
            present = np.isfinite(values)
            z = (values - self.center_[column]) / self.scale_[column]
            continuous[:, j] = np.where(present, np.clip(z, -self.clip, self.clip), 0.0)
            missing[:, j] = ~present
        offset = len(self.continuous)
        for j, column in enumerate(self.categorical):
            if column in absent:
                continue
            index = {value: i + 1 for i, value in enumerate(self.categories_[column])}
            canon = frame[column].map(canonical_category)
            present = canon.notna().to_numpy()
            codes = np.array([index.get(v, 0) if v is not None else 0 for v in canon], dtype=np.int64)
            unseen = present & (codes == 0)
            if unseen.any():
                values = sorted({str(v).strip() for v in frame[column][unseen]})[:5]  # as the CSV spells them
                # Folds sharing this preprocessor transform the same rows: say it once, repeats at debug level.
                said = (column, int(unseen.sum()), tuple(values))
                level = logging.DEBUG if said in self._said_unseen else logging.WARNING
                self._said_unseen.add(said)
                logger.log(level, "column %r: %d row(s) hold categories unseen in training (%s); they use the "
                           "unknown bucket", column, int(unseen.sum()), values)
            categorical[:, j] = codes
            missing[:, offset + j] = ~present
        return {"continuous": continuous, "categorical": categorical, "missing": missing}

    def transform_tensors(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        """``transform`` as torch tensors, the input format of the tabular encoders."""
        return {key: torch.from_numpy(value) for key, value in self.transform(frame).items()}

    # ----------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format_version": _FORMAT_VERSION,
            "continuous": self.continuous,
            "categorical": self.categorical,
            "clip": self.clip,
            "center": self.center_,
            "scale": self.scale_,
            "categories": self.categories_,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TabularPreprocessor:
        try:
            if state["format_version"] != _FORMAT_VERSION:
                raise StrokeSSLError(
                    f"preprocessor format {state['format_version']} is not supported "
                    f"(this strokessl reads {_FORMAT_VERSION})"
                )
            new = cls(state["continuous"], state["categorical"], clip=state["clip"])
            new.center_ = {k: float(v) for k, v in state["center"].items()}
            new.scale_ = {k: float(v) for k, v in state["scale"].items()}
            new.categories_ = {k: [str(x) for x in v] for k, v in state["categories"].items()}
        except (KeyError, TypeError, AttributeError) as err:
            raise StrokeSSLError(f"preprocessor state is incomplete or malformed: {err!r}") from err
        return new

    def save(self, path: str | Path) -> None:
        """Write the fitted state as JSON (atomic)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> TabularPreprocessor:
        path = Path(path)
        if not path.is_file():
            raise StrokeSSLError(f"preprocessor file {path} does not exist")
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StrokeSSLError(f"preprocessor file {path} is not valid JSON: {err}") from err
        return cls.from_dict(state)
