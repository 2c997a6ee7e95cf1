"""Pretraining throughput: subjects/s of one optimiser step per objective vs the bare encoders.

    python benchmarks/pretrain_speed.py configs/demo.yaml [--steps 5] [--set k=v ...]

Every variant trains on the same fixed batch (taken from the training loader, augmented, so the
data pipeline is not part of the figure): ``clip``, ``clip+itm``, ``simclr`` (two views: twice
the image work per subject), ``clip+masked_volume`` (a second, masked encoder pass) and its
shared view (one pass), and the bare image / tabular encoders' forward + backward on the
same batch — the gap is the objective's overhead (projection heads, fusion, negatives).
Writes ``benchmarks/results/pretrain_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from multimodal.config import load_cohort_config, load_run_config
from multimodal.data import encoder_sizes
from pretrain.config import pretrain_config
from pretrain.data import build_pretrain_data, make_loader
from pretrain.loop import PretrainStep
from pretrain.model import build_pretrain_model

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"clip": {"clip": 1.0}, "clip+itm": {"clip": 1.0, "itm": 1.0}, "simclr": {"simclr": 1.0},
            "clip+masked_volume": {"clip": 1.0, "masked_volume": 1.0},
            "clip+masked_volume shared view": {"clip": 1.0, "masked_volume": 1.0}}
SETTINGS = {"clip+masked_volume shared view": ["pretrain.masked_volume_shared_view=true"]}  # beyond objectives


def measure(fn, steps: int) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        for name, objectives in VARIANTS.items():
            config = load_run_config(args.config, [*args.overrides, *SETTINGS.get(name, []),
                                                   f"pretrain.objectives={json.dumps(objectives)}"])
            settings = pretrain_config(config)
            data = build_pretrain_data(config, load_cohort_config(config.cohort), settings, Path(run_dir))
            torch.manual_seed(config.seed)
            model = build_pretrain_model(config.model, settings,
                                         encoder_sizes(data.modalities, data.sequences, data.preprocessor))
            step = PretrainStep(model, settings, data.preprocessor.category_sizes, data.table_pool, config.seed)
            batch = next(iter(make_loader(data.train, settings.batch_size, 0, config.seed, train=True)))
            optimizer = torch.optim.AdamW(step.parameters(), lr=1e-5)

            def train_step(module=step, batch=batch, optimizer=optimizer) -> None:
                optimizer.zero_grad(set_to_none=True)
                module(batch, 0)["loss"].backward()
                optimizer.step()

            size = settings.batch_size
            rows.append({"variant": name, "subjects_per_s": round(size / measure(train_step, args.steps), 2)})
            if name == "clip":  # the bare encoders on the same batch
                image, table = batch["image"], batch["table"]
                shape = list(image.shape[1:])
                rows.append({"variant": "bare image encoder fwd+bwd", "subjects_per_s": round(
                    size / measure(lambda m=model, x=image: m.image_encoder(x).sum().backward(), args.steps), 2)})
                rows.append({"variant": "bare tabular encoder fwd+bwd", "subjects_per_s": round(
                    size / measure(lambda m=model, t=table: m.table_encoder(t).sum().backward(), args.steps), 2)})
    config = load_run_config(args.config, args.overrides)
    result = {
        "config": str(args.config), "overrides": args.overrides, "batch_size": pretrain_config(config).batch_size,
        "image_shape": shape, "image_encoder": config.model.encoders["image"].name,
        "tabular_encoder": config.model.encoders["table"].name, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "steps": args.steps, "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pretrain_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| variant | subjects/s |", "| --- | --- |"] + [f"| {r['variant']} | {r['subjects_per_s']} |" for r in rows]
    table.append(f"\nbatch {result['batch_size']}, image {shape}, {result['image_encoder']} + "
                 f"{result['tabular_encoder']}, {result['torch_threads']} torch threads, CPU")
    (RESULTS / "pretrain_speed.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
