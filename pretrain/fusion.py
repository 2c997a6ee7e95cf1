"""Fusion heads of pretraining: image–tabular matching (``MatchingFusion``, ALBEF-style cross-attention)
and the per-feature decoders of masked-tabular reconstruction (``TabularReconstructionHead``)."""

from __future__ import annotations

import torch
from torch import nn

from multimodal.errors import ConfigError


class MatchingFusion(nn.Module):
    """Image–tabular matching: tabular tokens (plus a learned [CLS]) attend to image tokens.

    Follows ALBEF / BLIP's image-grounded encoder (Li et al. 2021, 2022): "a cross-attention
    layer is inserted between the self-attention and the feed-forward network of each block",
    and "the output embedding of [Encode] is used as the multimodal representation", fed to a
    linear 2-way (matched / not) head. Here the text is the table: ``depth`` pre-norm
    ``nn.TransformerDecoderLayer`` blocks (self-attention over [CLS] + table tokens,
    cross-attention to the image tokens, MLP), a final LayerNorm, then ``Linear(dim, 2)`` on [CLS].

    ``forward(table_tokens (M, Tt, dim), image_tokens (M, Ti, dim)) -> (M, 1 + Tt, dim)``:
    [CLS] first, then one fused output per table token. No dropout: the fusion is small, and
    random masks would differ between 1 and N processes.
    """

    def __init__(
        self, dim: int = 128, depth: int = 2, heads: int = 4, match_head: bool = True
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(
                f"pretrain.fusion_dim ({dim}) must be divisible by pretrain.fusion_heads ({heads})"
            )
        if depth < 1:
            raise ConfigError(f"pretrain.fusion_depth must be >= 1, got {depth}")
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerDecoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerDecoder(layer, depth)
        self.norm = nn.LayerNorm(dim)  # pre-norm blocks leave the residual stream un-normalised
        # Optional so that masked_tabular alone leaves no parameter without gradient (DDP refuses).
        self.match_head = nn.Linear(dim, 2) if match_head else None
        self.dim = dim

    def forward(self, table_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``(M, Tt, dim), (M, Ti, dim) -> (M, 1 + Tt, dim)``: [CLS] then the fused table tokens."""
        cls = self.cls_token.expand(table_tokens.shape[0], -1, -1).to(table_tokens.dtype)
        fused = self.transformer(torch.cat([cls, table_tokens], dim=1), image_tokens)
        return self.norm(fused)

    def match_logits(self, table_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``(M, Tt, dim), (M, Ti, dim) -> (M, 2)`` logits; class 1 = the pair is matched."""
        if self.match_head is None:
            raise ValueError("this fusion was built without a matching head (match_head=False)")
        return self.match_head(self(table_tokens, image_tokens)[:, 0])


class TabularReconstructionHead(nn.Module):
    """Per-feature decoders for masked-tabular reconstruction (one output layer per feature, as
    features differ in meaning; none of our libraries has a tabular decoder).

    ``(B, n_cont + n_cat, dim)`` fused table tokens (continuous first, the encoder's order) ->
    ``(B, n_cont)`` continuous predictions and a list of ``(B, category_sizes[j])`` logits (the
    sizes count bucket 0, unknown / missing, as ``TabularPreprocessor.category_sizes`` does).
    """

    def __init__(self, dim: int, num_continuous: int, category_sizes: list[int]) -> None:
        super().__init__()
        self.num_continuous = num_continuous
        self.cont_weight = nn.Parameter(torch.empty(num_continuous, dim))
        nn.init.trunc_normal_(self.cont_weight, std=dim**-0.5)
        self.cont_bias = nn.Parameter(torch.zeros(num_continuous))
        self.cat_heads = nn.ModuleList(nn.Linear(dim, size) for size in category_sizes)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, n_cont + n_cat, dim) -> ((B, n_cont), [(B, K_j + 1)])``."""
        n = self.num_continuous
        continuous = (tokens[:, :n] * self.cont_weight).sum(dim=-1) + self.cont_bias
        logits = [head(tokens[:, n + j]) for j, head in enumerate(self.cat_heads)]
        return continuous, logits
