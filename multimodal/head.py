"""The head in a preprocessed volume and per-channel intensity statistics inside it.

``head_mask`` finds the head (Otsu on a smoothed image, largest component, holes filled) from
the channels that have signal; ``channel_problem`` says when a channel has no usable signal in
it; ``zscore_in_mask`` normalises each channel with statistics inside it. Statistics are in
float64 and every test is relative to the channel's own scale, so no unit (a FLAIR near the
float32 maximum, an ADC map in m²/s) is floored, overflowed or mistaken for an empty image.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import FillHoles
from scipy import ndimage

# A channel whose spread inside the head is below this share of its peak magnitude is constant
# up to float32 rounding (2**-23 ≈ 1.2e-7): it carries no image.
_RELATIVE_SPREAD = 1e-6


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D array (hand-written: MONAI has none, skimage is not a dependency)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2  # between-class variance
    return float(centres[int(np.argmax(between))])


def head_mask(image: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Head mask (H, W, D) bool from an image (C, H, W, D) using the channels where ``present``.

    Each channel is scaled by its 1st/99th percentiles so no sequence dominates, the mean is
    smoothed (noise speckle in the background must not pass the threshold), thresholded by Otsu,
    reduced to its largest connected component and its holes filled.
    """
    scaled = []
    for channel in image[present].astype(np.float64):
        low, high = np.percentile(channel, [1, 99])
        if high <= low:  # constant over 98 % of the grid: use the full range
            low, high = float(channel.min()), float(channel.max())
        scaled.append(np.clip((channel - low) / (high - low), 0, 1) if high > low else np.zeros_like(channel))
    mean = ndimage.gaussian_filter(np.mean(scaled, axis=0), sigma=1.0)
    if mean.max() - mean.min() < 1e-6:  # on the [0, 1] scale: no contrast at all
        return np.zeros(mean.shape, dtype=bool)
    # scipy labelling, as MONAI's KeepLargestConnectedComponent needs scikit-image (not a dependency).
    components, count = ndimage.label(mean > _otsu_threshold(mean.ravel()))
    if count == 0:
        return np.zeros(mean.shape, dtype=bool)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    mask = FillHoles()(torch.from_numpy(components == largest)[None])
    return np.asarray(mask[0], dtype=bool)


def mask_extent_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """(3,) extent in mm of the mask's bounding box along each axis of a grid of ``spacing`` mm."""
    axes = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return np.array([(a[-1] - a[0] + 1) * s if a.size else 0.0 for a, s in zip(axes, spacing, strict=True)])


def channel_problem(channel: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Why one channel (H, W, D) has no usable signal inside ``mask`` (H, W, D) bool, or None."""
    values = channel[mask].double()
    peak = float(values.abs().max()) if values.numel() else 0.0
    if peak == 0.0:
        return "is empty (all zero) inside the head"
    if float(values.std()) <= _RELATIVE_SPREAD * peak:
        return "is constant inside the head (no image contrast)"
    return None


def zscore_in_mask(image: torch.Tensor, mask: torch.Tensor, present: np.ndarray) -> torch.Tensor:
    """Per-channel z-score with float64 statistics inside ``mask``; absent channels stay exactly 0.

    A present channel must pass ``channel_problem`` first (its spread inside the mask is > 0).
    """
    # NormalizeIntensity(nonzero=True) takes statistics over every non-zero voxel, i.e. the
    # noisy background too, so the head would not come out with mean 0 and std 1.
    out = torch.zeros_like(image)
    for c in np.flatnonzero(present):
        channel = image[c].double()
        values = channel[mask]
        out[c] = ((channel - values.mean()) / values.std()).to(image.dtype)
    return out
