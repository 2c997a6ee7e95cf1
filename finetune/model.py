"""The recurrence classifier: pretrained encoders + a DNN fusion head → one logit per subject.

``FusionClassifier`` composes an image encoder (3D ResNet or 2D ResNet per slice + LSTM), a
tabular encoder (FT-Transformer or MLP) and a fusion head (DESIGN.md §6, issue 4 item 1)::

    image (B, C, H, W, D) ─ image_encoder ─ (B, Di) ┐
                                                    ├─ fusion ─ MLP head ─ (B,) logits
    table {continuous, categorical, missing} ─ table_encoder ─ (B, Dt) ┘

Fusions (``FUSIONS``): ``concat`` (MLP over the concatenated embeddings), ``gated`` (a learned
sigmoid gate mixes per-modality projections), ``attention`` (the two projections as two tokens
through one self-attention layer, then their mean). With one encoder (image-only / tabular-only
ablations) the head is the MLP on that embedding alone, whatever ``fusion`` says.

Modes (``MODES``, issue 4 item 2): ``frozen`` (encoders fixed and in ``eval()``; only the head
trains, on embeddings computed once by ``precompute_embeddings``), ``trainable`` (everything
trains, encoders at ``lr * encoder_lr_ratio``) and ``scratch`` (everything at ``lr``; the caller
builds the encoders without ``--init``). ``set_mode`` applies one, ``parameter_groups`` gives the
matching AdamW groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from finetune.probe import ProbeTable
from multimodal.config import check_choice
from multimodal.errors import ConfigError

logger = logging.getLogger(__name__)

FUSIONS = ("concat", "gated", "attention")
MODES = ("frozen", "trainable", "scratch")
_ATTENTION_HEADS = 4  # used when hidden is divisible by it, else a single head


def _mlp_head(in_features: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, GELU, Dropout) then Linear(·, 1); ``layers=0`` is a linear
    probe. LayerNorm, not BatchNorm: fine-tuning batches of a few hundred subjects are small."""
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    blocks.append(nn.Linear(width, 1))
    return nn.Sequential(*blocks)


def _projection(in_features: int, hidden: int) -> nn.Sequential:
    """Linear + LayerNorm, so both modalities reach the gate / attention on the same scale."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.LayerNorm(hidden))


class FusionClassifier(nn.Module):
    """Image and / or tabular encoder + fusion head giving one recurrence logit per subject.

    Args:
        image_encoder: ``(B, C, H, W, D) -> (B, Di)`` with ``num_features = Di``, or None
            (tabular-only model).
        table_encoder: ``{continuous (B, n_cont), categorical (B, n_cat), missing (B, n_cont +
            n_cat)} -> (B, Dt)`` with ``num_features = Dt``, or None (image-only model).
        fusion: one of ``FUSIONS``; ignored (plain MLP) when only one encoder is given.
        hidden: width of the projections and of the head's hidden layers.
        dropout: dropout after every hidden layer of the head (and inside the attention layer).
        head_layers: hidden layers of the MLP head (2 by default; 0 = a linear head).
    """

    def __init__(
        self,
        image_encoder: nn.Module | None,
        table_encoder: nn.Module | None,
        fusion: str = "concat",
        hidden: int = 128,
        dropout: float = 0.3,
        head_layers: int = 2,
    ) -> None:
        super().__init__()
        if image_encoder is None and table_encoder is None:
            raise ConfigError("FusionClassifier needs an image encoder, a tabular encoder or both")
        check_choice("finetune.fusion", fusion, FUSIONS)
        if hidden < 1 or head_layers < 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"fusion head: hidden ({hidden}) must be >= 1, head_layers ({head_layers}) >= 0 "
                f"and dropout ({dropout}) in [0, 1)"
            )
        self.image_encoder = image_encoder
        self.table_encoder = table_encoder
        two = image_encoder is not None and table_encoder is not None
        if not two and fusion != "concat":
            logger.info("one modality only: fusion %r is not used, the head is an MLP on it", fusion)
        self.fusion = fusion if two else "concat"
        self.frozen_encoders = False  # set by set_mode("frozen"); train() keeps them in eval then
        dims = [enc.num_features for enc in (image_encoder, table_encoder) if enc is not None]
        if self.fusion == "concat":
            head_in = sum(dims)
        else:
            head_in = hidden
            self.image_proj = _projection(dims[0], hidden)
            self.table_proj = _projection(dims[1], hidden)
            if self.fusion == "gated":
                # g = sigmoid(W [p_img, p_tab] + b), fused = g * p_img + (1 - g) * p_tab, per channel.
                self.gate = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Sigmoid())
            else:
                heads = _ATTENTION_HEADS if hidden % _ATTENTION_HEADS == 0 else 1
                # Self-attention is permutation-equivariant: a learned embedding per modality
                # tells the two tokens apart.
                self.modality_embed = nn.Parameter(torch.zeros(1, 2, hidden))
                nn.init.trunc_normal_(self.modality_embed, std=0.02)
                self.attention = nn.TransformerEncoderLayer(
                    hidden, heads, 2 * hidden, dropout, activation="gelu",
                    batch_first=True, norm_first=True,
                )
        self.head = _mlp_head(head_in, hidden, head_layers, dropout)

    # ----------------------------------------------------------------------- parts
    def encoders(self) -> list[nn.Module]:
        """The encoders present (image first)."""
        return [enc for enc in (self.image_encoder, self.table_encoder) if enc is not None]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the encoders: projections, gate / attention, MLP head."""
        encoder_ids = {id(p) for enc in self.encoders() for p in enc.parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    def train(self, mode: bool = True) -> FusionClassifier:
        """As ``nn.Module.train``, but frozen encoders stay in ``eval()`` (no dropout, no
        norm-statistics updates), so ``frozen`` really is a fixed feature extractor."""
        super().train(mode)
        if self.frozen_encoders:
            for encoder in self.encoders():
                encoder.eval()
        return self

    # ----------------------------------------------------------------------- forward
    def embed(
        self, image: torch.Tensor | None, table: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor | None]:
        """``image (B, C, H, W, D)``, ``table`` dict -> ``{"image": (B, Di) | None, "table": (B, Dt)
        | None}``; a modality without an encoder gives None (its input is not read)."""
        out: dict[str, torch.Tensor | None] = {"image": None, "table": None}
        if self.image_encoder is not None:
            if image is None:
                raise ValueError("this model has an image branch: pass the image batch (B, C, H, W, D)")
            out["image"] = self.image_encoder(image)
        if self.table_encoder is not None:
            if table is None:
                raise ValueError("this model has a tabular branch: pass the table batch dict")
            out["table"] = self.table_encoder(table)
        return out

    def forward_from_embeddings(
        self, image_emb: torch.Tensor | None, table_emb: torch.Tensor | None
    ) -> torch.Tensor:
        """Fusion + head on precomputed embeddings ``(B, Di)`` / ``(B, Dt)`` -> ``(B,)`` logits
        (``frozen`` mode trains this on embeddings cached once)."""
        present = [
            emb for emb, enc in ((image_emb, self.image_encoder), (table_emb, self.table_encoder))
            if enc is not None
        ]
        if any(emb is None for emb in present):
            raise ValueError("an embedding is missing for a branch this model has (image and/or table)")
        if self.fusion == "concat":
            fused = torch.cat(present, dim=1)  # (B, Di [+ Dt])
        else:
            p_img, p_tab = self.image_proj(present[0]), self.table_proj(present[1])  # (B, h) each
            if self.fusion == "gated":
                gate = self.gate(torch.cat([p_img, p_tab], dim=1))  # (B, h) in (0, 1)
                fused = gate * p_img + (1.0 - gate) * p_tab
            else:
                tokens = torch.stack([p_img, p_tab], dim=1) + self.modality_embed  # (B, 2, h)
                fused = self.attention(tokens).mean(dim=1)  # (B, h)
        return self.head(fused).squeeze(-1)

    def forward(
        self, image: torch.Tensor | None, table: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """``image (B, C, H, W, D)`` and / or ``table`` dict -> ``(B,)`` recurrence logits."""
        emb = self.embed(image, table)
        return self.forward_from_embeddings(emb["image"], emb["table"])


def build_classifier(image_encoder: nn.Module | None, table_encoder: nn.Module | None, settings: Any,
                     num_continuous: int, category_sizes: list[int],
                     table_embedding: bool | None = None) -> FusionClassifier:
    """The fold classifier the ``finetune:`` settings describe, from encoders already built (or None
    for a branch the run does not use). ``head: probe`` replaces the table branch by the baseline's
    table design (plus the frozen table embedding if ``probe_table_embedding``) and the head by one
    ``Linear``; training, ``predict`` and the test cohort all build fold models here.
    ``table_embedding`` overrides ``probe_table_embedding`` (False when the table encoder was
    never pretrained: a random embedding would only add noise columns)."""
    if settings.head == "probe":
        if table_embedding is None:
            table_embedding = settings.probe_table_embedding
        if table_encoder is not None:
            table_encoder = ProbeTable(table_encoder if table_embedding else None, num_continuous, category_sizes)
        return FusionClassifier(image_encoder, table_encoder, fusion="concat", hidden=settings.hidden,
                                dropout=settings.dropout, head_layers=0)
    return FusionClassifier(image_encoder, table_encoder, fusion=settings.fusion, hidden=settings.hidden,
                            dropout=settings.dropout, head_layers=settings.head_layers)


# --------------------------------------------------------------------------- modes
def set_mode(model: FusionClassifier, mode: str) -> FusionClassifier:
    """Apply a fine-tuning mode in place: ``frozen`` turns the encoders' gradients off and keeps
    them in ``eval()`` through later ``model.train()`` calls; ``trainable`` / ``scratch`` make
    every parameter trainable. Returns ``model``."""
    check_choice("finetune.mode", mode, MODES)
    frozen = mode == "frozen"
    model.frozen_encoders = frozen
    for encoder in model.encoders():
        encoder.requires_grad_(not frozen)
    for param in model.head_parameters():
        param.requires_grad_(True)
    model.train(model.training)  # re-applies the eval() of frozen encoders
    return model


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # As in pretraining: no weight decay on biases, norms and learned tokens / positions.
    return param.ndim < 2 or any(key in name for key in ("token", "pos_embed", "modality_embed"))


def parameter_groups(
    model: FusionClassifier,
    mode: str,
    lr: float,
    encoder_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``mode``, each ``{"name", "params", "lr", "weight_decay"}``.

    ``frozen``: the head only, at ``lr``. ``trainable``: encoders at ``lr * encoder_lr_ratio``
    (small steps keep the pretrained features), head at ``lr``. ``scratch``: everything at ``lr``.
    Biases, norms and learned tokens go to a twin group without weight decay; empty groups are
    left out. Call ``set_mode(model, mode)`` first.
    """
    check_choice("finetune.mode", mode, MODES)
    if lr <= 0 or encoder_lr_ratio <= 0:
        raise ConfigError(f"lr ({lr}) and encoder_lr_ratio ({encoder_lr_ratio}) must be > 0")
    encoder_ids = {id(p) for enc in model.encoders() for p in enc.parameters()}
    encoder_lr = lr * encoder_lr_ratio if mode == "trainable" else lr
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        part = "encoders" if id(param) in encoder_ids else "head"
        if part == "encoders" and mode == "frozen":
            continue
        buckets.setdefault((part, _no_decay(name, param)), []).append(param)
    groups = []
    for (part, no_decay), params in sorted(buckets.items()):
        groups.append({
            "name": part + ("_no_decay" if no_decay else ""),
            "params": params,
            "lr": encoder_lr if part == "encoders" else lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
    return groups


@torch.no_grad()
def precompute_embeddings(
    model: FusionClassifier,
    batches: Iterable[dict[str, Any]],
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor | None]:
    """Encoder embeddings of every batch, encoders in ``eval()``: ``{"image": (N, Di) | None,
    "table": (N, Dt) | None}`` on the CPU, rows in the iteration order (use an unshuffled,
    unaugmented loader). Each batch is a dict with ``image (B, C, H, W, D)`` and / or ``table``
    (the preprocessor's dict of ``(B, ·)`` tensors), as the data loaders collate them.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {"image": [], "table": []}
    try:
        for batch in batches:
            image = batch.get("image")
            table = batch.get("table")
            emb = model.embed(
                image.to(device) if image is not None else None,
                {k: v.to(device) for k, v in table.items()} if table is not None else None,
            )
            for key, value in emb.items():
                if value is not None:
                    chunks[key].append(value.float().cpu())
    finally:
        model.train(was_training)
    return {key: torch.cat(parts) if parts else None for key, parts in chunks.items()}
