"""Process-group helpers, safe to call without ``torch.distributed`` initialised.

In the style of lightly's ``utils/dist.py``: ``rank()`` / ``world_size()`` answer 0 / 1 in a
single process and the gathers are the identity there, so losses and the training loop need
no ``if distributed`` branches. Only ``setup_distributed`` reads the environment (torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; ``MASTER_ADDR`` / ``MASTER_PORT`` through
``init_method="env://"``).

All gathers need the same shape on every rank: load batches with ``drop_last=True``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from lightly.utils import dist as lightly_dist


def rank() -> int:
    """Global rank of this process; 0 when not distributed."""
    return lightly_dist.rank()


def world_size() -> int:
    """Number of processes; 1 when not distributed."""
    return lightly_dist.world_size()


def is_main() -> bool:
    """True on rank 0 (the process that logs and writes checkpoints)."""
    return rank() == 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order → (world * B, ...), with gradient.

    Uses lightly's ``GatherLayer``: the backward pass sums every rank's gradient for the
    slice that came from this rank, so a loss over the gathered tensor trains the encoders
    of all ranks. The identity in a single process.
    """
    if world_size() == 1:
        return x
    return torch.cat(lightly_dist.gather(x.contiguous()), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks in rank order → (world * B, ...), detached."""
    if world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``x`` over ranks, detached (a copy; ``x`` is left as it is)."""
    x = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor:
    """Element-wise mean of ``x`` over ranks, detached: for logging a per-rank metric."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    return all_reduce_sum(x) / world_size()


def barrier() -> None:
    """Wait for all ranks; a no-op when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def setup_distributed() -> torch.device:
    """Join the process group torchrun describes and return this process's device.

    ``WORLD_SIZE > 1``: ``init_process_group`` with NCCL when CUDA is available (one GPU per
    process, ``cuda:LOCAL_RANK``, made the current device) and gloo on CPU otherwise.
    A single process gets ``cuda:0`` when CUDA is available, else the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "start torchrun with --nproc_per_node at most the number of GPUs per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            dist.init_process_group(backend="nccl", init_method="env://", device_id=device)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
    return device


def cleanup_distributed() -> None:
    """Leave the process group (if any); call once at the end of a run, on every rank."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
