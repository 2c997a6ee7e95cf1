"""Symmetric image–table InfoNCE (CLIP, Radford et al. 2021, https://arxiv.org/abs/2103.00020).

``L = λ·CE(image→table) + (1−λ)·CE(table→image)`` over L2-normalised projections.

Distributed: open_clip's local loss with gather-with-grad. Each rank scores its own B rows
against all N = world·B columns gathered *with* gradient (``all_gather_with_grad``); the
positive of local row i is column ``rank·B + i``. Each rank's loss is the mean over its own
rows, DDP averages the gradients, and together they equal one process on the whole batch.

Optional queue (``EmbeddingQueue``): its entries are extra columns in both directions (image
rows vs table columns ∪ queued tables, table rows vs image columns ∪ queued images), and an
entry whose subject id equals the row's own id is masked out (a subject is never its own
negative).

``paired_clip_loss`` is the same objective between any two modalities over the rows that have
both (image-report, table-report: a report is missing for some subjects).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.distributed import all_gather_no_grad, all_gather_with_grad, rank, world_size


def clip_loss(
    image_features: torch.Tensor,
    table_features: torch.Tensor,
    logit_scale: torch.Tensor,
    image_weight: float = 0.5,
    gather: bool = True,
    queue: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    row_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-modal InfoNCE for one local batch.

    Args:
        image_features: (B, P) L2-normalised image projections of this rank.
        table_features: (B, P) L2-normalised table projections of the same subjects.
        logit_scale: scalar tensor, 1 / temperature (already exp'ed and clamped).
        image_weight: λ, weight of the image→table direction; table→image gets 1 − λ.
        gather: gather the columns from all ranks (identity when not distributed).
        queue: optional ``(queue_image (Q, P), queue_table (Q, P), queue_ids (Q,))``, detached,
            as ``EmbeddingQueue.get()`` returns it.
        row_ids: (B,) int subject ids of the local rows; required with a non-empty queue.

    Returns:
        ``clip_loss``: scalar. ``similarity``: (B, N) detached image→table logits (local image
        rows vs all batch tables, no queue columns). ``similarity_t2i``: (B, N) detached
        table→image logits (local table rows vs all batch images). Both feed ``itm_loss``.
    """
    if image_features.shape != table_features.shape or image_features.ndim != 2:
        raise ValueError(f"clip_loss: image_features {tuple(image_features.shape)} and table_features "
                         f"{tuple(table_features.shape)} must both be (B, P)")
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"clip_loss: image_weight must be in [0, 1], got {image_weight}")
    batch = image_features.shape[0]
    if gather:
        all_image = all_gather_with_grad(image_features)  # (N, P)
        all_table = all_gather_with_grad(table_features)  # (N, P)
        offset = rank() * batch
    else:
        all_image, all_table, offset = image_features, table_features, 0
    labels = torch.arange(batch, device=image_features.device) + offset

    logits_i2t = logit_scale * image_features @ all_table.T  # (B, N)
    logits_t2i = logit_scale * table_features @ all_image.T  # (B, N)
    similarity_i2t, similarity_t2i = logits_i2t.detach(), logits_t2i.detach()

    if queue is not None and queue[2].numel() > 0:
        queue_image, queue_table, queue_ids = queue
        if row_ids is None or row_ids.shape != (batch,):
            raise ValueError(f"clip_loss: a non-empty queue needs row_ids of shape ({batch},), one subject "
                             f"id per local row; got {None if row_ids is None else tuple(row_ids.shape)}")
        own = row_ids[:, None] == queue_ids[None, :]  # (B, Q): a subject's own queued entries
        queue_i2t = logit_scale * image_features @ queue_table.to(image_features).T  # (B, Q)
        queue_t2i = logit_scale * table_features @ queue_image.to(table_features).T  # (B, Q)
        logits_i2t = torch.cat([logits_i2t, queue_i2t.masked_fill(own, float("-inf"))], dim=1)
        logits_t2i = torch.cat([logits_t2i, queue_t2i.masked_fill(own, float("-inf"))], dim=1)

    loss = image_weight * F.cross_entropy(logits_i2t, labels) + (1.0 - image_weight) * F.cross_entropy(
        logits_t2i, labels
    )
    return {"clip_loss": loss, "similarity": similarity_i2t, "similarity_t2i": similarity_t2i}


def paired_clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two modalities over the subjects that have both.

    ``a``, ``b``: (B, P) L2-normalised projections of this rank's rows; ``valid``: (B,) bool, the
    rows with both modalities (a subject without a report is neither a positive nor a negative).
    Columns are gathered from every rank as in ``clip_loss``; each rank's loss is ``world`` times
    its share of the sum over every valid row / the valid rows of the global batch, so DDP's
    gradient average equals one process on the whole batch. Under two valid rows in the global
    batch there is nothing to contrast: the loss is 0 (with a graph, so DDP sees every parameter).
    """
    if a.shape != b.shape or a.ndim != 2 or valid.shape != (a.shape[0],):
        raise ValueError(f"paired_clip_loss: a {tuple(a.shape)}, b {tuple(b.shape)} must be (B, P) and valid "
                         f"{tuple(valid.shape)} (B,)")
    valid = valid.bool()
    all_a, all_b = all_gather_with_grad(a), all_gather_with_grad(b)
    all_valid = all_gather_no_grad(valid)
    total = int(all_valid.sum())
    if total < 2:
        return (a.sum() + b.sum()) * 0.0
    labels = torch.arange(a.shape[0], device=a.device) + rank() * a.shape[0]
    rows = valid.nonzero().flatten()
    ignore = ~all_valid[None, :]
    logits_ab = (logit_scale * a[rows] @ all_b.T).masked_fill(ignore, float("-inf"))
    logits_ba = (logit_scale * b[rows] @ all_a.T).masked_fill(ignore, float("-inf"))
    per_row = 0.5 * (F.cross_entropy(logits_ab, labels[rows], reduction="none")
                     + F.cross_entropy(logits_ba, labels[rows], reduction="none"))
    return per_row.sum() * world_size() / total
