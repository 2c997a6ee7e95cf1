"""The ``finetune:`` section of a run config, as a typed dataclass (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.baselines import BASELINES
from finetune.losses import LOSSES
from finetune.recalibration import RECALIBRATIONS
from multimodal.config import RunConfig
from multimodal.config_checks import check_choice, check_range
from multimodal.config_mapping import from_dict
from multimodal.errors import ConfigError
from multimodal.outcome import TIME_UNITS, Horizon, run_horizon

MODES = ("frozen", "trainable", "scratch")
THRESHOLD_METHODS = ("youden", "sensitivity")
HEADS = ("mlp", "probe")
SELECTION = ("loss", "auroc")
PROBE_COMPONENTS_FROM = ("fold", "pretraining")
TASKS = ("binary", "survival")
DEFAULT_SURVIVAL_HORIZON = Horizon(12, "months")


@dataclass
class FinetuneConfig:
    # binary: recurrence (the cohort's label, or the label at ``horizon``); survival: time to recurrence
    # from the cohort's time and event columns (a Cox model; metrics at ``horizon``, 12 months if unset)
    task: str = "binary"
    mode: str = "frozen"  # frozen | trainable | scratch (random init, supervised baseline)
    # both (every modality the model reads) | one modality (image, table, report) | a subset joined by +
    # (image+report, table+report): the ablations
    branches: str = "both"
    fusion: str = "concat"  # concat | gated | attention
    hidden: int = 128
    # mlp: fusion + MLP head trained by SGD with early stopping; probe (frozen or trainable): L2 logistic
    # regression on [frozen embeddings + the baseline's table features], C by inner CV; trainable then
    # fine-tunes encoders and probe from it (LP-FT); null = probe unless scratch (set by __post_init__)
    head: str | None = None
    probe_table_embedding: bool = True  # probe: add the frozen table encoder's embedding to the table features
    # probe: the per-block principal components come from the training fold, or from every subject
    # the pretraining run read (its cohort and pretrain.rows; no labels)
    probe_components: str = "fold"
    probe_pcs: int | None = 16  # probe: principal components kept per embedding block; null = every column
    head_layers: int = 2  # hidden layers of the MLP head; 0 = a linear head (a linear probe when frozen)
    dropout: float = 0.3
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3  # the fusion head's learning rate
    encoder_lr_ratio: float = 0.1  # trainable: encoders learn at lr * ratio
    layer_decay: float = 0.75  # trainable: each earlier image-encoder stage at this times the next (1 = off)
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
    # time-to-event cohorts (cohort.yaml time / event): the binary label is recurrence by this horizon
    horizon: float | None = None
    horizon_unit: str = "months"  # days | weeks | months | years

    @property
    def outcome_horizon(self) -> Horizon | None:
        """``horizon`` with its unit (``multimodal.outcome``), or None."""
        return run_horizon({"horizon": self.horizon, "horizon_unit": self.horizon_unit})

    @property
    def survival_horizon(self) -> Horizon:
        """Where the survival task reads its time-dependent metrics and probabilities: ``horizon``, or
        ``DEFAULT_SURVIVAL_HORIZON`` when unset."""
        return self.outcome_horizon or DEFAULT_SURVIVAL_HORIZON

    def horizon_record(self, time_unit: str) -> dict[str, Any] | None:
        """The horizon of the run's outcome as the run record keeps it (None for a binary label without
        one): ``{"value", "unit", "time_unit", "in_time_unit"}`` (``in_time_unit``: in the cohort's
        time column's ``time_unit``)."""
        horizon = self.survival_horizon if self.task == "survival" else self.outcome_horizon
        if horizon is None:
            return None
        return {"value": horizon.value, "unit": horizon.unit, "time_unit": time_unit,
                "in_time_unit": horizon.in_unit(time_unit)}

    def __post_init__(self) -> None:
        check_choice("finetune.task", self.task, TASKS)
        check_choice("finetune.mode", self.mode, MODES)
        if self.branches != "both" and not all(p.isidentifier() for p in self.branches.split("+")):
            raise ConfigError(f"finetune.branches: {self.branches!r} must be both, one modality (image, table, "
                              "report) or modalities joined by +, e.g. image+report")
        check_choice("finetune.threshold", self.threshold, THRESHOLD_METHODS)
        check_choice("finetune.recalibration", self.recalibration, RECALIBRATIONS)
        if self.head is None:
            self.head = "mlp" if self.mode == "scratch" else "probe"
        check_choice("finetune.head", self.head, HEADS)
        check_choice("finetune.select_on", self.select_on, SELECTION)
        check_choice("finetune.probe_components", self.probe_components, PROBE_COMPONENTS_FROM)
        check_choice("finetune.horizon_unit", self.horizon_unit, TIME_UNITS)
        if self.horizon is not None:
            Horizon(self.horizon, self.horizon_unit)  # refuses a horizon that is no positive number
        if self.probe_pcs is not None:
            check_range("finetune.probe_pcs", self.probe_pcs, 1, 4096, hint="null = every embedding column")
        if self.head == "probe" and self.mode == "scratch":
            raise ConfigError(f"finetune.head: probe fits a linear model on pretrained embeddings; it needs "
                              f"finetune.mode: frozen or trainable (got {self.mode}), or use head: mlp")
        if self.task == "survival" and self.mode != "frozen":
            raise ConfigError(f"finetune.task: survival fits a Cox model on frozen embeddings (mode: frozen, head: "
                              f"probe or mlp); got mode {self.mode}: set finetune.mode=frozen")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1] (1 = no decay), got {self.layer_decay}")
        self._check_numbers()
        from finetune.model import FUSIONS  # finetune.model imports this module

        check_choice("finetune.fusion", self.fusion, FUSIONS)
        check_choice("finetune.loss", self.loss, sorted(LOSSES))
        for i, name in enumerate(self.baselines):
            check_choice(f"finetune.baselines[{i}]", name, sorted(BASELINES))

    def _check_numbers(self) -> None:
        """Every numeric setting within the range its stage can use, named by its dotted key."""
        check_range("finetune.folds", self.folds, 2, 100, hint="K of K-fold cross-validation")
        if self.repeats is not None:
            check_range("finetune.repeats", self.repeats, 1, 100, hint="null = auto")
        check_range("finetune.inner_val_fraction", self.inner_val_fraction, 0.0, 1.0, above=True, below=True)
        check_range("finetune.head_layers", self.head_layers, 0, 16, hint="0 = a linear head")
        check_range("finetune.hidden", self.hidden, 1, 16_384)
        check_range("finetune.dropout", self.dropout, 0.0, 1.0, below=True)
        check_range("finetune.epochs", self.epochs, 1, 100_000)
        check_range("finetune.batch_size", self.batch_size, 2, 65_536)
        check_range("finetune.lr", self.lr, 0.0, 1.0, above=True)
        check_range("finetune.encoder_lr_ratio", self.encoder_lr_ratio, 0.0, 10.0)
        check_range("finetune.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("finetune.patience", self.patience, 1, 100_000)
        check_range("finetune.bootstrap", self.bootstrap, 100, 1_000_000,
                    hint="resamples behind each confidence interval; 2000 by default")
        if self.threshold == "sensitivity" or self.target_sensitivity is not None:
            check_range("finetune.target_sensitivity", self.target_sensitivity, 0.0, 1.0, above=True,
                        hint="with finetune.threshold: sensitivity, e.g. 0.8 for 80 %")


SMALL_COHORT_POSITIVES = 50
AUTO_REPEATS = 3


def resolved_repeats(settings: FinetuneConfig, positives: int) -> int:
    """``finetune.repeats``, or for ``null`` (auto): ``AUTO_REPEATS`` on a small labeled cohort
    (<= ``SMALL_COHORT_POSITIVES`` positives: model selection must not hinge on a handful of
    validation positives), 1 otherwise."""
    if settings.repeats is not None:
        return settings.repeats
    return AUTO_REPEATS if positives <= SMALL_COHORT_POSITIVES else 1


def finetune_config(run_config: RunConfig) -> FinetuneConfig:
    """The typed ``finetune:`` section of ``run_config``."""
    return from_dict(FinetuneConfig, run_config.finetune, where="finetune.")
