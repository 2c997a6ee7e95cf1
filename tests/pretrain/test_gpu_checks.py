"""Start-up checks of bf16 conv3d: the refused stacks, and the agreement check itself."""

from __future__ import annotations

import pytest
import torch

from multimodal.errors import StrokeSSLError
from pretrain import gpu


@pytest.mark.parametrize(("torch_version", "cudnn", "refused"), [
    ("2.9.0+cu128", 91400, "PyTorch 2.9.0"), ("2.9.1", None, "PyTorch 2.9.1"),
    ("2.8.0", 90800, "cuDNN 9.8"), ("2.10.0", 91002, "cuDNN 9.10"),
    ("2.8.0", 90701, None), ("2.10.0", 91100, None), ("2.14.1", None, None),
])
def test_known_bad_stacks_are_named(torch_version, cudnn, refused):
    problem = gpu.known_conv3d_problem(torch_version, cudnn)
    assert (problem is None) if refused is None else refused in problem


def test_bf16_conv3d_agrees_with_fp32_here_and_a_wrong_kernel_is_caught(monkeypatch):
    cpu = torch.device("cpu")
    assert gpu.conv3d_disagreement(cpu) < gpu.AGREEMENT_TOLERANCE  # bf16 rounding only
    real = torch.nn.functional.conv3d
    # a kernel that is wrong under autocast only (as cuDNN 9.8-9.10 was): the check must see it
    monkeypatch.setattr(gpu.F, "conv3d", lambda x, w, **k: real(x, w, **k) * (
        1.3 if torch.is_autocast_enabled(x.device.type) else 1.0))
    assert gpu.conv3d_disagreement(cpu) > gpu.AGREEMENT_TOLERANCE


def test_the_check_refuses_in_one_line_with_the_fix(monkeypatch):
    monkeypatch.setattr(gpu, "known_conv3d_problem", lambda *_: "cuDNN 9.8 gives wrong bf16 conv3d results")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90800)
    with pytest.raises(StrokeSSLError, match=r"wrong bf16 conv3d.*pretrain\.precision: fp32"):
        gpu.check_mixed_precision("bf16", torch.device("cuda", 0))
    gpu.check_mixed_precision("fp32", torch.device("cuda", 0))  # fp32 and CPU runs are never refused
    gpu.check_mixed_precision("bf16", torch.device("cpu"))
