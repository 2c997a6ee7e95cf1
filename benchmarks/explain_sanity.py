"""Explain-stage sanity figures on a synthetic cohort, where the truth is known.

    python benchmarks/explain_sanity.py [--cohort demo/cohort] [--pretrain runs/demo]
        [--finetune runs/demo-finetune-frozen] [--subjects 8] [--out benchmarks/results/explain_sanity.json]

1. ``strokessl explain`` on the pretraining and the fine-tuning run (timed: the stage's wall-clock);
2. the rank of every planted tabular risk factor of the generator in the global Integrated-Gradients
   ranking, against both baselines (missing token, training median);
3. saliency in the infarct: for the ``--subjects`` highest-risk subjects with an infarct of at least
   5 ml, the share of occlusion and Grad-CAM mass (on the subject's own FLAIR grid) inside the true
   infarct (``truth/<id>_infarct.nii.gz``, written here if absent) divided by the infarct's share of the
   head: 1 = no better than spreading the mass evenly. The same for the fold models with their image
   encoder and head's last layer re-initialised (model randomisation, Adebayo et al. 2018);
4. how well the pretrained image embedding decodes NIHSS, age, D-dimer and the generator's latent
   lesion quantities (cross-validated linear probes, ``multimodal.linear_probes``).

Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from finetune.explain.attribution import global_ranking, tabular_attributions
from finetune.explain.embed import embed_run
from finetune.explain.run import _maps, explain_run
from finetune.explain.saliency import subject_image, to_original_grid
from finetune.explain.scorer import fold_scorer
from finetune.inference import ensemble_probabilities, load_fold_models
from multimodal.linear_probes import probe_factors
from multimodal.synthetic_masks import write_infarct_masks

# The generator's tabular risk factors (multimodal/synthetic_clinical._raw_components) and two columns
# that carry no risk at all.
PLANTED = ["age", "atrial_fibrillation", "hba1c", "hypertension", "smoking", "systolic_bp", "ldl", "hdl"]
NOISE = ["sex", "bmi"]
logger = logging.getLogger("explain_sanity")


def lesion_ratios(models, cohort, cohort_dir: Path, subjects: list[str]) -> list[dict]:
    """Per subject: (mass share in the infarct) / (infarct share of the head), occlusion and Grad-CAM."""
    scorer = fold_scorer(models)
    out = []
    for subject in subjects:
        image, groups = subject_image(scorer, cohort, subject)
        reference = cohort.image_paths[subject][scorer.sequences[0]]
        infarct = np.asarray(nib.load(str(cohort_dir / "truth" / f"{subject}_infarct.nii.gz")).dataobj) > 0.5
        head = np.asarray(to_original_grid(image["head_mask"].astype(np.float32), image["affine"],
                                           reference).dataobj) > 0.5
        infarct &= head
        row = {"infarct_voxels": int(infarct.sum()), "head_voxels": int(head.sum())}
        for name, values in _maps(image, groups, scorer.device).items():
            mass = np.abs(np.asarray(to_original_grid(values, image["affine"], reference).dataobj))
            share = mass[infarct].sum() / max(mass[head].sum(), 1e-12)
            row[name.split()[0]] = float(share / (infarct.sum() / head.sum()))
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", type=Path, default=Path("demo/cohort"))
    parser.add_argument("--pretrain", type=Path, default=Path("runs/demo"))
    parser.add_argument("--finetune", type=Path, default=Path("runs/demo-finetune-frozen"))
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_sanity.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cohort_yaml = args.cohort / "cohort.yaml"
    result: dict = {"cohort": str(args.cohort), "pretrain": str(args.pretrain), "finetune": str(args.finetune),
                    "torch_threads": torch.get_num_threads(), "seconds": {}}
    for name, run in (("pretrain", args.pretrain), ("finetune", args.finetune)):
        start = time.perf_counter()
        explain_run(run, cohort_yaml)
        result["seconds"][f"explain_{name}"] = round(time.perf_counter() - start, 1)

    models = load_fold_models(args.finetune)
    embedded = embed_run(args.finetune, cohort_yaml)
    cohort = embedded.cohort
    result["ranks"] = {}
    for baseline in ("missing", "median"):
        attributions = tabular_attributions(fold_scorer(models), cohort, baseline=baseline)
        order = [r["feature"] for r in global_ranking(attributions["attributions"], attributions["features"])]
        result["ranks"][baseline] = {f: order.index(f) + 1 for f in PLANTED + NOISE}
    result["features"] = len(order)

    if not (args.cohort / "truth").is_dir():
        write_infarct_masks(args.cohort)
    risk = ensemble_probabilities(models, cohort)["probability"]
    latent = pd.read_csv(args.cohort / "risk.csv", index_col="subject_id")
    visible = latent.index[latent["infarct_volume_ml"] >= 5.0]
    chosen = [s for s in risk.sort_values(ascending=False).index if s in visible][: args.subjects]
    result["lesion_subjects"] = len(chosen)
    result["lesion_trained"] = lesion_ratios(models, cohort, args.cohort, chosen)
    torch.manual_seed(0)  # cascading randomisation: image encoder + the head's last layer
    for fold in models.folds:
        encoder = fold.model.encoder("image")
        for module in [*encoder.modules(), fold.model.head[-1]]:
            if hasattr(module, "reset_parameters") and module is not encoder:
                module.reset_parameters()
    result["lesion_randomised"] = lesion_ratios(models, cohort, args.cohort, chosen)

    pretrained = embed_run(args.pretrain, cohort_yaml)
    rows = pretrained.present["image"]
    columns = pd.concat([cohort.features[["nihss", "age", "d_dimer", "atrial_fibrillation"]],
                         latent.loc[cohort.ids, ["infarct_volume_ml", "wmh_volume_ml", "atrophy_excess"]]], axis=1)
    columns["infarct_volume_ml"] = np.log1p(columns["infarct_volume_ml"])  # the scale the risk uses
    scores = probe_factors(pretrained.embeddings["image"][rows], columns[rows].reset_index(drop=True), seed=0)
    result["decoded_from_image"] = {"r2": scores["r2"], "auroc": scores["auroc"]}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result) + "\n")
    logger.info("wrote %s", args.out)


def markdown(result: dict) -> str:
    def summary(rows: list[dict], key: str) -> str:
        values = np.array([r[key] for r in rows])
        return f"{np.median(values):.2f} (range {values.min():.2f}–{values.max():.2f})"

    lines = [f"Explain sanity on `{result['cohort']}` (`{result['finetune']}`, `{result['pretrain']}`).", "",
             f"Wall-clock of `strokessl explain`: pretraining run {result['seconds']['explain_pretrain']} s, "
             f"fine-tuning run {result['seconds']['explain_finetune']} s.", "",
             f"| factor | planted? | rank, missing baseline | rank, median baseline (of {result['features']}) |",
             "| --- | --- | --- | --- |"]
    for f in PLANTED + NOISE:
        lines.append(f"| {f} | {'yes' if f in PLANTED else 'no (noise)'} | {result['ranks']['missing'][f]} | "
                     f"{result['ranks']['median'][f]} |")
    lines += ["", f"Saliency-in-infarct ratio (share of |map| in the infarct ÷ infarct share of the head; 1 = chance), "
              f"median over the {result['lesion_subjects']} highest-risk subjects with an infarct ≥ 5 ml:", "",
              "| map | trained | randomised |", "| --- | --- | --- |"]
    for key in ("occlusion", "Grad-CAM"):
        lines.append(f"| {key} | {summary(result['lesion_trained'], key)} | {summary(result['lesion_randomised'], key)} |")
    decoded = result["decoded_from_image"]
    lines += ["", "Decoded from the pretrained image embedding (cross-validated): " + ", ".join(
        [f"{k} R² {v:.3f}" for k, v in decoded["r2"].items()] + [f"{k} AUROC {v:.3f}" for k, v in decoded["auroc"].items()])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
