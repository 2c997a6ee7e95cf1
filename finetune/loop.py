"""Training one fold's classifier on inner-train, early-stopped on inner validation.

``train_fold`` reads top to bottom: one loss built from the training fold's labels, one AdamW over
the model's parameter groups, one loop over epochs; the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from finetune.config import FinetuneConfig
from finetune.inference import EmbeddingDataset, classifier_logits, predict_probabilities
from finetune.losses import balanced_sampler, create_loss, loss_arguments
from finetune.model import FusionClassifier, parameter_groups
from multimodal.data import MultimodalDataset, to_device
from multimodal.errors import StrokeSSLError


def _auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(roc_auc_score(labels, probabilities)) if len(set(labels.tolist())) == 2 else float("nan")


def train_fold(model: FusionClassifier, settings: FinetuneConfig, train: MultimodalDataset | EmbeddingDataset,
               val: MultimodalDataset | EmbeddingDataset,
               train_labels: np.ndarray, device: torch.device, seed: int,
               from_start: bool = False) -> list[dict[str, Any]]:
    """Train in place with early stopping on the inner-validation loss (or AUROC, ``select_on``);
    the best epoch's weights are kept and its history entry marked ``"selected": True``. With
    ``from_start`` the model as given competes as epoch 0 (LP-FT: a fold never ends above its
    probe's inner-validation loss). Returns the per-epoch history."""
    loss_fn = create_loss(settings.loss, **{**loss_arguments(settings.loss, train_labels), **settings.loss_args}).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings.mode, settings.lr, settings.encoder_lr_ratio,
                                                   settings.weight_decay, settings.layer_decay))
    generator = torch.Generator().manual_seed(seed)
    sampler = balanced_sampler(train_labels, generator) if settings.balanced_sampler else None
    loader = DataLoader(train, batch_size=settings.batch_size, sampler=sampler, shuffle=sampler is None,
                        generator=generator, drop_last=len(train) > settings.batch_size)
    best, best_state, best_entry, waited, history = -math.inf, None, 0, 0, []
    val_labels = val.labels.numpy()
    for epoch in range(-1 if from_start else 0, settings.epochs):  # epoch -1: the model as given
        entry: dict[str, Any] = {"epoch": epoch + 1}
        if epoch >= 0:
            if isinstance(train, MultimodalDataset):
                train.set_epoch(epoch)
            model.train()
            total = 0.0
            for batch in loader:
                batch = to_device(batch, device)
                loss = loss_fn(classifier_logits(model, batch), batch["label"])
                if not torch.isfinite(loss):
                    raise StrokeSSLError(f"fine-tuning loss became {loss.item()} in epoch {epoch + 1}; lower finetune.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            entry["train_loss"] = total / max(len(loader), 1)
        val_prob = predict_probabilities(model, val, settings.batch_size, device)
        val_logit = torch.logit(torch.as_tensor(val_prob, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)).float()
        # The training loss (class weights of the training fold) on inner validation.
        entry["val_loss"] = float(loss_fn(val_logit.to(device), val.labels.to(device)))
        entry["val_auroc"] = _auroc(val_labels, val_prob)
        history.append(entry)
        score = -entry["val_loss"] if settings.select_on == "loss" else entry["val_auroc"]
        if score > best or best_state is None:
            best, best_state, best_entry, waited = score, copy.deepcopy(model.state_dict()), len(history) - 1, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    history[best_entry]["selected"] = True
    model.load_state_dict(best_state)
    return history
