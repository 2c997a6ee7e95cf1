"""One training step, one epoch, one evaluation — read top to bottom, no callback framework.

``PretrainStep`` computes every configured objective inside ``forward`` so that
DistributedDataParallel sees a single forward per step (the matching head and reconstruction
head are then ordinary parts of the graph it synchronises).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from multimodal.data import to_device
from multimodal.embedding_space import embedding_metrics
from multimodal.errors import StrokeSSLError
from multimodal.imaging import DeviceAugmentation
from pretrain import distributed
from pretrain.config import PretrainConfig
from pretrain.objectives import (
    EmbeddingQueue,
    clip_loss,
    itm_loss,
    itm_noise,
    mask_features,
    masked_tabular_loss,
    masked_volume_loss,
    paired_clip_loss,
    patch_mask,
    scarf_corrupt,
    scarf_loss,
    simclr_loss,
    table_signature,
)

logger = logging.getLogger(__name__)

SPEED_KEYS = ("subjects_per_s", "data_wait_share")  # train_one_epoch's wall-clock figures beside the terms


def step_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (seed, step, ...): the same on every rank when the
    parts are, so shared draws (ITM noise) agree across processes and resume replays them."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class PretrainStep(nn.Module):
    """``forward(batch, step) -> {"loss": total, "<objective>_loss": ..., metrics...}``.

    ``batch``: ``image`` (B, C, H, W, D) (or (B, 2, C, H, W, D) for simclr), ``table`` dict of
    (B, ...) tensors, ``index`` (B,) cohort positions (subject ids for the queue).
    """

    def __init__(self, model: nn.Module, pretrain: PretrainConfig, category_sizes: list[int],
                 table_pool: dict[str, torch.Tensor], seed: int) -> None:
        super().__init__()
        self.model = model
        self.pretrain = pretrain
        self.weights = dict(pretrain.objectives)
        self.category_sizes = list(category_sizes)
        self.seed = seed
        self.queue = EmbeddingQueue(pretrain.queue_size, pretrain.projection_dim) if pretrain.queue_size else None
        for key, value in table_pool.items():  # SCARF's empirical marginals, moved with the module
            self.register_buffer(f"pool_{key}", value, persistent=False)

    def forward(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.pretrain.modalities == ("image",):  # simclr and / or masked_volume
            terms.update(self._image_only(batch, step))
        elif "scarf" in self.weights:
            pool = {k: getattr(self, f"pool_{k}") for k in ("continuous", "categorical", "missing")}
            table = batch["table"]
            # one draw for the global batch, each rank its rows: 1 and N processes corrupt alike
            corrupted = scarf_corrupt(table["continuous"], table["categorical"], table["missing"], pool,
                                      self.pretrain.scarf_corruption, step_generator(self.seed, step, 1),
                                      distributed.rank(), distributed.world_size())
            terms.update(scarf_loss(self.model.encode_table(table), self.model.encode_table(corrupted),
                                    self.pretrain.scarf_temperature))
        else:
            terms.update(self._multimodal(batch, step))
        total = sum(self.weights[name] * terms[f"{name}_loss"] for name in self.weights)
        return {"loss": total, **terms}

    def _mask_volume(self, volume: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W, D)`` -> (the volume with masked cubes zeroed, the ``(B, 1, H, W, D)`` mask).

        The cubes are drawn for the whole global batch from a generator every rank seeds alike
        (as ITM's noise), each rank taking its own rows: 1 and N processes mask the same voxels,
        and a resumed run replays the draw of each step."""
        generator = step_generator(self.seed, step, 3)
        mask = patch_mask(volume.shape[0], volume.shape[2:], self.pretrain.masked_volume_patch,
                          self.pretrain.masked_volume_ratio, generator, distributed.rank(),
                          distributed.world_size()).to(volume.device)
        return volume.masked_fill(mask, 0.0), mask  # 0 = every channel's mean after the z-score

    def _image_only(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        image = batch["image"]  # (B, 2, C, H, W, D) with simclr, else (B, C, H, W, D)
        terms: dict[str, torch.Tensor] = {}
        if "simclr" in self.weights:
            # One encoder pass over both views (B*2 volumes); no BatchNorm, so nothing leaks between them.
            z = self.model.encode_image(torch.cat([image[:, 0], image[:, 1]]))
            first, second = z.chunk(2)
            terms.update(simclr_loss(first, second, self.pretrain.simclr_temperature))
        if "masked_volume" in self.weights:  # a pass of its own over the (first) view, masked
            volume = image[:, 0] if image.ndim == 6 else image
            masked, mask = self._mask_volume(volume, step)
            reconstruction = self.model(masked_image=masked)["image_reconstruction"]
            terms.update(masked_volume_loss(reconstruction, volume, mask))
        return terms

    def _multimodal(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        table = batch["table"]
        image, masked_image, shared = batch["image"], None, self.pretrain.masked_volume_shared_view
        if "masked_volume" in self.weights:
            # The view that meets the table is masked. Separate views (default): clip embeds the
            # unmasked volume and the masked one costs a second encoder pass (+ the decoder).
            # Shared (FLIP, Li et al. CVPR 2023): clip reads the masked volume and one pass serves
            # both (the decoder is the only extra), at the price of clip never seeing a whole volume.
            # Measured (benchmarks/pretrain_speed.py, 16 x 2 x 32^3, demo encoders, 1 CPU thread):
            # a step takes 0.55 s with clip alone, 0.99 s with separate views, 0.59 s shared.
            volume = image[:, 0] if image.ndim == 6 else image
            masked_image, volume_mask = self._mask_volume(volume, step)
            if shared:
                image = torch.stack([masked_image, image[:, 1]], dim=1) if image.ndim == 6 else masked_image
        masked, mask = None, None
        if "masked_tabular" in self.weights:  # hide present features; the encoder uses its missing token
            mask = mask_features(table["missing"], self.pretrain.mask_rate, step_generator(self.seed, step, 2),
                                 distributed.rank(), distributed.world_size())
            masked = dict(table, missing=table["missing"] | mask)
        others = [m for m in self.model.modalities if m not in ("image", "table")]
        out = self.model(image=image, table=table, masked_table=masked,
                         masked_image=None if shared else masked_image,
                         reconstruct_image=shared and masked_image is not None, **{m: batch[m] for m in others})
        terms: dict[str, torch.Tensor] = {"temperature": 1.0 / out["logit_scale"].detach()}
        queue = self.queue.get() if self.queue is not None else None
        clip = clip_loss(out["image_features"], out["table_features"], out["logit_scale"],
                         image_weight=self.pretrain.clip_image_weight, gather=True, queue=queue,
                         row_ids=batch["index"])
        terms["clip_loss"] = clip["clip_loss"]
        if others:  # further modalities: symmetric CLIP of each with every modality before it, over the
            # rows having both (a report may be missing), weighted by pretrain.clip_pairs (1 unless named)
            names, present = ["image", "table", *others], batch.get("present", {})
            total, weights = clip["clip_loss"], 1.0
            for a, b in [(a, b) for j, b in enumerate(names) for a in names[:j] if b in others]:
                valid = _present(present, a, batch["index"]) & _present(present, b, batch["index"])
                pair = paired_clip_loss(out[f"{a}_features"], out[f"{b}_features"], out["logit_scale"], valid)
                weight = self.pretrain.clip_pairs.get(f"{a}-{b}", 1.0)
                terms[f"clip_{a}_{b}"] = pair.detach()
                total, weights = total + weight * pair, weights + weight
            terms["clip_loss"] = total / weights
        if "image_view_features" in out:  # simclr beside clip: two views, the first one met the table
            first, second = out["image_view_features"].chunk(2)
            terms.update(simclr_loss(first, second, self.pretrain.simclr_temperature))
        if "itm" in self.weights:
            # Gumbel noise for the whole global N x N matrix from a seed every rank shares.
            noise_i2t, noise_t2i = itm_noise(len(batch["index"]), self.seed, step,
                                             distributed.rank(), distributed.world_size())
            signature = table_signature(table["continuous"], table["categorical"], table["missing"],
                                        self.category_sizes)
            terms.update(itm_loss(
                out["image_tokens"], out["table_tokens"], self.model.match_logits,
                clip["similarity"], clip["similarity_t2i"], signature,
                noise_i2t.to(signature.device), noise_t2i.to(signature.device),
                duplicate_threshold=self.pretrain.itm_duplicate_threshold,
                hard_fraction=self.pretrain.itm_hard_fraction,
            ))
        if mask is not None:
            continuous, logits = self.model.reconstruct(out["masked_table_tokens"], out["image_tokens"])
            terms.update(masked_tabular_loss(continuous, logits, table["continuous"], table["categorical"],
                                             table["missing"], mask))
        if masked_image is not None:
            terms.update(masked_volume_loss(out["image_reconstruction"], volume, volume_mask))
        if self.queue is not None:
            with torch.no_grad():
                self.queue.push(distributed.all_gather_no_grad(out["image_features"].detach()),
                                distributed.all_gather_no_grad(out["table_features"].detach()),
                                distributed.all_gather_no_grad(batch["index"]))
        return terms


def _present(present: dict[str, torch.Tensor], modality: str, index: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the batch rows having ``modality`` (all of them when the batch does not say)."""
    flags = present.get(modality)
    return flags.bool() if flags is not None else torch.ones_like(index, dtype=torch.bool)


def train_one_epoch(
    trained: nn.Module, step_module: PretrainStep, loader: Any, optimizer: torch.optim.Optimizer,
    scheduler: Any, scaler: torch.amp.GradScaler, autocast: Callable[[], contextlib.AbstractContextManager],
    pretrain: PretrainConfig, epoch: int, step: int, writer: Any, device: torch.device,
    device_augment: DeviceAugmentation | None = None,
) -> tuple[int, dict[str, float]]:
    """One pass over ``loader``; returns the new global (optimiser) step and the epoch means of every
    term, with the epoch's ``subjects_per_s`` (end to end, loader included) and ``data_wait_share``
    (the share of the epoch the loop waited for the loader).

    Each optimiser step sums the gradients of ``pretrain.accumulate_steps`` micro-batches (DDP
    synchronises on the last one only, ``no_sync``); the micro-batches left over at the epoch's end
    are not trained on (the next epoch's shuffle reaches them). The host waits for the device only
    every ``pretrain.log_every`` steps (and at the end): the terms are summed on the device, and their
    finiteness and rank mean are read then, in one stacked all-reduce, with the step time and the
    subjects per second since the last read. A non-finite loss stops the run at that read, before any
    checkpoint holds its weights (checkpoints are written between epochs). ``device_augment``: the
    augmentation of batches the loader left un-augmented (``pretrain.augment_on: device``)."""
    trained.train()
    accumulate = pretrain.accumulate_steps
    micro_batches = (len(loader) // accumulate) * accumulate
    sums: torch.Tensor | None = None  # (T,) running sums of the terms, on the device
    names: list[str] = []
    finite = torch.ones((), dtype=torch.bool, device=device)
    batches, subjects, waited = 0, 0, 0.0
    clock = _Clock()
    bar = tqdm(total=micro_batches // accumulate, desc=f"epoch {epoch + 1}/{pretrain.epochs}", unit="step",
               leave=False, disable=not distributed.is_main())
    batch_iter = iter(loader)
    for micro in range(micro_batches):
        waiting = time.perf_counter()
        batch = to_device(next(batch_iter), device)
        waited += time.perf_counter() - waiting
        clock.waited += time.perf_counter() - waiting
        if "augment" in batch:  # outside autocast: the views are resampled in float32, as in the loader
            with torch.no_grad():
                batch["image"] = device_augment(batch["image"], **batch.pop("augment"))
        last = (micro + 1) % accumulate == 0
        if micro % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
        # DDP: gradients are all-reduced on the group's last backward only
        sync = contextlib.nullcontext() if last or not hasattr(trained, "no_sync") else trained.no_sync()
        with sync:
            with autocast():
                # each micro-batch its own random draws (ITM noise, masks): (step, micro) -> one index
                terms = trained(batch, step * accumulate + micro % accumulate)
            loss = terms["loss"]
            finite &= torch.isfinite(loss.detach())
            scaler.scale(loss / accumulate).backward()
        names = names or list(terms)
        current = torch.stack([terms[k].detach().float().reshape(()) for k in names])
        sums = current if sums is None else sums + current
        batches += 1
        rows = len(batch["index"]) * distributed.world_size()
        subjects += rows
        clock.subjects += rows
        if not last:
            continue
        if pretrain.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(step_module.parameters(), pretrain.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        clock.steps += 1
        bar.update(1)
        if step % pretrain.log_every == 0 or step == 1:
            _check_finite(finite, epoch, step)  # the host waits for the device here
            values = dict(zip(names, distributed.all_reduce_mean(current).tolist(), strict=True))  # the global batch
            speed = clock.read()
            bar.set_postfix(loss=f"{values['loss']:.3f}", subjects_per_s=f"{speed['subjects_per_s']:.1f}")
            if writer is not None:
                for key, value in {**values, **speed}.items():
                    writer.add_scalar(f"train/{key}", value, step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
    bar.close()
    _check_finite(finite, epoch, step)
    if sums is None:
        return step, {}
    elapsed = clock.since_epoch()
    means = distributed.all_reduce_mean(sums / batches).tolist()  # the mean of the ranks' means, as per step
    return step, {**dict(zip(names, means, strict=True)), "subjects_per_s": subjects / elapsed,
                  "data_wait_share": waited / elapsed}


class _Clock:
    """Wall-clock of the epoch and of the interval since the last log read: subjects per second,
    seconds per optimiser step and the share of the interval spent waiting for the loader (read
    right after a host-device sync, so the device's queued work is counted)."""

    def __init__(self) -> None:
        self.epoch_start = self.start = time.perf_counter()
        self.subjects, self.steps, self.waited = 0, 0, 0.0

    def read(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        speed = {"subjects_per_s": self.subjects / elapsed, "step_time_s": elapsed / max(self.steps, 1),
                 "data_wait_share": self.waited / elapsed}
        self.start, self.subjects, self.steps, self.waited = now, 0, 0, 0.0
        return speed

    def since_epoch(self) -> float:
        return max(time.perf_counter() - self.epoch_start, 1e-9)


def _check_finite(finite: torch.Tensor, epoch: int, step: int) -> None:
    """Stop the run when a loss since the last check was not finite (one host read)."""
    if not bool(distributed.all_reduce_mean(finite.float()) == 1.0):
        raise StrokeSSLError(
            f"pretraining loss became non-finite by epoch {epoch + 1}, step {step}; "
            "lower pretrain.lr, raise pretrain.temperature_init or check the inputs for NaN"
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[dict[str, float], dict[str, Any]]:
    """Embed every validation subject (no augmentation) and measure retrieval, alignment, uniformity.

    Returns the metrics and ``{"image": (N, P) | None, "table": (N, P) | None, "subject_id": [...]}``.
    """
    was_training = model.training
    model.eval()
    images, tables, ids = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast():
            if "image" in batch:
                images.append(model.encode_image(batch["image"]).float().cpu())
            if "table" in batch:
                tables.append(model.encode_table(batch["table"]).float().cpu())
        ids += list(batch["subject_id"])
    model.train(was_training)
    image = torch.cat(images) if images else None
    table = torch.cat(tables) if tables else None
    return embedding_metrics(image, table), {"image": image, "table": table, "subject_id": ids}
