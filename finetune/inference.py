"""Prediction with fine-tuned models: one model on a dataset, or a run's fold models averaged.

``ensemble_probabilities`` rebuilds every fold model of a fine-tuning run from ``model.json`` and
``folds/*.safetensors`` (each with its own tabular preprocessor) and averages their probabilities;
``strokessl predict`` and the fixed test cohort of ``strokessl finetune`` both use it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from finetune.config import FinetuneConfig
from finetune.model import FusionClassifier, build_classifier, set_mode
from finetune.recalibration import apply_recalibration
from multimodal.cohort import Cohort
from multimodal.config import ImagingConfig, ModelConfig, from_dict
from multimodal.encoders import build_image_encoder, build_tabular_encoder
from multimodal.errors import StrokeSSLError
from multimodal.imaging import ImageDataset, VolumeCache
from multimodal.tabular import TabularPreprocessor
from pretrain.data import MultimodalDataset
from pretrain.loop import to_device

logger = logging.getLogger(__name__)


class LabeledDataset(Dataset):
    """``MultimodalDataset`` items plus ``label`` (float 0/1), or cached embeddings (frozen mode)."""

    def __init__(self, items: Dataset | None, labels: np.ndarray, embeddings: dict[str, Any] | None = None) -> None:
        self.items, self.labels, self.embeddings = items, torch.as_tensor(labels, dtype=torch.float32), embeddings

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.embeddings is not None:
            item = {f"{k}_embedding": v[i] for k, v in self.embeddings.items() if v is not None}
        else:
            item = dict(self.items[i])
        item["label"] = self.labels[i]
        return item


def classifier_logits(model: FusionClassifier, batch: dict[str, Any]) -> torch.Tensor:
    """(B,) recurrence logits from a batch of inputs or of precomputed embeddings."""
    if "image_embedding" in batch or "table_embedding" in batch:
        return model.forward_from_embeddings(batch.get("image_embedding"), batch.get("table_embedding"))
    return model(batch.get("image"), batch.get("table"))


@torch.no_grad()
def predict_probabilities(model: FusionClassifier, dataset: Dataset, batch_size: int, device: torch.device) -> np.ndarray:
    """(N,) recurrence probabilities for ``dataset`` in order (model in eval mode)."""
    model.eval()
    out = [torch.sigmoid(classifier_logits(model, to_device(b, device))).float().cpu()
           for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return torch.cat(out).numpy()


def ensemble_probabilities(run_dir: Path, subjects: Cohort, settings: FinetuneConfig, imaging: ImagingConfig,
                           cache_dir: Path, workers: int = 0, cache_dtype: str = "float32",
                           seed: int = 0) -> pd.DataFrame:
    """Every fold model of ``run_dir`` on ``subjects``: columns ``probability`` (the mean) and
    ``probability_<fold>``, indexed by subject id. Sequences the models need must be in the cohort."""
    architecture = json.loads((run_dir / "model.json").read_text())
    sequences = architecture["sequences"]
    uses_images, uses_table = settings.branches != "table", settings.branches != "image"
    missing = [s for s in sequences if s not in subjects.sequences]
    if missing and uses_images:
        raise StrokeSSLError(f"cohort {subjects.config.source} lacks the sequences {missing} the model was trained on")
    images = None
    if uses_images:
        config = subjects.config
        cache = VolumeCache(cache_dir, imaging, sequences, config.missing_images, config.volume_index, cache_dtype)
        cache.warm(subjects.records(), workers=workers)
        images = ImageDataset(subjects.records(), cache, None, seed=seed)
    image_model = from_dict(ModelConfig, architecture["image_model"])
    table_model = from_dict(ModelConfig, architecture["table_model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    columns = {}
    for fold_file in sorted((run_dir / "folds").glob("*.json")):
        fold = json.loads(fold_file.read_text())
        preprocessor = TabularPreprocessor.from_dict(fold["preprocessor"])
        table = preprocessor.transform_tensors(subjects.features) if uses_table else None
        image_encoder = build_image_encoder(image_model, len(sequences)) if uses_images else None
        table_encoder = (build_tabular_encoder(table_model, len(preprocessor.continuous), preprocessor.category_sizes)
                         if uses_table else None)
        model = build_classifier(image_encoder, table_encoder, settings, len(preprocessor.continuous),
                                 preprocessor.category_sizes, architecture.get("probe_table_embedding"))
        model.load_state_dict(load_file(str(fold_file.with_suffix(".safetensors"))))
        set_mode(model, settings.mode).to(device)
        dataset = LabeledDataset(MultimodalDataset(subjects.ids, list(range(len(subjects.ids))), images, table),
                                 np.zeros(len(subjects.ids)))
        columns[f"probability_{fold_file.stem}"] = apply_recalibration(
            predict_probabilities(model, dataset, settings.batch_size, device), fold.get("recalibration"))
    if not columns:
        raise StrokeSSLError(f"{run_dir}/folds holds no fold model")
    frame = pd.DataFrame(columns, index=pd.Index(subjects.ids, name="subject_id"))
    frame.insert(0, "probability", frame.mean(axis=1))
    return frame
