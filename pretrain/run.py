"""``strokessl pretrain``: a run config → a finished run folder.

Set-up (distributed, seeds, run folder, data, model, optimiser), resume, the epoch loop, atomic
checkpoints and the final artefacts. The per-step work lives in ``pretrain.loop``.

Run folder::

    config.yaml                  resolved config, exactly as run
    run.json                     the run record (kind, finished, weight digests: multimodal.run_folder)
    run_info.json                versions, git commit, world size, start (and every resume)
    preprocessor.json            tabular state fitted on the training split
    checkpoints/weights-NNNN.safetensors + state-NNNN.pt + latest.json   per epoch, for resume
    checkpoints/model.safetensors, image_encoder.safetensors, table_encoder.safetensors  (at the end)
    tb/                          TensorBoard scalars and embeddings
    metrics.json                 final validation metrics + per-epoch history (written last)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from multimodal.checkpoint import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    load_weights,
    make_folder,
    save_weights,
)
from multimodal.cohort import outcome_names
from multimodal.config import (
    RunConfig,
    changed_keys,
    cohort_roles,
    load_cohort_config,
    load_run_config,
    save_config,
)
from multimodal.config_mapping import to_dict
from multimodal.data import (
    BUILT_IN_MODALITIES,
    encoder_sizes,
    fit_encoders_to_data,
    seed_everything,
)
from multimodal.errors import ConfigError, RunFolderError, StrokeSSLError
from multimodal.imaging import DeviceAugmentation
from multimodal.plugins import plugin_modules
from multimodal.run_folder import (
    PRETRAINING,
    RunFacts,
    begin_record,
    check_writable,
    finish_record,
    has_started,
    record_facts,
    record_weights,
    run_paths,
)
from multimodal.run_lock import run_lock
from pretrain import distributed
from pretrain.acceleration import choose_memory_format, compile_encoders
from pretrain.config import PretrainConfig, pretrain_config
from pretrain.data import build_pretrain_data, make_loader
from pretrain.gpu import check_mixed_precision
from pretrain.loop import SPEED_KEYS, PretrainStep, evaluate, train_one_epoch
from pretrain.model import build_pretrain_model, encoder_state_dicts

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------- set-up helpers
def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA with bf16, fp16 on other CUDA, fp32 on CPU (bf16 measured slower there)."""
    if precision != "auto":
        if precision != "fp32" and device.type != "cuda":
            logger.warning("precision %s requested on %s; mixed precision is rarely faster on CPU", precision, device)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model: torch.nn.Module, pretrain: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings of positions / tokens and the temperature."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(k in name for k in ("token", "pos_embed", "logit_scale")):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": pretrain.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=pretrain.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, pretrain: PretrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` at the last step."""
    total = max(1, pretrain.epochs * steps_per_epoch)
    warmup = min(int(pretrain.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return pretrain.min_lr_ratio + (1 - pretrain.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------- run folder and resume
# A resumed run may be extended (more epochs) and may live in a moved folder.
_RESUMABLE_CHANGES = ("pretrain.epochs", "run", "data.cache_dir")


def prepare_run_dir(run_config: RunConfig, resume: bool) -> tuple[Path, bool]:
    """Create the run folder, or check it matches the config on ``--resume``; returns the folder
    and whether there is a run to resume (``--resume`` on an empty folder starts a new run)."""
    run_dir = Path(run_config.run.dir)
    saved = run_paths(run_dir).config
    if resume and not saved.is_file():
        logger.info("nothing to resume in %s: starting a new run there", run_dir)
        resume = False
    started = has_started(run_dir)
    if resume and not started and saved.is_file():
        # Stopped (or refused) before its first epoch: nothing trained, so a corrected config starts afresh.
        logger.info("%s stopped before its first epoch: starting it again with this config", run_dir)
        resume = False
    if resume:
        previous = load_run_config(saved)
        previous.run.dir = run_config.run.dir
        changed = changed_keys(to_dict(previous), to_dict(run_config), _RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"cannot resume {run_dir}: the config differs from the one it started with in {changed}; "
                "only pretrain.epochs may change (start a new run with --set run.dir=...)"
            )
        return run_dir, True
    if started:
        raise StrokeSSLError(
            f"run folder {run_dir} already holds a run; add --resume to continue it, "
            "or choose another folder with --set run.dir=..."
        )
    return run_dir, False


def save_checkpoint(checkpoints: Path, epoch: int, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Epoch-numbered weights (``.safetensors``) and training state (``.pt``: optimiser, scheduler,
    scaler, RNG, progress — tensors and plain types only), then ``latest.json`` is replaced
    atomically to point at them. A kill at any moment leaves a consistent pair to resume from.
    Only the two newest pairs are kept."""
    save_weights(weights, checkpoints / f"weights-{epoch:04d}.safetensors")
    with atomic_path(checkpoints / f"state-{epoch:04d}.pt") as tmp:
        torch.save(state, tmp)
    atomic_write_text(checkpoints / "latest.json", json.dumps({"epoch": epoch}))
    for old in [*checkpoints.glob("weights-*.safetensors"), *checkpoints.glob("state-*.pt")]:
        if int(old.stem.split("-")[1]) < epoch - 1:
            old.unlink(missing_ok=True)


def load_checkpoint(checkpoints: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest (weights, state) pair that ``latest.json`` names, or None before the first epoch."""
    pointer = checkpoints / "latest.json"
    if not pointer.is_file():
        return None
    complete = sorted(int(p.stem.split("-")[1]) for p in checkpoints.glob("weights-*.safetensors")
                      if (checkpoints / f"state-{p.stem.split('-')[1]}.pt").is_file())
    try:
        named = int(json.loads(pointer.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):  # emptied or edited by hand (it is written atomically)
        named, problem = None, "is damaged"
    else:
        problem = f"names epoch {named}, whose checkpoint files are missing"
    if named in complete:
        epoch = named
    else:  # the newest complete epoch the pointer allows: re-training the rest gives the same weights
        usable = [e for e in complete if named is None or e <= named]
        if not usable:
            raise StrokeSSLError(f"{pointer} {problem} and {checkpoints} holds no complete epoch before it; "
                                 "start a new run (remove the folder or choose another run.dir)")
        epoch = usable[-1]
        logger.warning("%s %s: resuming from epoch %d, the newest complete checkpoint", pointer, problem, epoch)
    weights_path, state_path = checkpoints / f"weights-{epoch:04d}.safetensors", checkpoints / f"state-{epoch:04d}.pt"
    try:
        weights = load_weights(weights_path, strip_prefixes=())
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file raises many types
        raise StrokeSSLError(
            f"cannot read the epoch-{epoch} checkpoint in {checkpoints} ({err}); "
            "point latest.json at an older epoch or start a new run"
        ) from err
    return weights, state


def rng_state() -> dict[str, Any]:
    """Plain-typed RNG state for resume: Python and torch (CPU, CUDA). NumPy's global RNG is not
    used in training (augmentations are seeded per item), and ``weights_only=True`` refuses
    ``np.random.get_state()``'s arrays anyway."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- the run
def run_pretrain(config_path: str | Path, overrides: list[str] | None = None,
                 resume: bool | str | Path = False) -> Path:
    """Pretrain as the config says and return the run folder. ``resume`` may name the folder."""
    run_config = load_run_config(config_path, overrides)
    if isinstance(resume, (str, Path)) and not isinstance(resume, bool):
        if not Path(resume).is_dir():  # a mistyped folder would otherwise start a new run there
            what = "is a file" if Path(resume).exists() else "does not exist"
            raise RunFolderError(f"--resume {resume} {what}; give the run folder to continue, or --resume alone "
                                 f"to continue (or start) run.dir ({run_config.run.dir})")
        run_config.run.dir = Path(resume).resolve()
        resume = True
    pretrain = pretrain_config(run_config)
    cohort_config = load_cohort_config(run_config.cohort)
    check_writable(Path(run_config.run.dir), PRETRAINING, [cohort_config.csv, cohort_config.source])
    device = distributed.setup_distributed()
    try:  # under torchrun rank 0 alone holds the lock and writes the run record
        with run_lock(run_config.run.dir, "pretrain") if distributed.is_main() else contextlib.nullcontext():
            return _run(run_config, cohort_config, pretrain, bool(resume), device)
    finally:
        distributed.cleanup_distributed()


def _run(run_config: RunConfig, cohort_config: Any, pretrain: PretrainConfig, resume: bool,
         device: torch.device) -> Path:
    run_dir, resume = prepare_run_dir(run_config, resume)
    paths = run_paths(run_dir)
    checkpoints = paths.checkpoints
    main = distributed.is_main()
    if main:
        make_folder(checkpoints)
        begin_record(run_dir, PRETRAINING)
        if not resume:
            save_config(run_config, paths.config)
            # A run that stopped before its first epoch may have left a preprocessor fitted under
            # another config: a new run fits its own.
            paths.preprocessor.unlink(missing_ok=True)
        now = {
            "strokessl": importlib.metadata.version("strokessl"), "torch": torch.__version__,
            "git_commit": _git_commit(), "world_size": distributed.world_size(), "device": str(device),
            "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        info_path = run_dir / "run_info.json"
        if resume and info_path.is_file():  # keep the first start; each resume is appended
            info = json.loads(info_path.read_text())
            info.setdefault("resumed", []).append(now)
        else:
            info = now
        atomic_write_text(info_path, json.dumps(info, indent=2))
    distributed.barrier()
    seed_everything(run_config.seed + distributed.rank())

    data = build_pretrain_data(run_config, cohort_config, pretrain, run_dir)
    sizes = encoder_sizes(data.modalities, data.sequences, data.preprocessor)
    model = build_pretrain_model(run_config.model, pretrain, sizes)
    fit_encoders_to_data({m: getattr(model, f"{m}_encoder") for m in data.modalities}, data.train)
    model = model.to(device)
    precision = resolve_precision(pretrain.precision, device)
    check_mixed_precision(precision, device)  # bf16 conv3d: known bad stacks, and a check on this device
    if "image" in data.modalities:
        choose_memory_format(pretrain.memory_format, model.image_encoder, device,
                             lambda: _example_images(data.train, pretrain.batch_size),
                             lambda: autocast_context(precision, device))
    if pretrain.compile:
        compile_encoders(model, data.modalities)
    device_augment = DeviceAugmentation(data.augment, run_config.seed, device) if pretrain.augment_on == "device" else None
    step_module = PretrainStep(model, pretrain, data.preprocessor.category_sizes, data.table_pool,
                               seed=run_config.seed).to(device)
    trained = step_module
    if distributed.world_size() > 1:
        # Which parameters a step uses depends on the objectives (clip alone never reads the image
        # tokens' positions or a matching head), so DDP must look for unused ones: without it the
        # default clip run failed at its second step under torchrun.
        trained = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)
    train_loader = make_loader(data.train, pretrain.batch_size, run_config.data.workers, run_config.seed, train=True)
    val_loader = make_loader(data.val, pretrain.batch_size, run_config.data.workers, run_config.seed, train=False)
    steps_per_epoch = len(train_loader) // pretrain.accumulate_steps  # optimiser steps
    optimizer = build_optimizer(step_module, pretrain)
    scheduler = build_scheduler(optimizer, pretrain, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start_epoch, step, history = 0, 0, []
    checkpoint = load_checkpoint(checkpoints) if resume else None
    if checkpoint is not None:
        weights, state = checkpoint
        step_module.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        set_rng_state(state["rng"][distributed.rank()] if distributed.rank() < len(state["rng"]) else state["rng"][0])
        logger.info("resuming %s at epoch %d (step %d)", run_dir, start_epoch, step)
    elif resume:
        logger.info("no training state in %s yet: starting from epoch 0", run_dir)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
    logger.info("pretraining %s on %s (%s, %d process(es)), %d steps per epoch",
                "+".join(pretrain.objectives), device, precision, distributed.world_size(), steps_per_epoch)

    evaluation = None  # the last epoch's (metrics, embeddings): _finish publishes them as they are
    for epoch in range(start_epoch, pretrain.epochs):
        train_loader.sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        step, train_metrics = train_one_epoch(
            trained, step_module, train_loader, optimizer, scheduler, scaler,
            lambda: autocast_context(precision, device), pretrain, epoch, step, writer, device, device_augment,
        )
        # the epoch's speed goes to the log and TensorBoard, not the history: a resumed run's history is
        # the uninterrupted one's, bit for bit
        speed = {k: train_metrics.pop(k) for k in SPEED_KEYS if k in train_metrics}
        entry = {"epoch": epoch + 1, "step": step, **{f"train/{k}": v for k, v in train_metrics.items()}}
        if main:
            evaluation = evaluate(model, val_loader, device, lambda: autocast_context(precision, device))
            val_metrics = evaluation[0]
            entry.update({f"val/{k}": v for k, v in val_metrics.items()})
            for key, value in val_metrics.items():
                writer.add_scalar(f"val/{key}", value, step)
            for key, value in speed.items():
                writer.add_scalar(f"epoch/{key}", value, step)
            logger.info("epoch %d/%d: %s%s", epoch + 1, pretrain.epochs, _short(entry),
                        "".join(f", {k}={v:.3g}" for k, v in speed.items()))
        history.append(entry)
        rng = _gather_rng()
        if main:
            save_checkpoint(checkpoints, epoch + 1, step_module.state_dict(), {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step, "history": history,
                "rng": rng, "config": to_dict(run_config),
            })
        distributed.barrier()

    if main:
        if evaluation is None:  # resumed after the last epoch: nothing was evaluated in this process
            evaluation = evaluate(model, val_loader, device, lambda: autocast_context(precision, device))
        _finish(run_dir, model, evaluation, history, writer, data, pretrain, run_config)
    distributed.barrier()
    return run_dir


def _example_images(dataset: Any, size: int) -> torch.Tensor:
    """``(B, C, H, W, D)``: the first ``size`` training volumes (first views), for the format timing."""
    images = [dataset[i]["image"] for i in range(min(size, len(dataset)))]
    return torch.stack([image[0] if image.ndim == 5 else image for image in images])


def _gather_rng() -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), so a resumed run continues each rank's stream."""
    local = rng_state()
    if distributed.world_size() == 1:
        return [local]
    states: list[Any] = [None] * distributed.world_size()
    torch.distributed.all_gather_object(states, local)
    return states


def _short(entry: dict[str, Any]) -> str:
    keys = ("train/loss", "val/recall@1_image_to_table", "val/recall@5_image_to_table",
            "val/alignment")
    return ", ".join(f"{k.split('/', 1)[1]}={entry[k]:.4g}" for k in keys if k in entry)


def _finish(run_dir: Path, model: torch.nn.Module, evaluation: tuple[dict[str, float], dict[str, Any]],
            history: list[dict[str, Any]], writer: Any, data: Any, pretrain_settings: PretrainConfig,
            run_config: RunConfig) -> None:
    """Publish weights, validation embeddings and metrics.json (last: its presence marks a finished run)."""
    paths = run_paths(run_dir)
    checkpoints = paths.checkpoints
    published = {checkpoints / "model.safetensors": model.state_dict(),
                 **{checkpoints / f"{name}.safetensors": state for name, state in encoder_state_dicts(model).items()}}
    for path, state in published.items():
        save_weights(state, path)
    record_weights(run_dir, published)
    val_metrics, embeddings = evaluation
    # Subject ids are patient identifiers: the projector shows each point's label unless asked.
    labels = dict(zip(data.cohort.ids, data.cohort.labels, strict=True))
    metadata = list(embeddings["subject_id"]) if pretrain_settings.log_subject_ids else outcome_names(
        np.array([labels[s] for s in embeddings["subject_id"]]))
    for name, features in embeddings.items():
        if name != "subject_id" and features is not None:
            writer.add_embedding(features, metadata=metadata, tag=f"val_{name}",
                                 global_step=history[-1]["step"] if history else 0)
    writer.close()
    # What fine-tuning must know, recorded once (its sequences no longer depend on the cohort file).
    plugins = {m: run_config.model.encoders[m].name for m in data.modalities if m not in BUILT_IN_MODALITIES}
    record_facts(run_dir, RunFacts(sequences=list(data.sequences), column_roles=cohort_roles(data.cohort.config),
                                   plugins=plugins, plugin_modules=plugin_modules(plugins)))
    atomic_write_json(paths.metrics, {"final": val_metrics, "history": history, "val_subjects": len(data.val),
                                                 "train_subjects": len(data.train)})
    finish_record(run_dir)
    logger.info("finished: %s", _short({f"val/{k}": v for k, v in val_metrics.items()}))
