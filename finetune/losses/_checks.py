"""Validation shared by the losses: constructor values (``ValueError`` naming value and fix) and
the ``(B,)`` logits / targets contract of every ``forward``."""

from __future__ import annotations

import math

import torch


def check_finite(name: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, fix: str = "") -> float:
    """``float(value)`` if finite and inside the interval, else a ``ValueError`` saying why."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name}={value!r} is outside {interval}{'; ' + fix if fix else ''}")
    return number


def check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) and targets (B,) as floating tensors of one dtype (at least float32).

    Shape checks only: checking target values would need a device sync every step.
    """
    if logits.ndim != 1 or targets.shape != logits.shape or logits.numel() == 0:
        raise ValueError(
            f"expected logits (B,) and targets (B,) with B >= 1, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}; squeeze a (B, 1) head output with logits.squeeze(-1)"
        )
    # Half-precision logits (autocast) are promoted: the log-sigmoid of a large margin and the
    # focal modulating factor lose too much in bf16.
    if logits.dtype in (torch.float16, torch.bfloat16) or not logits.is_floating_point():
        logits = logits.float()
    return logits, targets.to(logits.dtype)
