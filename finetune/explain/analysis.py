"""What a run's embedding space holds: alignment, the label, and which clinical facts the image learned.

``analyse`` reads a ``RunEmbeddings`` and measures, with the shared ``multimodal.embedding_space``
and ``multimodal.linear_probes`` (the pretraining metrics and the factor-probe benchmark use the
same code):

* for a pretraining run (projections in one space): cross-modal retrieval recall@1/5/10 and the
  median rank in both directions, alignment, uniformity and the modality gap;
* a cross-validated linear-probe AUROC of each modality's embedding for the label (labeled subjects);
* for every clinical feature, how well it is decoded from the *image* embedding: CV R² for a
  continuous feature, AUROC (macro one-vs-rest for several categories) otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from finetune.explain.embed import RunEmbeddings
from multimodal.embedding_space import embedding_metrics, uniformity
from multimodal.linear_probes import probe_auroc, probe_factors

MIN_CLASS = 3  # a probe needs this many subjects of each class


def analyse(result: RunEmbeddings, seed: int = 0) -> dict[str, Any]:
    """``{"kind", "n", "space", "label_probe", "decoded_from_image"}`` (see the module docstring)."""
    cohort = result.cohort
    out: dict[str, Any] = {"kind": result.kind, "n": len(cohort.ids), "space": {}, "label_probe": {},
                           "decoded_from_image": {}}
    projections = result.projections
    if {"image", "table"} <= set(projections):
        both = result.present["image"] & result.present["table"]
        if both.sum() >= 2:
            out["space"] = embedding_metrics(torch.from_numpy(projections["image"][both]),
                                             torch.from_numpy(projections["table"][both]), ks=(1, 5, 10), full=True)
        for m in projections:
            out["space"][f"uniformity_{m}"] = uniformity(torch.from_numpy(projections[m][result.present[m]]))
    labeled = cohort.labeled
    for m, values in result.embeddings.items():
        rows = labeled & result.present[m]
        y = cohort.labels[rows].astype(int)
        if min(y.sum(), len(y) - y.sum()) >= MIN_CLASS:
            out["label_probe"][m] = {"auroc": probe_auroc(values[rows], y, seed), "n": int(rows.sum()),
                                     "positives": int(y.sum())}
    if "image" in result.embeddings:
        rows = result.present["image"]
        scores = probe_factors(result.embeddings["image"][rows], cohort.features[rows].reset_index(drop=True), seed)
        for column in cohort.features.columns:
            if column in scores["r2"]:
                out["decoded_from_image"][column] = {"r2": scores["r2"][column], "n": scores["rows"][column]}
            elif column in scores["auroc"]:
                out["decoded_from_image"][column] = {"auroc": scores["auroc"][column], "n": scores["rows"][column]}
            else:
                out["decoded_from_image"][column] = {"skipped": scores["skipped"].get(column, "not probed")}
    return out
