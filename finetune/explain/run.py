"""``strokessl explain RUN --cohort C [--subject ID]``: every explain step, and the report.

1. embed the cohort with the run's encoders and analyse the embedding space (``analysis``), with
   a PCA / t-SNE picture;
2. Integrated Gradients of the clinical features (``attribution``) on the run's score: the fold
   ensemble's recurrence logit, or a pretraining run's image–record similarity;
3. a saliency gallery (occlusion + Grad-CAM montages, ``saliency``) of the highest-risk subjects (the
   most similar image–record pairs for a pretraining run), captioned by rank, never by subject id;
4. with ``--subject``: that subject's one-page PNG (risk, group and threshold; top features with
   their values and signed attributions; saliency montage), its occlusion and Grad-CAM maps as NIfTI
   on the grid of its own first sequence, and a JSON with the numbers (slice attributions too for the
   slice ResNet+LSTM), under ``RUN/report/subjects/``;
5. ``report/explain.md``, ``explain.html`` and ``explain.json``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from finetune.explain.analysis import analyse
from finetune.explain.attribution import BASELINES, global_ranking, tabular_attributions
from finetune.explain.embed import RunEmbeddings, embed_run
from finetune.explain.figures import (
    attribution_figure,
    projection_figure,
    saliency_montage,
    subject_figure,
)
from finetune.explain.report import write_report
from finetune.explain.saliency import (
    ImageScore,
    grad_cam,
    occlusion,
    save_nifti,
    slice_attributions,
    subject_image,
    to_original_grid,
)
from finetune.explain.sanity import MAX_RANK_CORRELATION, randomisation_check
from finetune.explain.scorer import Scorer
from finetune.explain.words import (
    MIN_REPORTS,
    MIN_SHARE,
    common_vocabulary,
    shown_words,
    subject_words,
    word_effects,
    word_ranking,
)
from finetune.inference import FoldModels, ensemble_probabilities
from finetune.predict import new_cohort_config
from multimodal.checkpoint import atomic_path, atomic_write_json
from multimodal.cohort import load_cohort, outcome_names
from multimodal.encoders.slices import SliceSequenceEncoder
from multimodal.errors import StrokeSSLError
from multimodal.run_folder import FINETUNING, PRETRAINING, require_run, run_facts, run_paths
from multimodal.run_lock import run_lock

logger = logging.getLogger(__name__)
SANITY_SUBJECTS = 2  # gallery subjects the model randomisation check runs on


def explain_run(run_dir: str | Path, cohort_path: str | Path, seed: int = 0, subject: str | None = None,
                baseline: str = "median", gallery: int = 4, n_steps: int = 32,
                allow_missing_features: bool = False, with_ids: bool = False) -> dict[str, Any]:
    """Run every explain step on ``run_dir`` and write its report; returns the analysis (``explain.json``).
    ``with_ids`` adds the subject ids to ``report/explain_attributions.csv`` (rows in cohort order). The
    run folder is locked while its report is written."""
    run_dir = Path(run_dir)
    kind = require_run(run_dir, (FINETUNING, PRETRAINING), "explain")
    with run_lock(run_dir, "explain"):
        return _explain(run_dir, kind, cohort_path, seed, subject, baseline, gallery, n_steps, allow_missing_features,
                        with_ids)


def _explain(run_dir: Path, kind: str, cohort_path: str | Path, seed: int, subject: str | None, baseline: str,
             gallery: int, n_steps: int, allow_missing_features: bool, with_ids: bool) -> dict[str, Any]:
    start = time.perf_counter()
    report = run_paths(run_dir).report
    if subject is not None:  # refused before the slow steps
        if kind != FINETUNING:
            raise StrokeSSLError("--subject needs a fine-tuning run (it explains the fold models' predicted risk)")
        config = new_cohort_config(run_dir, Path(cohort_path))
        if subject not in load_cohort(config).ids:
            raise StrokeSSLError(f"--subject {subject!r} is not in cohort {config.source}")
    embedded = embed_run(run_dir, cohort_path, allow_missing_features=allow_missing_features, command="explain")
    cohort, scorer = embedded.cohort, embedded.scorer
    analysis = analyse(embedded, seed=seed)
    projection = projection_figure(embedded.embeddings, embedded.present, cohort.labels,
                                   report / "explain_projection.png", seed)
    analysis["projection_figure"] = projection.name if projection is not None else None
    attributions = None
    if scorer is not None and "table" in scorer.modalities:
        attributions = tabular_attributions(scorer, cohort, baseline=baseline, n_steps=n_steps)
        analysis["attribution"] = _attribution_summary(attributions, scorer.what, report, seed, n_steps)
        analysis["attribution"]["table"] = _write_attributions(attributions, cohort, report, with_ids).name
        # The other baseline as a second view: against "every feature missing" a feature ranks high for
        # being known at all (LDL, HDL on the demo), so it follows the typical-patient view, never leads.
        other = next(b for b in BASELINES if b != baseline)
        second = tabular_attributions(scorer, cohort, baseline=other, n_steps=n_steps)
        analysis["attribution_second"] = _attribution_summary(second, scorer.what, report, seed, n_steps,
                                                              figure_name=f"explain_attribution_{other}.png")
    words = None
    if scorer is not None and embedded.kind == FINETUNING and "report" in scorer.modalities:
        words = word_effects(scorer, cohort)
        if words is not None and len(words["rows"]):
            analysis["words"] = _word_summary(words, scorer.what, report, seed, with_ids)
    risk, held = None, {}
    if embedded.kind == FINETUNING:
        held = held_out_folds(run_dir, embedded.models)
        ours = sum(s in held for s in cohort.ids)
        if ours:
            logger.info("%d of the %d subjects were in the run's cross-validation (matched by id): each is scored "
                        "and explained by the fold models that did not train on it", ours, len(cohort.ids))
        risk = out_of_fold_risk(ensemble_probabilities(embedded.models, cohort), embedded.models, held)
    if scorer is not None and "image" in scorer.modalities and gallery > 0:
        analysis["gallery"] = _gallery(embedded, risk, attributions, report, gallery, held)
    if subject is not None:
        for written in explain_subject(embedded, subject, risk, attributions, run_dir, held,
                                       baseline=baseline, n_steps=n_steps, words=words, with_ids=with_ids):
            logger.info("wrote %s", written)  # the subject's files stay out of the cohort-level report
    analysis["seconds"] = time.perf_counter() - start
    path = write_report(run_dir, analysis)
    logger.info("wrote %s and %s (%.0f s)", path, path.with_suffix(".html"), analysis["seconds"])
    return analysis


def held_out_folds(run_dir: Path, models: FoldModels) -> dict[str, list[int]]:
    """Subject id -> positions in ``models.folds`` of the fold models whose test part held it in the
    run's own cross-validation. A fold model that trained on a subject scores it in-sample, so for the
    run's own subjects explain uses only these, as ``predictions.csv`` does; new subjects get every fold."""
    splits = json.loads(run_paths(run_dir).splits.read_text())
    position = {fold.name: k for k, fold in enumerate(models.folds)}
    held: dict[str, list[int]] = {}
    for name, split in splits.items():
        if name in position:
            for subject in split["test"]:
                held.setdefault(subject, []).append(position[name])
    return held


def out_of_fold_risk(probabilities: pd.DataFrame, models: FoldModels, held: dict[str, list[int]]) -> np.ndarray:
    """``(N,)`` risk per subject of ``ensemble_probabilities``' frame: the mean over the subject's
    held-out fold models where it has some (``held_out_folds``), else over every fold model."""
    columns = [f"probability_{fold.name}" for fold in models.folds]
    values = probabilities[columns].to_numpy()
    return np.array([values[i, held[s]].mean() if s in held else values[i].mean()
                     for i, s in enumerate(probabilities.index)])


def _scorer_for(scorer: Scorer, subject: str, held: dict[str, list[int]]) -> Scorer:
    return scorer.restricted(held[subject]) if subject in held else scorer


def _attribution_summary(result: dict[str, Any], what: str, report: Path, seed: int, n_steps: int,
                         figure_name: str = "explain_attribution.png") -> dict[str, Any]:
    gap = result["score"] - result["baseline_score"]
    delta = float(np.abs(result["delta"]).max())
    if delta > 0.05 * float(np.abs(gap).max()):
        logger.warning("Integrated Gradients did not converge well (largest delta %.3g against score changes up to "
                       "%.3g): read the attributions with care", delta, float(np.abs(gap).max()))
    ranking = global_ranking(result["attributions"], result["features"], seed=seed)
    figure = attribution_figure(ranking, report / figure_name, what)
    return {"what": what, "baseline": result["baseline"], "baseline_text": BASELINES[result["baseline"]],
            "n_steps": n_steps, "subjects": len(gap), "ranking": ranking, "figure": figure.name,
            "max_abs_convergence_delta": delta,
            "max_abs_score_gap": float(np.abs(gap).max())}


def _word_summary(words: dict[str, Any], what: str, report: Path, seed: int, with_ids: bool) -> dict[str, Any]:
    """The report words that drive the score over the cohort (``words.word_ranking``), with a figure."""
    allowed = shown_words(words, with_ids)
    ranking = word_ranking(words, allowed, seed=seed)[:30]
    figure = attribution_figure(ranking, report / "explain_words.png", what, measure="word occlusion")
    return {"what": what, "reports": len(words["rows"]), "every_word": allowed is None, "ranking": ranking,
            "figure": figure.name, "min_reports": MIN_REPORTS, "min_share": MIN_SHARE}


def _write_attributions(result: dict[str, Any], cohort: Any, report: Path, with_ids: bool) -> Path:
    """``report/explain_attributions.csv``: one row per attributed subject (``row`` = its position in the
    cohort), its score, baseline score, convergence delta and one column per feature; ids only ``with_ids``."""
    frame = pd.DataFrame(result["attributions"], columns=result["features"])
    frame.insert(0, "row", result["rows"])
    if with_ids:
        frame.insert(0, "subject_id", [cohort.ids[i] for i in result["rows"]])
    for position, key in enumerate(("score", "baseline_score", "delta"), start=1 + with_ids):
        frame.insert(position, key, result[key])
    path = report / "explain_attributions.csv"
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return path


def _gallery(embedded: RunEmbeddings, risk: np.ndarray | None, attributions: dict[str, Any] | None,
             report: Path, count: int, held: dict[str, list[int]]) -> dict[str, Any]:
    """Occlusion + Grad-CAM montages of the ``count`` highest-scoring subjects with an image."""
    cohort, scorer = embedded.cohort, embedded.scorer
    if risk is not None:
        order, title = risk, "Saliency gallery: the highest predicted risks"
        text = ("Occlusion (red: the region raised the predicted risk, blue: lowered it) and Grad-CAM (where "
                "the encoder's feature maps drive the logit) over the first MRI sequence, for the subjects "
                "with the highest fold-ensemble risk; each row shows the axial slices holding the most "
                "occlusion saliency. A subject of the run's own cross-validation is scored and explained by "
                "the fold models that did not train on it (its out-of-fold risk, as in predictions.csv).")
    else:
        order = np.full(len(cohort.ids), -np.inf)
        if attributions is not None:
            order[attributions["rows"]] = attributions["score"]
        title = "Saliency gallery: the most similar image–record pairs"
        text = ("Occlusion and Grad-CAM of the image–record cosine similarity (which regions drive the "
                "alignment) for the subjects whose image and record the pretrained model finds most similar.")
    candidates = [i for i in np.argsort(-order, kind="stable") if embedded.present["image"][i]][:count]
    checked = [cohort.ids[i] for i in candidates[:SANITY_SUBJECTS]]
    sanity = randomisation_check([_scorer_for(scorer, s, held) for s in checked], cohort, checked,
                                 lambda image, groups: _maps(image, groups, scorer.device))
    shown = [method for method, check in sanity.items() if check["passes"]]
    verdicts = "; ".join(f"{method} {'shown' if check['passes'] else 'left out'} (rank correlation "
                         f"{check['median']:.2f})" for method, check in sanity.items())
    text += (f" Model randomisation check on {len(checked)} of these subjects (each map against the same map with "
             f"the image encoders re-initialised; a method whose maps correlate at {MAX_RANK_CORRELATION} or more "
             f"shows the image rather than the model and is left out): {verdicts}.")
    entries = []
    for rank, i in enumerate(tqdm(candidates if shown else [], desc="saliency gallery", unit="subject"), start=1):
        image, groups = subject_image(_scorer_for(scorer, cohort.ids[i], held), cohort, cohort.ids[i])
        maps = {name: m for name, m in _maps(image, groups, scorer.device).items() if name.split(" (")[0] in shown}
        what = f"risk {order[i]:.2f}" if risk is not None else f"similarity {order[i]:.2f}"
        caption = f"rank {rank}: {what}, outcome {outcome_names(cohort.labels[i:i + 1])[0]}"
        figure = saliency_montage(image["image"], maps, report / "explain_gallery" / f"rank{rank}.png", caption,
                                  head=image["head_mask"])
        entries.append({"rank": rank, "score": float(order[i]), "figure": f"explain_gallery/{figure.name}",
                        "caption": caption})
    return {"title": title, "text": text, "subjects": entries, "randomisation_check": sanity}


def _maps(image: dict[str, np.ndarray], groups: list[ImageScore], device: torch.device) -> dict[str, np.ndarray]:
    """``{"occlusion": (H, W, D), "Grad-CAM (<stage>)": (H, W, D)}`` for one subject's preprocessed image."""
    cam, stage = grad_cam(image["image"], groups, device)
    return {"occlusion": occlusion(image["image"], groups, device, image["head_mask"]), f"Grad-CAM ({stage})": cam}


def _risk_words(run_dir: Path) -> str:
    """What the run's probability is, from its recorded facts: recurrence by the run's horizon, else
    the 12-month label of the cohort."""
    horizon = run_facts(run_dir).horizon
    if horizon:
        return f"predicted risk of recurrence by {horizon['value']:g} {horizon['unit']}"
    return "predicted 12-month recurrence risk"


def explain_subject(embedded: RunEmbeddings, subject: str, risk: np.ndarray, attributions: dict[str, Any] | None,
                    run_dir: Path, held: dict[str, list[int]], baseline: str = "median", n_steps: int = 32,
                    top: int = 10, words: dict[str, Any] | None = None, with_ids: bool = False) -> list[Path]:
    """``RUN/report/subjects/<ID>.png``, ``<ID>.json`` and, with an image, ``<ID>_occlusion.nii.gz`` and
    ``<ID>_gradcam.nii.gz`` on the grid of the subject's first sequence; returns the paths. A subject
    of the run's own cross-validation is explained by its held-out fold models only (``held``)."""
    cohort = embedded.cohort
    scorer = _scorer_for(embedded.scorer, subject, held)
    folder = run_paths(run_dir).report / "subjects"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", subject)  # an id with "/" or spaces stays one file name
    position = cohort.ids.index(subject)
    threshold = float(json.loads(run_paths(run_dir).metrics.read_text())["threshold"])
    probability = float(risk[position])
    models = len(embedded.scorer.members)
    basis = (f"out of fold: the {len(held[subject])} of {models} fold models that did not train on this subject"
             if subject in held else f"all {models} fold models (the subject was not in the run's cross-validation)")
    if subject in held and attributions is not None:  # the cohort-wide attributions used every fold model
        attributions = tabular_attributions(scorer, cohort.subset([subject]), baseline=baseline, n_steps=n_steps)
        attributions["rows"] = np.array([position])
    features: list[dict[str, Any]] = []
    found = np.flatnonzero(attributions["rows"] == position) if attributions is not None else []
    if len(found):
        row = attributions["attributions"][found[0]]
        values = cohort.features.iloc[position]
        for j in np.argsort(-np.abs(row))[:top]:
            name = attributions["features"][j]
            value = values.get(name)  # None: a column absent from the cohort (--allow-missing-features)
            features.append({"feature": name, "value": "missing" if value is None or value != value else str(value),
                             "attribution": float(row[j])})
    numbers: dict[str, Any] = {"probability": probability, "threshold": threshold, "scored_by": basis,
                               "risk_group": "high" if probability >= threshold else "low", "top_features": features}
    top_words = []
    if words is not None:  # the cohort-wide occlusion used every fold model: redo it out of fold
        if subject in held:
            words = word_effects(scorer, cohort.subset([subject]))
            words["rows"] = np.array([position] * len(words["rows"]), dtype=int)
        # one report alone cannot tell common words from names: without --with-ids, the cohort's vocabulary only
        top_words = subject_words(words, position, None if with_ids else common_vocabulary(cohort, scorer), top)
        numbers["top_words"] = top_words
    written: list[Path] = []
    image = maps = head = None
    if "image" in scorer.modalities and embedded.present["image"][position]:
        image, groups = subject_image(scorer, cohort, subject)
        maps = _maps(image, groups, scorer.device)
        sequences = [s for s in scorer.sequences if cohort.image_paths[subject].get(s) is not None]
        reference = cohort.image_paths[subject][sequences[0]]
        for values, kind in zip(maps.values(), ("occlusion", "gradcam"), strict=True):
            written.append(save_nifti(to_original_grid(values, image["affine"], reference),
                                      folder / f"{stem}_{kind}.nii.gz"))
        numbers["nifti_reference"] = f"sequence {sequences[0]}"
        if all(isinstance(g.encoder, SliceSequenceEncoder) for g in groups):
            per_slice, delta = slice_attributions(image["image"], groups, scorer.device)
            numbers["slice_attributions"] = {"values": per_slice.tolist(), "max_abs_convergence_delta": delta}
        image, head = image["image"], image["head_mask"]
    per_slice = numbers.get("slice_attributions", {}).get("values")
    written.append(subject_figure(folder / f"{stem}.png", probability=probability, threshold=threshold,
                                  features=features, image=image, maps=maps, head=head,
                                  title=f"{subject} ({'out-of-fold risk' if subject in held else 'all fold models'})",
                                  scored_by=(f"mean of the {len(held[subject])} fold models that did not train on it"
                                             if subject in held else f"mean of all {models} fold models"),
                                  slice_values=None if per_slice is None else np.array(per_slice),
                                  risk_words=_risk_words(run_dir), words=top_words))
    atomic_write_json(folder / f"{stem}.json", numbers)
    return [*written, folder / f"{stem}.json"]
