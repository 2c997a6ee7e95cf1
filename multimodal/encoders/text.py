"""Report encoders (modality ``report``): TF-IDF of the hashed n-gram counts, then a trainable projection.

``tfidf_projection`` reads ``multimodal.text``'s ``(B, features)`` sublinear counts, weights them
by inverse document frequency, L2-normalises each row (scikit-learn's ``TfidfTransformer`` with
``smooth_idf``) and projects to ``dim`` with one linear layer and a LayerNorm. The IDF weights are
a buffer fitted on the training rows (``fit_to_data``), so they travel with the weights file;
written by hand because the projection must train with the rest of the model in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.encoders.registry import register_encoder
from multimodal.errors import ConfigError
from multimodal.text import DEFAULT_FEATURES, SparseRows


class TfidfProjection(nn.Module):
    """``(B, features)`` counts -> ``(B, dim)`` embedding; ``num_features = dim``."""

    def __init__(self, features: int = DEFAULT_FEATURES, dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        if features < 2 or dim < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"tfidf_projection needs features >= 2, dim >= 1 and 0 <= dropout < 1; "
                              f"got features={features}, dim={dim}, dropout={dropout}")
        self.features, self.num_features = features, dim
        self.register_buffer("idf", torch.ones(features))  # fitted on training rows; 0 = never seen there
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(features, dim)
        self.norm = nn.LayerNorm(dim)

    @torch.no_grad()
    def fit_to_data(self, counts: torch.Tensor | SparseRows, present: torch.Tensor) -> None:
        """Inverse document frequencies of the ``(N, features)`` training rows that have a report
        (dense, or the reader's sparse rows): ``ln((1 + n) / (1 + df)) + 1`` (scikit-learn's smoothed
        IDF), 0 where no row has the term."""
        rows = counts[present.bool()]
        if rows.shape[0] == 0:
            raise ConfigError("no training subject has a report, so the report encoder has nothing to fit; "
                              "drop model.encoders.report or give the cohort reports")
        df = (rows.document_frequency() if isinstance(rows, SparseRows) else (rows > 0).sum(dim=0)).to(self.idf)
        idf = torch.log((1 + rows.shape[0]) / (1 + df)) + 1
        self.idf.copy_(torch.where(df > 0, idf, torch.zeros_like(idf)))

    def tfidf(self, counts: torch.Tensor) -> torch.Tensor:
        """``(B, features)`` L2-normalised TF-IDF rows (a zero row for an empty report)."""
        if counts.ndim != 2 or counts.shape[1] != self.features:
            raise ConfigError(f"tfidf_projection built for {self.features} features got {tuple(counts.shape)}; "
                              "model.encoders.report.args.features must match the reader's")
        return F.normalize(counts * self.idf, dim=1)

    def forward_features(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self.norm(self.projection(self.dropout(self.tfidf(counts))))}

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return self.forward_features(counts)["embedding"]


@register_encoder("tfidf_projection", modality="report")
def tfidf_projection(features: int = DEFAULT_FEATURES, dim: int = 64, dropout: float = 0.1,
                     columns: list[str] | None = None) -> TfidfProjection:
    """TF-IDF + linear projection; ``columns`` is the reader's (the text columns to read)."""
    del columns  # read by multimodal.text, not the encoder
    return TfidfProjection(features, dim, dropout)
