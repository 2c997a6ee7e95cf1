"""The ``finetune:`` section of a run config, as a typed dataclass (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.recalibration import RECALIBRATIONS
from multimodal.config import RunConfig, check_choice, from_dict
from multimodal.errors import ConfigError

MODES = ("frozen", "trainable", "scratch")
BRANCHES = ("both", "image", "table")
THRESHOLD_METHODS = ("youden", "sensitivity")
HEADS = ("mlp", "probe")
SELECTION = ("loss", "auroc")


@dataclass
class FinetuneConfig:
    mode: str = "frozen"  # frozen | trainable | scratch (random init, supervised baseline)
    branches: str = "both"  # both | image | table: image-only and tabular-only ablations
    fusion: str = "concat"  # concat | gated | attention
    hidden: int = 128
    # mlp: fusion + MLP head trained by SGD with early stopping; probe (frozen only): L2 logistic
    # regression on [frozen embeddings + the baseline's table features], C by inner CV;
    # null = probe when frozen, mlp otherwise (set by __post_init__)
    head: str | None = None
    probe_table_embedding: bool = True  # probe: add the frozen table encoder's embedding to the table features
    head_layers: int = 2  # hidden layers of the MLP head; 0 = a linear head (a linear probe when frozen)
    dropout: float = 0.3
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3  # the fusion head's learning rate
    encoder_lr_ratio: float = 0.1  # trainable: encoders learn at lr * ratio
    weight_decay: float = 0.01
    loss: str = "weighted_bce"  # a name from finetune.losses.LOSSES
    loss_args: dict[str, Any] = field(default_factory=dict)  # e.g. {gamma: 2.0} for focal
    balanced_sampler: bool = False
    folds: int = 5  # stratified, patient-level K-fold cross-validation
    # repeated CV with other fold seeds; null = auto: 3 repeats when the labeled cohort holds
    # <= SMALL_COHORT_POSITIVES positives (one split of ~10 positives per fold is noisy), else 1
    repeats: int | None = None
    inner_val_fraction: float = 0.2  # of each training fold: early stopping and the threshold
    patience: int = 10  # epochs without inner-validation improvement before stopping
    # loss: the inner-validation loss picks the epoch (smooth; AUROC over ~10 positives is noisy)
    select_on: str = "loss"
    recalibration: str = "none"  # none | platt: per-fold logistic recalibration on inner validation
    threshold: str = "youden"  # youden | sensitivity
    target_sensitivity: float | None = None  # with threshold: sensitivity
    bootstrap: int = 2000  # stratified bootstrap resamples for confidence intervals
    baselines: list[str] = field(default_factory=lambda: ["logistic_regression", "gradient_boosting"])
    # A fixed, labeled test cohort (cohort.yaml, relative to the run config): after cross-validation
    # the fold models (averaged) and the baselines refit on every labeled subject are scored on it.
    test_cohort: str | None = None

    def __post_init__(self) -> None:
        check_choice("finetune.mode", self.mode, MODES)
        check_choice("finetune.branches", self.branches, BRANCHES)
        check_choice("finetune.threshold", self.threshold, THRESHOLD_METHODS)
        check_choice("finetune.recalibration", self.recalibration, RECALIBRATIONS)
        if self.head is None:
            self.head = "probe" if self.mode == "frozen" else "mlp"
        check_choice("finetune.head", self.head, HEADS)
        check_choice("finetune.select_on", self.select_on, SELECTION)
        if self.head == "probe" and self.mode != "frozen":
            raise ConfigError(f"finetune.head: probe fits a linear model on frozen embeddings; it needs "
                              f"finetune.mode: frozen (got {self.mode}), or use head: mlp")
        if self.folds < 2 or (self.repeats is not None and self.repeats < 1):
            raise ConfigError("finetune.folds must be >= 2 and finetune.repeats >= 1")
        if not 0.0 < self.inner_val_fraction < 1.0:
            raise ConfigError(f"finetune.inner_val_fraction must be between 0 and 1, got {self.inner_val_fraction}")
        if self.head_layers < 0:
            raise ConfigError(f"finetune.head_layers must be >= 0 (0 = linear head), got {self.head_layers}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("finetune.epochs must be >= 1 and finetune.batch_size >= 2")


SMALL_COHORT_POSITIVES = 50
AUTO_REPEATS = 3


def resolved_repeats(settings: FinetuneConfig, positives: int) -> int:
    """``finetune.repeats``, or for ``null`` (auto): ``AUTO_REPEATS`` on a small labeled cohort
    (<= ``SMALL_COHORT_POSITIVES`` positives, DESIGN.md §6), 1 otherwise."""
    if settings.repeats is not None:
        return settings.repeats
    return AUTO_REPEATS if positives <= SMALL_COHORT_POSITIVES else 1


def finetune_config(run_config: RunConfig) -> FinetuneConfig:
    """The typed ``finetune:`` section of ``run_config``."""
    return from_dict(FinetuneConfig, run_config.finetune, where="finetune.")
