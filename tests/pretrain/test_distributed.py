"""Distributed helpers single-process, and 2 gloo ranks under DDP == 1 process on the whole batch.

As lightly's ``tests/utils/test_dist__gather__losses.py``: tiny BN-free encoders (per-rank
BatchNorm is not equivalent by nature), float64 so equality is tight. Each rank's loss is the
mean over its own rows (for ITM: its share of the global pair mean), DDP averages gradients,
and the result must equal one process on the concatenated batch: the loss (averaged over
ranks), every parameter's gradient, and the weights after an SGD step.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrain import distributed
from pretrain.fusion import MatchingFusion
from pretrain.objectives import EmbeddingQueue, clip_loss, itm_loss, itm_noise, paired_clip_loss

BATCH, WORLD, DIM, PROJ, SEED = 3, 2, 6, 5, 7
SCENARIOS = {"clip": ("clip",), "clip_itm": ("clip", "itm"), "clip_paired": ("clip", "paired")}
PAIRED = torch.tensor([True, False, True, True, False, True])  # rows having both modalities of a pair


class TinyModel(nn.Module):
    """Linear "image encoder" on flattened 2×2×3 inputs (4 tokens), Linear "table encoder"
    on 5 features (3 tokens), projection heads, clamped logit scale, and the real matching
    fusion (cross-attention transformer + 2-way head; LayerNorm only, no dropout)."""

    def __init__(self, fusion: bool) -> None:
        super().__init__()
        self.image_net = nn.Linear(12, 4 * DIM)
        self.table_net = nn.Linear(5, 3 * DIM)
        self.image_proj = nn.Linear(DIM, PROJ)
        self.table_proj = nn.Linear(DIM, PROJ)
        self.log_scale = nn.Parameter(torch.tensor(math.log(2.0)))
        self.fusion = MatchingFusion(DIM, depth=1, heads=2) if fusion else None

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> dict[str, torch.Tensor]:
        image_tokens = self.image_net(image.flatten(1)).tanh().view(-1, 4, DIM)
        table_tokens = self.table_net(table).tanh().view(-1, 3, DIM)
        return {
            "image_features": F.normalize(self.image_proj(image_tokens.mean(1)), dim=1),
            "table_features": F.normalize(self.table_proj(table_tokens.mean(1)), dim=1),
            "logit_scale": self.log_scale.exp().clamp(1, 100),
            "image_tokens": image_tokens,
            "table_tokens": table_tokens,
        }

    def match_logits(self, table_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        assert self.fusion is not None
        return self.fusion.match_logits(table_tokens, image_tokens)


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    n = BATCH * WORLD
    # clinical signatures, threshold 0.5: row 0 duplicates every other row (no eligible
    # negative, drops out), the others split into two groups (some columns refused)
    signature = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0.05], [0.05, 1], [1, -0.1]], dtype=torch.float64)
    return {
        "image": torch.randn(n, 2, 2, 3, generator=generator, dtype=torch.float64),
        "table": torch.randn(n, 5, generator=generator, dtype=torch.float64),
        "ids": torch.arange(n) + 100,
        "signature": signature,
    }


def train_steps(scenario: str, rank: int, world: int, steps: int = 3) -> list[dict[str, torch.Tensor]]:
    """Run ``steps`` SGD steps of ``scenario`` on this rank's rows; record losses and gradients."""
    terms = SCENARIOS[scenario]
    torch.manual_seed(1)
    core = TinyModel(fusion="itm" in terms).double()
    model: nn.Module = DistributedDataParallel(core) if world > 1 else core
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    queue = EmbeddingQueue(2 * BATCH, PROJ).double()
    rows = slice(rank * BATCH, (rank + 1) * BATCH) if world > 1 else slice(None)
    data = {k: v[rows] for k, v in global_batch().items()}
    batch = data["ids"].shape[0]
    records = []
    for step in range(steps):
        optimizer.zero_grad()
        out = model(data["image"], data["table"])
        clip = clip_loss(out["image_features"], out["table_features"], out["logit_scale"],
                         image_weight=0.3, queue=queue.get(), row_ids=data["ids"])
        losses = {"clip_loss": clip["clip_loss"]}
        if "itm" in terms:
            noise_i2t, noise_t2i = itm_noise(batch, SEED, step, rank, world)
            losses.update(itm_loss(out["image_tokens"], out["table_tokens"], core.match_logits,
                                   clip["similarity"], clip["similarity_t2i"], data["signature"],
                                   noise_i2t, noise_t2i, duplicate_threshold=0.5))
        if "paired" in terms:  # a pair some rows lack (a report): each rank holds a different count
            losses["paired_loss"] = paired_clip_loss(out["table_features"], out["image_features"],
                                                     out["logit_scale"], PAIRED[rows])
        sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
        records.append({
            **{k: distributed.all_reduce_mean(v) for k, v in losses.items()},
            **{f"grad.{k}": p.grad.clone() for k, p in core.named_parameters()},
            "queue_len": torch.tensor(len(queue)),
        })
        optimizer.step()
        queue.push(distributed.all_gather_no_grad(out["image_features"]),
                   distributed.all_gather_no_grad(out["table_features"]),
                   distributed.all_gather_no_grad(data["ids"]))
    records.append({f"weight.{k}": p.detach().clone() for k, p in core.named_parameters()})
    return records


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # a crashed peer fails, not hangs CI
    try:
        assert distributed.rank() == rank and distributed.world_size() == world
        results = {name: train_steps(name, rank, world) for name in SCENARIOS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(folder / "pg"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_ranks_equal_one_process(two_rank_results: list[dict], scenario: str) -> None:
    reference = train_steps(scenario, rank=0, world=1)
    for rank_results in two_rank_results:
        records = rank_results[scenario]
        assert len(records) == len(reference)
        for step, (got, want) in enumerate(zip(records, reference, strict=True)):
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-11,
                                           msg=lambda m, k=key, s=step: f"step {s} {k}: {m}")
    # the scenario exercised what it claims: the queue filled, ITM saw a dropped row
    assert reference[-2]["queue_len"] > 0
    if "itm" in SCENARIOS[scenario]:
        assert all(torch.isfinite(r["itm_loss"]) for r in reference[:-1])


def test_itm_pair_counts_differ_between_ranks() -> None:
    """The DDP case above is only a real test of the global pair normalisation if the ranks
    keep different numbers of negatives: row 0 (rank 0) has no eligible negative."""
    torch.manual_seed(1)
    model = TinyModel(fusion=True).double()
    data = global_batch()
    out = model(data["image"], data["table"])
    clip = clip_loss(out["image_features"], out["table_features"], out["logit_scale"])
    seen = []

    def match(tables: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        seen.append(tables.shape[0])
        return model.match_logits(tables, images)

    noise = itm_noise(6, SEED, 0)
    itm_loss(out["image_tokens"], out["table_tokens"], match, clip["similarity"], clip["similarity_t2i"],
             data["signature"], *noise, duplicate_threshold=0.5)
    assert seen == [3 * 6 - 2]


def test_helpers_single_process() -> None:
    assert not dist.is_initialized()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    gathered = distributed.all_gather_no_grad(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    assert torch.equal(distributed.all_reduce_mean(torch.tensor([1, 3])), torch.tensor([1.0, 3.0]))
    assert distributed.all_reduce_mean(2.5).item() == 2.5
    distributed.barrier()  # no-op
    distributed.cleanup_distributed()  # no-op


def test_setup_distributed_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.setup_distributed() == torch.device("cpu")
    assert not dist.is_initialized()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup_distributed() == torch.device("cuda", 0)
