"""The recurrence classifier: pretrained encoders + a DNN fusion head → one logit per subject.

``FusionClassifier`` composes one encoder per modality (image: 3D ResNet or 2D ResNet per slice +
LSTM; table: FT-Transformer or MLP; any registered other) and a fusion head::

    image (B, C, H, W, D) ─ image_encoder ─ (B, Di) ┐
    table {continuous, categorical, missing} ─ table_encoder ─ (B, Dt) ├─ fusion ─ MLP head ─ (B,) logits
    <other modality> ─ <other>_encoder ─ (B, Do) ┘

A subject lacking a modality (``present[m]`` False) gets that modality's learned missing
embedding (``missing[m]``, (Dm,)) in place of its encoder output, so it is scored from what it
has; frozen fine-tuning starts it at the mean embedding of the training subjects that have the
modality (the linear probe keeps that value: mean imputation in embedding space).

Fusions (``FUSIONS``): ``concat`` (MLP over the concatenated embeddings), ``gated`` (a learned
gate mixes per-modality projections: a sigmoid between two, a softmax over more), ``attention``
(the projections as one token each through one self-attention layer, then their mean). With one
encoder the head is the MLP on that embedding alone, whatever ``fusion`` says.

Modes (``MODES``): ``frozen`` (encoders fixed and in ``eval()``; only the head
trains, on embeddings computed once by ``precompute_embeddings``), ``trainable`` (everything
trains, encoders at ``lr * encoder_lr_ratio`` with layer-wise decay over the image encoder's
stages; from the fitted probe with ``head: probe``, LP-FT: ``finetune.lpft``) and ``scratch``
(everything at ``lr``; the caller builds the encoders without ``--init``). ``set_mode`` applies
one, ``parameter_groups`` gives the matching AdamW groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from finetune.config import MODES
from finetune.lpft import ProbeReduction, has_stages, probe_head, stage_parameter_groups
from finetune.probe import PROBE_COMPONENTS, ProbeTable, probe_groups
from multimodal.config_checks import check_choice
from multimodal.data import to_device
from multimodal.errors import ConfigError

logger = logging.getLogger(__name__)

FUSIONS = ("concat", "gated", "attention")
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


Inputs = dict[str, Any]  # modality -> batch input: image (B, C, H, W, D), table dict, ...


class FusionClassifier(nn.Module):
    """One encoder per modality + fusion head giving one recurrence logit per subject.

    Args:
        encoders: modality -> encoder (``forward(x) -> (B, D)``, ``num_features = D``); at least
            one. Registered as ``<modality>_encoder`` (so ``image_encoder`` / ``table_encoder``).
        fusion: one of ``FUSIONS``; ignored (plain MLP) with one encoder.
        hidden: width of the projections and of the head's hidden layers.
        dropout: dropout after every hidden layer of the head (and inside the attention layer).
        head_layers: hidden layers of the MLP head (2 by default; 0 = a linear head).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: str = "concat",
        hidden: int = 128,
        dropout: float = 0.3,
        head_layers: int = 2,
    ) -> None:
        super().__init__()
        encoders = {m: enc for m, enc in encoders.items() if enc is not None}
        if not encoders:
            raise ConfigError("FusionClassifier needs at least one encoder (image, table, ...)")
        check_choice("finetune.fusion", fusion, FUSIONS)
        if hidden < 1 or head_layers < 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"fusion head: hidden ({hidden}) must be >= 1, head_layers ({head_layers}) >= 0 "
                f"and dropout ({dropout}) in [0, 1)"
            )
        self.modalities = list(encoders)
        for modality, encoder in encoders.items():
            self.add_module(f"{modality}_encoder", encoder)
        for absent in ("image", "table"):  # the usual names stay readable as None
            if absent not in encoders:
                self.register_module(f"{absent}_encoder", None)
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(enc.num_features)) for m, enc in encoders.items()})
        several = len(encoders) > 1
        if not several and fusion != "concat":
            logger.info("one modality only: fusion %r is not used, the head is an MLP on it", fusion)
        self.fusion = fusion if several else "concat"
        self.frozen_encoders = False  # set by set_mode("frozen"); train() keeps them in eval then
        dims = [enc.num_features for enc in encoders.values()]
        if self.fusion == "concat":
            head_in = sum(dims)
        else:
            head_in = hidden
            for modality, dim in zip(self.modalities, dims, strict=True):
                self.add_module(f"{modality}_proj", _projection(dim, hidden))
            n = len(dims)
            if self.fusion == "gated":
                # Two: g = sigmoid(W [p_1, p_2] + b), fused = g * p_1 + (1 - g) * p_2 per channel;
                # more: softmax over modalities per channel.
                self.gate = nn.Sequential(nn.Linear(n * hidden, hidden if n == 2 else n * hidden),
                                          *([nn.Sigmoid()] if n == 2 else []))
            else:
                heads = _ATTENTION_HEADS if hidden % _ATTENTION_HEADS == 0 else 1
                # Self-attention is permutation-equivariant: a learned embedding per modality
                # tells the tokens apart.
                self.modality_embed = nn.Parameter(torch.zeros(1, n, hidden))
                nn.init.trunc_normal_(self.modality_embed, std=0.02)
                self.attention = nn.TransformerEncoderLayer(
                    hidden, heads, 2 * hidden, dropout, activation="gelu",
                    batch_first=True, norm_first=True,
                )
        self.head = _mlp_head(head_in, hidden, head_layers, dropout)

    # ----------------------------------------------------------------------- parts
    def encoder(self, modality: str) -> nn.Module:
        """The encoder of ``modality``."""
        return getattr(self, f"{modality}_encoder")

    def encoders(self) -> list[nn.Module]:
        """The encoders, in modality order."""
        return [self.encoder(m) for m in self.modalities]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the encoders: missing embeddings, projections, gate / attention, head."""
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
    def embed(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """``{modality: input}`` -> ``{modality: (B, D_m)}``, the encoder outputs (a subject lacking
        a modality gets whatever its placeholder input gives; ``fuse`` replaces it)."""
        missing = [m for m in self.modalities if inputs.get(m) is None]
        if missing:
            raise ValueError(f"this model reads {self.modalities}: pass the {missing} batch input(s)")
        return {m: self.encoder(m)(inputs[m]) for m in self.modalities}

    def forward_from_embeddings(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Fusion + head on ``{modality: (B, D_m)}`` embeddings -> ``(B,)`` logits; ``present``
        ``{modality: (B,) bool}`` swaps in the missing embedding where False (``frozen`` mode trains
        this on embeddings cached once)."""
        absent = [m for m in self.modalities if embeddings.get(m) is None]
        if absent:
            raise ValueError(f"embeddings are missing for {absent}; this model reads {self.modalities}")
        parts = []
        for m in self.modalities:
            emb = embeddings[m]
            if present is not None and m in present:
                keep = present[m].to(emb.device).bool().unsqueeze(1)  # (B, 1)
                emb = torch.where(keep, emb, self.missing[m].to(emb.dtype).expand_as(emb))
            parts.append(emb)
        if self.fusion == "concat":
            fused = torch.cat(parts, dim=1)  # (B, sum D_m)
        else:
            projected = [getattr(self, f"{m}_proj")(emb) for m, emb in zip(self.modalities, parts, strict=True)]
            stacked = torch.stack(projected, dim=1)  # (B, n, h)
            if self.fusion == "gated":
                gate = self.gate(torch.cat(projected, dim=1))
                if len(projected) == 2:  # (B, h) in (0, 1)
                    fused = gate * projected[0] + (1.0 - gate) * projected[1]
                else:  # (B, n, h), softmax over modalities
                    fused = (gate.view_as(stacked).softmax(dim=1) * stacked).sum(dim=1)
            else:
                fused = self.attention(stacked + self.modality_embed).mean(dim=1)  # (B, h)
        return self.head(fused).squeeze(-1)

    def forward(self, inputs: Inputs, present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``{modality: input}`` (and ``present``) -> ``(B,)`` recurrence logits."""
        return self.forward_from_embeddings(self.embed(inputs), present)


def build_classifier(encoders: dict[str, nn.Module | None], settings: Any, num_continuous: int,
                     category_sizes: list[int], table_embedding: bool | None = None) -> FusionClassifier:
    """The fold classifier the ``finetune:`` settings describe, from encoders already built (None for
    a modality the run does not use). ``head: probe`` replaces the table branch by the baseline's
    table design (plus the frozen table embedding if ``probe_table_embedding``) and the head by one
    ``Linear`` (with ``mode: trainable``, LP-FT's reduction layers + ``Linear``: ``finetune.lpft``);
    training, ``predict`` and the test cohort all build fold models here.
    ``table_embedding`` overrides ``probe_table_embedding`` (False when the table encoder was
    never pretrained: a random embedding would only add noise columns)."""
    encoders = {m: enc for m, enc in encoders.items() if enc is not None}
    if settings.head == "probe":
        if table_embedding is None:
            table_embedding = settings.probe_table_embedding
        if "table" in encoders:
            encoders["table"] = ProbeTable(encoders["table"] if table_embedding else None, num_continuous,
                                           category_sizes)
        model = FusionClassifier(encoders, fusion="concat", hidden=settings.hidden, dropout=settings.dropout,
                                 head_layers=0)
        if getattr(settings, "mode", "frozen") == "trainable":  # LP-FT: the probe as layers the encoders feed
            model.head = probe_head(probe_groups(model), getattr(settings, "probe_pcs", PROBE_COMPONENTS))
        return model
    return FusionClassifier(encoders, fusion=settings.fusion, hidden=settings.hidden, dropout=settings.dropout,
                            head_layers=settings.head_layers)


def load_classifier_state(model: FusionClassifier, state: dict[str, torch.Tensor]) -> None:
    """Load fold weights strictly, except that weights saved before missing-modality embeddings
    existed leave them at their initial value (zeros)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("missing.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"fold weights do not fit the model: missing {missing}, unexpected {result.unexpected_keys}")


@torch.no_grad()
def init_missing_embeddings(model: FusionClassifier, embeddings: dict[str, torch.Tensor],
                            present: dict[str, torch.Tensor]) -> None:
    """Start each modality's missing embedding at the mean ``(D_m,)`` of the training rows that have
    the modality (``embeddings`` ``{m: (N, D_m)}``, ``present`` ``{m: (N,) bool}``)."""
    for modality in model.modalities:
        rows = present.get(modality)
        if rows is not None and rows.any():
            model.missing[modality].copy_(embeddings[modality][rows.bool()].mean(dim=0))


def fill_missing(model: FusionClassifier, embeddings: dict[str, torch.Tensor],
                 present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{m: (N, D_m)}`` with rows lacking modality ``m`` replaced by its missing embedding, exactly
    as ``forward_from_embeddings`` sees them."""
    out = {}
    for modality in model.modalities:
        emb, rows = embeddings[modality], present.get(modality)
        out[modality] = emb if rows is None else torch.where(
            rows.bool().unsqueeze(1), emb, model.missing[modality].detach().to(emb.dtype).expand_as(emb))
    return out


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


_NO_DECAY_KEYS = ("token", "pos_embed", "modality_embed")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # As in pretraining: no weight decay on biases, norms and learned tokens / positions.
    return param.ndim < 2 or any(key in name for key in _NO_DECAY_KEYS)


def parameter_groups(
    model: FusionClassifier,
    mode: str,
    lr: float,
    encoder_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``mode``, each ``{"name", "params", "lr", "weight_decay"}``.

    ``frozen``: the head only, at ``lr``. ``trainable``: encoders at ``lr * encoder_lr_ratio``
    (small steps keep the pretrained features), head at ``lr``; with ``layer_decay`` < 1 the image
    encoder's last stage at that rate and each earlier one at ``layer_decay`` times the next
    (``finetune.lpft.stage_parameter_groups``). LP-FT's reduction layers learn at the encoders'
    rate, the final ``Linear`` at ``lr``. ``scratch``: everything at ``lr``. Biases, norms and
    learned tokens go to a twin group without weight decay; empty groups are left out. Call
    ``set_mode(model, mode)`` first.
    """
    check_choice("finetune.mode", mode, MODES)
    if lr <= 0 or encoder_lr_ratio <= 0 or not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"lr ({lr}) and encoder_lr_ratio ({encoder_lr_ratio}) must be > 0, layer_decay "
                          f"({layer_decay}) in (0, 1]")
    encoder_ids = {id(p) for enc in model.encoders() for p in enc.parameters()}
    # LP-FT's reduction is the probe's label-free feature map: it moves as slowly as the encoders.
    encoder_ids |= {id(p) for m in model.head.modules() if isinstance(m, ProbeReduction) for p in m.parameters()}
    encoder_lr = lr * encoder_lr_ratio if mode == "trainable" else lr
    image = getattr(model, "image_encoder", None)
    staged = []
    if mode == "trainable" and layer_decay < 1.0 and image is not None and has_stages(image):
        staged = stage_parameter_groups(image, encoder_lr, layer_decay, weight_decay,
                                        [f"*{key}*" for key in _NO_DECAY_KEYS])
    staged_ids = {id(p) for group in staged for p in group["params"]}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if id(param) in staged_ids:
            continue
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
    return staged + groups


@torch.no_grad()
def precompute_embeddings(
    model: FusionClassifier,
    batches: Iterable[dict[str, Any]],
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Encoder embeddings of every batch, encoders in ``eval()``: ``{modality: (N, D_m)}`` on the
    CPU, rows in the iteration order (use an unshuffled, unaugmented loader). Each batch holds the
    model's modalities (``image (B, C, H, W, D)``, the ``table`` dict, ...) as the data loaders
    collate them.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    try:
        for batch in batches:
            emb = model.embed(to_device({m: batch.get(m) for m in model.modalities}, device))
            for key, value in emb.items():
                chunks[key].append(value.float().cpu())
    finally:
        model.train(was_training)
    return {key: torch.cat(parts) for key, parts in chunks.items() if parts}
