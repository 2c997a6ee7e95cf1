"""``strokessl predict RUN --cohort NEW --out PRED.csv``: recurrence risk for new subjects.

Every fold model of the fine-tuning run predicts each subject (with that fold's own tabular
preprocessor); the probabilities are averaged and the threshold chosen on the pooled
out-of-fold predictions (``metrics.json``) assigns the high / low risk group. Unseen categories,
missing values, absent columns and an empty label column are handled as in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from finetune.config import finetune_config
from finetune.model import FusionClassifier, set_mode
from finetune.run import LabeledDataset, predict_probabilities
from multimodal.checkpoint import atomic_path
from multimodal.cohort import load_cohort
from multimodal.config import (
    CohortConfig,
    ModelConfig,
    from_dict,
    is_run_config,
    load_cohort_config,
    load_run_config,
)
from multimodal.encoders import build_image_encoder, build_tabular_encoder
from multimodal.errors import StrokeSSLError
from multimodal.imaging import ImageDataset, VolumeCache
from multimodal.tabular import TabularPreprocessor
from pretrain.data import MultimodalDataset

logger = logging.getLogger(__name__)


def new_cohort_config(run_dir: Path, cohort: Path) -> CohortConfig:
    """A cohort.yaml as given, or a bare CSV read with the run's stored column roles."""
    if cohort.suffix.lower() in (".yaml", ".yml"):
        if is_run_config(cohort):
            raise StrokeSSLError(f"{cohort} is a run config; give a cohort.yaml or a CSV to --cohort")
        return load_cohort_config(cohort)
    if not cohort.is_file():
        raise StrokeSSLError(f"cohort file {cohort} does not exist")
    trained_on = load_cohort_config(load_run_config(run_dir / "config.yaml").cohort)
    return dataclasses.replace(trained_on, csv=cohort.resolve(), source=cohort.resolve())


def run_predict(run_dir: str | Path, cohort: str | Path, out: str | Path) -> Path:
    """Write ``out`` (CSV: subject_id, probability, risk_group, one column per fold) and return it."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "model.json").is_file():
        raise StrokeSSLError(f"{run_dir} is not a finished fine-tuning run (no metrics.json / model.json)")
    run_config = load_run_config(run_dir / "config.yaml")
    settings = finetune_config(run_config)
    architecture = json.loads((run_dir / "model.json").read_text())
    threshold = float(json.loads((run_dir / "metrics.json").read_text())["threshold"])
    cohort_config = new_cohort_config(run_dir, Path(cohort))
    subjects = load_cohort(cohort_config)
    sequences = architecture["sequences"]
    missing = [s for s in sequences if s not in subjects.sequences]
    if missing and settings.branches != "table":
        raise StrokeSSLError(f"cohort {cohort_config.source} lacks the sequences {missing} the model was trained on")
    images = None
    if settings.branches != "table":
        cache = VolumeCache(cohort_config.root / ".strokessl-cache", run_config.imaging, sequences,
                            cohort_config.missing_images, cohort_config.volume_index, run_config.data.cache_dtype)
        cache.warm(subjects.records(), workers=run_config.data.workers)
        images = ImageDataset(subjects.records(), cache, None, seed=run_config.seed)
    image_model = from_dict(ModelConfig, architecture["image_model"])
    table_model = from_dict(ModelConfig, architecture["table_model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    columns = {}
    for fold_file in sorted((run_dir / "folds").glob("*.json")):
        fold = json.loads(fold_file.read_text())
        preprocessor = TabularPreprocessor.from_dict(fold["preprocessor"])
        table = preprocessor.transform_tensors(subjects.features) if settings.branches != "image" else None
        image_encoder = build_image_encoder(image_model, len(sequences)) if settings.branches != "table" else None
        table_encoder = (build_tabular_encoder(table_model, len(preprocessor.continuous), preprocessor.category_sizes)
                         if settings.branches != "image" else None)
        model = FusionClassifier(image_encoder, table_encoder, fusion=settings.fusion, hidden=settings.hidden,
                                 dropout=settings.dropout)
        model.load_state_dict(load_file(str(fold_file.with_suffix(".safetensors"))))
        set_mode(model, settings.mode).to(device)
        dataset = LabeledDataset(MultimodalDataset(subjects.ids, list(range(len(subjects.ids))), images, table),
                                 np.zeros(len(subjects.ids)))
        columns[f"probability_{fold_file.stem}"] = predict_probabilities(model, dataset, settings.batch_size, device)
    if not columns:
        raise StrokeSSLError(f"{run_dir}/folds holds no fold model")
    frame = pd.DataFrame(columns, index=pd.Index(subjects.ids, name="subject_id"))
    probability = frame.mean(axis=1)
    frame.insert(0, "probability", probability)
    frame.insert(1, "risk_group", np.where(probability >= threshold, "high", "low"))
    with atomic_path(out) as tmp:
        frame.to_csv(tmp)
    logger.info("predicted %d subjects with %d fold models (threshold %.3f): %s", len(frame), len(columns), threshold, out)
    return out
