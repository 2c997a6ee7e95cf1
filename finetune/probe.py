"""Linear probe head: L2 logistic regression on frozen embeddings + the baseline's tabular features.

With a few dozen positives an MLP head trained by SGD and stopped on a handful of validation
positives overfits and loses to plain logistic regression on the table (benchmarks/README.md,
"Learning quality"). The probe is the evaluation MMCL and TIP use for their encoders, extended
so that the multimodal model starts where the tabular baseline is. Its inputs are

    [frozen image embedding (B, Di)] + [frozen table embedding (B, Dt)] + [table design (B, F)]

where the design is what the logistic-regression baseline reads (robust z-scores with missing
at 0, one missing indicator per feature, one-hot categoricals). On each training fold every
embedding block is reduced to its leading principal components and weighted by its own α (0
drops it), every column is standardised, and α with the L2 strength ``C`` is chosen by an inner
stratified 5-fold CV on log loss (scikit-learn's ``LogisticRegressionCV``,
``class_weight="balanced"``), so pretrained features enter only as far as they lower held-out
loss. The fitted coefficients are folded back into the classifier's final ``nn.Linear``
(projection and standardisation included), so a probe fold model is an ordinary
``FusionClassifier`` with ``head_layers=0``: saved as safetensors, reloaded by ``predict`` and
attributed by Captum like any other.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from torch import nn

from finetune.baselines import neg_log_loss, pure_l2
from multimodal.encoders.tabular import Piece, along_path, presence

logger = logging.getLogger(__name__)

_CS = np.logspace(-4, 2, 13)  # the L2 grid of the logistic-regression baseline
GROUP_WEIGHTS = (0.0, 0.25, 0.5, 1.0)  # per embedding block, searched with C (see fit_linear_probe)
_INNER_FOLDS = 5
PROBE_COMPONENTS = 16  # principal components kept per embedding block (fit_linear_probe's default)
_EXHAUSTIVE_BLOCKS = 2  # up to this many embedding blocks every α combination is tried
T = TypeVar("T")


class TableDesign(nn.Module):
    """The logistic-regression baseline's inputs from the preprocessor's tensors, no parameters.

    ``{continuous (B, n_cont), categorical (B, n_cat) int64 (0 = missing / unseen), missing
    (B, n_cont + n_cat) bool} -> (B, n_cont + n_cont + n_cat + sum(sizes - 1))``: continuous
    z-scores (0 where missing), the missing mask as 0/1, then one-hot categoricals without the
    missing bucket (the mask carries it).
    """

    def __init__(self, num_continuous: int, category_sizes: list[int]) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.category_sizes = list(category_sizes)
        n_features = num_continuous + len(self.category_sizes)
        self.num_features: int = num_continuous + n_features + sum(s - 1 for s in self.category_sizes)

    def forward(self, table: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([piece.flatten(1) for piece in along_path(table, self._pieces)], dim=1)

    def _pieces(self, table: dict[str, torch.Tensor]) -> list[Piece]:
        """The design's blocks with the first feature each covers (``along_path`` walks them)."""
        p = presence(table, table["missing"].bool())  # (B, F) 0/1
        n = self.num_continuous
        parts = [(table["continuous"].float() * p[:, :n], 0), (1.0 - p, 0)] if n else [(1.0 - p, 0)]
        categorical = table.get("categorical")
        for j, size in enumerate(self.category_sizes):
            if size > 1:  # (B, 1, size - 1): drop bucket 0 (missing / unseen)
                one_hot = F.one_hot(categorical[:, j], size)[:, 1:].float() * p[:, n + j: n + j + 1]
                parts.append((one_hot[:, None], n + j))
        return parts


class ProbeTable(nn.Module):
    """Tabular input of the probe: ``[encoder(table) (B, Dt), TableDesign(table) (B, F)]``, or the
    design alone when ``encoder`` is None. Used as the classifier's table encoder."""

    def __init__(self, encoder: nn.Module | None, num_continuous: int, category_sizes: list[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.design = TableDesign(num_continuous, category_sizes)
        self.num_features: int = self.design.num_features + (encoder.num_features if encoder is not None else 0)

    def forward(self, table: dict[str, torch.Tensor]) -> torch.Tensor:
        design = self.design(table)
        return design if self.encoder is None else torch.cat([self.encoder(table), design], dim=1)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, seed: int, groups: np.ndarray | None = None,
                     components: int | None = PROBE_COMPONENTS, basis: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the probe on one training fold.

    Args:
        features: (N, F) frozen embeddings and table design of the training fold.
        labels: (N,) 0/1.
        seed: drives the inner CV splits.
        groups: (F,) int, 0 for the table design and 1, 2, ... for each embedding block. Each
            embedding block is reduced to its ``components`` leading principal components (fitted
            on this fold, no labels) and weighted by its own α ∈ ``GROUP_WEIGHTS`` (α scales the
            standardised block, so its L2 penalty is 1/α² of the design's; every combination for up to
            two blocks, a coordinate-wise search beyond, as the fits grow as 4 ** blocks), chosen with ``C`` on the
            inner CV's log loss. With one shared penalty over hundreds of raw embedding columns the
            probe lost to logistic regression on the table alone (measured, benchmarks/README.md);
            α = 0 drops a block, so the probe can always fall back to the baseline. None = one group.
        components: principal components kept per embedding block (None = all columns).
        basis: (M, F) unlabeled rows (e.g. every subject pretraining read) whose principal axes
            replace the fold's for the embedding blocks; their design columns are not read.
            None = the fold's own rows.

    Returns:
        ``weight (F,)`` and ``bias`` acting on the *raw* features (projection, standardisation
        and α folded in), ``C`` and ``group_weights`` (the chosen values), and
        ``oof_probabilities (N,)``: each training subject's probability from a model fitted
        without its inner fold at those values, for the decision threshold and recalibration
        (in-sample probabilities would be optimistic). Unfolded, for LP-FT's layers: ``mean (F,)``,
        ``projection (F, F')``, ``scale (F',)``, ``reduced_groups (F',)``, ``reduced_coef (F',)``
        (α folded in) and ``intercept``: logit = intercept + ((x - mean) @ projection / scale) · reduced_coef.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    folds = min(_INNER_FOLDS, int(min(y.sum(), len(y) - y.sum())))
    if folds < 2:
        raise ValueError("the linear probe needs at least 2 positives and 2 negatives in the training fold")
    block = reduce_blocks(x, groups, components, basis)
    z, reduced_groups = block.z, block.groups
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)

    def fit(weight: np.ndarray) -> tuple[float, LogisticRegressionCV]:
        search = LogisticRegressionCV(Cs=list(_CS), cv=cv, scoring=neg_log_loss, class_weight="balanced",
                                      max_iter=5000, random_state=seed)
        pure_l2(search)
        search.fit(z * weight, y)
        scores = search.scores_  # (folds, [l1_ratios,] Cs); a dict by class before scikit-learn 1.8
        scores = np.asarray(next(iter(scores.values())) if isinstance(scores, dict) else scores)
        return float(scores.reshape(scores.shape[0], -1).mean(0).max()), search

    weight, search = search_group_weights(reduced_groups, fit)
    blocks = sorted(set(reduced_groups.tolist()) - {0})
    mean, projection, scale = block.mean, block.projection, block.scale
    c = float(np.atleast_1d(search.C_)[0])
    oof = cross_val_predict(LogisticRegression(C=c, class_weight="balanced", max_iter=5000), z * weight, y, cv=cv,
                            method="predict_proba")[:, 1]
    coef = projection @ (search.coef_[0] * weight / scale)  # (F,) on the raw features
    bias = float(search.intercept_[0] - (coef * mean).sum())
    group_weights = {int(b): float(weight[reduced_groups == b][0]) for b in blocks}
    logger.debug("linear probe: C %.4g, group weights %s over %d features", c, group_weights, x.shape[1])
    return {"weight": coef, "bias": bias, "C": c, "group_weights": group_weights, "oof_probabilities": oof,
            "mean": mean, "projection": projection, "scale": scale, "reduced_groups": reduced_groups,
            "reduced_coef": search.coef_[0] * weight, "intercept": float(search.intercept_[0])}


@dataclass
class ReducedBlocks:
    """A probe's inputs after ``reduce_blocks``: ``z = ((x - mean) @ projection) / scale``, ``(N, F')``."""

    mean: np.ndarray  # (F,)
    projection: np.ndarray  # (F, F')
    scale: np.ndarray  # (F',)
    groups: np.ndarray  # (F',) the block of each reduced column (0 = the table design)
    z: np.ndarray  # (N, F')


def reduce_blocks(x: np.ndarray, groups: np.ndarray | None, components: int | None,
                  basis: np.ndarray | None) -> ReducedBlocks:
    """Each embedding block of ``(N, F)`` ``x`` (``groups`` > 0) reduced to its ``components`` leading
    principal components (axes from ``basis`` rows when given, else ``x``'s), every column standardised."""
    groups = np.zeros(x.shape[1], dtype=int) if groups is None else np.asarray(groups, dtype=int)
    if groups.shape != (x.shape[1],):
        raise ValueError(f"groups must have one entry per feature ({x.shape[1]}), got shape {groups.shape}")
    mean = x.mean(0)
    axes_from = x if basis is None else np.asarray(basis, dtype=np.float64)  # rows the principal axes come from
    if axes_from.ndim != 2 or axes_from.shape[1] != x.shape[1]:
        raise ValueError(f"basis must have the features' {x.shape[1]} columns, got shape {axes_from.shape}")
    projection, reduced_groups = _reduction(axes_from - axes_from.mean(0), groups, components)  # (F, F'), (F',)
    reduced = (x - mean) @ projection  # (N, F')
    scale = reduced.std(0)
    scale[scale < 1e-8] = 1.0  # a constant column (an absent category) gets weight 0 anyway
    return ReducedBlocks(mean, projection, scale, reduced_groups, reduced / scale)


def search_group_weights(groups: np.ndarray, fit: Callable[[np.ndarray], tuple[float, T]]) -> tuple[np.ndarray, T]:
    """The per-block α (from ``GROUP_WEIGHTS``) whose ``fit(column weights (F',))`` scores highest (its
    inner-CV score; ties keep the earlier choice), with that fit. Every combination for up to
    ``_EXHAUSTIVE_BLOCKS`` blocks, a coordinate-wise search beyond (the fits grow as 4 ** blocks);
    group 0 (the table design) always has weight 1, and all-zero weights are never fitted."""
    blocks = sorted(set(groups.tolist()) - {0})
    fits: dict[tuple[float, ...], tuple[float, np.ndarray, T] | None] = {}

    def scored(alphas: tuple[float, ...]) -> tuple[float, np.ndarray, T] | None:
        if alphas not in fits:
            weight = np.ones(len(groups))
            for block, alpha in zip(blocks, alphas, strict=True):
                weight[groups == block] = alpha
            fits[alphas] = None
            if weight.any():  # every column dropped: nothing to fit
                score, result = fit(weight)
                fits[alphas] = (score, weight, result)
        return fits[alphas]

    def better(candidate: tuple[float, ...], incumbent: tuple[float, ...] | None) -> bool:
        new, old = scored(candidate), scored(incumbent) if incumbent is not None else None
        return new is not None and (old is None or new[0] > old[0] + 1e-9)

    chosen: tuple[float, ...] | None = None
    if len(blocks) <= _EXHAUSTIVE_BLOCKS:  # every combination (16 fits for image + table embeddings)
        for alphas in itertools.product(GROUP_WEIGHTS, repeat=len(blocks)):
            chosen = alphas if better(alphas, chosen) else chosen
    else:  # more modalities: coordinate-wise search (4 fits per block and round, not 4 ** blocks)
        chosen = (GROUP_WEIGHTS[-1],) * len(blocks)
        for _ in range(2):
            for j in range(len(blocks)):
                for alpha in GROUP_WEIGHTS:
                    candidate = (*chosen[:j], alpha, *chosen[j + 1:])
                    chosen = candidate if better(candidate, chosen) else chosen
    best = scored(chosen) if chosen is not None else None
    assert best is not None
    return best[1], best[2]


def _reduction(centred: np.ndarray, groups: np.ndarray, components: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(F, F')`` projection keeping group-0 columns as they are and each embedding block's leading
    principal components of the centred ``(N, F)`` rows, and the ``(F',)`` group of each output."""
    columns, out_groups = [], []
    for block in sorted(set(groups.tolist())):
        index = np.flatnonzero(groups == block)
        keep = len(index) if block == 0 or components is None else min(components, len(index), len(centred) - 1)
        if keep == len(index):
            part = np.eye(len(index))
        else:  # principal axes of the block: right singular vectors, largest first
            part = np.linalg.svd(centred[:, index], full_matrices=False)[2][:keep].T  # (d, k)
        block_projection = np.zeros((len(groups), part.shape[1]))
        block_projection[index] = part
        columns.append(block_projection)
        out_groups.append(np.full(part.shape[1], block))
    return np.concatenate(columns, axis=1), np.concatenate(out_groups)


def probe_groups(model: nn.Module) -> np.ndarray:
    """``(F,)`` groups of a probe classifier's head inputs, in ``forward_from_embeddings`` order:
    one block number (1, 2, ...) per embedding (image, frozen table embedding, any other modality)
    and 0 for the table design (see ``fit_linear_probe``)."""
    parts, block = [], 0
    for modality in model.modalities:
        encoder = model.encoder(modality)
        if isinstance(encoder, ProbeTable):
            if encoder.encoder is not None:
                block += 1
                parts.append(np.full(encoder.encoder.num_features, block))
            parts.append(np.zeros(encoder.design.num_features, dtype=int))
        else:
            block += 1
            parts.append(np.full(encoder.num_features, block))
    return np.concatenate(parts)


@torch.no_grad()
def load_probe(linear: nn.Linear, fit: dict[str, Any]) -> None:
    """Copy a ``fit_linear_probe`` result into the classifier's final ``Linear(F, 1)``."""
    weight = torch.as_tensor(fit["weight"], dtype=linear.weight.dtype)
    if linear.weight.shape != (1, weight.numel()):
        raise ValueError(f"probe has {weight.numel()} weights, the head expects {tuple(linear.weight.shape)}")
    linear.weight.copy_(weight[None])
    linear.bias.fill_(fit["bias"])
