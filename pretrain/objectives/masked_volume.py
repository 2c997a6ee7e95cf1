"""Optional objective: masked-volume modelling for a 3D CNN (SparK, Tian et al. ICLR 2023,
https://arxiv.org/abs/2301.03580; MAE, He et al. CVPR 2022, https://arxiv.org/abs/2111.06377).

"We randomly mask a high proportion (e.g., 75%) of the image patches ... The loss function
computes the mean squared error (MSE) between the reconstructed and original images in the pixel
space ... We compute the loss only on masked patches" (MAE). SparK carries this to convolutional
networks: masked patches are removed from the input and a light UNet-style decoder reconstructs
them from the encoder's multi-scale feature maps. We mask densely: masked cubes are set to 0,
the mean of every channel after the per-channel z-score inside the head mask, and the encoder
runs on the whole volume (SparK's sparse convolutions are not available for MONAI's ResNet).

The image keeps what the clinical record cannot predict (white-matter lesions, atrophy) only if
an objective asks for it; CLIP alone asks for what the record predicts. ``masked_volume`` runs
beside ``clip`` or alone (image only).

Distributed: the patch draw is one (N, P) score matrix, N = world · B, from a generator every
rank seeds alike (as ITM's noise), each rank keeping its own rows, so 1 and 2 processes mask the
same voxels; the loss divides by the global count of masked voxels, so DDP's gradient average
equals the single-process mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pretrain import distributed


def patch_mask(
    batch_size: int,
    spatial_size: Sequence[int],
    patch: int,
    ratio: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Random cubic patches to mask, the same share in every volume.

    The volume is cut into ``patch``³ cubes (the last cube along an axis is cut off by the border
    when ``patch`` does not divide its size); in each volume ``max(1, round(ratio · P))`` of the P
    cubes are drawn without replacement.

    Args:
        batch_size: B, this rank's volumes.
        spatial_size: (H, W, D).
        patch: cube edge in voxels, >= 1.
        ratio: share of the cubes masked, in (0, 1).
        generator: random source seeded alike on every rank (draws on its device).
        rank, world_size: this rank's rows of the global (world_size · B) draw.

    Returns:
        (B, 1, H, W, D) bool on the generator's device, True = masked (broadcasts over channels).
    """
    if patch < 1:
        raise ValueError(f"patch_mask: patch must be >= 1 voxel, got {patch}; set pretrain.masked_volume_patch")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"patch_mask: ratio must be in (0, 1), got {ratio}; set pretrain.masked_volume_ratio")
    if len(spatial_size) != 3:
        raise ValueError(f"patch_mask: spatial_size must be (H, W, D), got {tuple(spatial_size)}")
    grid = [math.ceil(size / patch) for size in spatial_size]
    patches = math.prod(grid)
    count = min(patches, max(1, round(ratio * patches)))
    scores = torch.rand(batch_size * world_size, patches, generator=generator, device=generator.device)
    scores = scores[rank * batch_size:(rank + 1) * batch_size]  # (B, P): this rank's rows
    chosen = scores.argsort(dim=1).argsort(dim=1) < count  # (B, P): the `count` lowest scores
    mask = chosen.view(batch_size, 1, *grid)
    for axis, size in enumerate(spatial_size):  # cubes -> voxels, cut at the border
        mask = mask.repeat_interleave(patch, dim=axis + 2).narrow(axis + 2, 0, size)
    return mask


def masked_volume_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean squared error over the masked voxels (and every channel), in float32 or wider.

    Args:
        prediction: (B, C, H, W, D) the decoder's reconstruction.
        target: (B, C, H, W, D) the unmasked input volume (z-scored per channel).
        mask: (B, 1, H, W, D) or (B, C, H, W, D) bool, True = masked (``patch_mask``).
        gather: normalise by the masked-voxel count of all ranks (identity when not
            distributed), so ``all_reduce_mean`` of the loss is the global mean.

    Returns:
        ``masked_volume_loss``: scalar; 0 (with gradient) when nothing is masked.
    """
    if prediction.shape != target.shape or prediction.ndim != 5:
        raise ValueError(f"masked_volume_loss: prediction {tuple(prediction.shape)} and target "
                         f"{tuple(target.shape)} must both be (B, C, H, W, D)")
    if mask.ndim != 5 or mask.shape[0] != target.shape[0] or mask.shape[2:] != target.shape[2:] \
            or mask.shape[1] not in (1, target.shape[1]):
        raise ValueError(f"masked_volume_loss: mask {tuple(mask.shape)} must be (B, 1 or C, H, W, D) "
                         f"for target {tuple(target.shape)}")
    mask = mask.to(prediction.device).expand_as(target)
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    squared = (prediction.to(dtype) - target.to(dtype)) ** 2
    total = (squared * mask).sum()  # multiplication, not indexing: keeps the graph when nothing is masked
    count = mask.sum().to(dtype)
    world = 1
    if gather:
        count, world = distributed.all_reduce_sum(count), distributed.world_size()
    return {"masked_volume_loss": total * (world / count.clamp(min=1))}
