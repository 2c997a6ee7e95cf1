"""Pretraining speed, every figure a ratio within one run (so a busy or faster machine shifts
numerator and denominator alike):

    python benchmarks/speed.py [--subjects 160] [--grid 32] [--batch 8] [--workers 2] [--out PATH]

On one synthetic cohort (``strokessl synth``, written once into ``--work``) and the demo config:

- **objective overhead**: the default step (clip) on a fixed batch ÷ the bare image + table
  encoders' forward + backward on it;
- **FLOP utilisation**: training FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``) per
  second ÷ this run's dense float32 matmul FLOP/s;
- **end-to-end ÷ fixed batch**: ``train_one_epoch`` over the real loader (cache warm, ``data.workers``)
  ÷ the same step on a fixed batch; also with the augmentation off (the loop's own cost, apart from
  the CPU time the workers' augmentation takes from the compute threads on a small machine);
- **loader ÷ step**: the warm loader alone (0 / 1 / 2 workers) ÷ what the step consumes;
- **profile**: the fixed-batch step's top operators by self CPU time (``torch.profiler``);
- **memory format**: the image encoder's forward + backward time in ``channels_last_3d`` ÷ contiguous
  (what ``pretrain.memory_format: auto`` would weigh);
- **a peer-style pipeline** on the same cohort, grid, batch and sequences: a plain MONAI ``Dataset``
  loading and resampling the NIfTI files every epoch, a MONAI ResNet-10, CLIP with one matching
  negative per row picked in a Python loop; at MONAI's default (stride-1 stem, full width) and at
  our encoder's stem and width. StrokeSSL's end-to-end epoch ÷ each.

Writes JSON + Markdown (``benchmarks/results/speed_cpu.*``, or ``speed_cuda.*``: CPU and GPU figures
never mix) naming the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from monai.data import DataLoader as MonaiLoader
from monai.data import Dataset as MonaiDataset
from monai.networks.nets import resnet10
from monai.transforms import (
    Compose,
    ConcatItemsd,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    ResizeWithPadOrCropd,
    Spacingd,
)
from torch.utils.flop_counter import FlopCounterMode

from multimodal.config import load_cohort_config, load_run_config
from multimodal.data import encoder_sizes, to_device

try:
    from pretrain.acceleration import time_memory_formats
except ImportError:  # an earlier strokessl measured by --before
    time_memory_formats = None
from pretrain.config import pretrain_config
from pretrain.data import build_pretrain_data, make_loader
from pretrain.loop import PretrainStep, train_one_epoch
from pretrain.model import build_pretrain_model
from pretrain.run import build_optimizer, build_scheduler

HERE = Path(__file__).parent
logger = logging.getLogger("speed")


def seconds_per_call(fn, calls: int) -> float:
    """Mean seconds of ``fn()`` after one warm-up call (a CUDA sync around each timing)."""
    fn()
    _sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync()
    return (time.perf_counter() - start) / calls


def profile_top_ops(fn, calls: int, top: int = 10) -> list[dict]:
    """``torch.profiler`` over ``calls`` calls of ``fn``: the ``top`` operators by self CPU time, each
    with its share of the total self CPU time and its call count."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    fn()
    with profile(activities=activities) as profiler:
        for _ in range(calls):
            fn()
    events = profiler.key_averages()
    total = max(sum(e.self_cpu_time_total for e in events), 1e-9)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in ranked]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_flops_per_s(device: torch.device, size: int = 1024) -> float:
    """Dense float32 matmul FLOP/s of this device, now (2 n³ FLOPs per product)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / seconds_per_call(lambda: a @ b, 10)


def make_cohort(work: Path, subjects: int, grid: int) -> Path:
    cohort = work / "cohort"
    if not (cohort / "cohort.yaml").is_file():
        subprocess.run([sys.executable, "-m", "strokessl", "synth", str(cohort), "--n", str(subjects),
                        "--grid", str(grid), "--seed", "3"], check=True)
        # image + table only, as the peer-style pipeline reads: the cohort declares no report column
        declared = yaml.safe_load((cohort / "cohort.yaml").read_text())
        declared["ignore"] = [*declared.get("ignore", []), *declared.pop("text", [])]
        (cohort / "cohort.yaml").write_text(yaml.safe_dump(declared))
    return cohort / "cohort.yaml"


def real_loop_figures(step_module, loader, dataset, optimizer, settings, device: torch.device) -> dict:
    """Three epochs of ``train_one_epoch`` over ``loader``, the last two timed (workers started, cache warm)."""
    scheduler = build_scheduler(optimizer, settings, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    seconds, waits = 0.0, []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        _, metrics = train_one_epoch(step_module, step_module, loader, optimizer, scheduler, scaler,
                                     contextlib.nullcontext, settings, epoch, 0, None, device)
        if epoch:
            seconds += time.perf_counter() - start
            # an earlier strokessl (--before) returned no loader wait
            waits.append(metrics.get("data_wait_share", float("nan")))
    return {"seconds": seconds, "subjects_per_s": 2 * len(loader) * settings.batch_size / seconds,
            "data_wait_share": sum(waits) / len(waits)}


def strokessl_figures(config, plain_config, device: torch.device, calls: int, run_dir: Path) -> dict:
    """Our figures under ``config``; ``plain_config``: the same without augmentation."""
    settings = pretrain_config(config)
    data = build_pretrain_data(config, load_cohort_config(config.cohort), settings, run_dir)  # warms the cache
    torch.manual_seed(config.seed)
    model = build_pretrain_model(config.model, settings, encoder_sizes(data.modalities, data.sequences,
                                                                       data.preprocessor)).to(device)
    step_module = PretrainStep(model, settings, data.preprocessor.category_sizes, data.table_pool,
                               config.seed).to(device)
    loader = make_loader(data.train, settings.batch_size, config.data.workers, config.seed, train=True)
    optimizer = build_optimizer(step_module, settings)
    batch = to_device(next(iter(make_loader(data.train, settings.batch_size, 0, config.seed, train=True))), device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step_module(batch, 0)["loss"].backward()
        optimizer.step()

    def bare_encoders() -> None:
        (model.image_encoder(batch["image"]).sum() + model.table_encoder(batch["table"]).sum()).backward()

    size = settings.batch_size
    step_s = seconds_per_call(train_step, calls)
    bare_s = seconds_per_call(bare_encoders, calls)
    with FlopCounterMode(display=False) as counter:
        train_step()
    flops = counter.get_total_flops()
    profile = profile_top_ops(train_step, calls)
    peak = matmul_flops_per_s(device)
    formats = (time_memory_formats(model.image_encoder, batch["image"], contextlib.nullcontext, calls)
               if time_memory_formats is not None else None)
    # Each loop's figure is set against the fixed-batch step timed right before and right after it
    # (their mean): this machine's speed drifts by tens of percent within minutes.
    before_loop = seconds_per_call(train_step, calls)
    epoch_figures = real_loop_figures(step_module, loader, data.train, optimizer, settings, device)
    between = seconds_per_call(train_step, calls)
    end_to_end = epoch_figures["subjects_per_s"]
    # the same loop with the loader's augmentation off: what the loop itself costs beyond the step,
    # apart from the CPU time the workers' augmentation takes from the compute threads
    plain = build_pretrain_data(plain_config, load_cohort_config(plain_config.cohort), settings, run_dir)
    plain_loader = make_loader(plain.train, size, config.data.workers, config.seed, train=True)
    plain_figures = real_loop_figures(step_module, plain_loader, plain.train, optimizer, settings, device)
    after = seconds_per_call(train_step, calls)
    del plain_loader
    loop_step_s, plain_step_s = (before_loop + between) / 2, (between + after) / 2
    loaders = {}
    for workers in (0, 1, 2):
        warm = make_loader(data.train, size, workers, config.seed, train=True)
        loaders[workers] = len(warm) * size / seconds_per_call(lambda w=warm: [b for b in w], 1)
    return {
        "batch_size": size, "image_shape": list(batch["image"].shape[1:]), "train_subjects": len(data.train),
        "fixed_batch_step_subjects_per_s": size / step_s, "bare_encoders_subjects_per_s": size / bare_s,
        "objective_overhead": (size / bare_s) / (size / step_s),
        "train_flops_per_step": flops, "train_flops_per_s": flops / step_s, "dense_matmul_flops_per_s": peak,
        "flop_utilisation": flops / step_s / peak,
        "end_to_end_subjects_per_s": end_to_end, "data_wait_share": epoch_figures["data_wait_share"],
        "fixed_batch_step_seconds_around_the_loops": [before_loop, between, after],
        "end_to_end_over_fixed_batch": end_to_end * loop_step_s / size,
        "end_to_end_no_augmentation_subjects_per_s": plain_figures["subjects_per_s"],
        "end_to_end_no_augmentation_over_fixed_batch": plain_figures["subjects_per_s"] * plain_step_s / size,
        "loader_subjects_per_s": {str(w): v for w, v in loaders.items()},
        "loader_over_step": {str(w): v * step_s / size for w, v in loaders.items()},
        "profile_top_ops_fixed_batch_step": profile,
        **({"memory_format_seconds": formats,
            "channels_last_over_contiguous_seconds": formats["channels_last"] / formats["contiguous"]}
           if formats else {}),
    }


class _PeerModel(torch.nn.Module):
    """A MONAI ResNet-10 and an MLP on the clinical row, projected to 64-d, plus a matching head."""

    def __init__(self, channels: int, features: int, stem_stride: int, widen: float) -> None:
        super().__init__()
        self.image = resnet10(spatial_dims=3, n_input_channels=channels, feed_forward=False,
                              conv1_t_stride=stem_stride, widen_factor=widen)
        self.table = torch.nn.Sequential(torch.nn.Linear(features, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
        self.image_head = torch.nn.LazyLinear(64)
        self.match = torch.nn.Linear(128, 2)


def peer_figures(cohort_yaml: Path, config, device: torch.device, stem_stride: int, widen: float) -> dict:
    """One timed epoch (after one untimed) of the peer-style pipeline; subjects/s."""
    from multimodal.cohort import load_cohort

    cohort = load_cohort(load_cohort_config(cohort_yaml))
    sequences = list(config.imaging.sequences)
    features = cohort.features[cohort.continuous]
    values = torch.tensor(features.fillna(features.mean()).to_numpy(dtype="float32"))
    values = (values - values.mean(0)) / values.std(0).clamp(min=1e-6)
    items = [{**{s: str(record["image"][s]) for s in sequences}, "table": values[i]}
             for i, record in enumerate(cohort.records(list(cohort.ids)))]
    transforms = Compose([
        LoadImaged(sequences), EnsureChannelFirstd(sequences), Orientationd(sequences, axcodes="RAS"),
        Spacingd(sequences, pixdim=config.imaging.spacing),
        ResizeWithPadOrCropd(sequences, spatial_size=config.imaging.spatial_size),
        ConcatItemsd(sequences, "image"), NormalizeIntensityd("image", channel_wise=True),
        RandAffined("image", prob=0.5, rotate_range=(0.1,) * 3, padding_mode="border"),
    ])
    loader = MonaiLoader(MonaiDataset(items, transforms), batch_size=config.pretrain["batch_size"],
                         shuffle=True, drop_last=True, num_workers=config.data.workers)
    torch.manual_seed(0)
    model = _PeerModel(len(sequences), values.shape[1], stem_stride, widen).to(device)
    model.image_head(torch.zeros(1, model.image.in_planes, device=device))  # materialise the lazy layer
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds = 0.0
    for _ in range(2):  # the first epoch untimed: workers and caches start
        start, subjects = time.perf_counter(), 0
        for batch in loader:
            image, table = batch["image"].as_tensor().to(device), batch["table"].to(device)
            zi = F.normalize(model.image_head(model.image(image)), dim=1)
            zt = F.normalize(model.table(table), dim=1)
            logits = zi @ zt.T / 0.07
            target = torch.arange(len(zi), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            weights = logits.detach().softmax(1)
            negatives = []
            for row in range(len(zi)):  # one hard negative per row, picked in Python
                weights[row, row] = 0
                negatives.append(int(torch.multinomial(weights[row], 1)))
            pairs = torch.cat([torch.cat([zi, zt], 1), torch.cat([zi, zt[negatives]], 1)])
            labels = torch.cat([torch.ones(len(zi)), torch.zeros(len(zi))]).long().to(device)
            loss = loss + F.cross_entropy(model.match(pairs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            subjects += len(zi)
        _sync()
        seconds = time.perf_counter() - start
    return {"stem_stride": stem_stride, "widen_factor": widen, "subjects_per_s": subjects / seconds}


def markdown(result: dict) -> str:
    s, peers = result["strokessl"], result["peer"]
    rows = [
        ("objective overhead (bare encoders ÷ default step, fixed batch)", s["objective_overhead"]),
        ("training FLOP/s ÷ dense matmul FLOP/s", s["flop_utilisation"]),
        ("end-to-end epoch ÷ fixed-batch step (target ≥ 0.95)", s["end_to_end_over_fixed_batch"]),
        ("end-to-end epoch without augmentation ÷ fixed-batch step", s["end_to_end_no_augmentation_over_fixed_batch"]),
        *[(f"warm loader, {w} worker(s) ÷ the step's consumption", v) for w, v in s["loader_over_step"].items()],
        ("image encoder fwd + bwd time, channels_last_3d ÷ contiguous", s["channels_last_over_contiguous_seconds"]),
        *([(f"end-to-end epoch ÷ fixed-batch step, strokessl at {b['commit']} (before)",
            b["strokessl"]["end_to_end_over_fixed_batch"]),
           (f"end to end, this version ÷ strokessl at {b['commit']} (before), subjects/s",
            s["end_to_end_subjects_per_s"] / b["strokessl"]["end_to_end_subjects_per_s"])]
          if (b := result.get("before")) else []),
        *[(f"StrokeSSL end to end ÷ peer-style pipeline, {name}", s["end_to_end_subjects_per_s"] / p["subjects_per_s"])
          for name, p in peers.items()],
    ]
    lines = ["| ratio | value |", "| --- | --- |", *[f"| {name} | {value:.3f} |" for name, value in rows], "",
             f"Device {result['device']}, {result['torch_threads']} torch threads, batch {s['batch_size']}, "
             f"image {s['image_shape']}, {s['train_subjects']} training subjects, {result['workers']} loader workers; "
             f"subjects/s: fixed-batch step {s['fixed_batch_step_subjects_per_s']:.2f}, end to end "
             f"{s['end_to_end_subjects_per_s']:.2f} (loader wait {s['data_wait_share']:.1%}), "
             + ", ".join(f"peer {n} {p['subjects_per_s']:.2f}" for n, p in peers.items())
             + f"; wall-clock {result['seconds']:.0f} s.", "",
             "Where the fixed-batch step spends its CPU time (`torch.profiler`, self time): " + ", ".join(
                 f"`{op['op']}` {op['self_cpu_share']:.1%}" for op in s.get("profile_top_ops_fixed_batch_step", [])[:6])
             + "."]
    return "\n".join(lines) + "\n"


def before_figures(args: argparse.Namespace, cohort: Path) -> dict:
    """This script's strokessl figures for the strokessl of ``args.before`` (a commit, checked out in
    a temporary git worktree and put first on ``PYTHONPATH``), on the same cohort, batch and workers,
    with that version's demo config; run before this version's own figures, on a quiet machine alike."""
    tree = (args.work / f"before-{args.before}").resolve()
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", "--force", str(tree), args.before],
                   check=True)
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        out = tree / "speed_before.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--no-peer", "--cohort", str(cohort),
                        "--config", str(tree / "configs" / "demo.yaml"), "--batch", str(args.batch),
                        "--workers", str(args.workers), "--calls", str(args.calls),
                        "--work", str((args.work / "before").resolve()), "--out", str(out)],
                       check=True, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
        return {"commit": commit, **json.loads(out.read_text())}
    finally:
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=HERE.parent / "configs" / "demo.yaml")
    parser.add_argument("--subjects", type=int, default=160)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per fixed-batch figure")
    parser.add_argument("--work", type=Path, default=Path("runs/speed"))
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/speed_<device>.json)")
    parser.add_argument("--before", metavar="COMMIT",
                        help="also measure strokessl at COMMIT (a git worktree) on the same cohort, without peers")
    parser.add_argument("--cohort", type=Path, help="an existing cohort.yaml instead of a new synthetic one")
    parser.add_argument("--no-peer", action="store_true", help="leave out the peer-style pipeline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cohort = args.cohort.resolve() if args.cohort else make_cohort(args.work, args.subjects, args.grid)
    before = before_figures(args, cohort) if args.before else None
    overrides = [f"cohort={cohort.resolve()}", f"pretrain.batch_size={args.batch}", f"data.workers={args.workers}",
                 f"data.cache_dir={(args.work / 'cache').resolve()}", "pretrain.val_fraction=0.1",
                 "pretrain.rows=all", "pretrain.epochs=2"]
    config = load_run_config(args.config, overrides)
    plain_config = load_run_config(args.config, [*overrides, "imaging.augment.enabled=false"])
    run_dir = args.work / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ours = strokessl_figures(config, plain_config, device, args.calls, run_dir)
    image_args = config.model.encoders["image"].args
    peers = {} if args.no_peer else {
        "MONAI default (stride-1 stem, full width)": peer_figures(cohort, config, device, 1, 1.0),
        "our stem and width": peer_figures(cohort, config, device, int(image_args.get("stem_stride", 2)),
                                           float(image_args.get("widen_factor", 1.0)))}
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}, "
              f"{os.cpu_count()} cores)", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "workers": args.workers, "config": str(args.config), "subjects": args.subjects, "grid": args.grid,
              "strokessl": ours, "peer": peers, **({"before": before} if before else {}),
              "seconds": time.perf_counter() - started}
    write_result(result, args.out or HERE / "results" / f"speed_{device.type}.json", markdown)
    return result


def write_result(result: dict, out: Path, markdown) -> None:
    """``result`` as JSON at ``out`` and its ``markdown(result)`` table beside it (``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    logger.info("wrote %s and %s\n%s", out, out.with_suffix(".md"), markdown(result))


if __name__ == "__main__":
    main()
