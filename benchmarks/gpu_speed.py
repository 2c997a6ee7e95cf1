"""Pretraining speed on GPUs at the ``configs/pretrain.yaml`` size (``resnet3d_18``, 2 x 96 x 112 x 96,
batch 16 per GPU, bf16), one process or one per GPU under ``torchrun``; ``benchmarks/gpu.sh`` runs both:

    python benchmarks/gpu_speed.py [--subjects 192] [--grid 96] [--compile] [--out PATH]
    torchrun --standalone --nproc_per_node 8 benchmarks/gpu_speed.py --out PATH

On a synthetic cohort (``strokessl synth``, written once by rank 0 into ``--work``) and the cache:

- **memory format**: the start-up timing of ``pretrain.memory_format: auto`` (channels_last_3d vs
  contiguous forward + backward of the image encoder) and the format it kept;
- **fixed-batch step**: subjects/s of the default step (clip, bf16 autocast) on one batch per GPU;
  with ``--compile`` also with the encoders compiled (``pretrain.compile``);
- **model FLOP utilisation**: training FLOPs per step (``FlopCounterMode``) per second ÷ the GPU's
  dense bf16 peak (datasheet table below; ``--peak-tflops`` for others) and ÷ this run's measured
  dense bf16 matmul FLOP/s;
- **end to end**: the real loop over the warm cache (``data.workers``), augmentation in the loader
  workers and on the device (``pretrain.augment_on``), each its second epoch: subjects/s and the
  share of the epoch the device did not wait for the loader (target >= 0.9).

Writes JSON + Markdown (``benchmarks/results/gpu[_ddpN].*``) naming the device and world size; a
CPU run is refused unless ``--allow-cpu`` (a smoke test of the script, never a GPU figure).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from multimodal.config import load_cohort_config, load_run_config
from multimodal.data import encoder_sizes, to_device
from multimodal.imaging import DeviceAugmentation
from pretrain import distributed
from pretrain.acceleration import choose_memory_format, compile_encoders, time_memory_formats
from pretrain.config import pretrain_config
from pretrain.data import build_pretrain_data, make_loader
from pretrain.gpu import check_mixed_precision
from pretrain.loop import PretrainStep, train_one_epoch
from pretrain.model import build_pretrain_model
from pretrain.run import autocast_context, build_optimizer, build_scheduler, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from speed import make_cohort, seconds_per_call, write_result

HERE = Path(__file__).parent
logger = logging.getLogger("gpu_speed")

# Dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' datasheets, by a name fragment.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.05, "L4": 121.0, "A10": 125.0}


def datasheet_peak(name: str) -> float | None:
    """Dense bf16 FLOP/s of the GPU called ``name`` (longest matching fragment), or None."""
    matches = [k for k in BF16_PEAK_TFLOPS if k in name]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] * 1e12 if matches else None


def bf16_matmul_flops_per_s(device: torch.device, size: int) -> float:
    """Dense bf16 matmul FLOP/s of this device, now (2 n³ FLOPs per product)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return 2 * size**3 / seconds_per_call(lambda: a @ b, 10)


def epoch_figures(trained, step_module, loader, data, settings, device, precision, augment) -> dict:
    """Two epochs of the real loop (the second timed): subjects/s and the loader wait share."""
    optimizer = build_optimizer(step_module, settings)
    scheduler = build_scheduler(optimizer, settings, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    figures = {}
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        _, metrics = train_one_epoch(trained, step_module, loader, optimizer, scheduler, scaler,
                                     lambda: autocast_context(precision, device), settings, epoch, 0, None,
                                     device, augment)
        figures = {"subjects_per_s": metrics["subjects_per_s"], "data_wait_share": metrics["data_wait_share"],
                   "device_busy_share": 1.0 - metrics["data_wait_share"]}
    return figures


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    """Every figure of this process: the fixed-batch ones, then the real loop with the augmentation in
    the loader and on the device."""
    work = args.work.resolve()
    if distributed.is_main():
        make_cohort(work, args.subjects, args.grid)
    distributed.barrier()
    base = [f"cohort={work / 'cohort' / 'cohort.yaml'}", f"data.cache_dir={work / 'cache'}",
            f"data.workers={args.workers}", "pretrain.rows=all", "pretrain.val_fraction=0.05", "pretrain.epochs=2",
            *args.set]
    figures: dict = {}
    for augment_on in ("loader", "device"):
        measure_pipeline(args, device, [*base, f"pretrain.augment_on={augment_on}"], figures)
    return figures


def measure_pipeline(args: argparse.Namespace, device: torch.device, overrides: list[str], figures: dict) -> None:
    """One model and loader under ``overrides``; adds its figures to ``figures`` (the fixed-batch ones
    on the first call)."""
    config = load_run_config(args.config, overrides)
    settings = pretrain_config(config)
    run_dir = args.work.resolve() / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_pretrain_data(config, load_cohort_config(config.cohort), settings, run_dir)
    torch.manual_seed(config.seed)
    model = build_pretrain_model(config.model, settings, encoder_sizes(data.modalities, data.sequences,
                                                                       data.preprocessor)).to(device)
    precision = resolve_precision(settings.precision, device)
    check_mixed_precision(precision, device)

    def autocast() -> contextlib.AbstractContextManager:
        return autocast_context(precision, device)

    step_module = PretrainStep(model, settings, data.preprocessor.category_sizes, data.table_pool,
                               config.seed).to(device)
    loader = make_loader(data.train, settings.batch_size, config.data.workers, config.seed, train=True)
    batch = to_device(next(iter(make_loader(data.train, settings.batch_size, 0, config.seed, train=True))), device)
    augment = DeviceAugmentation(data.augment, config.seed, device) if settings.augment_on == "device" else None
    if augment is not None:
        batch["image"] = augment(batch["image"], **batch.pop("augment"))
    first = "memory_format" not in figures  # the fixed-batch figures are measured on the first pipeline
    if not first:
        choose_memory_format(figures["memory_format"], model.image_encoder, device, lambda: batch["image"], autocast)
    else:
        formats = time_memory_formats(model.image_encoder, batch["image"], autocast)
        chosen = choose_memory_format(settings.memory_format, model.image_encoder, device,
                                      lambda: batch["image"], autocast)
        optimizer = build_optimizer(step_module, settings)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = step_module(batch, 0)["loss"]
            loss.backward()
            optimizer.step()

        step_s = seconds_per_call(train_step, args.calls)
        with FlopCounterMode(display=False) as counter:
            train_step()
        flops = counter.get_total_flops()
        world = distributed.world_size()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        peak = args.peak_tflops * 1e12 if args.peak_tflops else datasheet_peak(name)
        matmul = bf16_matmul_flops_per_s(device, args.matmul_size)
        figures.update({
            "memory_format_seconds": formats, "memory_format": chosen, "precision": precision,
            "batch_size_per_process": settings.batch_size, "image_shape": list(batch["image"].shape[1:]),
            "train_subjects": len(data.train),
            "fixed_batch_subjects_per_s": world * settings.batch_size / step_s,
            "train_flops_per_step_per_process": flops, "bf16_peak_flops_per_s": peak,
            "bf16_matmul_flops_per_s": matmul,
            "flop_utilisation_vs_peak": flops / step_s / peak if peak else None,
            "flop_utilisation_vs_matmul": flops / step_s / matmul,
        })
    trained = step_module
    if distributed.world_size() > 1:
        trained = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)
    figures[f"end_to_end_augment_on_{settings.augment_on}"] = epoch_figures(
        trained, step_module, loader, data, settings, device, precision, augment)
    if args.compile and first:  # after the end-to-end epochs, which run uncompiled
        compile_encoders(model, data.modalities)
        started = time.perf_counter()
        train_step()  # compiles
        figures["compile_seconds"] = time.perf_counter() - started
        figures["compiled_fixed_batch_subjects_per_s"] = (
            distributed.world_size() * settings.batch_size / seconds_per_call(train_step, args.calls))


PLACES = {"loader": "in the loader workers", "device": "on the device"}


def markdown(result: dict) -> str:
    f = result["figures"]
    rows = [
        ("fixed-batch step, subjects/s", f["fixed_batch_subjects_per_s"]),
        *([("compiled encoders, fixed-batch step, subjects/s", f["compiled_fixed_batch_subjects_per_s"])]
          if "compiled_fixed_batch_subjects_per_s" in f else []),
        ("training FLOP/s ÷ dense bf16 peak (target ≥ 0.3)", f["flop_utilisation_vs_peak"]),
        ("training FLOP/s ÷ measured bf16 matmul FLOP/s", f["flop_utilisation_vs_matmul"]),
        *[(f"end to end, augmentation {where}: subjects/s", f[f"end_to_end_augment_on_{key}"]["subjects_per_s"])
          for key, where in PLACES.items()],
        *[(f"end to end, augmentation {where}: share of the epoch not waiting for the loader (target ≥ 0.9)",
           f[f"end_to_end_augment_on_{key}"]["device_busy_share"]) for key, where in PLACES.items()],
        *[(f"image encoder fwd + bwd, {name}, ms", 1e3 * s) for name, s in f["memory_format_seconds"].items()],
    ]
    lines = ["| figure | value |", "| --- | --- |",
             *[f"| {name} | {'n/a' if value is None else f'{value:.3f}'} |" for name, value in rows], "",
             f"Device {result['device']} × {result['world_size']} process(es), torch {result['torch']}, "
             f"{f['precision']}, batch {f['batch_size_per_process']} per process, image {f['image_shape']}, "
             f"memory format kept: {f['memory_format']}, {result['workers']} loader workers per process; "
             f"wall-clock {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=HERE.parent / "configs" / "pretrain.yaml")
    parser.add_argument("--subjects", type=int, default=192)
    parser.add_argument("--grid", type=int, default=96, help="synth grid (the cache resamples to the config's)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                        help="loader workers per process")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per fixed-batch figure")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="also time the step with pretrain.compile")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of a GPU not in the table")
    parser.add_argument("--set", action="append", default=[], help="further config overrides (KEY=VALUE)")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-test the script on CPU")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu_speed"))
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu[_ddpN].json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_speed.py: no CUDA device here; run it on a GPU machine (--allow-cpu smoke-tests it)")
    started = time.perf_counter()
    device = distributed.setup_distributed()
    try:
        figures = measure(args, device)
        world, main = distributed.world_size(), distributed.is_main()
    finally:
        distributed.cleanup_distributed()
    if not main:
        return None
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)",
              "world_size": world, "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
              "workers": args.workers, "config": str(args.config), "subjects": args.subjects, "grid": args.grid,
              "figures": figures, "seconds": time.perf_counter() - started}
    write_result(result, args.out or HERE / "results" / f"gpu{f'_ddp{world}' if world > 1 else ''}.json", markdown)
    return result


if __name__ == "__main__":
    main()
