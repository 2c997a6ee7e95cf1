"""Collect the fine-tuning evaluation runs into one table next to the generator's oracle AUROCs.

    python benchmarks/finetune_eval/summarise.py RUNS_DIR COHORT/truth.json [--name finetune_eval]

Reads ``RUNS_DIR/<variant>/metrics.json`` for every variant folder that finished and the
Bayes-optimal / image-only / tabular-only AUROCs the synthetic generator computed from the true
risk of the labeled subjects (``truth.json``). Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from finetune.metrics import paired_bootstrap_delta_auroc

RESULTS = Path(__file__).resolve().parent.parent / "results"
DESCRIPTIONS = {
    "frozen": "both branches, frozen pretrained encoders, MLP head",
    "frozen-platt": "as frozen, Platt-recalibrated on inner validation",
    "trainable": "both branches, pretrained encoders fine-tuned (lr × 0.1)",
    "scratch": "both branches, random init (supervised baseline)",
    "image-frozen": "image only, frozen pretrained encoder",
    "image-trainable": "image only, pretrained encoder fine-tuned",
    "image-scratch": "image only, random init",
    "table-frozen": "table only, frozen pretrained encoder",
    "table-scratch": "table only, FT-Transformer from random init",
    "table-scratch-mlp": "table only, MLP encoder from random init",
}
# Pretrained vs randomly initialised encoders, on the same subjects (paired bootstrap of ΔAUROC).
PAIRS = [("image-frozen", "image-scratch"), ("image-trainable", "image-scratch"), ("frozen", "scratch"),
         ("trainable", "scratch")]
BASELINES = {"logistic_regression": "logistic regression (tabular)", "gradient_boosting": "gradient boosting (tabular)"}


def interval(entry: dict[str, float]) -> str:
    return f"{entry['estimate']:.3f} [{entry['lower']:.3f}, {entry['upper']:.3f}]"


def row(name: str, what: str, metrics: dict[str, Any], delta: dict[str, Any] | None) -> str:
    cells = [name, what, interval(metrics["auroc"]), interval(metrics["auprc"]),
             interval(metrics["balanced_accuracy"]), interval(metrics["brier"]), f"{metrics['ece']['estimate']:.3f}"]
    for baseline in BASELINES:
        d = (delta or {}).get(baseline)
        cells.append(f"{d['delta']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}], p {d['p_value']:.3f}" if d else "")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--name", default="finetune_eval")
    args = parser.parse_args()
    truth = json.loads(args.truth.read_text())
    runs = {name: json.loads((args.runs / name / "metrics.json").read_text())
            for name in DESCRIPTIONS if (args.runs / name / "metrics.json").is_file()}
    if not runs:
        raise SystemExit(f"no finished run under {args.runs}")
    first = next(iter(runs.values()))
    header = ("| run | what | AUROC | AUPRC | balanced accuracy | Brier | ECE | ΔAUROC vs logistic regression "
              "| ΔAUROC vs gradient boosting |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [header]
    lines += [row(name, DESCRIPTIONS[name], m["model"], m["delta_auroc"]) for name, m in runs.items()]
    lines += [row(name, what, first["baselines"][name], None) for name, what in BASELINES.items()
              if name in first["baselines"]]
    pairs = {}
    for a, b in PAIRS:
        if a in runs and b in runs:
            pa, pb = (pd.read_csv(args.runs / name / "predictions.csv").set_index("subject_id") for name in (a, b))
            pb = pb.loc[pa.index]
            pairs[f"{a} − {b}"] = paired_bootstrap_delta_auroc(pa["label"].to_numpy(), pa["probability"].to_numpy(),
                                                               pb["probability"].to_numpy(), 2000, 0)
    pair_lines = "\n".join(f"- {name}: ΔAUROC {d['delta']:+.3f} [{d['lower']:+.3f}, {d['upper']:+.3f}], "
                            f"p {d['p_value']:.3f}" for name, d in pairs.items())
    oracle = truth["auroc"]
    table = "\n".join(lines)
    text = (f"# Fine-tuning evaluation: {truth['n']} synthetic subjects, grid {truth['grid']}, "
            f"{first['n']} labeled ({first['positives']} positive)\n\n"
            f"Pooled out-of-fold metrics over {len(first['per_fold'])} folds, 95 % stratified bootstrap "
            f"intervals; ΔAUROC is a paired bootstrap (model − baseline). Each run fits both baselines on "
            f"its own folds (same seed, so the same splits); the baseline rows are from `{next(iter(runs))}`.\n\n"
            f"{table}\n\n"
            f"Pretrained vs random initialisation (paired bootstrap, 2,000 resamples):\n\n{pair_lines}\n\n"
            f"Generator oracles on the same labeled subjects (true risk, no estimation): Bayes-optimal AUROC "
            f"{oracle['bayes_labeled']:.3f}; image part of the logit only {oracle['image_only_labeled']:.3f}; "
            f"tabular part only {oracle['tabular_only_labeled']:.3f}.\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({
        "truth": truth, "runs": {name: {k: m[k] for k in ("n", "positives", "threshold", "model", "delta_auroc",
                                                          "fold_summary", "risk_groups") if k in m}
                                 for name, m in runs.items()},
        "baselines": first["baselines"], "pretrained_vs_random": pairs,
    }, indent=2))
    print(text)  # noqa: T201 - a benchmark script's report


if __name__ == "__main__":
    main()
