"""The light decoder of ``masked_volume`` pretraining (a pretraining-only module: fine-tuning loads the
encoders alone, never this).

SparK (Tian et al. ICLR 2023) decodes a CNN's masked input with "a light-weight UNet-style decoder"
reading the encoder's feature maps at several scales; MAE (He et al. CVPR 2022) keeps its decoder
small because it serves only the pretext task. Ours reads two scales of a 3D ResNet: the deepest
map (``layer4``, stride 32 with the stride-2 stem) upsampled onto ``layer2`` (stride 8), one skip,
one 3×3×3 convolution, then a 1×1×1 convolution predicting every voxel of each ``layer2`` cell
(C · r³ values, r = its stride, rearranged into the volume as a 3D pixel shuffle, as MAE's linear
head predicts the pixels of its patch). At 32³ with the half-width ResNet-10 it costs about 4 % of
the encoder's multiply-adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.encoders.registry import num_groups
from multimodal.errors import ConfigError

DEEP, SKIP = "layer4", "layer2"  # the encoder stages the decoder reads


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C·r³, h, w, d) -> (B, C, h·r, w·r, d·r)``: each cell's r³ values fill its r³ voxels."""
    batch, channels, h, w, d = x.shape
    out = channels // factor**3
    x = x.view(batch, out, factor, factor, factor, h, w, d)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, h, r, w, r, d, r)
    return x.reshape(batch, out, h * factor, w * factor, d * factor)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3×3 convolution, GroupNorm (no BatchNorm: per-rank under DDP), GELU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(num_groups(out_channels), out_channels),
        nn.GELU(),
    )


class VolumeDecoder(nn.Module):
    """Reconstruct the input volume from a 3D ResNet's ``layer4`` and ``layer2`` feature maps.

    Args:
        stages: ``ImageEncoder3D.stage_specs()``, stage -> (channels, stride).
        out_channels: C, the MRI sequences.
        width: channels inside the decoder.

    ``forward(maps, size) -> (B, C, H, W, D)`` with ``maps`` from ``forward_feature_maps`` and
    ``size`` = (H, W, D), the input's spatial size (the prediction is cut to it when the stride
    does not divide it: the encoder's padding aligns its cells with the volume's first voxel).
    """

    def __init__(self, stages: dict[str, tuple[int, int]], out_channels: int, width: int = 32) -> None:
        super().__init__()
        missing = [name for name in (DEEP, SKIP) if name not in stages]
        if missing:
            raise ConfigError(f"the masked-volume decoder reads encoder stages {[DEEP, SKIP]}; this encoder "
                              f"has {sorted(stages)}")
        if width < 1 or out_channels < 1:
            raise ConfigError(f"pretrain.masked_volume_decoder_width ({width}) and the image channels "
                              f"({out_channels}) must be >= 1")
        (deep_channels, _), (skip_channels, stride) = stages[DEEP], stages[SKIP]
        self.stride = stride
        self.out_channels = out_channels
        self.deep = nn.Conv3d(deep_channels, width, 1)
        self.skip = nn.Conv3d(skip_channels, width, 1)
        self.fuse = _conv_block(2 * width, width)
        self.head = nn.Conv3d(width, out_channels * stride**3, 1)

    def forward(self, maps: dict[str, torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """``{"layer4": (B, F4, h4, w4, d4), "layer2": (B, F2, h, w, d), ...}`` ->
        ``(B, C, H, W, D)``."""
        skip = maps[SKIP]
        deep = F.interpolate(self.deep(maps[DEEP]), size=skip.shape[2:], mode="trilinear",
                             align_corners=False)  # (B, width, h, w, d)
        x = self.fuse(torch.cat([deep, self.skip(skip)], dim=1))  # (B, width, h, w, d)
        volume = pixel_shuffle_3d(self.head(x), self.stride)  # (B, C, h·r, w·r, d·r)
        return volume[..., : size[0], : size[1], : size[2]]
