"""What the other stages take from a finished pretraining run beyond its encoder files: the whole
model (encoders and projection heads into the shared space) with its weights, for embedding export
(``strokessl embed`` / ``explain``). The only pretraining code ``finetune`` imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal.checkpoint import load_into
from multimodal.config import load_run_config
from multimodal.run_folder import check_weights, run_paths
from pretrain.config import pretrain_config
from pretrain.model import PretrainModel, build_pretrain_model, pretrain_modalities


def load_run_model(run_dir: Any, sizes: dict[str, dict[str, Any]]) -> PretrainModel:
    """A finished pretraining run's whole model (encoders, projection heads, fusion) with its weights
    (``checkpoints/model.safetensors``, loaded strictly), for embedding export. ``sizes`` maps every
    modality the run trained to what the data fixes (``multimodal.data.encoder_sizes``). Backbone
    initialisation files named in the config are not read: the run's own weights replace them. Weights
    other than the ones the run wrote (sha256 in its run record) are refused."""
    run_dir = Path(run_dir)
    paths = run_paths(run_dir)
    config = load_run_config(paths.config)
    model = build_pretrain_model(config.model.without_weight_files(), pretrain_config(config), sizes)
    weights = paths.checkpoints / "model.safetensors"
    check_weights(run_dir, [weights])
    load_into(model, weights, strict=True)
    return model.eval()


def run_modalities(run_dir: Any) -> list[str]:
    """The modalities a pretraining run's model reads (``pretrain_modalities`` of its config)."""
    config = load_run_config(run_paths(run_dir).config)
    return pretrain_modalities(config.model, pretrain_config(config))
