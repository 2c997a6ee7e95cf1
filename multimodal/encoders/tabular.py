"""Clinical-record encoders (modality table): FT-Transformer (``ft_transformer``) and an MLP
(``tabular_mlp``), both reading the ``TabularPreprocessor``'s tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from multimodal.encoders.registry import register_encoder
from multimodal.errors import ConfigError

Piece = tuple[torch.Tensor, int]  # (B, k, ...) per-feature inputs, index of the first feature they cover


def _check_features(num_continuous: int, category_sizes: list[int]) -> tuple[int, int]:
    """Validate the preprocessor's feature counts; returns ``(n_categorical, n_features)``."""
    if num_continuous + len(category_sizes) == 0:
        raise ConfigError("a tabular encoder needs at least one continuous or categorical feature")
    if num_continuous < 0 or any(size < 1 for size in category_sizes):
        raise ConfigError(
            f"num_continuous must be >= 0 ({num_continuous}) and each category size must count "
            f"the index-0 missing bucket, so >= 1 ({category_sizes})"
        )
    return len(category_sizes), num_continuous + len(category_sizes)


def _tabular_inputs(
    batch: dict[str, torch.Tensor], n_cont: int, n_cat: int
) -> tuple[torch.Tensor, ...]:
    """Check the preprocessor's dict against the feature counts -> (cont, cat, missing)."""
    missing = batch["missing"]
    b = missing.shape[0]
    cont = batch.get("continuous", missing.new_zeros((b, 0), dtype=torch.float32))
    cat = batch.get("categorical", missing.new_zeros((b, 0), dtype=torch.long))
    if cont.shape[1] != n_cont or cat.shape[1] != n_cat or missing.shape[1] != n_cont + n_cat:
        raise ConfigError(
            f"tabular encoder built for {n_cont} continuous + {n_cat} categorical features got "
            f"continuous {tuple(cont.shape)}, categorical {tuple(cat.shape)}, "
            f"missing {tuple(missing.shape)}; build the encoder from the preprocessor that made them"
        )
    return cont, cat, missing.bool()


def presence(batch: dict[str, torch.Tensor], missing: torch.Tensor) -> torch.Tensor:
    """``(B, F)`` float presence of each feature: 1 present, 0 missing (the hard mask)."""
    return (~missing).to(torch.float32)


def along_path(batch: dict[str, torch.Tensor], pieces_of: Callable[[dict[str, torch.Tensor]], list[Piece]]
               ) -> list[torch.Tensor]:
    """An encoder's per-feature inputs, on the straight path Integrated Gradients walks (``finetune.explain``).

    ``pieces_of(table)`` gives the encoder's inputs as ``(tensor (B, k, ...), first feature)`` pairs,
    where dim 1 of each tensor covers features ``first .. first + k``. Without a ``presence`` entry
    they are returned as they are. With ``presence`` ``(B, F)`` in ``[0, 1]``, feature j's pieces are
    ``presence_j * subject + (1 - presence_j) * baseline``, where the baseline is the table under
    ``baseline`` (e.g. training medians) or, by default, the same table with every feature missing
    (the learned missing-value token). Presence 1 gives exactly the subject, 0 exactly the baseline.
    """
    pieces = pieces_of(batch)
    given = batch.get("presence")
    if given is None:
        return [tensor for tensor, _ in pieces]
    baseline = batch.get("baseline")
    if baseline is None:
        baseline = {**batch, "missing": torch.ones_like(batch["missing"], dtype=torch.bool)}
    out = []
    for (tensor, first), (base, _) in zip(pieces, pieces_of(baseline), strict=True):
        g = given[:, first: first + tensor.shape[1]].to(tensor.dtype)
        g = g.reshape(*g.shape, *[1] * (tensor.ndim - 2))
        out.append(g * tensor + (1.0 - g) * base)
    return out


class _CategoricalEmbedding(nn.Module):
    """One embedding table for all categorical features; feature j owns rows offsets[j]..+size_j."""

    def __init__(self, category_sizes: list[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *category_sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(category_sizes)], persistent=False)
        self.table = nn.Embedding(max(sum(category_sizes), 1), dim)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        """``(B, n_cat) int64 -> (B, n_cat, dim)``."""
        return self.table(cat + self.offsets)


class TabularEncoder(nn.Module):
    """FT-Transformer (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data").

    Hand-written: none of our libraries (timm, MONAI, lightly) ships a tabular transformer.
    Input: the preprocessor's dict ``continuous (B, n_cont)``, ``categorical (B, n_cat)``,
    ``missing (B, n_cont + n_cat)`` (continuous first). Each feature becomes one token
    (continuous ``x_j * W_j + b_j``, categorical an embedding row); where ``missing`` is True the
    token is a learned per-feature MISSING token, so a missing value is never read as 0.
    ``forward_features(batch)["tokens"] -> (B, n_cont + n_cat, dim)``; ``forward -> (B, dim)``, the [CLS] output.
    """

    def __init__(
        self,
        num_continuous: int,
        category_sizes: list[int],
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.num_categorical, n_features = _check_features(num_continuous, category_sizes)
        if dim % heads:
            raise ConfigError(f"tabular dim ({dim}) must be divisible by heads ({heads})")
        self.cont_weight = nn.Parameter(torch.empty(num_continuous, dim))
        self.cont_bias = nn.Parameter(torch.zeros(num_continuous, dim))
        self.cat_embed = _CategoricalEmbedding(list(category_sizes), dim)
        self.missing_token = nn.Parameter(torch.empty(n_features, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        for param in (self.cont_weight, self.missing_token, self.cls_token):
            nn.init.trunc_normal_(param, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Nested tensors are a no-op with norm_first and only trigger a warning.
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_features: int = dim

    def _feature_tokens(self, batch: dict[str, torch.Tensor]) -> list[Piece]:
        """``[(B, n_features, dim) tokens, 0]``: present features keep their token, missing ones get
        the learned MISSING token."""
        cont, cat, missing = _tabular_inputs(batch, self.num_continuous, self.num_categorical)
        cont_tokens = cont.unsqueeze(-1) * self.cont_weight + self.cont_bias  # (B, n_cont, dim)
        tokens = torch.cat([cont_tokens, self.cat_embed(cat)], dim=1)  # (B, n_features, dim)
        p = presence(batch, missing).to(tokens.dtype).unsqueeze(-1)  # (B, n_features, 1)
        return [(p * tokens + (1.0 - p) * self.missing_token.to(tokens.dtype), 0)]

    def _encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, 1 + n_features, dim)``: [CLS] then the feature tokens, after the final norm."""
        (tokens,) = along_path(batch, self._feature_tokens)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.norm(self.transformer(torch.cat([cls, tokens], dim=1)))

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """-> dict ``embedding (B, dim)`` (the [CLS] output), ``tokens (B, n_cont + n_cat, dim)``
        (one per feature, continuous first, no [CLS]), from one transformer pass."""
        encoded = self._encode(batch)
        return {"embedding": encoded[:, 0], "tokens": encoded[:, 1:]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, dim)``, the [CLS] token."""
        return self.forward_features(batch)["embedding"]


class TabularMLP(nn.Module):
    """MLP baseline: ``concat(continuous, missing mask, categorical embeddings) -> depth x
    (Linear, LayerNorm, GELU, Dropout) -> (B, dim)``. No per-feature tokens."""

    def __init__(
        self,
        num_continuous: int,
        category_sizes: list[int],
        dim: int = 64,
        depth: int = 3,
        dropout: float = 0.1,
        category_dim: int = 8,
    ) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.num_categorical, n_features = _check_features(num_continuous, category_sizes)
        self.cat_embed = _CategoricalEmbedding(list(category_sizes), category_dim)
        layers: list[nn.Module] = []
        width = num_continuous + n_features + self.num_categorical * category_dim
        for _ in range(depth):
            layers += [nn.Linear(width, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout)]
            width = dim
        self.mlp = nn.Sequential(*layers)
        self.num_features: int = dim

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """-> dict ``embedding (B, dim)`` only: an MLP has no per-feature tokens, so there is no
        ``tokens`` key (callers that need tokens, like matching fusion, need ``ft_transformer``)."""
        cont, flags, cat = along_path(batch, self._inputs)
        return {"embedding": self.mlp(torch.cat([cont, flags, cat.flatten(1)], dim=1))}

    def _inputs(self, batch: dict[str, torch.Tensor]) -> list[Piece]:
        """Continuous values (0 where missing), the missing flags, and the categorical embeddings
        (bucket 0's where missing), each with the first feature it covers."""
        cont, cat, missing = _tabular_inputs(batch, self.num_continuous, self.num_categorical)
        p = presence(batch, missing).to(cont.dtype)  # (B, n_features)
        cat_p = p[:, self.num_continuous:].unsqueeze(-1)
        cat_tokens = cat_p * self.cat_embed(cat) + (1.0 - cat_p) * self.cat_embed(torch.zeros_like(cat))
        return [(cont * p[:, :self.num_continuous], 0), (1.0 - p, 0), (cat_tokens, self.num_continuous)]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``-> (B, dim)``."""
        return self.forward_features(batch)["embedding"]


@register_encoder("ft_transformer", modality="table")
def ft_transformer(**kwargs: Any) -> TabularEncoder:
    return TabularEncoder(**kwargs)


@register_encoder("tabular_mlp", modality="table")
def tabular_mlp(**kwargs: Any) -> TabularMLP:
    return TabularMLP(**kwargs)
