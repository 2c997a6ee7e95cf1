"""Prediction with fine-tuned models: one model on a dataset, or a run's fold models averaged.

``load_fold_models`` is the one way to rebuild a fine-tuning run's fold models (``model.json``,
``folds/*.json`` with each fold's tabular preprocessor and recalibration, ``folds/*.safetensors``);
``ensemble_probabilities`` averages them on a cohort. ``strokessl predict``, the fixed test cohort
of ``strokessl finetune`` and the explain stage all go through them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from finetune.config import FinetuneConfig, finetune_config
from finetune.model import FusionClassifier, build_classifier, load_classifier_state, set_mode
from finetune.recalibration import apply_recalibration
from multimodal.cohort import Cohort
from multimodal.config import ModelConfig, RunConfig, load_run_config
from multimodal.config_mapping import from_dict
from multimodal.cox import event_probability
from multimodal.data import (
    BUILT_IN_MODALITIES,
    build_dataset,
    encoder_sizes,
    to_device,
    volume_cache,
)
from multimodal.encoders import build_encoder
from multimodal.errors import StrokeSSLError
from multimodal.finite import NON_FINITE_ADVICE, require_finite
from multimodal.run_folder import check_weights, run_facts, run_paths
from multimodal.tabular import TabularPreprocessor

logger = logging.getLogger(__name__)


class EmbeddingDataset(Dataset):
    """Precomputed embeddings (``frozen`` mode), labels and modality presence: items
    ``{"embeddings": {modality: (D_m,)}, "present": {modality: () bool}, "label": ()}``."""

    def __init__(self, embeddings: dict[str, torch.Tensor], labels: np.ndarray,
                 present: dict[str, torch.Tensor] | None = None) -> None:
        self.embeddings = embeddings
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.present = present if present is not None else {
            m: torch.ones(len(self.labels), dtype=torch.bool) for m in embeddings}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"embeddings": {k: v[i] for k, v in self.embeddings.items()},
                "present": {k: v[i] for k, v in self.present.items()}, "label": self.labels[i]}


def classifier_logits(model: FusionClassifier, batch: dict[str, Any]) -> torch.Tensor:
    """(B,) recurrence logits from a batch of inputs or of precomputed embeddings."""
    if "embeddings" in batch:
        return model.forward_from_embeddings(batch["embeddings"], batch.get("present"))
    return model({m: batch.get(m) for m in model.modalities}, batch.get("present"))


@torch.no_grad()
def predict_logits(model: FusionClassifier, dataset: Dataset, batch_size: int, device: torch.device) -> np.ndarray:
    """(N,) model outputs for ``dataset`` in order (model in eval mode): the recurrence logit, or the
    log relative hazard of a survival model."""
    model.eval()
    out = [classifier_logits(model, to_device(b, device)).float().cpu()
           for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return torch.cat(out).numpy()


@torch.no_grad()
def predict_probabilities(model: FusionClassifier, dataset: Dataset, batch_size: int, device: torch.device) -> np.ndarray:
    """(N,) recurrence probabilities for ``dataset`` in order (model in eval mode)."""
    model.eval()
    out = [torch.sigmoid(classifier_logits(model, to_device(b, device))).float().cpu()  # per batch, as ever:
           for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]  # the same bits as before
    return torch.cat(out).numpy()


@dataclass
class FoldModel:
    name: str  # rRfF
    model: FusionClassifier  # in eval mode, on the device
    preprocessor: TabularPreprocessor  # the fold's own tabular state
    recalibration: dict[str, Any] | None  # Platt parameters fitted on the fold's inner validation
    # survival runs: Breslow's baseline survival at the horizon (the model's output is a log hazard)
    baseline_survival: float | None = None


@dataclass
class FoldModels:
    run_dir: Path
    run_config: RunConfig  # the run's config.yaml
    settings: FinetuneConfig
    sequences: list[str]  # image channels, in the order the image encoder reads them
    modalities: list[str]  # what the fold models read
    others: dict[str, dict[str, Any]]  # modalities beyond image and table -> their encoder args (readers)
    folds: list[FoldModel]
    # modalities whose encoder every fold model shares (recorded at training; empty for older runs,
    # whose shared encoders are found by their weights' digest)
    shared_encoders: list[str] = field(default_factory=list)


def load_fold_models(run_dir: str | Path, device: torch.device | str | None = None) -> FoldModels:
    """Every fold model of a finished fine-tuning run, rebuilt from the run folder alone (no path
    back to the training cohort or the pretraining run). A missing or damaged file, or fold weights
    other than the ones the run wrote (their sha256 is in the run record), is a ``StrokeSSLError``
    naming it."""
    run_dir = Path(run_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = run_paths(run_dir)
    for needed in (paths.config, paths.model):
        if not needed.is_file():
            raise StrokeSSLError(f"{run_dir} is not a fine-tuning run folder (no {needed.name})")
    run_config = load_run_config(paths.config)
    settings = finetune_config(run_config)
    architecture = json.loads(paths.model.read_text())
    facts = run_facts(run_dir)
    settings.task = facts.task or settings.task
    # The head the folds were built with; runs from before LP-FT name none, and trained mode trainable with mlp.
    settings.head = architecture.get("head", "mlp" if settings.mode == "trainable" else settings.head)
    sequences = list(facts.sequences)
    if not sequences and "image" in architecture.get("encoders", {"image": None}):
        raise StrokeSSLError(f"run folder {run_dir} records no image sequences (its {paths.record.name} lost its facts "
                             "and model.json holds none): restore run.json from a copy of the run folder")
    model_config = fold_architecture(architecture, settings.branches)
    modalities = list(model_config.encoders)
    others = {m: spec.args for m, spec in model_config.encoders.items() if m not in BUILT_IN_MODALITIES}
    fold_files = sorted(paths.folds.glob("*.json"))
    check_weights(run_dir, [f.with_suffix(".safetensors") for f in fold_files])
    folds = []
    preprocessors: dict[str, TabularPreprocessor] = {}  # folds with equal state share one (its warnings once)
    for fold_file in fold_files:
        fold = json.loads(fold_file.read_text())
        state = json.dumps(fold["preprocessor"], sort_keys=True)
        if state not in preprocessors:
            preprocessors[state] = TabularPreprocessor.from_dict(fold["preprocessor"])
        preprocessor = preprocessors[state]
        sizes = encoder_sizes(modalities, sequences, preprocessor)
        encoders = {m: build_encoder(model_config, m, **sizes[m]) for m in modalities}
        model = build_classifier(encoders, settings, len(preprocessor.continuous), preprocessor.category_sizes,
                                 architecture.get("probe_table_embedding"))
        weights = fold_file.with_suffix(".safetensors")
        try:
            load_classifier_state(model, load_file(str(weights)))
        except (OSError, SafetensorError, RuntimeError) as err:
            raise StrokeSSLError(f"fold model {weights} is missing or damaged ({err}); rerun the fine-tuning "
                                 "(finetune --resume recreates only what is missing)") from err
        set_mode(model, settings.mode).to(device).eval()
        folds.append(FoldModel(fold_file.stem, model, preprocessor, fold.get("recalibration"),
                               fold.get("baseline_survival")))
    if not folds:
        raise StrokeSSLError(f"{run_dir}/folds holds no fold model")
    return FoldModels(run_dir, run_config, settings, sequences, modalities, others, folds, facts.shared_encoders)


def fold_architecture(architecture: dict[str, Any], branches: str) -> ModelConfig:
    """The encoders of a run's ``model.json`` (``encoders``, or the ``image_model`` /
    ``table_model`` of runs written before it), restricted to ``finetune.branches``."""
    if "encoders" in architecture:
        config = from_dict(ModelConfig, {"encoders": architecture["encoders"]})
    else:
        image = from_dict(ModelConfig, architecture["image_model"]).encoders["image"]
        table = from_dict(ModelConfig, architecture["table_model"]).encoders["table"]
        config = ModelConfig(encoders={"image": image, "table": table})
    if branches != "both":
        config.encoders = {m: spec for m, spec in config.encoders.items() if m in branches.split("+")}
    return config


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of ``module``'s parameter and buffer values: equal for the same weights (the frozen,
    pretrained encoder every fold of a frozen run shares)."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode(encoder: torch.nn.Module, dataset: Dataset, modality: str, batch_size: int,
           device: torch.device) -> torch.Tensor:
    """``(N, D)`` embeddings of ``dataset``'s ``modality`` input by ``encoder`` (in eval mode), in order, on the CPU."""
    return torch.cat([encoder(to_device(batch[modality], device)).float().cpu()
                      for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)])


def ensemble_probabilities(models: FoldModels, subjects: Cohort) -> pd.DataFrame:
    """Every fold model on ``subjects``: columns ``probability`` (the mean) and ``probability_<fold>``,
    indexed by subject id; for a survival run the probability of recurrence by the horizon, with the
    log relative hazards in ``risk_score`` (the mean) and ``risk_<fold>``. Sequences the models need must be in the cohort. Folds whose image (or
    other non-table) encoder has the same weights share one pass of it over the cohort; the clinical
    table goes through each fold's own preprocessor and table encoder."""
    config, settings = models.run_config, models.settings
    missing = [s for s in models.sequences if s not in subjects.sequences]
    if missing and "image" in models.modalities:
        raise StrokeSSLError(f"cohort {subjects.config.source} lacks the sequences {missing} the model was trained on")
    cache = None
    if "image" in models.modalities:
        cache = volume_cache(config, subjects.config, models.sequences)
        cache.warm(subjects.records(), workers=config.data.workers)
    device = next(models.folds[0].model.parameters()).device
    inputs = build_dataset(subjects, cache=cache, others=models.others, seed=config.seed)  # all but the table
    shared: dict[tuple[str, str], torch.Tensor] = {}  # (modality, weights digest) -> (N, D)
    columns, risks = {}, {}
    for fold in models.folds:
        embeddings, present = {}, dict(inputs.present)
        for m in fold.model.modalities:
            if m == "table":
                table = build_dataset(subjects, preprocessor=fold.preprocessor, seed=config.seed)
                embeddings[m], present[m] = encode(fold.model.encoder(m), table, m, settings.batch_size, device), \
                    table.present[m]
                continue
            key = (m, "shared" if m in models.shared_encoders else weights_digest(fold.model.encoder(m)))
            if key not in shared:
                shared[key] = encode(fold.model.encoder(m), inputs, m, settings.batch_size, device)
            embeddings[m] = shared[key]
        dataset = EmbeddingDataset(embeddings, np.zeros(len(subjects.ids)), present)
        if fold.baseline_survival is not None:
            risk = predict_logits(fold.model, dataset, settings.batch_size, device).astype(float)
            risks[f"risk_{fold.name}"] = risk
            probabilities = event_probability(risk, fold.baseline_survival)
        else:
            probabilities = apply_recalibration(
                predict_probabilities(fold.model, dataset, settings.batch_size, device), fold.recalibration)
        require_finite(probabilities, subjects.ids, f"the probability of fold model {fold.name}", NON_FINITE_ADVICE)
        columns[f"probability_{fold.name}"] = probabilities
    index = pd.Index(subjects.ids, name="subject_id")
    frame = pd.DataFrame(columns, index=index)
    frame.insert(0, "probability", frame.mean(axis=1))
    if risks:
        risk_frame = pd.DataFrame(risks, index=index)
        frame.insert(0, "risk_score", risk_frame.mean(axis=1))
        frame = pd.concat([frame, risk_frame], axis=1)
    return frame
