"""``--init RUN``: encoders and tabular preprocessor from a finished pretraining run.

A pretraining run folder (``pretrain/run.py``) holds ``config.yaml``, ``preprocessor.json``,
``checkpoints/image_encoder.safetensors`` and / or ``checkpoints/table_encoder.safetensors``
(a unimodal ``simclr`` / ``scarf`` run has only its own) and, once finished, ``metrics.json``.

DESIGN.md §6 settles how a model pretrained on one cohort meets another:

- the pretraining ``preprocessor.json`` is reused (it saw no labels); features the new cohort
  lacks enter as missing tokens, a column the encoder never saw is an error (``reconcile_features``);
- MRI sequences are matched by name, channels keep the pretraining order (``reconcile_sequences``);
- a unimodal run initialises its own branch, the other one is random, with a warning
  (``build_finetune_encoders``).

This module reads run folders only; it imports nothing from ``pretrain`` (the file layout is the
contract between the stages).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from multimodal.checkpoint import load_into
from multimodal.config import ModelConfig, RunConfig, load_cohort_config, load_run_config
from multimodal.encoders import build_image_encoder, build_tabular_encoder
from multimodal.errors import ConfigError, StrokeSSLError
from multimodal.tabular import TabularPreprocessor

logger = logging.getLogger(__name__)

IMAGE_WEIGHTS = "checkpoints/image_encoder.safetensors"
TABLE_WEIGHTS = "checkpoints/table_encoder.safetensors"


class PretrainingRunError(StrokeSSLError):
    """``--init`` points at something that is not a usable (finished) pretraining run."""


@dataclass
class PretrainingRun:
    """What fine-tuning takes from a pretraining run folder."""

    run_dir: Path
    config: RunConfig  # the run's resolved config.yaml (model names + args, imaging, seed)
    preprocessor: TabularPreprocessor  # fitted on the run's training split, label-free
    sequences: list[str]  # the image channels, in the order the image encoder saw them
    image_weights: Path | None  # checkpoints/image_encoder.safetensors when present
    table_weights: Path | None  # checkpoints/table_encoder.safetensors when present
    finished: bool  # metrics.json exists (written last by a pretraining run)


def load_pretraining_run(run_dir: str | Path, require_finished: bool = True) -> PretrainingRun:
    """Read a pretraining run folder; a missing folder or config, an unfinished run (unless
    ``require_finished=False``) or a run without encoder weights is a ``PretrainingRunError``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        what = "has no config.yaml" if run_dir.is_dir() else "is not a folder"
        raise PretrainingRunError(
            f"--init {run_dir} {what}: not a pretraining run; give the run folder that "
            "strokessl pretrain wrote (runs/<name>)"
        )
    finished = (run_dir / "metrics.json").is_file()
    if require_finished and not finished:
        raise PretrainingRunError(
            f"pretraining run {run_dir} has not finished (no metrics.json); resume it first with "
            f"strokessl pretrain CONFIG --resume {run_dir}"
        )
    config = load_run_config(run_dir / "config.yaml")
    preprocessor_path = run_dir / "preprocessor.json"
    if not preprocessor_path.is_file():
        raise PretrainingRunError(f"pretraining run {run_dir} has no preprocessor.json; it is incomplete")
    image_weights = run_dir / IMAGE_WEIGHTS
    table_weights = run_dir / TABLE_WEIGHTS
    if not image_weights.is_file() and not table_weights.is_file():
        raise PretrainingRunError(
            f"pretraining run {run_dir} has neither {IMAGE_WEIGHTS} nor {TABLE_WEIGHTS}; "
            "resume it to its end so the encoders are published"
        )
    return PretrainingRun(
        run_dir=run_dir,
        config=config,
        preprocessor=TabularPreprocessor.load(preprocessor_path),
        sequences=_run_sequences(config),
        image_weights=image_weights if image_weights.is_file() else None,
        table_weights=table_weights if table_weights.is_file() else None,
        finished=finished,
    )


def _run_sequences(config: RunConfig) -> list[str]:
    """``imaging.sequences``, or (None = every cohort sequence) the pretraining cohort's."""
    if config.imaging.sequences is not None:
        return list(config.imaging.sequences)
    if not Path(config.cohort).is_file():
        raise ConfigError(
            f"the pretraining run used every sequence of cohort {config.cohort}, which no longer "
            "exists, so its channel order is unknown; set imaging.sequences in the fine-tuning "
            "config to the pretraining sequences, in their order"
        )
    return list(load_cohort_config(config.cohort).images)


# --------------------------------------------------------------------------- encoders
def rebuild_config(model: ModelConfig) -> ModelConfig:
    """The run's model config without backbone-initialisation files: the run's own weights
    replace them anyway, and they need not exist where fine-tuning runs."""
    clean = copy.deepcopy(model)
    clean.image_weights = None
    clean.tabular_weights = None
    clean.image_encoder_args.pop("backbone_weights", None)
    return clean


def build_finetune_encoders(
    run: PretrainingRun, model_config_for_finetune: ModelConfig | None, in_channels: int
) -> tuple[nn.Module | None, nn.Module | None]:
    """``(image_encoder, table_encoder)`` for fine-tuning from ``run``.

    A pretrained branch is rebuilt with the pretraining run's encoder name and arguments and its
    weights load strictly; ``model_config_for_finetune`` naming other encoders is ignored for it,
    with a warning. A branch the run did not train (``simclr``: table, ``scarf``: image) is built
    randomly from ``model_config_for_finetune`` (or the run's config when None), with a warning.
    ``in_channels`` (the fine-tuning channels, ``reconcile_sequences``) must equal the run's.
    Tabular sizes come from the run's preprocessor, which fine-tuning reuses.
    """
    pretrained = rebuild_config(run.config.model)
    for_random = model_config_for_finetune or pretrained
    if model_config_for_finetune is not None:
        _warn_ignored(pretrained, rebuild_config(model_config_for_finetune), run)
    prep = run.preprocessor
    if run.image_weights is not None:
        if in_channels != len(run.sequences):
            raise ConfigError(
                f"fine-tuning uses {in_channels} image channel(s) but the pretrained image encoder of "
                f"{run.run_dir} saw {len(run.sequences)} ({run.sequences}); match sequences with "
                "reconcile_sequences"
            )
        image_encoder = build_image_encoder(pretrained, in_channels)
        load_into(image_encoder, run.image_weights, strict=True)
    else:
        logger.warning("pretraining run %s trained no image encoder: the image branch (%s) starts random",
                       run.run_dir, for_random.image_encoder)
        image_encoder = build_image_encoder(for_random, in_channels)
    if run.table_weights is not None:
        table_encoder = build_tabular_encoder(pretrained, len(prep.continuous), prep.category_sizes)
        load_into(table_encoder, run.table_weights, strict=True)
    else:
        logger.warning("pretraining run %s trained no tabular encoder: the tabular branch (%s) starts random",
                       run.run_dir, for_random.tabular_encoder)
        table_encoder = build_tabular_encoder(for_random, len(prep.continuous), prep.category_sizes)
    return image_encoder, table_encoder


def _warn_ignored(pretrained: ModelConfig, finetune: ModelConfig, run: PretrainingRun) -> None:
    checks = (
        ("image", run.image_weights, "image_encoder", "image_encoder_args"),
        ("tabular", run.table_weights, "tabular_encoder", "tabular_encoder_args"),
    )
    for kind, weights, name_key, args_key in checks:
        if weights is None:
            continue
        ours = (getattr(pretrained, name_key), getattr(pretrained, args_key))
        theirs = (getattr(finetune, name_key), getattr(finetune, args_key))
        if ours != theirs:
            logger.warning(
                "model.%s / %s of the fine-tuning config (%s %s) differ from pretraining run %s; "
                "the pretrained %s encoder is rebuilt as trained: %s %s",
                name_key, args_key, theirs[0], theirs[1], run.run_dir, kind, ours[0], ours[1],
            )


# --------------------------------------------------------------------------- reconciliation
def reconcile_sequences(
    pretrained: list[str], cohort: list[str], missing_images: str = "error"
) -> list[str]:
    """Fine-tuning channels: the pretraining sequences in the pretraining order, matched by name.

    A pretraining sequence the new cohort lacks is a ``ConfigError`` unless the cohort's
    ``missing_images`` is ``zero`` (then that channel is empty for every subject, with a
    warning; the returned list still names it, the caller fills it with zeros). A cohort
    sequence the encoder never saw is ignored, with a warning.
    """
    absent = [s for s in pretrained if s not in cohort]
    if absent and missing_images != "zero":
        raise ConfigError(
            f"the pretrained image encoder reads sequences {pretrained} but the cohort has no "
            f"{absent} (it has {cohort}); map them under the cohort's images:, or set "
            "missing_images: zero to give them empty channels, or fine-tune with mode scratch"
        )
    if absent:
        logger.warning("sequences %s are absent from the cohort: their channels are empty (missing_images: zero)",
                       absent)
    extra = [s for s in cohort if s not in pretrained]
    if extra:
        logger.warning("cohort sequences %s were not seen in pretraining and are ignored", extra)
    return list(pretrained)


def reconcile_features(
    preprocessor: TabularPreprocessor,
    cohort_features: list[str],
    new_features: list[str] | None = None,
) -> TabularPreprocessor:
    """Check the new cohort's feature columns against the pretraining preprocessor; returns it.

    Pretraining features the cohort lacks enter as missing values (the preprocessor masks
    absent columns at transform time; logged here once). A cohort column the encoder never saw
    is a ``ConfigError`` naming it; listing it in ``new_features`` does not help yet: growing a
    pretrained tabular encoder by a feature is not supported, so that is an error too.
    """
    known = set(preprocessor.feature_names)
    absent = [f for f in preprocessor.feature_names if f not in set(cohort_features)]
    if absent:
        logger.warning("pretraining features %s are absent from the cohort: they enter as missing values",
                       absent)
    unseen = [f for f in cohort_features if f not in known]
    requested = [f for f in unseen if f in set(new_features or [])]
    if requested:
        raise ConfigError(
            f"new features {requested}: adding features to a pretrained tabular encoder is not "
            "supported yet; drop the column(s) (list them under the cohort's ignore:) or fine-tune "
            "with mode scratch"
        )
    if unseen:
        raise ConfigError(
            f"cohort feature column(s) {unseen} were not seen by the pretrained tabular encoder "
            f"(it knows {preprocessor.feature_names}); list them under the cohort's ignore:, or "
            "fine-tune with mode scratch"
        )
    return preprocessor
