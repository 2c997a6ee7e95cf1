"""What a run's embedding space holds: alignment, the label, and which clinical facts the image learned.

``analyse`` reads a ``RunEmbeddings`` and measures, with the shared ``multimodal.embedding_space``
and ``multimodal.linear_probes`` (the pretraining metrics and the factor-probe benchmark use the
same code):

* for a pretraining run (projections in one space): cross-modal retrieval recall@1/5/10 and the
  median rank in both directions, alignment, uniformity and the modality gap;
* a cross-validated linear-probe AUROC of each modality's embedding for the label (labeled subjects);
* for every clinical feature, how well it is decoded from the *image* embedding: CV R² for a
  continuous feature, AUROC (macro one-vs-rest for several categories) otherwise.

``write_report`` puts ``report/explain.json`` and ``report/explain.md`` in the run folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.explain.embed import RunEmbeddings
from multimodal.checkpoint import atomic_write_text
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


def attribution_summary(run_dir: str | Path, cohort: Any, n_steps: int = 32, seed: int = 0,
                        models: Any = None) -> dict[str, Any]:
    """Integrated-gradients attribution of a fine-tuning run's clinical features (``attribution``):
    the global ranking with bootstrap intervals and the completeness check. ``models``: the run's
    ``FoldModels`` when already loaded."""
    from finetune.explain.attribution import global_ranking, tabular_attributions
    from finetune.inference import load_fold_models

    result = tabular_attributions(models or load_fold_models(run_dir), cohort, n_steps=n_steps)
    gap = result["logit"] - result["baseline_logit"]
    return {"baseline": "every clinical feature missing (its learned missing-value token)", "n_steps": n_steps,
            "subjects": len(gap),
            "ranking": global_ranking(result["attributions"], result["features"], seed=seed),
            "max_abs_convergence_delta": float(np.abs(result["delta"]).max()),
            "max_abs_logit_gap": float(np.abs(gap).max())}


def markdown(analysis: dict[str, Any]) -> str:
    """The analysis as a Markdown report."""
    lines = [f"# Embedding space of this {analysis['kind']} run", "", f"{analysis['n']} subjects.", ""]
    space = analysis["space"]
    if "alignment" in space:
        n = int(space["n"])
        lines += ["## Cross-modal retrieval (image ↔ clinical record, shared projection space)", "",
                  "| direction | recall@1 | recall@5 | recall@10 | median rank |", "| --- | --- | --- | --- | --- |"]
        for direction in ("image_to_table", "table_to_image"):
            lines.append(f"| {direction.replace('_', ' ')} | " + " | ".join(
                f"{space[f'recall@{k}_{direction}']:.3f}" for k in (1, 5, 10)) + f" | {space[f'median_rank_{direction}']:.0f} |")
        lines += [f"| chance ({n} subjects) | {space['chance_recall@1']:.3f} | {space['chance_recall@5']:.3f} | "
                  f"{space['chance_recall@10']:.3f} | {(n + 1) / 2:.0f} |", "",
                  f"Alignment {space['alignment']:.3f} (mean squared distance of a subject's two embeddings; 0 = "
                  f"identical, 2 = unrelated), modality gap {space['modality_gap']:.3f} (distance between the two "
                  "modalities' centroids), uniformity " + ", ".join(
                      f"{k.split('_', 1)[1]} {v:.3f}" for k, v in space.items() if k.startswith("uniformity_"))
                  + " (lower = more spread out).", ""]
    if analysis["label_probe"]:
        lines += ["## What each embedding says about the label", "",
                  "Cross-validated linear-probe AUROC of the label from each modality's embedding alone.", "",
                  "| modality | AUROC | subjects | positives |", "| --- | --- | --- | --- |"]
        lines += [f"| {m} | {v['auroc']:.3f} | {v['n']} | {v['positives']} |" for m, v in analysis["label_probe"].items()]
        lines.append("")
    if analysis["decoded_from_image"]:
        lines += ["## Which clinical facts the MRI encoder learned", "",
                  "How well each clinical feature is decoded from the image embedding (cross-validated linear "
                  "probe: R² for continuous features, AUROC for binary and categorical ones; R² ≤ 0 or AUROC "
                  "≈ 0.5 = not in the image embedding).", "", "| feature | R² | AUROC | subjects |",
                  "| --- | --- | --- | --- |"]
        ranked = sorted(analysis["decoded_from_image"].items(),
                        key=lambda kv: -max(kv[1].get("r2", -math.inf), 2 * kv[1].get("auroc", -math.inf) - 1))
        for column, v in ranked:
            if "skipped" in v:
                lines.append(f"| {column} | – | – | skipped: {v['skipped']} |")
            else:
                r2 = f"{v['r2']:.3f}" if "r2" in v else ""
                auroc = f"{v['auroc']:.3f}" if "auroc" in v else ""
                lines.append(f"| {column} | {r2} | {auroc} | {v['n']} |")
        lines.append("")
    attribution = analysis.get("attribution")
    if attribution:
        lines += ["## Which clinical features drive the predicted risk", "",
                  "Integrated Gradients of the fold ensemble's recurrence logit, from a baseline where every "
                  f"clinical feature is missing ({attribution['n_steps']} steps; the largest convergence delta "
                  f"was {attribution['max_abs_convergence_delta']:.2g} against logit changes up to "
                  f"{attribution['max_abs_logit_gap']:.2g}). Mean |attribution| over {attribution['subjects']} "
                  "subjects with a 95 % bootstrap interval; the sign column says which way the feature pushes "
                  "on average (+ towards recurrence). Each attribution is the feature's effect relative to its "
                  "being unknown, so a feature that is rarely missing also carries what knowing it at all is "
                  "worth to the model.", "",
                  "| feature | mean |attribution| [95 % CI] | mean signed |", "| --- | --- | --- |"]
        lines += [f"| {r['feature']} | {r['mean_abs']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}] | "
                  f"{r['mean_signed']:+.3f} |" for r in attribution["ranking"]]
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: str | Path, analysis: dict[str, Any]) -> Path:
    """``RUN/report/explain.json`` and ``explain.md``; returns the Markdown path."""
    report = Path(run_dir) / "report"
    atomic_write_text(report / "explain.json", json.dumps(analysis, indent=2, default=float))
    atomic_write_text(report / "explain.md", markdown(analysis) + "\n")
    return report / "explain.md"


