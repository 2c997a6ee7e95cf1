"""The ``pretrain:`` section of a run config, as a typed dataclass.

``multimodal.config.RunConfig`` keeps each stage's section as a plain mapping (the shared core
cannot import the stages); this module types and checks it, so an unknown key under
``pretrain:`` is an error naming the nearest valid key, as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multimodal.config import RunConfig
from multimodal.config_checks import check_choice, check_range
from multimodal.config_mapping import from_dict
from multimodal.errors import ConfigError
from pretrain.acceleration import FORMATS
from pretrain.objectives import OBJECTIVES
from pretrain.views import SIMCLR_VIEWS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_ON = ("loader", "device")
MEMORY_FORMATS = ("auto", *FORMATS)  # auto: timed at start-up on CUDA (pretrain.acceleration)
ROWS = ("unlabeled", "all")


@dataclass
class PretrainConfig:
    epochs: int = 100
    batch_size: int = 16  # per process; negatives span the global batch (and the queue)
    # micro-batches of batch_size whose gradients are summed before each optimiser step (for GPUs too
    # small for the batch): each micro-batch is its own contrastive batch, so accumulation does not add
    # negatives (pretrain.queue_size does); DDP synchronises gradients on the last micro-batch only
    accumulate_steps: int = 1
    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto = bf16 on CUDA with bf16, fp16 + GradScaler on other CUDA, fp32 on CPU
    # where the training views are augmented: loader (its workers, default) | device (the training
    # device, after the batch is moved: a GPU whose loader workers cannot keep up); the same draws
    augment_on: str = "loader"
    # the image encoder's convolutions: auto = channels_last_3d on CUDA when a start-up timing of the
    # encoder finds it faster (contiguous on CPU) | channels_last | contiguous
    memory_format: str = "auto"
    compile: bool = False  # torch.compile the encoders in place (weights and checkpoints unchanged)
    # objective name -> weight in the total loss. clip alone is the default: on the quality
    # benchmark matching (itm) stayed near its majority rate and added nothing downstream, and
    # simclr beside clip lowered what the image embedding holds (benchmarks/README.md)
    objectives: dict[str, float] = field(default_factory=lambda: {"clip": 1.0})
    clip_image_weight: float = 0.5  # λ: weight of image→table vs (1 − λ) table→image
    # clip between modalities beyond image-table ("image-report", "table-report"): each pair's weight
    # beside image-table's 1 (a pair not named weighs 1); clip is their weighted mean
    clip_pairs: dict[str, float] = field(default_factory=dict)
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
    # augmentation of the training views with simclr: standard (imaging.augment) | lesion_preserving
    # (no zoom or bias field, rotation <= 3 deg, shifts <= 1 voxel, mild gamma: pretrain.views)
    simclr_views: str = "standard"
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
        check_choice("pretrain.augment_on", self.augment_on, AUGMENT_ON)
        check_choice("pretrain.memory_format", self.memory_format, MEMORY_FORMATS)
        check_choice("pretrain.simclr_views", self.simclr_views, SIMCLR_VIEWS)
        if not self.objectives:
            raise ConfigError("pretrain.objectives is empty; use e.g. {clip: 1.0, itm: 1.0}")
        for name, weight in self.objectives.items():
            check_choice("pretrain.objectives", name, sorted(OBJECTIVES))  # the registry
            check_range(f"pretrain.objectives.{name}", weight, 0.0, 100.0, hint="its weight in the total loss")
        if not any(self.objectives.values()):
            raise ConfigError(f"pretrain.objectives {self.objectives}: every weight is 0, so nothing would be learned; "
                              "give at least one objective a positive weight")
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
        check_range("pretrain.clip_image_weight", self.clip_image_weight, 0.0, 1.0)
        for pair, weight in self.clip_pairs.items():
            if len(str(pair).split("-")) != 2:
                raise ConfigError(f"pretrain.clip_pairs key {pair!r} must name two modalities, e.g. image-report")
            check_range(f"pretrain.clip_pairs.{pair}", weight, 0.0, 100.0, hint="its weight beside image-table's 1")
        check_range("pretrain.temperature_init", self.temperature_init, 0.0, 1.0, above=True)
        for key in ("scarf_corruption", "mask_rate", "masked_volume_ratio"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"pretrain.{key} must be between 0 and 1, got {getattr(self, key)}")
        check_range("pretrain.itm_hard_fraction", self.itm_hard_fraction, 0.0, 1.0)
        check_range("pretrain.val_fraction", self.val_fraction, 0.0, 1.0, above=True, below=True)
        check_range("pretrain.epochs", self.epochs, 1, 100_000)
        check_range("pretrain.accumulate_steps", self.accumulate_steps, 1, 4096,
                    hint="micro-batches per optimiser step; 1 = no accumulation")
        check_range("pretrain.batch_size", self.batch_size, 2, 65_536,
                    hint="contrastive objectives contrast each subject with the others in its batch")
        check_range("pretrain.lr", self.lr, 0.0, 1.0, above=True)
        check_range("pretrain.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("pretrain.warmup_epochs", self.warmup_epochs, 0.0, 100_000.0)
        check_range("pretrain.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("pretrain.grad_clip", self.grad_clip, 0.0, 1000.0, hint="0 disables clipping")
        for key in ("projection_dim", "projection_hidden", "fusion_dim"):
            check_range(f"pretrain.{key}", getattr(self, key), 1, 16_384)
        check_range("pretrain.fusion_depth", self.fusion_depth, 1, 48)
        check_range("pretrain.fusion_heads", self.fusion_heads, 1, 64)
        if {"itm", "masked_tabular"} & set(self.objectives) and self.fusion_dim % self.fusion_heads:
            raise ConfigError(f"pretrain.fusion_dim: {self.fusion_dim} is not divisible by pretrain.fusion_heads "
                              f"{self.fusion_heads}; pick a multiple (e.g. {self.fusion_heads * 32})")
        check_range("pretrain.itm_duplicate_threshold", self.itm_duplicate_threshold, 0.0, 1.0, above=True)
        check_range("pretrain.queue_size", self.queue_size, 0, 1_000_000, hint="0 = off")
        for key in ("simclr_temperature", "scarf_temperature"):
            check_range(f"pretrain.{key}", getattr(self, key), 0.0, 10.0, above=True)
        check_range("pretrain.log_every", self.log_every, 1, 1_000_000)

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
