"""How the model runs on its device: the image encoder's memory format and optional ``torch.compile``.

``channels_last_3d`` speeds plain 3D convolution stacks on GPUs with tensor cores but made a
GroupNorm / InstanceNorm network slower in a case reported to PyTorch, so ``auto``
times the image encoder's forward and backward on a real batch in both formats at start-up and keeps
the faster one (CUDA only: on CPU the contiguous format is kept without a timing, as
``benchmarks/speed.py`` measured channels_last_3d 1.03-1.33x slower there).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from multimodal.errors import ConfigError

logger = logging.getLogger(__name__)

FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}


def use_memory_format(encoder: nn.Module, name: str) -> nn.Module:
    """Put ``encoder``'s 5-D (convolution) weights in memory format ``name`` (``channels_last`` |
    ``contiguous``); values and state-dict keys are unchanged. Inputs need no conversion: a
    convolution whose weight is channels_last_3d computes and returns channels_last_3d."""
    return encoder.to(memory_format=FORMATS[name])


def time_memory_formats(encoder: nn.Module, image: torch.Tensor,
                        autocast: Callable[[], contextlib.AbstractContextManager],
                        calls: int = 3) -> dict[str, float]:
    """Seconds per forward + backward of ``encoder`` on ``image`` (B, C, H, W, D) in each format,
    after one untimed call per format; the gradients are discarded and the encoder is left contiguous."""
    seconds = {}
    for name in FORMATS:
        use_memory_format(encoder, name)
        for call in range(calls + 1):
            if call == 1:
                _sync(image.device)
                start = time.perf_counter()
            with autocast():
                out = encoder(image)
            out.float().square().mean().backward()
        _sync(image.device)
        seconds[name] = (time.perf_counter() - start) / calls
    encoder.zero_grad(set_to_none=True)
    use_memory_format(encoder, "contiguous")
    return seconds


def choose_memory_format(setting: str, encoder: nn.Module, device: torch.device,
                         example: Callable[[], torch.Tensor],
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> str:
    """``setting`` (``pretrain.memory_format``) resolved and applied to ``encoder``: ``auto`` is the
    faster format of a timing on ``example()`` (B, C, H, W, D) on CUDA, ``contiguous`` elsewhere
    and for encoders without 3D convolutions (slice encoders). Returns the format used."""
    volumetric = any(isinstance(m, nn.Conv3d) for m in encoder.modules())
    if setting == "channels_last" and not volumetric:
        raise ConfigError(f"pretrain.memory_format: channels_last is for 3D convolutions, and the image encoder "
                          f"({type(encoder).__name__}) has none; use auto or contiguous")
    if setting == "auto":
        if device.type != "cuda" or not volumetric:
            setting = "contiguous"
        else:
            seconds = time_memory_formats(encoder, example().to(device), autocast)
            setting = min(seconds, key=seconds.get)
            logger.info("image encoder memory format: %s (forward + backward %.1f ms channels_last_3d, "
                        "%.1f ms contiguous)", setting, 1e3 * seconds["channels_last"], 1e3 * seconds["contiguous"])
    use_memory_format(encoder, setting)
    return setting


COMPILED_METHODS = ("forward", "forward_features", "forward_feature_maps")  # what the models call


def compile_encoders(model: nn.Module, modalities: list[str]) -> None:
    """``torch.compile`` the entry points of each ``<modality>_encoder`` of ``model`` in place (the
    pretraining model calls ``forward_features`` and ``forward_feature_maps``, not only ``forward``):
    the module, its parameters and its state-dict keys stay as they are, so checkpoints do not change."""
    for modality in modalities:
        encoder = getattr(model, f"{modality}_encoder")
        for method in COMPILED_METHODS:
            if hasattr(encoder, method):
                setattr(encoder, method, torch.compile(getattr(encoder, method)))
    logger.info("compiled the %s encoder(s) with torch.compile; the first steps compile them", "+".join(modalities))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
