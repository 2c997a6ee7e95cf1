"""The GPU path's settings, checked on CPU: memory format, torch.compile, their config keys."""

from __future__ import annotations

import contextlib

import pytest
import torch

from multimodal.encoders.image3d import resnet3d_10
from multimodal.encoders.slices import SliceSequenceEncoder
from multimodal.errors import ConfigError
from pretrain.acceleration import (
    choose_memory_format,
    compile_encoders,
    time_memory_formats,
    use_memory_format,
)


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet3d_10(in_channels=2, widen_factor=0.25, norm="group")


def test_channels_last_changes_the_layout_not_the_values_or_the_keys():
    encoder, image = _encoder(), torch.randn(2, 2, 16, 16, 16)
    keys, reference = list(encoder.state_dict()), encoder(image)
    use_memory_format(encoder, "channels_last")
    conv = encoder.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    torch.testing.assert_close(encoder(image), reference, rtol=1e-4, atol=1e-5)
    assert list(encoder.state_dict()) == keys
    use_memory_format(encoder, "contiguous")
    assert encoder.backbone.conv1.weight.is_contiguous()


def test_auto_keeps_contiguous_on_cpu_and_channels_last_needs_3d_convolutions():
    encoder = _encoder()
    never = lambda: pytest.fail("auto must not time the encoder on CPU")  # noqa: E731
    assert choose_memory_format("auto", encoder, torch.device("cpu"), never, contextlib.nullcontext) == "contiguous"
    slices = SliceSequenceEncoder(backbone="resnet10t", in_channels=2, lstm_hidden=8)
    with pytest.raises(ConfigError, match=r"pretrain\.memory_format: channels_last is for 3D convolutions"):
        choose_memory_format("channels_last", slices, torch.device("cpu"), never, contextlib.nullcontext)


def test_timing_both_formats_leaves_the_encoder_contiguous_and_without_gradients():
    encoder = _encoder()
    seconds = time_memory_formats(encoder, torch.randn(2, 2, 16, 16, 16), contextlib.nullcontext, calls=1)
    assert set(seconds) == {"channels_last", "contiguous"} and all(s > 0 for s in seconds.values())
    assert encoder.backbone.conv1.weight.is_contiguous()
    assert all(p.grad is None for p in encoder.parameters())


def test_compiled_encoder_computes_the_same_and_keeps_its_state_dict_keys():
    holder = torch.nn.Module()
    holder.image_encoder = _encoder()
    image = torch.randn(2, 2, 16, 16, 16)
    keys, reference = list(holder.state_dict()), holder.image_encoder.forward_features(image)["embedding"]
    compile_encoders(holder, ["image"])
    compiled = holder.image_encoder.forward_features(image)["embedding"]
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    assert list(holder.state_dict()) == keys
