"""Cache hit speed-up of the MRI pipeline: volumes/s in epoch 1 (cold cache) vs epoch 2 (hits).

    python benchmarks/cache_speed.py configs/demo.yaml [--workers 0] [--augment] [--set k=v ...]

Epoch 1 starts from an empty cache folder (a temporary one, never the cohort's), so every
subject is loaded from NIfTI and preprocessed; epoch 2 reads the cached volumes. Results go to
``benchmarks/results/<name>.json`` and a Markdown table beside it.
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
from torch.utils.data import DataLoader

from multimodal.cohort import load_cohort
from multimodal.config import load_cohort_config, load_run_config
from multimodal.imaging import ImageDataset
from multimodal.volume_cache import VolumeCache

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="run the random augmentations too")
    parser.add_argument("--limit", type=int, default=None, help="use the first N subjects only")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="cache_speed", help="results file stem (default cache_speed)")
    args = parser.parse_args()

    run_config = load_run_config(args.config, args.overrides)
    cohort_config = load_cohort_config(run_config.cohort)
    cohort = load_cohort(cohort_config)
    sequences = run_config.imaging.sequences or cohort.sequences
    records = cohort.records()[: args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = VolumeCache(cache_dir, run_config.imaging, sequences, cohort_config.missing_images,
                            cohort_config.volume_index, run_config.data.cache_dtype)
        dataset = ImageDataset(records, cache, run_config.imaging.augment if args.augment else None,
                               seed=run_config.seed)
        loader = DataLoader(dataset, batch_size=1, num_workers=args.workers)
        for epoch in (1, 2):
            dataset.set_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds = time.perf_counter() - start
            entries = sum(1 for _ in Path(cache_dir).glob("*.safetensors"))
            rows.append({"epoch": epoch, "volumes": len(records), "seconds": round(seconds, 3),
                         "volumes_per_s": round(len(records) / seconds, 2), "cache_entries": entries})
    result = {
        "config": str(args.config), "overrides": args.overrides, "workers": args.workers,
        "augment": args.augment, "sequences": sequences,
        "spatial_size": list(run_config.imaging.spatial_size), "spacing": list(run_config.imaging.spacing),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "epochs": rows, "speedup": round(rows[1]["volumes_per_s"] / rows[0]["volumes_per_s"], 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| epoch | volumes | seconds | volumes/s |", "| --- | --- | --- | --- |"]
    table += [f"| {r['epoch']} | {r['volumes']} | {r['seconds']} | {r['volumes_per_s']} |" for r in rows]
    table.append(f"\nspeed-up epoch 2 / epoch 1: {result['speedup']}x "
                 f"({len(sequences)} sequences -> {tuple(run_config.imaging.spatial_size)}, "
                 f"{args.workers} workers, augment={args.augment})")
    (RESULTS / f"{args.name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
