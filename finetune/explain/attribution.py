"""Which clinical features drive the recurrence logit: Integrated Gradients over the fold ensemble.

The baseline is "every feature missing": each feature's input (its FT-Transformer token, or its
columns in the probe's table design) moves on a straight line from the learned missing-value token
to the subject's value as the feature's ``presence`` goes from 0 to 1 (``multimodal.encoders.tabular
.presence``); continuous and categorical features alike, so a categorical feature is attributed on
its embedding, as ``LayerIntegratedGradients`` on the token layer would. Captum's
``IntegratedGradients`` integrates over the presences; the image (and any other modality) stays at
the subject's own embedding. The attributed function is the fold models' mean logit, so by
completeness the attributions of a subject sum to ``mean logit(subject) − mean logit(all missing)``
up to Captum's reported convergence delta. A feature missing for a subject gets 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.inference import FoldModels
from multimodal.cohort import Cohort
from multimodal.data import build_dataset, table_present, to_device, volume_cache


def tabular_attributions(models: FoldModels, cohort: Cohort, n_steps: int = 32,
                         batch_size: int = 16) -> dict[str, Any]:
    """Per-subject attributions ``(N, F)`` of the clinical features (the preprocessor's order) to the
    ensemble's mean recurrence logit, with ``features``, ``delta (N,)`` (Captum's convergence delta),
    ``logit (N,)`` and ``baseline_logit (N,)``."""
    if "table" not in models.modalities:
        raise ValueError("this run reads no clinical table: there is nothing to attribute")
    device = next(models.folds[0].model.parameters()).device
    config = models.run_config
    cache = volume_cache(config, cohort.config, models.sequences) if "image" in models.modalities else None
    if cache is not None:
        cache.warm(cohort.records())
    # The images (and other modalities) are read once; only the table differs between folds (each
    # fold's own preprocessor), so every fold's table is transformed once, whole, and sliced per batch.
    dataset = build_dataset(cohort, cache=cache, others=models.others, seed=config.seed)
    tables = [fold.preprocessor.transform_tensors(cohort.features) for fold in models.folds]
    features = models.folds[0].preprocessor.feature_names
    chunks: dict[str, list[np.ndarray]] = {"attributions": [], "delta": [], "logit": [], "baseline_logit": []}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="integrated gradients", unit="batch"):
        rows = batch["index"]  # cohort positions
        batch = to_device(batch, device)
        fold_tables = [{k: v[rows].to(device) for k, v in table.items()} for table in tables]
        # The other modalities stay fixed at the subject's own embedding.
        with torch.no_grad():
            fixed = [{m: fold.model.encoder(m)(batch[m]) for m in fold.model.modalities if m != "table"}
                     for fold in models.folds]
        present = [{**batch["present"], "table": table_present(table)} for table in fold_tables]

        def mean_logit(presence: torch.Tensor, fold_tables: list = fold_tables, fixed: list = fixed,
                       present: list = present) -> torch.Tensor:
            logits = []
            for fold, table, embedded, flags in zip(models.folds, fold_tables, fixed, present, strict=True):
                steps = presence.shape[0] // table["missing"].shape[0]  # Captum stacks the path steps
                tiled = {k: v.repeat(steps, *[1] * (v.ndim - 1)) for k, v in table.items()}
                embeddings = {m: e.repeat(steps, 1) for m, e in embedded.items()}
                embeddings["table"] = fold.model.encoder("table")({**tiled, "presence": presence})
                logits.append(fold.model.forward_from_embeddings(embeddings, {m: p.repeat(steps)
                                                                              for m, p in flags.items()}))
            return torch.stack(logits).mean(dim=0)

        ones = torch.ones_like(fold_tables[0]["missing"], dtype=torch.float32)
        attributions, delta = IntegratedGradients(mean_logit).attribute(
            ones, baselines=torch.zeros_like(ones), n_steps=n_steps, return_convergence_delta=True)
        with torch.no_grad():
            chunks["logit"].append(mean_logit(ones).cpu().numpy())
            chunks["baseline_logit"].append(mean_logit(torch.zeros_like(ones)).cpu().numpy())
        chunks["attributions"].append(attributions.detach().cpu().numpy())
        chunks["delta"].append(delta.detach().cpu().numpy())
    out = {key: np.concatenate(value) for key, value in chunks.items()}
    return {"features": list(features), **out}


def global_ranking(attributions: np.ndarray, features: list[str], n_resamples: int = 1000,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Features by mean |attribution| over subjects, each with a 95 % bootstrap interval (subjects
    resampled) and the mean signed attribution; largest first."""
    rng = np.random.default_rng(seed)
    magnitude = np.abs(attributions)  # (N, F)
    draws = magnitude[rng.integers(0, len(magnitude), (n_resamples, len(magnitude)))].mean(axis=1)  # (R, F)
    lower, upper = np.percentile(draws, [2.5, 97.5], axis=0)
    ranking = [{"feature": f, "mean_abs": float(magnitude[:, j].mean()), "lower": float(lower[j]),
                "upper": float(upper[j]), "mean_signed": float(attributions[:, j].mean())}
               for j, f in enumerate(features)]
    return sorted(ranking, key=lambda r: -r["mean_abs"])
