"""The real ``PretrainStep`` under DDP: 2 gloo ranks x B rows == 1 process on the 2B rows.

Unlike ``test_distributed.py`` (a toy model and a re-written loop), this builds the pretraining
model from a model config (3D ResNet with GroupNorm, FT-Transformer, fusion) and calls
``PretrainStep.forward`` itself, with the queue, matching (itm) and masked-tabular on, and SCARF
alone, in float64 with dropout 0 (its draws are per rank by nature). Losses, every gradient and
the weights after SGD steps must agree.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from multimodal.config import ModelConfig
from multimodal.config_mapping import from_dict
from pretrain import distributed
from pretrain.config import PretrainConfig
from pretrain.loop import PretrainStep
from pretrain.model import build_pretrain_model

B, WORLD, N_CONT, SIZES, STEPS = 3, 2, 3, [3, 4], 3
SMALL = {"projection_dim": 8, "projection_hidden": 16, "fusion_dim": 8, "fusion_depth": 1, "fusion_heads": 2}
SCENARIOS = {
    "clip_itm_masked_queue": {"objectives": {"clip": 1.0, "itm": 1.0, "masked_tabular": 0.5}, "queue_size": 12},
    "scarf": {"objectives": {"scarf": 1.0}},
}


def global_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    n = B * WORLD
    missing = torch.rand(n, N_CONT + len(SIZES), generator=g) < 0.2
    return {
        "image": torch.randn(n, 1, 12, 12, 12, generator=g, dtype=torch.float64),
        "table": {"continuous": torch.randn(n, N_CONT, generator=g, dtype=torch.float64),
                  "categorical": torch.stack([torch.randint(0, s, (n,), generator=g) for s in SIZES], 1),
                  "missing": missing},
        "index": torch.arange(n) + 10 * step,  # new subjects each step: the queue holds no positive
    }


def rows_of(batch: dict, rows: slice) -> dict:
    return {k: rows_of(v, rows) if isinstance(v, dict) else v[rows] for k, v in batch.items()}


def train(scenario: str, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    settings = PretrainConfig(**SCENARIOS[scenario], **SMALL)
    model_config = from_dict(ModelConfig, {"encoders": {
        "image": {"name": "resnet3d_10", "args": {"widen_factor": 0.125}},
        "table": {"name": "ft_transformer", "args": {"dim": 8, "depth": 1, "heads": 2, "dropout": 0.0}}}})
    sizes = {"table": {"num_continuous": N_CONT, "category_sizes": SIZES}}
    if settings.modalities != ("table",):
        sizes["image"] = {"in_channels": 1}
    torch.manual_seed(0)
    model = build_pretrain_model(model_config, settings, sizes)
    pool = {k: v.double() if v.is_floating_point() else v for k, v in global_batch(99)["table"].items()}
    step_module = PretrainStep(model, settings, SIZES, pool, seed=5).double()
    trained = DistributedDataParallel(step_module, find_unused_parameters=True) if world > 1 else step_module
    optimizer = torch.optim.SGD(step_module.parameters(), lr=0.05)
    rows = slice(rank * B, (rank + 1) * B) if world > 1 else slice(None)
    records = []
    for step in range(STEPS):
        optimizer.zero_grad()
        terms = trained(rows_of(global_batch(step), rows), step)
        terms["loss"].backward()
        records.append({**{k: distributed.all_reduce_mean(v.detach()) for k, v in terms.items()},
                        **{f"grad.{k}": (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                           for k, p in step_module.named_parameters()}})
        optimizer.step()
    records.append({f"weight.{k}": p.detach().clone() for k, p in step_module.named_parameters()})
    if step_module.queue is not None:
        records[-1]["queue_len"] = torch.tensor(len(step_module.queue))
    return records


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # a crashed peer fails, not hangs CI
    try:
        torch.save({name: train(name, rank, world) for name in SCENARIOS}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp_step")
    mp.spawn(_worker, args=(WORLD, str(folder / "pg"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_real_step_on_two_ranks_equals_one_process_on_the_whole_batch(two_rank_results, scenario):
    torch.set_num_threads(1)
    reference = train(scenario, rank=0, world=1)
    for rank_results in two_rank_results:
        records = rank_results[scenario]
        for step, (got, want) in enumerate(zip(records, reference, strict=True)):
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-7, atol=1e-9,
                                           msg=lambda m, k=key, s=step: f"step {s} {k}: {m}")
    # the scenario exercised what it names: gradients flowed, the queue filled, matching ran
    assert any(v.abs().sum() > 0 for k, v in reference[0].items() if k.startswith("grad."))
    if scenario == "clip_itm_masked_queue":
        assert int(reference[-1]["queue_len"]) == 12
        assert all(torch.isfinite(r["itm_loss"]) and r["masked_tabular_loss"] > 0 for r in reference[:-1])
