"""LP-FT for ``mode: trainable``: the fitted linear probe as trainable layers, and layer-wise
learning-rate decay over the image encoder's stages.

LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR 2022): fit a linear probe on the frozen features first, then fine-tune
everything from it with a small learning rate, so the first gradient steps refine a good head
instead of tearing the features apart to fit a random one. Here the probe is
``finetune.probe.fit_linear_probe``; ``probe_head`` expresses it as

    head input (B, F) ─ ProbeReduction: one Linear per block ─ (B, F') ─ Linear(F', 1) ─ (B,) logits

where each embedding block's ``Linear(d, k)`` is its centring, its ``k`` leading principal axes and
the standardisation (one affine map), and the table design's ``Linear(d, d)`` its standardisation.
At step 0 the two layers compute exactly the frozen probe's logit (``load_probe_head``); they stay
differentiable, so the fine-tuned encoders feed them, and trainable.

Layer decay (BEiT; timm ``param_groups_layer_decay``, used as is through a ``group_matcher`` on our
parameter names): the image encoder's last stage learns at the full encoder rate, each earlier stage
at ``layer_decay`` times the next one, the stem lowest.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from finetune.probe import PROBE_COMPONENTS, load_probe

logger = logging.getLogger(__name__)


class ProbeReduction(nn.Module):
    """The probe's per-block reduction as layers: ``(B, F) -> (B, F')``.

    ``segments`` lists the head input's consecutive column blocks as ``(group, d, k)`` (group 0 =
    the table design, 1, 2, ... = embedding blocks, as ``finetune.probe.probe_groups`` numbers them);
    block ``s`` goes through its own ``Linear(d_s, k_s)`` and the outputs are concatenated in order.
    """

    def __init__(self, segments: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.segments = [(int(g), int(d), int(k)) for g, d, k in segments]
        self.blocks = nn.ModuleList(nn.Linear(d, k) for _, d, k in self.segments)
        self.out_features: int = sum(k for _, _, k in self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, sum d_s) -> (B, sum k_s)``."""
        parts = x.split([d for _, d, _ in self.segments], dim=1)
        return torch.cat([block(part) for block, part in zip(self.blocks, parts, strict=True)], dim=1)


def probe_segments(groups: np.ndarray, components: int | None = PROBE_COMPONENTS) -> list[tuple[int, int, int]]:
    """``(group, d, k)`` per run of equal entries of the ``(F,)`` ``groups``: the design (group 0) keeps
    its ``d`` columns, an embedding block ``min(components, d)`` (None: ``d``; fewer fitted components,
    when a fold has fewer subjects, are padded with zeros by ``load_probe_head``)."""
    groups = np.asarray(groups, dtype=int)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    sizes = np.diff(np.r_[starts, len(groups)])
    segments = [(int(groups[s]), int(d), int(d) if groups[s] == 0 or components is None else min(components, int(d)))
                for s, d in zip(starts, sizes, strict=True)]
    seen = [g for g, _, _ in segments]
    if len(seen) != len(set(seen)):
        raise ValueError(f"each probe group must be one run of columns, got the runs {seen}")
    return segments


def probe_head(groups: np.ndarray, components: int | None = PROBE_COMPONENTS) -> nn.Sequential:
    """The LP-FT head for a probe classifier whose head input has ``groups`` (``probe_groups``) and keeps
    ``components`` per embedding block: ``Sequential(ProbeReduction, Linear(F', 1))``, to be filled by
    ``load_probe_head``."""
    reduction = ProbeReduction(probe_segments(groups, components))
    return nn.Sequential(reduction, nn.Linear(reduction.out_features, 1))


@torch.no_grad()
def load_probe_head(head: nn.Sequential, fit: dict[str, Any]) -> None:
    """Copy a ``fit_linear_probe`` result into a probe classifier's head: the folded weights into
    the single ``Linear(F, 1)`` of ``mode: frozen``, or centring, axes and standardisation into the
    ``ProbeReduction`` and the coefficients into the final ``Linear(F', 1)`` of LP-FT."""
    if not isinstance(head[0], ProbeReduction):
        load_probe(head[-1], fit)
        return
    reduction, linear = head[0], head[-1]
    mean, projection, scale = fit["mean"], fit["projection"], fit["scale"]  # (F,), (F, F'), (F',)
    reduced_groups, coef = fit["reduced_groups"], fit["reduced_coef"]  # (F',), (F',)
    weights, start = [], 0
    for (group, d, k), block in zip(reduction.segments, reduction.blocks, strict=True):
        rows = slice(start, start + d)
        start += d
        columns = np.flatnonzero(reduced_groups == group)  # this block's fitted components
        if len(columns) > k:
            raise ValueError(f"probe block {group} has {len(columns)} components; the head holds {k}")
        axes = projection[rows][:, columns] / scale[columns]  # (d, k'): standardised components
        w, b, c = np.zeros((k, d)), np.zeros(k), np.zeros(k)
        w[: len(columns)], b[: len(columns)], c[: len(columns)] = axes.T, -(mean[rows] @ axes), coef[columns]
        block.weight.copy_(torch.as_tensor(w, dtype=block.weight.dtype))
        block.bias.copy_(torch.as_tensor(b, dtype=block.bias.dtype))
        weights.append(c)
    if start != len(mean):
        raise ValueError(f"probe has {len(mean)} inputs, the head reads {start}")
    linear.weight.copy_(torch.as_tensor(np.concatenate(weights), dtype=linear.weight.dtype)[None])
    linear.bias.fill_(fit["intercept"])


# --------------------------------------------------------------------------- layer decay
# Stages by parameter name, for the 3D MONAI ResNet and the slice encoder's timm ResNet alike:
# ``backbone.conv1`` / ``bn1`` (the stem), ``backbone.layer1`` ... ``layer4``; the 3D encoder's
# token positions join the last stage, anything else (the slice encoder's LSTM) comes after it.
_MATCH_PREV_GROUP = (99999,)  # timm's marker (timm.models._manipulate): join the group before
_STAGES = {
    "stem": r"^encoder\.backbone\.(?:conv1|bn1)\b",  # no capture: timm sorts captured numbers
    "blocks": [(r"^encoder\.backbone\.layer(\d+)\.", None), (r"^encoder\.pos_embed$", _MATCH_PREV_GROUP)],
}


class _Staged(nn.Module):
    """``encoder`` with the ``group_matcher`` timm's ``param_groups_layer_decay`` reads."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return _STAGES  # one group per stage, whether coarse or not


def has_stages(encoder: nn.Module) -> bool:
    """Whether ``encoder`` has the ResNet stages layer decay reads (``backbone.layer1``, ...)."""
    return any(name.startswith("backbone.layer") for name, _ in encoder.named_parameters())


def stage_parameter_groups(encoder: nn.Module, lr: float, layer_decay: float, weight_decay: float,
                           no_decay: Collection[str], name: str = "image_encoder") -> list[dict[str, Any]]:
    """AdamW groups ``{"name", "params", "lr", "weight_decay"}`` for an image encoder with stages
    (``has_stages``): of n stages, stage i (0 = the stem) learns at ``lr * layer_decay ** (n - 1 - i)``.
    ``no_decay``: fnmatch patterns of parameter names kept free of weight decay (as are 1-D ones)."""
    groups = param_groups_layer_decay(_Staged(encoder), weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=list(no_decay))
    return [{"name": f"{name}_x{g['lr_scale']:.3g}" + ("_no_decay" if g["weight_decay"] == 0.0 else ""),
             "params": g["params"], "lr": lr * g["lr_scale"], "weight_decay": g["weight_decay"]} for g in groups]
