"""GPU start-up checks for mixed-precision 3D convolutions.

Known hazards, reported to PyTorch: PyTorch 2.9.x made bf16/AMP ``conv3d`` up to
4x slower and ~3x more memory-hungry, and cuDNN 9.8-9.10 gave silently wrong bf16 ``conv3d`` results.
A bf16 run on such a stack is refused at start with the fix; on any other stack a tiny bf16 and
fp32 ``conv3d`` must agree on the device before training starts (a wrong kernel is refused, not
trained on). fp32 runs, and CPU runs, are never refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multimodal.errors import StrokeSSLError

AGREEMENT_TOLERANCE = 0.05  # relative L2 error of bf16 against fp32; bf16 rounding gives ~0.005


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def known_conv3d_problem(torch_version: str, cudnn_version: int | None) -> str | None:
    """Why bf16 ``conv3d`` is unsafe on this stack, or None. ``cudnn_version`` as
    ``torch.backends.cudnn.version()`` gives it (e.g. 90800 for 9.8.0)."""
    if _version(torch_version)[:2] == (2, 9):
        return f"PyTorch {torch_version} makes bf16 conv3d up to 4x slower and ~3x more memory-hungry"
    if cudnn_version is not None and 90800 <= cudnn_version < 91100:
        major, minor = cudnn_version // 10000, cudnn_version // 100 % 100
        return f"cuDNN {major}.{minor} gives wrong bf16 conv3d results"
    return None


def conv3d_disagreement(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """Relative L2 error of a (2, 4, 12, 12, 12) ``conv3d`` under ``dtype`` autocast against fp32 on
    ``device`` (forward and input gradient together)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 12, 12, 12, generator=generator).to(device).requires_grad_()
    weight = (torch.randn(8, 4, 3, 3, 3, generator=generator) / 10).to(device)
    outputs = []
    for autocast in (False, True):
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            y = F.conv3d(x, weight, padding=1)
        (grad,) = torch.autograd.grad(y.float().square().sum(), x)
        outputs.append(torch.cat([y.detach().float().flatten(), grad.float().flatten()]))
    reference, mixed = outputs
    return float((mixed - reference).norm() / reference.norm().clamp(min=1e-12))


def check_mixed_precision(precision: str, device: torch.device) -> None:
    """Refuse (one line, with the fix) a bf16 CUDA run on a stack with a known bf16 ``conv3d`` bug, or
    one whose device computes a bf16 ``conv3d`` that disagrees with fp32."""
    if precision != "bf16" or device.type != "cuda":
        return
    fix = "set pretrain.precision: fp32, or install a PyTorch / cuDNN outside these versions"
    problem = known_conv3d_problem(torch.__version__, torch.backends.cudnn.version())
    if problem is not None:
        raise StrokeSSLError(f"{problem}; {fix}")
    error = conv3d_disagreement(device)
    if not error <= AGREEMENT_TOLERANCE:
        raise StrokeSSLError(f"bf16 conv3d on {torch.cuda.get_device_name(device)} disagrees with fp32 "
                             f"(relative error {error:.3g} > {AGREEMENT_TOLERANCE}); {fix}")
