"""3D ResNet over a whole MRI volume (MONAI), registered as ``resnet3d_{10,18,34,50}`` (modality image)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.networks import nets as monai_nets
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from multimodal.encoders.backbone import load_backbone_weights
from multimodal.encoders.registry import check_norm, num_groups, register_encoder
from multimodal.errors import ConfigError

_MONAI_RESNETS: dict[int, Callable[..., nn.Module]] = {
    10: monai_nets.resnet10,
    18: monai_nets.resnet18,
    34: monai_nets.resnet34,
    50: monai_nets.resnet50,
}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # forward_feature_maps' keys
POOLS = ("avg", "multiscale", "stages")
_STD_EPS = 1e-6  # inside the square root: a one-voxel map (layer4 at 32³) has variance 0, and sqrt's gradient there is infinite


def _replace_batchnorm3d(module: nn.Module, norm: str) -> None:
    """Swap every ``BatchNorm3d`` below ``module`` for ``norm`` with the same channel count.

    MONAI 1.6's ResNet passes ``norm`` to the stem only (the residual blocks keep BatchNorm) and
    crashes on non-affine norms (Project-MONAI/MONAI PR #9028), so we build with BatchNorm and swap.
    """
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            channels = child.num_features
            spec = ("group", {"num_groups": num_groups(channels)})
            if norm == "instance":
                spec = ("instance", {"affine": True})
            setattr(module, child_name, get_norm_layer(spec, spatial_dims=3, channels=channels))
        else:
            _replace_batchnorm3d(child, norm)


class ImageEncoder3D(nn.Module):
    """MONAI 3D ResNet over a whole volume.

    Input ``(B, C, H, W, D)``. The last feature map ``(B, F, h, w, d)`` (h = H / 32 with the
    stride-2 stem) gives ``forward_features(x)["tokens"] -> (B, token_grid**3, F)`` (average-pooled to a
    ``token_grid``³ grid plus learned positions, so attention has more than one vector to look at)
    and ``forward -> (B, F)`` (global average). F = 512 for depth 10/18/34, 2048 for 50.

    ``pool: multiscale`` concatenates the global average *and* global maximum of the last two
    stages, ``[avg(layer4), max(layer4), avg(layer3), max(layer3)]``, so a small bright lesion that
    an average over the whole head dilutes survives as a maximum: ``num_features`` D = 2 · (F3 + F4)
    (1536 for depth 10/18/34 at full width). Each token pools its cell of the ``token_grid``³
    grid the same way, so tokens stay ``(B, token_grid**3, D)``.

    ``pool: stages`` concatenates the spatial mean *and* standard deviation of every stage,
    ``[mean(stem), sd(stem), mean(layer1), sd(layer1), ..., mean(layer4), sd(layer4)]``: D = 2 · (sum of
    the stage widths) (1024 for depth 10 at half width). At a 32³ input the last stage is a single
    voxel, so the plain average is one location's features; the early stages' statistics keep what
    a CNN's per-sample normalisation and the record-aligned deep stages lose (the share of dark or
    bright voxels: atrophy, lesion load). Tokens pool each cell the same way.
    """

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 1,
        norm: str = "group",
        stem_stride: int = 2,
        token_grid: int = 2,
        backbone_weights: str | Path | None = None,
        widen_factor: float = 1.0,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            close = difflib.get_close_matches(str(pool), POOLS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"3D ResNet pool {pool!r} is not one of {POOLS}{hint}")
        if depth not in _MONAI_RESNETS:
            raise ConfigError(f"3D ResNet depth {depth} is not one of {sorted(_MONAI_RESNETS)}")
        check_norm(norm)
        if token_grid < 1 or stem_stride < 1:
            raise ConfigError(
                f"token_grid ({token_grid}), stem_stride ({stem_stride}) must be >= 1"
            )
        # MONAI's default stem stride is 1; stride 2 (the usual ResNet stem) measured ~13x faster.
        self.backbone = _MONAI_RESNETS[depth](
            spatial_dims=3,
            n_input_channels=in_channels,
            feed_forward=False,
            conv1_t_stride=stem_stride,
            # < 1 narrows every stage (0.25: 16..128 channels, ~1/16 of the FLOPs) for CPU-sized runs.
            widen_factor=widen_factor,
        )  # built with MONAI's BatchNorm, swapped below (see _replace_batchnorm3d)
        if norm != "batch":
            _replace_batchnorm3d(self.backbone, norm)
        if backbone_weights is not None:  # e.g. MedicalNet weights from a local file
            load_backbone_weights(self.backbone, backbone_weights)
        self.num_features: int = self.backbone.in_planes  # MONAI leaves the last layer's width here
        self.pool = pool
        if pool == "multiscale":  # avg + max of layer3 and layer4
            self.num_features = 2 * (self.stage_specs()["layer3"][0] + self.num_features)
        elif pool == "stages":  # mean + sd of every stage
            self.num_features = 2 * sum(channels for channels, _ in self.stage_specs().values())
        self.token_grid = token_grid
        self.token_pool = nn.AdaptiveAvgPool3d(token_grid)
        self.token_max_pool = nn.AdaptiveMaxPool3d(token_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, token_grid**3, self.num_features))
        # Small, so positions do not swamp the image features at init.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, H, W, D)`` -> every stage's output from one backbone pass, for dense heads
        (e.g. a masked-volume decoder): ``stem`` (after the max pool) and ``layer1`` ... ``layer4``,
        each ``(B, F_s, H / r_s, W / r_s, D / r_s)`` with the channels and strides r_s of
        ``stage_specs``. ``layer4`` is ``forward_feature_map``."""
        net = self.backbone
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        maps = {"stem": x}
        for name in STAGES[1:]:
            x = getattr(net, name)(x)
            maps[name] = x
        return maps

    def stage_specs(self) -> dict[str, tuple[int, int]]:
        """``stage -> (channels, stride)`` of the maps ``forward_feature_maps`` returns; the stride
        is the stage's downsampling from the input (rounded up for sizes it does not divide)."""
        net = self.backbone
        stride = net.conv1.stride[0] * (1 if net.no_max_pool else 2)
        specs = {"stem": (net.conv1.out_channels, stride)}
        for name in STAGES[1:]:
            convs = [m for m in getattr(net, name).modules() if isinstance(m, nn.Conv3d)]
            stride *= max(m.stride[0] for m in getattr(net, name)[0].modules() if isinstance(m, nn.Conv3d))
            specs[name] = (convs[-1].out_channels, stride)  # the last conv: the block's output width
        return specs

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, F, h, w, d)``, the last ResNet stage (for attribution)."""
        return self.forward_feature_maps(x)["layer4"]

    def features_from_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``forward_feature_maps``' dict -> ``forward_features``' dict, so a caller that needs both
        (a decoder beside the pooled embedding) runs the backbone once."""
        fmap = maps["layer4"]  # (B, F, h, w, d)
        if self.pool == "avg":
            pooled = self.token_pool(fmap)  # (B, F, g, g, g)
            tokens = pooled.flatten(2).transpose(1, 2) + self.pos_embed
            return {"embedding": fmap.mean(dim=(2, 3, 4)), "tokens": tokens}
        if self.pool == "stages":
            return self._stage_statistics(maps)
        stages = (fmap, maps["layer3"])  # (B, F4, h, w, d), (B, F3, 2h, 2w, 2d)
        embedding = torch.cat([part for m in stages for part in (m.mean(dim=(2, 3, 4)), m.amax(dim=(2, 3, 4)))],
                              dim=1)  # (B, 2 (F4 + F3))
        pooled = torch.cat([part for m in stages for part in (self.token_pool(m), self.token_max_pool(m))],
                           dim=1)  # (B, 2 (F4 + F3), g, g, g)
        tokens = pooled.flatten(2).transpose(1, 2) + self.pos_embed
        return {"embedding": embedding, "tokens": tokens}

    def _stage_statistics(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``pool: stages``: spatial mean and sd of each stage, globally and per token cell."""
        embedding, pooled = [], []
        for name in STAGES:
            m = maps[name]  # (B, F_s, h_s, w_s, d_s)
            mean = m.mean(dim=(2, 3, 4))
            variance = (m * m).mean(dim=(2, 3, 4)) - mean * mean
            embedding += [mean, (variance.clamp_min(0) + _STD_EPS).sqrt()]
            cell_mean, cell_square = self.token_pool(m), self.token_pool(m * m)  # (B, F_s, g, g, g)
            pooled += [cell_mean, (cell_square - cell_mean * cell_mean).clamp_min(0).add(_STD_EPS).sqrt()]
        tokens = torch.cat(pooled, dim=1).flatten(2).transpose(1, 2) + self.pos_embed  # (B, g³, D)
        return {"embedding": torch.cat(embedding, dim=1), "tokens": tokens}  # (B, D)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, H, W, D)`` -> dict ``embedding (B, D)`` (global average of the last feature
        map, D = F; or the multiscale pool), ``tokens (B, token_grid**3, D)`` (its ``token_grid``³
        average pool, or the multiscale pool per cell, + positions)."""
        return self.features_from_maps(self.forward_feature_maps(x))  # the one backbone pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W, D) -> (B, num_features)``."""
        return self.forward_features(x)["embedding"]


@register_encoder("resnet3d_10")
def resnet3d_10(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=10, **kwargs)


@register_encoder("resnet3d_18")
def resnet3d_18(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=18, **kwargs)


@register_encoder("resnet3d_34")
def resnet3d_34(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=34, **kwargs)


@register_encoder("resnet3d_50")
def resnet3d_50(**kwargs: Any) -> ImageEncoder3D:
    return ImageEncoder3D(depth=50, **kwargs)
