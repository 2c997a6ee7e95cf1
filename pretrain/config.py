"""The ``pretrain:`` section of a run config, as a typed dataclass.

``multimodal.config.RunConfig`` keeps each stage's section as a plain mapping (the shared core
cannot import the stages); this module types and checks it, so an unknown key under
``pretrain:`` is an error naming the nearest valid key, as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multimodal.config import RunConfig, check_choice, from_dict
from multimodal.errors import ConfigError
from pretrain.objectives import OBJECTIVES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ROWS = ("unlabeled", "all")


@dataclass
class PretrainConfig:
    epochs: int = 100
    batch_size: int = 16  # per process; negatives span the global batch (and the queue)
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto = bf16 on CUDA with bf16, fp16 + GradScaler on other CUDA, fp32 on CPU
    # objective name -> weight in the total loss. clip alone is the default: on the quality
    # benchmark matching (itm) stayed near its majority rate and added nothing downstream, and
    # simclr beside clip lowered what the image embedding holds (benchmarks/README.md)
    objectives: dict[str, float] = field(default_factory=lambda: {"clip": 1.0})
    clip_image_weight: float = 0.5  # λ: weight of image→table vs (1 − λ) table→image
    temperature_init: float = 0.07  # logit scale starts at 1 / temperature, clamped to [1, 100]
    projection_dim: int = 128
    projection_hidden: int = 512
    fusion_dim: int = 128  # width of the matching cross-attention transformer
    fusion_depth: int = 2
    fusion_heads: int = 4
    itm_duplicate_threshold: float = 0.98  # cosine of clinical rows above which a negative is refused
    # share of ITM negatives mined from the CLIP similarities (ALBEF: 1.0); the rest are uniform.
    # 1.0 stalls matching at the "no match" prior (accuracy 2/3) when CLIP is the fusion's equal.
    itm_hard_fraction: float = 0.25
    queue_size: int = 0  # extra CLIP negatives from earlier batches; 0 = off
    simclr_temperature: float = 0.1
    scarf_corruption: float = 0.3  # share of features replaced from the empirical marginals
    scarf_temperature: float = 1.0  # NT-Xent temperature of SCARF (the paper's value)
    mask_rate: float = 0.15  # masked_tabular: share of present features hidden and reconstructed
    masked_volume_ratio: float = 0.6  # masked_volume: share of the volume's cubes zeroed and reconstructed
    masked_volume_patch: int = 4  # masked_volume: cube edge in voxels
    masked_volume_decoder_width: int = 32  # masked_volume: channels of its light (pretraining-only) decoder
    # masked_volume beside clip: false = clip embeds the unmasked view, masking costs a second encoder
    # pass; true = clip reads the masked view too (FLIP), one pass serves both
    masked_volume_shared_view: bool = False
    rows: str = "unlabeled"  # unlabeled | all: which cohort rows pretraining reads
    val_fraction: float = 0.2  # held-out subjects for retrieval / alignment metrics
    log_every: int = 10  # steps between TensorBoard scalar writes
    # label the TensorBoard embedding projector's points with subject ids (patient identifiers:
    # off by default, so a shared tb/ folder holds none); otherwise by their label
    log_subject_ids: bool = False

    def __post_init__(self) -> None:
        check_choice("pretrain.precision", self.precision, PRECISIONS)
        check_choice("pretrain.rows", self.rows, ROWS)
        if not self.objectives:
            raise ConfigError("pretrain.objectives is empty; use e.g. {clip: 1.0, itm: 1.0}")
        for name, weight in self.objectives.items():
            check_choice("pretrain.objectives", name, sorted(OBJECTIVES))  # the registry
            if weight < 0:
                raise ConfigError(f"pretrain.objectives.{name} weight must be >= 0, got {weight}")
        multimodal = {"clip", "itm", "masked_tabular"} & set(self.objectives)
        if "scarf" in self.objectives and len(self.objectives) > 1:
            raise ConfigError(
                f"pretrain.objectives {sorted(self.objectives)}: scarf is the record-only baseline; run it "
                "alone ({scarf: 1.0}); simclr may run alone or beside clip / itm / masked_tabular"
            )
        for image_only in ("simclr", "masked_volume"):
            if image_only in self.objectives and multimodal and "clip" not in self.objectives:
                raise ConfigError(f"pretrain.objectives: {image_only} beside the image-table objectives needs clip too")
        if self.masked_volume_patch < 1 or self.masked_volume_decoder_width < 1:
            raise ConfigError(f"pretrain.masked_volume_patch ({self.masked_volume_patch}) and "
                              f"pretrain.masked_volume_decoder_width ({self.masked_volume_decoder_width}) must be >= 1")
        if self.masked_volume_shared_view and not {"clip", "masked_volume"} <= set(self.objectives):
            raise ConfigError("pretrain.masked_volume_shared_view: true makes clip read the masked view; it needs "
                              "both clip and masked_volume in pretrain.objectives")
        if "itm" in self.objectives and "clip" not in self.objectives:
            raise ConfigError("pretrain.objectives: itm mines its negatives from the clip similarities; add clip")
        if not 0.0 <= self.clip_image_weight <= 1.0:
            raise ConfigError(f"pretrain.clip_image_weight must be in [0, 1], got {self.clip_image_weight}")
        if not 0.0 < self.temperature_init <= 1.0:
            raise ConfigError(f"pretrain.temperature_init must be in (0, 1], got {self.temperature_init}")
        for key in ("scarf_corruption", "mask_rate", "masked_volume_ratio"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"pretrain.{key} must be between 0 and 1, got {getattr(self, key)}")
        if not 0.0 <= self.itm_hard_fraction <= 1.0:
            raise ConfigError(f"pretrain.itm_hard_fraction must be in [0, 1], got {self.itm_hard_fraction}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"pretrain.val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("pretrain.epochs must be >= 1 and pretrain.batch_size >= 2 (contrastive pairs)")
        if self.queue_size < 0:
            raise ConfigError(f"pretrain.queue_size must be >= 0, got {self.queue_size}")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The branches the objectives train: ("image", "table"), ("image",) or ("table",)."""
        if {"clip", "itm", "masked_tabular"} & set(self.objectives):
            return ("image", "table")
        if {"simclr", "masked_volume"} & set(self.objectives):
            return ("image",)
        return ("table",)


def pretrain_config(run_config: RunConfig) -> PretrainConfig:
    """The typed ``pretrain:`` section of ``run_config``."""
    return from_dict(PretrainConfig, run_config.pretrain, where="pretrain.")
