"""Image–tabular matching with hard negatives (ALBEF, Li et al. 2021, https://arxiv.org/abs/2107.07651;
BLIP, Li et al. 2022, https://arxiv.org/abs/2201.12086).

For each local image one table negative is drawn from the softmax of its (detached) CLIP
similarity row, for each local table one image negative likewise; the fusion's matching head
classifies 1 positive vs 2 negatives per subject (3B pairs, cross-entropy, class 1 = matched).

Hard negatives only for a share ``hard_fraction`` of the rows; the others draw uniformly among
their eligible columns. Mined negatives are drawn with the probability CLIP gives them of being
the match, so by CLIP's own measure they look like positives (measured on synthetic cohorts: CLIP
ranks positives above them with AUROC 0.50); the fusion, fed the same pooled image features, then
has nothing to learn from them and settles on "no match" (accuracy 2/3, loss 0.636). Uniform
negatives carry the signal it can learn first.

Two guards against false negatives (identical clinical records stall ALBEF-style mining):
a subject is never its own negative, and no column whose clinical row is a near-duplicate of
the positive's (cosine of ``table_signature`` above a threshold) is drawn. A row left without
an eligible column drops out of the mean.

Distributed: negatives come from the global batch. Sampling is Gumbel-max with noise drawn for
the whole N×N matrix from a generator seeded alike on every rank (``itm_noise``), each rank
taking its own B rows, so 1 and 2 processes draw the same negatives. Tokens are gathered with
gradient, and each rank's sum is divided by the global pair count / world, so DDP's gradient
average equals the single-process mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pretrain.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    rank,
    world_size,
)

MatchLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def table_signature(
    continuous: torch.Tensor,
    categorical: torch.Tensor,
    missing: torch.Tensor,
    category_sizes: Sequence[int],
) -> torch.Tensor:
    """The clinical row as one vector for the near-duplicate test.

    Args:
        continuous: (N, n_cont) standardised values (``TabularPreprocessor`` output).
        categorical: (N, n_cat) int codes, 0 = unknown / missing, 1..K = vocabulary index.
        missing: (N, n_cont + n_cat) bool, True where the value was missing.
        category_sizes: K_j + 1 per categorical feature (``TabularPreprocessor.category_sizes``).

    Returns:
        (N, n_cont + Σ category_sizes + n_cont + n_cat) float: [continuous with missing → 0,
        one-hot categoricals (bucket 0 included), missing mask as float].
    """
    n_cont, n_cat = continuous.shape[1], categorical.shape[1]
    if len(category_sizes) != n_cat or missing.shape[1] != n_cont + n_cat:
        raise ValueError(f"table_signature: {n_cont} continuous, {n_cat} categorical columns need "
                         f"{n_cat} category_sizes (got {len(category_sizes)}) and a missing mask of "
                         f"{n_cont + n_cat} columns (got {missing.shape[1]})")
    if n_cat and ((categorical < 0).any() or (categorical >= categorical.new_tensor(category_sizes)).any()):
        raise ValueError("table_signature: a categorical code is outside [0, category_sizes[j]); "
                         "pass the sizes of the preprocessor that produced the codes")
    parts = [continuous.float().masked_fill(missing[:, :n_cont], 0.0)]
    parts += [F.one_hot(categorical[:, j], size).float() for j, size in enumerate(category_sizes)]
    parts.append(missing.float())
    return torch.cat(parts, dim=1)


@torch.no_grad()
def near_duplicates(signature: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, F) signatures → (N, N) bool, True where the cosine similarity exceeds ``threshold``.

    The diagonal is True (a row is its own duplicate, also an all-zero row).
    """
    unit = F.normalize(signature.float(), dim=1)
    duplicate = unit @ unit.T > threshold
    duplicate.fill_diagonal_(True)
    return duplicate


def gumbel_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise, −log(−log U), drawn on the generator's device."""
    uniform = torch.rand(tuple(shape), generator=generator, device=generator.device)
    tiny = torch.finfo(uniform.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))


def itm_noise(
    batch_size: int, seed: int, step: int, rank: int = 0, world_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of the shared Gumbel noise for one step: two (B, N) CPU tensors.

    Draws the whole (2, N, N) noise, N = world_size · batch_size, from a CPU generator seeded
    with ``seed * 1_000_003 + step`` (the same on every rank), and returns rows
    ``rank·B … rank·B + B − 1`` of each: ``noise_i2t``, ``noise_t2i``. Move them to the device.
    """
    n = batch_size * world_size
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    noise = gumbel_noise((2, n, n), generator)
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return noise[0, rows], noise[1, rows]


@torch.no_grad()
def sample_negatives(similarity: torch.Tensor, eligible: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One column per row drawn from softmax(similarity) restricted to ``eligible`` (Gumbel-max).

    Args:
        similarity: (B, N) logits (e.g. CLIP similarities times the logit scale).
        eligible: (B, N) bool, the columns a row may draw.
        noise: (B, N) standard Gumbel noise (``itm_noise``).

    Returns:
        (B,) long column index; −1 for a row with no eligible column.
    """
    if not similarity.shape == eligible.shape == noise.shape:
        raise ValueError(f"sample_negatives: similarity {tuple(similarity.shape)}, eligible "
                         f"{tuple(eligible.shape)} and noise {tuple(noise.shape)} must have one shape")
    dtype = torch.promote_types(similarity.dtype, torch.float32)
    scores = (similarity.to(dtype) + noise.to(similarity.device, dtype)).masked_fill(~eligible, float("-inf"))
    choice = scores.argmax(dim=1)
    return torch.where(eligible.any(dim=1), choice, torch.full_like(choice, -1))


def itm_loss(
    image_tokens: torch.Tensor,
    table_tokens: torch.Tensor,
    match_logits: MatchLogits,
    similarity_i2t: torch.Tensor,
    similarity_t2i: torch.Tensor,
    signature: torch.Tensor,
    noise_i2t: torch.Tensor,
    noise_t2i: torch.Tensor,
    duplicate_threshold: float = 0.98,
    gather: bool = True,
    hard_fraction: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Matching loss over B positives and up to 2B sampled hard negatives.

    Args:
        image_tokens: (B, Ti, Df) local image tokens at the fusion width.
        table_tokens: (B, Tt, Df) local table tokens at the fusion width.
        match_logits: ``(table_tokens (M, Tt, Df), image_tokens (M, Ti, Df)) -> (M, 2)``.
        similarity_i2t: (B, N) detached logits, local images vs all tables (``clip_loss``'s
            ``similarity``).
        similarity_t2i: (B, N) detached logits, local tables vs all images (``similarity_t2i``).
        signature: (B, F) ``table_signature`` of the local rows (gathered here when ``gather``).
        noise_i2t, noise_t2i: (B, N) this rank's rows of the shared Gumbel noise (``itm_noise``).
        duplicate_threshold: cosine above which a clinical row counts as the positive's duplicate.
        gather: negatives from all ranks (identity when not distributed).
        hard_fraction: share of rows (per direction) whose negative is mined from the
            similarities; the rest draw uniformly among their eligible columns. 1.0 = ALBEF.

    Returns:
        ``itm_loss``: scalar, this rank's share: sum over its pairs · world / global pair count,
        so ``all_reduce_mean`` of it (and DDP's gradient average) is the global mean over pairs.
        ``itm_accuracy``: detached share of the global batch's pairs classified right (the same
        on every rank).
    """
    batch = image_tokens.shape[0]
    if table_tokens.shape[0] != batch or signature.shape[0] != batch:
        raise ValueError(f"itm_loss: image_tokens ({image_tokens.shape[0]}), table_tokens "
                         f"({table_tokens.shape[0]}) and signature ({signature.shape[0]}) need one batch size")
    if gather:
        all_image = all_gather_with_grad(image_tokens)  # (N, Ti, Df)
        all_table = all_gather_with_grad(table_tokens)  # (N, Tt, Df)
        all_signature = all_gather_no_grad(signature)  # (N, F)
        offset, world = rank() * batch, world_size()
    else:
        all_image, all_table, all_signature, offset, world = image_tokens, table_tokens, signature, 0, 1
    n = all_image.shape[0]
    if similarity_i2t.shape != (batch, n) or similarity_t2i.shape != (batch, n):
        raise ValueError(f"itm_loss: similarities {tuple(similarity_i2t.shape)} / {tuple(similarity_t2i.shape)} "
                         f"must be ({batch}, {n}): local rows vs the {'gathered' if gather else 'local'} batch")
    own = torch.arange(batch, device=image_tokens.device) + offset

    with torch.no_grad():
        # column j is refused for row i when table j duplicates table i (own column included)
        eligible = ~near_duplicates(all_signature, duplicate_threshold)[own]  # (B, N)
        # Mined or uniform, per row: decided by the row's own-column noise, which the draw never
        # reads (a row is never its own negative) and every rank shares. Gumbel CDF -> U(0, 1).
        rows = torch.arange(batch, device=noise_i2t.device)
        own_noise = own.to(noise_i2t.device)
        hard_i2t = torch.exp(-torch.exp(-noise_i2t[rows, own_noise])) < hard_fraction
        hard_t2i = torch.exp(-torch.exp(-noise_t2i[rows, own_noise])) < hard_fraction
        negative_table = sample_negatives(  # (B,) for each image
            similarity_i2t.masked_fill(~hard_i2t.to(similarity_i2t.device)[:, None], 0.0), eligible, noise_i2t)
        negative_image = sample_negatives(  # (B,) for each table
            similarity_t2i.masked_fill(~hard_t2i.to(similarity_t2i.device)[:, None], 0.0), eligible, noise_t2i)
    has_table, has_image = negative_table >= 0, negative_image >= 0

    tables = torch.cat([table_tokens, all_table[negative_table[has_table]], table_tokens[has_image]])
    images = torch.cat([image_tokens, image_tokens[has_table], all_image[negative_image[has_image]]])
    labels = torch.cat([
        torch.ones(batch, dtype=torch.long, device=image_tokens.device),
        torch.zeros(tables.shape[0] - batch, dtype=torch.long, device=image_tokens.device),
    ])
    logits = match_logits(tables, images)  # (M, 2)
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # CE in >= fp32 under autocast
    counts = torch.stack([torch.tensor(labels.numel(), device=logits.device), correct]).to(logits.dtype)
    pairs, correct = all_reduce_sum(counts) if gather else counts  # global pair count, global hits
    loss = F.cross_entropy(logits, labels, reduction="sum") * (world / pairs)
    return {"itm_loss": loss, "itm_accuracy": correct / pairs}
