"""Embed a cohort with a run's encoders, and write the embeddings (``.npz`` + TensorBoard projector).

A pretraining run gives, per modality, the encoder's pooled embedding ``(N, D_m)`` and its
L2-normalised projection ``(N, P)`` into the space CLIP aligned; a fine-tuning run gives what its
first fold model's head reads per modality (for the probe head, the table branch is the frozen
table embedding beside the baseline's table design). Rows follow the cohort's order; subject ids
are written only when asked (``with_ids``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.explain.scorer import Scorer, fold_scorer, similarity_scorer
from finetune.inference import FoldModels, load_fold_models
from finetune.init import (
    load_pretraining_run,
    reconcile_features,
    reconcile_sequences,
)
from finetune.predict import check_feature_columns, new_cohort_config
from multimodal.checkpoint import atomic_path
from multimodal.cohort import Cohort, load_cohort, outcome_names, with_event_labels
from multimodal.config import load_cohort_config
from multimodal.data import (
    BUILT_IN_MODALITIES,
    build_dataset,
    encoder_sizes,
    to_device,
    volume_cache,
)
from multimodal.errors import StrokeSSLError
from multimodal.finite import NON_FINITE_ADVICE, require_finite
from multimodal.outcome import run_horizon
from multimodal.run_folder import FINETUNING, PRETRAINING, require_run
from pretrain.export import (  # loading a pretraining run's weights, nothing else
    load_run_model,
    run_modalities,
)

logger = logging.getLogger(__name__)


@dataclass
class RunEmbeddings:
    kind: str  # PRETRAINING or FINETUNING (multimodal.run_folder)
    cohort: Cohort
    embeddings: dict[str, np.ndarray]  # modality -> (N, D_m) encoder output, cohort order
    present: dict[str, np.ndarray]  # modality -> (N,) bool
    projections: dict[str, np.ndarray] = field(default_factory=dict)  # pretraining: (N, P), L2-normalised
    models: FoldModels | None = None  # fine-tuning: the fold models, loaded once for every explain step
    scorer: Scorer | None = None  # what attributions explain (None: a pretraining run without image and table)


@torch.no_grad()
def embed_run(run_dir: str | Path, cohort_path: str | Path, batch_size: int = 16,
              allow_missing_features: bool = False, command: str = "embed") -> RunEmbeddings:
    """Every subject of the cohort (``cohort.yaml``; a bare CSV for fine-tuning runs) through the encoders of
    a finished run of either kind (anything else is refused, naming ``command``). A fine-tuning run refuses
    clinical columns that differ from training, as ``predict`` does, unless ``allow_missing_features``
    (absent ones then enter as missing values)."""
    run_dir, cohort_path = Path(run_dir), Path(cohort_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if require_run(run_dir, (FINETUNING, PRETRAINING), command) == FINETUNING:
        models = load_fold_models(run_dir, device)
        survival = models.settings.task == "survival"
        cohort = load_cohort(new_cohort_config(run_dir, cohort_path),
                             None if survival else run_horizon(models.run_config.finetune))
        if survival and cohort.time is not None:  # the outcome a survival run learned: the event
            cohort = with_event_labels(cohort)
        fold = models.folds[0]
        if "table" in models.modalities:
            check_feature_columns(fold.preprocessor.feature_names, list(cohort.features.columns), allow_missing_features)
        cache = volume_cache(models.run_config, cohort.config, models.sequences) if "image" in models.modalities else None
        dataset = build_dataset(cohort, cache=cache, others=models.others, seed=models.run_config.seed,
                                preprocessor=fold.preprocessor if "table" in models.modalities else None)
        result = _embed(dataset, cache, cohort, FINETUNING, batch_size, device,
                        encode=lambda inputs: (fold.model.embed(inputs), {}), modalities=models.modalities)
        result.models, result.scorer = models, fold_scorer(models)
        return result
    if cohort_path.suffix.lower() not in (".yaml", ".yml"):
        raise StrokeSSLError(f"--cohort {cohort_path}: a pretraining run has no stored column roles; give a cohort.yaml")
    run = load_pretraining_run(run_dir)
    cohort = load_cohort(load_cohort_config(cohort_path), run_horizon(run.config.finetune))
    sequences = reconcile_sequences(run.sequences, cohort.sequences, cohort.config.missing_images)
    preprocessor = reconcile_features(run.preprocessor, list(cohort.features.columns))
    modalities = run_modalities(run_dir)
    model = load_run_model(run_dir, encoder_sizes(modalities, sequences, preprocessor)).to(device)
    model_config = run.config.model
    cache = volume_cache(run.config, cohort.config, sequences) if "image" in modalities else None
    others = {m: model_config.encoders[m].args for m in modalities if m not in BUILT_IN_MODALITIES}
    dataset = build_dataset(cohort, cache=cache, preprocessor=preprocessor if "table" in modalities else None,
                            others=others, seed=run.config.seed)

    def encode(inputs: dict) -> tuple[dict, dict]:
        pooled, projected = {}, {}
        for m in modalities:
            pooled[m] = getattr(model, f"{m}_encoder").forward_features(inputs[m])["embedding"]
            projected[m] = F.normalize(getattr(model, f"{m}_projection")(pooled[m]), dim=-1)
        return pooled, projected

    result = _embed(dataset, cache, cohort, PRETRAINING, batch_size, device, encode, modalities)
    if {"image", "table"} <= set(modalities):
        result.scorer = similarity_scorer(model, preprocessor, sequences, run.config)
    return result


def _embed(dataset, cache, cohort: Cohort, kind: str, batch_size: int, device: torch.device, encode,
           modalities: list[str]) -> RunEmbeddings:
    if cache is not None:
        cache.warm(cohort.records())
    pooled: dict[str, list] = {m: [] for m in modalities}
    projected: dict[str, list] = {m: [] for m in modalities}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="embedding", unit="batch"):
        out, proj = encode(to_device({m: batch[m] for m in modalities}, device))
        for m in modalities:
            pooled[m].append(out[m].float().cpu())
            if m in proj:
                projected[m].append(proj[m].float().cpu())
    for m in modalities:  # a NaN embedding would be drawn and decoded as if it were a subject's
        require_finite(torch.cat(pooled[m]), dataset.ids, f"the {m} embedding", NON_FINITE_ADVICE)
    return RunEmbeddings(
        kind, cohort, {m: torch.cat(v).numpy() for m, v in pooled.items()},
        {m: dataset.present[m].numpy().astype(bool) for m in modalities},
        {m: torch.cat(v).numpy() for m, v in projected.items() if v})


def write_embeddings(result: RunEmbeddings, out: str | Path, color_by: list[str] | None = None,
                     with_ids: bool = False) -> Path:
    """``OUT/embeddings.npz`` (per modality ``<m>`` (N, D), ``<m>_projection``, ``<m>_present``, ``label``;
    ``subject_id`` only ``with_ids``) and a TensorBoard projector view in ``OUT/tb`` coloured by the
    label and the ``color_by`` clinical columns. Returns ``OUT``."""
    out = Path(out)
    cohort = result.cohort
    unknown = [c for c in color_by or [] if c not in cohort.features.columns]
    if unknown:
        raise StrokeSSLError(f"--color-by {unknown}: not clinical columns of the cohort ({list(cohort.features.columns)})")
    arrays = {"label": cohort.labels}
    for m, values in result.embeddings.items():
        arrays[m], arrays[f"{m}_present"] = values, result.present[m]
        if m in result.projections:
            arrays[f"{m}_projection"] = result.projections[m]
    if with_ids:
        arrays["subject_id"] = np.array(cohort.ids)
    with atomic_path(out / "embeddings.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    from torch.utils.tensorboard import SummaryWriter

    header = ["label", *(color_by or []), *(["subject_id"] if with_ids else [])]
    label = outcome_names(cohort.labels)
    columns = [label, *(cohort.features[c].astype(str).tolist() for c in color_by or []),
               *([list(cohort.ids)] if with_ids else [])]
    metadata = [list(row) for row in zip(*columns, strict=True)]
    if len(header) == 1:  # the projector reads one column without a header row (else it is one row too long)
        metadata, header = label, None
    writer = SummaryWriter(str(out / "tb"))
    for m, values in {**result.embeddings, **{f"{m}_projection": v for m, v in result.projections.items()}}.items():
        writer.add_embedding(torch.from_numpy(values), metadata=metadata, metadata_header=header, tag=m)
    writer.close()
    logger.info("wrote %s (%d subjects, modalities %s) and a TensorBoard projector in %s", out / "embeddings.npz",
                len(cohort.ids), list(result.embeddings), out / "tb")
    return out
