"""Pretraining at growing cohort sizes, on a small grid so it fits a 2-core workstation:

    python benchmarks/scale.py [--quick] [--sizes 200,2000,10000] [--grid 16] [--work runs/scale]

For each size, in a process of its own (so peak memory is that size's): a synthetic cohort
(``strokessl synth --grid G``), the MRI cache built with 2 workers (subjects/s per worker), the
cache's size on disk per subject, then two pretraining epochs of the demo model (the second timed) over the warm
cache (2 persistent workers) with the cohort's image folder moved away, so the epochs complete only
if they read no source file (and an audit hook counts the files the main process opens under it).
Peak resident memory of the main process and of the loader workers (``getrusage``). ``--quick``:
200 and 2,000 subjects. Writes ``benchmarks/results/scale[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
logger = logging.getLogger("scale")


def synth_cohort(subjects: int, grid: int, work: Path) -> Path:
    """The cohort folder of ``subjects`` (written by the parent, so its memory is not a worker's)."""
    cohort = work / f"cohort-{subjects}"
    if not (cohort / "cohort.yaml").is_file():
        subprocess.run([sys.executable, "-m", "strokessl", "synth", str(cohort), "--n", str(subjects),
                        "--grid", str(grid), "--seed", "4"], check=True)
    return cohort


def one_size(subjects: int, grid: int, work: Path) -> dict:
    """Cache and one epoch for ``subjects``; the figures of this process and its loader workers."""
    from multimodal.config import load_cohort_config, load_run_config
    from multimodal.data import encoder_sizes
    from pretrain.config import pretrain_config
    from pretrain.data import build_pretrain_data, make_loader
    from pretrain.loop import PretrainStep, train_one_epoch
    from pretrain.model import build_pretrain_model
    from pretrain.run import build_optimizer, build_scheduler

    cohort = synth_cohort(subjects, grid, work)
    spacing = 224 / grid  # synth's grid spans a 224 mm head
    cache_dir = work / f"cache-{subjects}"
    config = load_run_config(HERE.parent / "configs" / "demo.yaml", [
        f"cohort={(cohort / 'cohort.yaml').resolve()}", f"data.cache_dir={cache_dir.resolve()}", "data.workers=2",
        f"imaging.spacing=[{spacing},{spacing},{spacing}]", f"imaging.spatial_size=[{grid},{grid},{grid}]",
        f"imaging.head_margin_mm={spacing}", "pretrain.rows=all", "pretrain.val_fraction=0.05", "pretrain.epochs=2"])
    settings = pretrain_config(config)
    run_dir = work / f"run-{subjects}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = build_pretrain_data(config, load_cohort_config(config.cohort), settings, run_dir)  # builds the cache
    build_seconds = time.perf_counter() - start
    entries = list(cache_dir.glob("*.safetensors"))
    torch.manual_seed(0)
    model = build_pretrain_model(config.model, settings, encoder_sizes(data.modalities, data.sequences,
                                                                       data.preprocessor))
    step_module = PretrainStep(model, settings, data.preprocessor.category_sizes, data.table_pool, 0)
    loader = make_loader(data.train, settings.batch_size, 2, 0, train=True)
    optimizer = build_optimizer(step_module, settings)
    scheduler = build_scheduler(optimizer, settings, len(loader))
    images = cohort / "images"
    moved = cohort / "images-moved-away"
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and str(images) in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    images.rename(moved)  # a warm epoch must not need the sources: any stat or open would fail
    try:
        for epoch in range(2):  # the second timed: the workers persist, so their start is the run's, not the epoch's
            loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            _, metrics = train_one_epoch(step_module, step_module, loader, optimizer, scheduler,
                                         torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext,
                                         settings, epoch, 0, None, torch.device("cpu"))
            epoch_seconds = time.perf_counter() - start
    finally:
        moved.rename(images)
    del loader  # persistent workers end here, so getrusage sees them
    return {
        "subjects": subjects, "train_subjects": len(data.train), "grid": grid,
        "cache_build_seconds": build_seconds, "cache_subjects_per_s_per_worker": subjects / build_seconds / 2,
        "cache_bytes_per_subject": sum(p.stat().st_size for p in entries) / max(len(entries), 1),
        "epoch_seconds": epoch_seconds, "epoch_seconds_per_1000_subjects": epoch_seconds / len(data.train) * 1000,
        "subjects_per_s": metrics["subjects_per_s"],
        "source_files_opened_in_warm_epoch": len(opened), "warm_epoch_ran_without_sources": True,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def markdown(rows: list[dict], seconds: float) -> str:
    lines = ["| subjects | cache build, subjects/s per worker | cache KB / subject | epoch s per 1,000 subjects | "
             "peak RSS main MB | peak RSS worker MB | source files opened in a warm epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['subjects']} | {r['cache_subjects_per_s_per_worker']:.1f} | "
                     f"{r['cache_bytes_per_subject'] / 1024:.1f} | {r['epoch_seconds_per_1000_subjects']:.1f} | "
                     f"{r['peak_rss_main_mb']:.0f} | {r['peak_rss_workers_mb']:.0f} | "
                     f"{r['source_files_opened_in_warm_epoch']} (epoch ran with the images moved away) |")
    first, last = rows[0], rows[-1]
    lines += ["", f"From {first['subjects']} to {last['subjects']} subjects: peak main RSS x"
              f"{last['peak_rss_main_mb'] / first['peak_rss_main_mb']:.3f}, epoch time per subject x"
              f"{last['epoch_seconds_per_1000_subjects'] / first['epoch_seconds_per_1000_subjects']:.3f}; "
              f"CPU ({os.cpu_count()} cores), wall-clock {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 subjects")
    parser.add_argument("--sizes", help="comma-separated cohort sizes (default 200,2000,10000)")
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, JSON on stdout
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.one:
        print(json.dumps(one_size(args.one, args.grid, args.work)))  # noqa: T201 - read by the parent
        return {}
    sizes = [int(s) for s in (args.sizes or ("200,2000" if args.quick else "200,2000,10000")).split(",")]
    started, rows = time.perf_counter(), []
    args.work.mkdir(parents=True, exist_ok=True)
    for size in sizes:  # a fresh process per size: its peak memory is that size's
        synth_cohort(size, args.grid, args.work)
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--grid", str(args.grid),
                              "--work", str(args.work)], check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        logger.info("%d subjects: %s", size, rows[-1])
    result = {"rows": rows, "seconds": time.perf_counter() - started, "cpus": os.cpu_count()}
    path = args.out or HERE / "results" / f"scale{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(rows, result["seconds"]))
    logger.info("wrote %s\n%s", path, markdown(rows, result["seconds"]))
    return result


if __name__ == "__main__":
    main()
