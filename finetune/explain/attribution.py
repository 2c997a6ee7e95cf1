"""Which clinical features drive a run's score: Integrated Gradients over the clinical record.

Each feature's input (its FT-Transformer token, or its columns in the probe's table design) moves
on a straight line from a baseline to the subject's value as the feature's ``presence`` goes from
0 to 1 (``multimodal.encoders.tabular.along_path``); continuous and categorical features alike, so a
categorical feature is attributed on its embedding, as ``LayerIntegratedGradients`` on the token
layer would (Captum's ``IntegratedGradients`` integrates over the presences). The baseline is

* ``missing`` (default): every feature at its learned missing-value token, "nothing known";
* ``median``: every feature at the training median (continuous) or most frequent category, the
  "typical patient" of the fold's own preprocessor (whose robust z-score is 0 at the median).

The image (and any other modality) stays at the subject's own embedding. The attributed function
is the ``Scorer``'s mean score (a fine-tuning run's mean fold logit, a pretraining run's image–record
similarity), so by completeness a subject's attributions sum to ``score(subject) − score(baseline)``
up to Captum's reported convergence delta.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.explain.scorer import Scorer
from multimodal.cohort import Cohort
from multimodal.data import table_present, to_device
from multimodal.errors import StrokeSSLError

BASELINES = {"missing": "every clinical feature missing (its learned missing-value token)",
             "median": "every clinical feature at its training median or most frequent category"}


def reference_table(template: dict[str, torch.Tensor], category_sizes: list[int]) -> dict[str, torch.Tensor]:
    """The ``median`` baseline shaped like ``template``: robust z-score 0 (the training median) for every
    continuous feature, category code 1 (the preprocessor orders categories most frequent first), none
    missing; a categorical feature with no category in training (size 1) stays missing."""
    n_cont = template["continuous"].shape[1] if "continuous" in template else 0
    seen = torch.tensor([True] * n_cont + [size > 1 for size in category_sizes], device=template["missing"].device)
    out = {"missing": (~seen).expand_as(template["missing"]).clone()}
    if "continuous" in template:
        out["continuous"] = torch.zeros_like(template["continuous"])
    if "categorical" in template:
        codes = torch.tensor([int(size > 1) for size in category_sizes], device=template["categorical"].device)
        out["categorical"] = codes.expand_as(template["categorical"]).clone()
    return out


def tabular_attributions(scorer: Scorer, cohort: Cohort, baseline: str = "missing", n_steps: int = 32,
                         batch_size: int = 16) -> dict[str, Any]:
    """Per-subject attributions ``(N, F)`` of the clinical features (the preprocessor's order) to the
    scorer's mean score, with ``features``, ``delta (N,)`` (Captum's convergence delta), ``score (N,)``,
    ``baseline_score (N,)`` and ``rows (N,)`` (cohort positions of the attributed subjects: for a
    similarity, only subjects with both an image and a record)."""
    if "table" not in scorer.modalities:
        raise StrokeSSLError("this run reads no clinical table: there is nothing to attribute")
    if baseline not in BASELINES:
        raise StrokeSSLError(f"--baseline {baseline!r}: choose one of {sorted(BASELINES)}")
    device = scorer.device
    cache = scorer.cache(cohort)
    if cache is not None:
        cache.warm(cohort.records())
    # The images (and other modalities) are read once; only the table differs between members (each
    # fold's own preprocessor), so every member's table is transformed once, whole, and sliced per batch.
    dataset = scorer.dataset(cohort, scorer.members[0], cache=cache)
    tables = [member.preprocessor.transform_tensors(cohort.features) for member in scorer.members]
    features = scorer.members[0].preprocessor.feature_names
    shared = {m: scorer.shared(m) for m in scorer.modalities if m != "table"}
    chunks: dict[str, list[np.ndarray]] = {"attributions": [], "delta": [], "score": [], "baseline_score": [],
                                           "rows": []}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="integrated gradients", unit="batch"):
        keep = torch.ones(len(batch["index"]), dtype=torch.bool)
        if scorer.pairs_only:
            keep = batch["present"]["image"] & batch["present"]["table"]
            if not keep.any():
                continue
        rows = batch["index"][keep]  # cohort positions
        batch = to_device(_subset(batch, keep), device)
        member_tables = [{k: v[rows].to(device) for k, v in table.items()} for table in tables]
        fixed: list[dict[str, torch.Tensor]] = [{} for _ in scorer.members]
        with torch.no_grad():  # the other modalities stay fixed at the subject's own embedding
            for m, groups in shared.items():
                for encoder, indices in groups:  # an encoder shared by several members runs once
                    embedded = encoder(batch[m])
                    for i in indices:
                        fixed[i][m] = embedded
        present = [{**batch["present"], "table": table_present(table)} for table in member_tables]

        def mean_score(presence: torch.Tensor, member_tables: list = member_tables, fixed: list = fixed,
                       present: list = present) -> torch.Tensor:
            scores = []
            for member, table, embedded, flags in zip(scorer.members, member_tables, fixed, present, strict=True):
                steps = presence.shape[0] // table["missing"].shape[0]  # Captum stacks the path steps
                tiled = {k: v.repeat(steps, *[1] * (v.ndim - 1)) for k, v in table.items()}
                path = {**tiled, "presence": presence}
                if baseline == "median":
                    path["baseline"] = reference_table(tiled, member.preprocessor.category_sizes)
                embeddings = {m: e.repeat(steps, 1) for m, e in embedded.items()}
                embeddings["table"] = member.encoders["table"](path)
                scores.append(member.head(embeddings, {m: p.repeat(steps) for m, p in flags.items()}))
            return torch.stack(scores).mean(dim=0)

        ones = torch.ones_like(member_tables[0]["missing"], dtype=torch.float32)
        attributions, delta = IntegratedGradients(mean_score).attribute(
            ones, baselines=torch.zeros_like(ones), n_steps=n_steps, return_convergence_delta=True)
        with torch.no_grad():
            chunks["score"].append(mean_score(ones).cpu().numpy())
            chunks["baseline_score"].append(mean_score(torch.zeros_like(ones)).cpu().numpy())
        chunks["attributions"].append(attributions.detach().cpu().numpy())
        chunks["delta"].append(delta.detach().cpu().numpy())
        chunks["rows"].append(rows.numpy())
    if not chunks["rows"]:
        raise StrokeSSLError(f"no subject of cohort {cohort.config.source} has both an image and a clinical record")
    out = {key: np.concatenate(value) for key, value in chunks.items()}
    return {"features": list(features), "baseline": baseline, **out}


def _subset(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The rows ``keep`` of a collated batch (nested dicts included)."""
    if keep.all():
        return batch
    return {k: _subset(v, keep) if isinstance(v, dict) else v[keep] if isinstance(v, torch.Tensor) else
            [x for x, k_ in zip(v, keep.tolist(), strict=True) if k_] for k, v in batch.items()}


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
