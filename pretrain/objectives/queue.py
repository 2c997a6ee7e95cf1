"""``EmbeddingQueue``: a FIFO of earlier batches' embeddings, extra negatives for the CLIP loss.

Small 3D batches (4–16 per GPU) see few negatives and gradient accumulation adds none; a queue
of detached embeddings from earlier steps (MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722)
adds hundreds. lightly's ``MemoryBankModule`` starts full of random vectors and stores no
subject ids, so it cannot mask a subject's own earlier entries (false negatives once the same
subject comes back in a later epoch); hence this class. It starts empty, stores image and
table embeddings together with the subject ids, and keeps everything in buffers, so
``state_dict()`` / ``load_state_dict()`` carry it across a resume.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingQueue(nn.Module):
    """FIFO of (image embedding, table embedding, subject id) triples.

    Args:
        size: capacity Q (entries); the oldest entries leave first once it is full.
        dim: embedding width P.

    Under DDP push the *gathered* global batch on every rank, so all ranks hold the same queue::

        queue.push(all_gather_no_grad(img), all_gather_no_grad(tab), all_gather_no_grad(ids))
    """

    image: torch.Tensor
    table: torch.Tensor
    ids: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"EmbeddingQueue(size={size}, dim={dim}): both must be >= 1; "
                             "use queue_size: 0 to switch the queue off")
        self.size = size
        self.dim = dim
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("table", torch.zeros(size, dim))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def push(self, image: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> None:
        """Append a batch: ``image`` (B, P), ``table`` (B, P), ``ids`` (B,); keeps the newest Q."""
        if image.shape != table.shape or image.ndim != 2 or image.shape[1] != self.dim:
            raise ValueError(f"push: image {tuple(image.shape)} and table {tuple(table.shape)} "
                             f"must both be (B, {self.dim})")
        if ids.shape != image.shape[:1]:
            raise ValueError(f"push: ids {tuple(ids.shape)} must be ({image.shape[0]},), one per row")
        n = int(self.filled)
        # oldest first: keep the newest `size` rows of (current entries ∪ batch)
        new_image = torch.cat([self.image[:n], image.detach().to(self.image)])[-self.size:]
        new_table = torch.cat([self.table[:n], table.detach().to(self.table)])[-self.size:]
        new_ids = torch.cat([self.ids[:n], ids.detach().to(self.ids)])[-self.size:]
        m = new_ids.shape[0]
        self.image[:m] = new_image
        self.table[:m] = new_table
        self.ids[:m] = new_ids
        self.filled.fill_(m)

    def get(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stored entries, oldest first: image (n, P), table (n, P), ids (n,); n = 0 when empty.

        Copies, not views: a loss may keep them for its backward pass while ``push`` (called
        before ``backward``) overwrites the buffers.
        """
        n = int(self.filled)
        return self.image[:n].clone(), self.table[:n].clone(), self.ids[:n].clone()
