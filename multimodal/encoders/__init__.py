"""Encoders by modality and name: one file per kind, each registering its names.

``image3d`` (3D ResNet), ``slices`` (2D ResNet per slice + LSTM), ``tabular`` (FT-Transformer,
MLP); a new modality (report text, ...) adds one file that registers its encoders with
``@register_encoder(name, modality="text")`` and one entry under ``model.encoders`` in the config.

Every encoder exposes ``num_features`` (D) and ``forward(x) -> (B, D)``, so pretraining and fusion
treat them alike. ``forward_features(x) -> {"embedding": (B, D), "tokens": (B, T, D), ...}`` gives
the embedding and the tokens from one backbone pass (contrastive + matching training needs both; two
passes of a 3D ResNet would double the cost); ``forward`` is a view of it. The MLP tabular encoder has no
tokens, so its dict holds ``embedding`` only. ``build_encoder`` builds the encoder a run config
names for a modality; nothing is ever downloaded.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from multimodal.encoders.backbone import adapt_input_channels, load_backbone_weights
from multimodal.encoders.image3d import ImageEncoder3D
from multimodal.encoders.registry import (
    ENCODERS,
    NORMS,
    create_encoder,
    encoder_modality,
    list_encoders,
    register_encoder,
)
from multimodal.encoders.slices import SliceSequenceEncoder
from multimodal.encoders.tabular import TabularEncoder, TabularMLP
from multimodal.encoders.text import TfidfProjection
from multimodal.errors import ConfigError


def build_encoder(model_config: Any, modality: str, **from_data: Any) -> nn.Module:
    """The encoder ``model.encoders.<modality>`` names (a ``ModelConfig``), with its ``args`` and
    local ``weights``; ``from_data`` are the sizes the data fixes (image: ``in_channels``, the
    number of MRI sequences; table: ``num_continuous`` and ``category_sizes``, the fitted
    preprocessor's)."""
    spec = model_config.encoders.get(modality)
    if spec is None:
        raise ConfigError(f"model.encoders has no {modality!r} entry (it has {sorted(model_config.encoders)}); "
                          f"add one, e.g. model.encoders.{modality}.name: {(list_encoders(modality) or ['?'])[0]}")
    if spec.name not in ENCODERS or encoder_modality(spec.name) != modality:
        choices = list_encoders(modality) if modality in {encoder_modality(n) for n in ENCODERS} else []
        if spec.name not in ENCODERS:
            ENCODERS.lookup(spec.name)  # unknown name: the registry's error with the nearest one
        article = "an" if modality[:1] in "aeiou" else "a"
        raise ConfigError(f"model.encoders.{modality}.name {spec.name!r} is not {article} {modality} encoder; "
                          f"choose one of {choices}")
    clash = sorted(set(spec.args) & set(from_data))
    if clash:
        raise ConfigError(f"model.encoders.{modality}.args sets {clash}, which come from the data "
                          "(imaging sequences / preprocessor); remove them")
    return create_encoder(spec.name, weights=spec.weights, **from_data, **spec.args)


__all__ = [
    "ENCODERS",
    "NORMS",
    "ImageEncoder3D",
    "SliceSequenceEncoder",
    "TabularEncoder",
    "TabularMLP",
    "TfidfProjection",
    "adapt_input_channels",
    "build_encoder",
    "create_encoder",
    "encoder_modality",
    "list_encoders",
    "load_backbone_weights",
    "register_encoder",
]
