"""The report modality: a cohort's ``text:`` columns as hashed word and character n-gram counts.

Registered as the ``report`` modality through the same registry a third party uses
(``multimodal.data.register_modality``). A subject's document is the non-empty cells of the
chosen text columns joined in column order; a subject whose cells are all empty has no report
(a missing modality, never an empty string).

The reader is stateless so every stage, ``predict`` and ``explain`` read a report alike without a
fitted vocabulary to carry around: scikit-learn's ``HashingVectorizer`` maps word 1-2-grams and
character 3-5-grams (within word boundaries, which survives typing variants such as
"small-vessel" / "small vessel") to ``features`` columns, half each, as sublinear counts
``log(1 + tf)``. What TF-IDF fits on training rows, the inverse document frequencies, is a buffer
of the encoder (``multimodal.encoders.text``), fitted on the training rows of the stage that
builds it and saved with its weights; a bucket no training report filled gets weight 0, so words
first seen at test time are ignored, as a fitted vocabulary would ignore them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import HashingVectorizer

from multimodal.cohort import Cohort
from multimodal.data import register_modality
from multimodal.errors import ConfigError

DEFAULT_FEATURES = 4096  # hash buckets, half word n-grams, half character n-grams
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 5)


def report_columns(cohort: Cohort, args: dict[str, Any]) -> list[str]:
    """The text columns the report reads: ``args['columns']`` or every ``text:`` column of the cohort."""
    declared = list(cohort.config.text)
    columns = args.get("columns") or declared
    unknown = [c for c in columns if c not in declared]
    if unknown:
        raise ConfigError(f"model.encoders.report.args.columns names {unknown}, which cohort {cohort.config.source} "
                          f"does not declare under text: (it declares {declared})")
    return list(columns)


def report_documents(cohort: Cohort, ids: list[str], columns: list[str]) -> list[str | None]:
    """One document per subject of ``ids``: its non-empty cells of ``columns`` joined, or None."""
    if not columns or cohort.text.empty:
        return [None] * len(ids)
    cells = cohort.text[columns].reindex(ids)
    documents: list[str | None] = []
    for row in cells.itertuples(index=False):
        parts = [str(cell).strip() for cell in row if isinstance(cell, str) and cell.strip()]
        documents.append(" . ".join(parts) if parts else None)
    return documents


@lru_cache(maxsize=8)
def _vectorizers(features: int) -> tuple[HashingVectorizer, HashingVectorizer]:
    # alternate_sign=False: counts stay counts, so the encoder's IDF weights mean what they say.
    common = {"n_features": features // 2, "alternate_sign": False, "norm": None, "lowercase": True}
    return (HashingVectorizer(analyzer="word", ngram_range=WORD_NGRAMS, **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, **common))


class SparseRows:
    """``(N, F)`` rows held as a SciPy CSR matrix (a cohort's hashed reports are >95 % zeros: dense,
    10,000 reports x 4,096 buckets took 156 MB in every process); a row indexes as a dense ``(F,)``
    float32 tensor, so a batch collates to ``(B, F)`` as a dense input would. Any other index (a
    mask, a list of positions) gives ``SparseRows`` again."""

    def __init__(self, matrix: sp.spmatrix) -> None:
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.matrix.shape)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor | SparseRows:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return torch.from_numpy(self.matrix[int(index)].toarray()[0])
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return SparseRows(self.matrix[index])

    def document_frequency(self) -> torch.Tensor:
        """``(F,)`` float32: how many rows hold each column."""
        return torch.from_numpy(np.asarray((self.matrix > 0).sum(axis=0), dtype=np.float32)[0])

    def to_dense(self) -> torch.Tensor:
        return torch.from_numpy(self.matrix.toarray())


def sparse_counts(documents: list[str | None], features: int = DEFAULT_FEATURES) -> SparseRows:
    """``(N, features)`` sublinear n-gram counts ``log(1 + tf)``, sparse; an empty row for a None document."""
    if features < 2 or features % 2:
        raise ConfigError(f"model.encoders.report.args.features must be an even number >= 2, got {features}")
    text = [d or "" for d in documents]
    words, chars = _vectorizers(features)
    counts = sp.hstack([words.transform(text), chars.transform(text)]).tocsr()
    counts.data = np.log1p(counts.data)
    return SparseRows(counts)


def hashed_counts(documents: list[str | None], features: int = DEFAULT_FEATURES) -> torch.Tensor:
    """``(N, features)`` float32 sublinear n-gram counts ``log(1 + tf)``, dense; zeros for a None document."""
    return sparse_counts(documents, features).to_dense()


def run_documents(cohort: Cohort, ids: list[str], others: dict[str, dict[str, Any]]) -> list[str | None] | None:
    """The report documents of ``ids`` when a run reads the report modality (``others``: modality ->
    encoder args, as the stages keep them), else None: what the baselines read beside the table."""
    if "report" not in others:
        return None
    return report_documents(cohort, ids, report_columns(cohort, others["report"]))


@register_modality("report")
def read_reports(cohort: Cohort, ids: list[str], args: dict[str, Any]) -> tuple[SparseRows, torch.Tensor]:
    """``(N, features)`` hashed counts of each subject's report (sparse rows; each item dense) and
    ``(N,)`` bool presence."""
    documents = report_documents(cohort, ids, report_columns(cohort, args))
    present = torch.tensor([d is not None for d in documents], dtype=torch.bool)
    return sparse_counts(documents, int(args.get("features", DEFAULT_FEATURES))), present
