"""``--init RUN``: encoders and tabular preprocessor from a finished pretraining run.

A pretraining run folder (``pretrain/run.py``) holds ``config.yaml``, ``preprocessor.json``, one
``checkpoints/<modality>_encoder.safetensors`` per modality it trained (``image_encoder``,
``table_encoder``, ...; a unimodal ``simclr`` / ``scarf`` run has only its own) and, once
finished, ``metrics.json``.

How a model pretrained on one cohort meets another:

- the pretraining ``preprocessor.json`` is reused (it saw no labels); features the new cohort
  lacks enter as missing tokens, a column the encoder never saw is an error (``reconcile_features``);
- MRI sequences are matched by name, channels keep the pretraining order (``reconcile_sequences``);
- a unimodal run initialises its own branch, the other one is random, with a warning
  (``build_finetune_encoders``).

This module reads run folders only; it imports nothing from ``pretrain`` (the file layout is the
contract between the stages).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from multimodal.checkpoint import load_into
from multimodal.config import ModelConfig, RunConfig, load_cohort_config, load_run_config
from multimodal.encoders import build_encoder
from multimodal.errors import ConfigError, RunFolderError
from multimodal.run_folder import (
    PRETRAINING,
    check_weights,
    is_finished,
    require_run,
    run_facts,
    run_paths,
)
from multimodal.tabular import TabularPreprocessor

logger = logging.getLogger(__name__)

IMAGE_WEIGHTS = "checkpoints/image_encoder.safetensors"
TABLE_WEIGHTS = "checkpoints/table_encoder.safetensors"
_WEIGHTS_SUFFIX = "_encoder.safetensors"


# ``--init`` points at something that is not a usable (finished) pretraining run: a run-folder error.
PretrainingRunError = RunFolderError


@dataclass
class PretrainingRun:
    """What fine-tuning takes from a pretraining run folder."""

    run_dir: Path
    config: RunConfig  # the run's resolved config.yaml (model names + args, imaging, seed)
    preprocessor: TabularPreprocessor  # fitted on the run's training split, label-free
    sequences: list[str]  # the image channels, in the order the image encoder saw them
    weights: dict[str, Path]  # modality -> checkpoints/<modality>_encoder.safetensors, those present
    finished: bool  # multimodal.run_folder.is_finished

    @property
    def image_weights(self) -> Path | None:
        return self.weights.get("image")

    @property
    def table_weights(self) -> Path | None:
        return self.weights.get("table")


def load_pretraining_run(run_dir: str | Path, require_finished: bool = True) -> PretrainingRun:
    """Read a pretraining run folder; a missing folder or config, a folder of another kind (a fine-tuning
    run), an unfinished run (unless ``require_finished=False``), a run without encoder weights or with
    weights other than the ones it wrote is a ``PretrainingRunError``."""
    run_dir = Path(run_dir)
    paths = run_paths(run_dir)
    require_run(run_dir, (PRETRAINING,), "--init", finished=require_finished)
    if not paths.config.is_file():
        raise PretrainingRunError(
            f"--init {run_dir} has no config.yaml: not a pretraining run; give the run folder that "
            "strokessl pretrain wrote (runs/<name>)"
        )
    finished = is_finished(run_dir)
    config = load_run_config(paths.config)
    preprocessor_path = paths.preprocessor
    if not preprocessor_path.is_file():
        raise PretrainingRunError(f"pretraining run {run_dir} has no preprocessor.json; it is incomplete")
    weights = {path.name[: -len(_WEIGHTS_SUFFIX)]: path
               for path in sorted(paths.checkpoints.glob(f"*{_WEIGHTS_SUFFIX}"))}
    if not weights:
        raise PretrainingRunError(
            f"pretraining run {run_dir} has neither {IMAGE_WEIGHTS} nor {TABLE_WEIGHTS}; "
            "resume it to its end so the encoders are published"
        )
    check_weights(run_dir, weights.values())
    return PretrainingRun(
        run_dir=run_dir,
        config=config,
        preprocessor=TabularPreprocessor.load(preprocessor_path),
        sequences=run_facts(run_dir).sequences or _run_sequences(config),
        weights=weights,
        finished=finished,
    )


def _run_sequences(config: RunConfig) -> list[str]:
    """For a run from before its facts were recorded: ``imaging.sequences``, or (None = every cohort
    sequence) the pretraining cohort's."""
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
def build_finetune_encoders(
    run: PretrainingRun, model_config_for_finetune: ModelConfig | None, from_data: dict[str, dict]
) -> dict[str, nn.Module]:
    """``{modality: encoder}`` for fine-tuning from ``run``, one per key of ``from_data`` (the
    sizes the data fixes per modality: image ``in_channels``, table ``num_continuous`` and
    ``category_sizes``, others nothing).

    A pretrained modality is rebuilt with the pretraining run's encoder name and arguments and its
    weights load strictly; ``model_config_for_finetune`` naming another encoder for it is ignored,
    with a warning. A modality the run did not train (``simclr``: table, ``scarf``: image) is built
    randomly from ``model_config_for_finetune`` (or the run's config when None), with a warning.
    The image channels (``reconcile_sequences``) must be the run's; tabular sizes come from the
    run's preprocessor, which fine-tuning reuses.
    """
    pretrained = run.config.model.without_weight_files()
    for_random = model_config_for_finetune or pretrained
    if model_config_for_finetune is not None:
        _warn_ignored(pretrained, model_config_for_finetune.without_weight_files(), run)
    if "image" in run.weights and "image" in from_data and from_data["image"]["in_channels"] != len(run.sequences):
        raise ConfigError(
            f"fine-tuning uses {from_data['image']['in_channels']} image channel(s) but the pretrained image "
            f"encoder of {run.run_dir} saw {len(run.sequences)} ({run.sequences}); match sequences with "
            "reconcile_sequences"
        )
    encoders = {}
    for modality, sizes in from_data.items():
        if modality in run.weights:
            encoders[modality] = build_encoder(pretrained, modality, **sizes)
            load_into(encoders[modality], run.weights[modality], strict=True)
        else:
            spec = for_random.encoders.get(modality)
            logger.warning("pretraining run %s trained no %s encoder: the %s branch (%s) starts random",
                           run.run_dir, modality, modality, spec.name if spec else "?")
            encoders[modality] = build_encoder(for_random, modality, **sizes)
    return encoders


def _warn_ignored(pretrained: ModelConfig, finetune: ModelConfig, run: PretrainingRun) -> None:
    for modality in run.weights:
        ours, theirs = pretrained.encoders.get(modality), finetune.encoders.get(modality)
        if ours is not None and theirs is not None and (ours.name, ours.args) != (theirs.name, theirs.args):
            logger.warning(
                "model.encoders.%s of the fine-tuning config (%s %s) differs from pretraining run %s; "
                "the pretrained %s encoder is rebuilt as trained: %s %s",
                modality, theirs.name, theirs.args, run.run_dir, modality, ours.name, ours.args,
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
