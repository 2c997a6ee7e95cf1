"""2D timm ResNet shared over axial slices + bidirectional LSTM (the MISRP model), registered as
``slice_lstm_resnet{18,34,10t}`` (modality image)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import GroupNorm
from torch import nn

from multimodal.encoders.backbone import load_backbone_weights
from multimodal.encoders.registry import check_norm, num_groups, register_encoder
from multimodal.errors import ConfigError


def _timm_norm_layer(norm: str) -> Callable[..., nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d

    def make(num_channels: int, **kwargs: Any) -> nn.Module:  # timm passes device/dtype kwargs
        if norm == "instance":
            return nn.InstanceNorm2d(num_channels, affine=True, **kwargs)
        return GroupNorm(num_channels, num_groups=num_groups(num_channels), **kwargs)

    return make


class SliceSequenceEncoder(nn.Module):
    """A 2D timm ResNet shared over axial slices, then a bidirectional LSTM (the MISRP model).

    The slice axis is the last axis of MONAI's ``(B, C, H, W, S)`` (axial in RAS); channels are
    the MRI sequences. ``(B, C, H, W, S) -> (B*S, C, H, W) -> ResNet -> (B, S, F) -> LSTM ->
    (B, S, 2h) -> mean over slices -> (B, 2h)``; ``num_features = 2 * lstm_hidden``.
    ``slice_chunk`` runs the ResNet on that many slices at a time to bound memory.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        norm: str = "group",
        lstm_hidden: int = 256,
        lstm_layers: int = 1,
        slice_chunk: int | None = None,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if slice_chunk is not None and slice_chunk < 1:
            raise ConfigError(
                f"slice_chunk must be a positive slice count or None, got {slice_chunk}"
            )
        self.backbone = timm.create_model(
            backbone,
            pretrained=False,  # never download; create_encoder(weights=...) loads local files
            in_chans=in_channels,
            num_classes=0,
            global_pool="avg",
            norm_layer=_timm_norm_layer(norm),
        )
        if backbone_weights is not None:  # e.g. ImageNet weights of the timm ResNet, local file
            load_backbone_weights(self.backbone, backbone_weights)
        self.slice_chunk = slice_chunk
        feats = self.backbone.num_features
        self.lstm = nn.LSTM(feats, lstm_hidden, lstm_layers, batch_first=True, bidirectional=True)
        self.num_features: int = 2 * lstm_hidden

    def forward_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, S) -> (B, S, F)``: the shared 2D ResNet applied to each slice."""
        b, c, h, w, s = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * s, c, h, w)  # subject-major: row i*S + j
        chunk = self.slice_chunk or b * s
        feats = torch.cat([self.backbone(part) for part in slices.split(chunk)])  # (B*S, F)
        return feats.view(b, s, -1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, H, W, S)`` -> dict ``embedding (B, 2h)`` (the mean over slices), ``tokens (B, S, 2h)``
        (one LSTM output per slice), ``slice_features (B, S, F)``."""
        slice_features = self.forward_slices(x)
        tokens, _ = self.lstm(slice_features)  # (B, S, 2h)
        return {"embedding": tokens.mean(dim=1), "tokens": tokens, "slice_features": slice_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, S) -> (B, 2h)``."""
        return self.forward_features(x)["embedding"]


@register_encoder("slice_lstm_resnet18")
def slice_lstm_resnet18(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet18", **kwargs)


@register_encoder("slice_lstm_resnet34")
def slice_lstm_resnet34(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet34", **kwargs)


@register_encoder("slice_lstm_resnet10t")
def slice_lstm_resnet10t(**kwargs: Any) -> SliceSequenceEncoder:
    return SliceSequenceEncoder(backbone="resnet10t", **kwargs)
