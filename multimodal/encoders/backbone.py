"""Local backbone weights (ImageNet timm ResNets, MedicalNet 3D ResNets) for the image encoders.

Loaded from a file path only (nothing is downloaded); the first convolution is adapted to the
number of MRI sequences.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from multimodal.checkpoint import load_weights
from multimodal.errors import StrokeSSLError

logger = logging.getLogger(__name__)


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-conv weight ``(O, I, *k)`` for ``channels`` inputs: the sum over the I input
    channels shared equally, so a uniform image gives the same response. MRI sequences have
    nothing to do with RGB channels, so no colour-specific filter is worth keeping."""
    shared = weight.sum(dim=1, keepdim=True) / channels
    return shared.repeat(1, channels, *([1] * (weight.dim() - 2)))


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet (timm) or MedicalNet (MONAI) checkpoint into ``backbone``.

    Classifier and BatchNorm running-statistics keys the backbone lacks are skipped, and the
    first convolution is adapted to the backbone's input channels (one per MRI sequence).
    A file that matches no tensor is a ``StrokeSSLError``.
    """
    own = backbone.state_dict()
    # The input convolution is the first conv kernel (timm's deep stems name it conv1.0).
    input_conv = next(k for k, v in own.items() if k.endswith("weight") and v.dim() >= 4)
    usable = {}
    for key, value in load_weights(path).items():
        if key not in own:
            continue
        target = own[key]
        if key == input_conv and value.dim() == target.dim() and value.shape[1] != target.shape[1]:
            value = adapt_input_channels(value, target.shape[1])
        if value.shape == target.shape:
            usable[key] = value
    if not usable:
        raise StrokeSSLError(
            f"backbone weights {path} match none of {type(backbone).__name__}'s tensors; "
            "check they are for this architecture (e.g. timm resnet18 for slice_lstm_resnet18, "
            "MedicalNet ResNet-10 for resnet3d_10)"
        )
    backbone.load_state_dict(usable, strict=False)
    logger.info("loaded %d of %d backbone tensors from %s", len(usable), len(own), path)
