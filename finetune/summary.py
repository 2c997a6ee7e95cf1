"""The end of a fine-tuning run: pooled out-of-fold metrics, the verdict against the baselines, plots.

``summarise_run`` turns the finished folds into ``predictions.csv``, ``metrics.json`` (written
last), ``report/*.png`` and ``report/summary.md``; ``format_metrics`` and ``verdict`` give the
text the CLI prints and the demo ends with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune.clinical_utility import decision_curve
from finetune.config import FinetuneConfig
from finetune.metrics import (
    bootstrap_ci,
    paired_bootstrap_delta_auroc,
    risk_groups,
    summarise_folds,
)
from finetune.model_report import format_value as _n
from finetune.model_report import write_model_report
from finetune.oracle import MIN_ORACLE_GAIN, ORACLE, oracle_section
from finetune.plots import (
    plot_calibration,
    plot_decision_curve,
    plot_pr,
    plot_risk_groups,
    plot_roc,
)
from finetune.test_cohort import evaluate_test_cohort
from finetune.thresholds import choose_threshold
from multimodal.checkpoint import atomic_write_json, atomic_write_text
from multimodal.cohort import Cohort
from multimodal.config import RunConfig
from multimodal.run_folder import run_paths


def _per_fold_metrics(results: dict[str, Any], label_of: dict[str, float], n_resamples: int,
                      seed: int) -> dict[str, Any]:
    """Each fold's held-out metrics at its own threshold, with bootstrap intervals where both classes occur."""
    per_fold = {}
    for name, result in results.items():
        y = np.array([int(label_of[s]) for s in result["test_ids"]])
        p = np.asarray(result["probabilities"])
        entry: dict[str, Any] = {"threshold": result["threshold"], "n": len(y), "positives": int(y.sum())}
        if 0 < y.sum() < len(y):
            entry.update(bootstrap_ci(y, p, result["threshold"], n_resamples, seed))
        else:  # a one-class fold (tiny cohorts only): point estimates, no interval
            entry.update({k: {"estimate": v, "lower": float("nan"), "upper": float("nan")}
                          for k, v in result["metrics"].items() if k not in ("n", "prevalence")})
        per_fold[name] = entry
    return per_fold


def summarise_run(run_dir: Path, run_config: RunConfig, cohort: Cohort, test: Cohort | None, settings: FinetuneConfig,
               results: dict[str, Any], seed: int) -> Path:
    """Pooled out-of-fold predictions (averaged over repeats) → metrics.json, predictions.csv, plots."""
    rows = []
    for name, result in results.items():
        for i, subject in enumerate(result["test_ids"]):
            rows.append({"subject_id": subject, "fold": name, "probability": result["probabilities"][i],
                         **{b: p[i] for b, p in result["baselines"].items()}})
    frame = pd.DataFrame(rows).groupby("subject_id", sort=False).agg(
        {"probability": "mean", "fold": ",".join, **{b: "mean" for b in settings.baselines}})
    label_of = dict(zip(cohort.ids, cohort.labels, strict=True))
    frame.insert(0, "label", [int(label_of[s]) for s in frame.index])
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    threshold = choose_threshold(y, p, settings.threshold, settings.target_sensitivity)
    frame["risk_group"] = np.where(p >= threshold, "high", "low")
    paths = run_paths(run_dir)
    frame.to_csv(paths.predictions)
    metrics: dict[str, Any] = {
        "threshold": threshold, "n": len(y), "positives": int(y.sum()),
        "model": bootstrap_ci(y, p, threshold, settings.bootstrap, seed),
        "per_fold": _per_fold_metrics(results, label_of, settings.bootstrap, seed),
        "fold_summary": summarise_folds([r["metrics"] for r in results.values()]),
        "baselines": {}, "delta_auroc": {}, "risk_groups": risk_groups(y, p, threshold),
    }
    thresholds = {"model": threshold}
    for name in settings.baselines:
        q = frame[name].to_numpy()
        thresholds[name] = choose_threshold(y, q, settings.threshold, settings.target_sensitivity,
                                            name=f"baseline {name}")
        metrics["baselines"][name] = bootstrap_ci(y, q, thresholds[name], settings.bootstrap, seed)
        metrics["delta_auroc"][name] = paired_bootstrap_delta_auroc(y, p, q, settings.bootstrap, seed)
    if all(ORACLE in r for r in results.values()) and "logistic_regression" in settings.baselines:
        oracle = pd.DataFrame([(s, q) for r in results.values() for s, q in zip(r["test_ids"], r[ORACLE], strict=True)],
                              columns=["subject_id", ORACLE]).groupby("subject_id")[ORACLE].mean()
        metrics[ORACLE] = oracle_section(y, p, frame["logistic_regression"].to_numpy(),
                                         oracle.loc[frame.index].to_numpy(), settings.bootstrap, seed)
    if test is not None:
        metrics["test"] = evaluate_test_cohort(run_dir, settings, cohort, test, thresholds, seed)
    report = paths.report
    curves = {"model": p, **{name: frame[name].to_numpy() for name in settings.baselines}}
    plot_roc(y, curves, report / "roc.png")
    plot_pr(y, curves, report / "pr.png")
    plot_calibration(y, p, report / "calibration.png")
    plot_risk_groups(metrics["risk_groups"], report / "risk_groups.png")
    metrics["decision_curve"] = decision_curve(curves, labels=y)
    plot_decision_curve(metrics["decision_curve"], report / "decision_curve.png")
    write_model_report(run_dir, run_config, cohort, settings, metrics, verdict(metrics))
    atomic_write_text(report / "summary.md", "# Fine-tuning summary\n\n```\n" + format_metrics(metrics) + "\n```\n")
    # strict JSON: an undefined value (a calibration slope on separable scores, say) is written as null
    atomic_write_json(paths.metrics, metrics)
    return run_dir


def _ci(entry: dict[str, Any], spec: str = ".3f") -> str:
    """``estimate [lower, upper]`` of a bootstrap entry."""
    return f"{_n(entry.get('estimate'), spec)} [{_n(entry.get('lower'), spec)}, {_n(entry.get('upper'), spec)}]"


def _metric_table(section: dict[str, Any]) -> list[str]:
    names = ["model", *section["baselines"]]
    columns = {"model": section["model"], **section["baselines"]}
    keys = ["auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "f1", "brier", "ece"]
    lines = [f"{'metric':<18}" + "".join(f"{n:>26}" for n in names)]
    for key in keys:
        cells = []
        for name in names:
            cells.append(_ci(columns[name].get(key, {})))
        lines.append(f"{key:<18}" + "".join(f"{c:>26}" for c in cells))
    for name, delta in section["delta_auroc"].items():
        lines.append(f"ΔAUROC model − {name}: {_n(delta['delta'], '+.3f')} [{_n(delta['lower'], '+.3f')}, "
                     f"{_n(delta['upper'], '+.3f')}], p = {_n(delta['p_value'])}")
    return lines


_BASELINE_NAMES = {"logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting"}


def verdict(section: dict[str, Any], where: str = "out of fold") -> list[str]:
    """Plain words: does the model beat each tabular baseline? One line per baseline, from the
    paired bootstrap ΔAUROC (model − baseline); "beats" only when the whole 95 % CI is above 0."""
    model = section["model"]["auroc"]
    lines = [f"Model AUROC {where}: {_ci(model)}"]
    folds = section.get("fold_summary", {}).get("auroc")
    if folds:  # pooling mixes folds whose scores sit on different scales: the mean of the folds beside it
        lines[0] += f" pooled; mean of the {int(folds['n'])} folds {_n(folds['mean'])} (SD {_n(folds['std'])})"
    for name, delta in section.get("delta_auroc", {}).items():
        base = section["baselines"][name]["auroc"]
        label = _BASELINE_NAMES.get(name, name.replace("_", " "))
        ci = f"{delta['delta']:+.3f} [{delta['lower']:+.3f}, {delta['upper']:+.3f}]"
        if delta["lower"] > 0:
            words = f"the model beats {label} by {ci}"
        elif delta["upper"] < 0:
            words = f"the model does not beat {label}: it is worse by {ci}"
        else:
            words = f"the model does not beat {label}: ΔAUROC {ci}, the interval includes 0"
        lines.append(f"  {words} ({label} alone: {_ci(base)})")
    oracle = section.get(ORACLE)
    if oracle is not None:
        lines.append("  " + _oracle_words(oracle))
    deltas = list(section.get("delta_auroc", {}).values())
    if deltas:
        paid = all(d["lower"] > 0 for d in deltas)
        lines.append("  Verdict: multimodal learning " + ("paid off: the model beats every tabular baseline."
                     if paid else "did not pay off here: the model does not beat every tabular baseline."))
    return lines


def _oracle_words(oracle: dict[str, Any]) -> str:
    """How much of what the true image quantities add to logistic regression the model captured."""
    share = oracle["share"]
    prize = (f"{share['oracle_gain']:+.3f} [{share['oracle_gain_lower']:+.3f}, {share['oracle_gain_upper']:+.3f}]")
    head = (f"generator truth: logistic regression given the true image quantities scores {_ci(oracle['auroc'])}, "
            f"a gain of {prize} over logistic regression")
    if share["oracle_gain"] < MIN_ORACLE_GAIN:
        return (f"{head}; under {MIN_ORACLE_GAIN} the image adds too little here to say how much of it the model "
                "captured")
    return (f"{head}; the model captured {share['share']:.0%} of that gain "
            f"[{_n(share['lower'], '.0%')}, {_n(share['upper'], '.0%')}]")


def format_metrics(metrics: dict[str, Any]) -> str:
    """The verdict against the tabular baselines first, then tables of pooled out-of-fold (and fixed
    test cohort) metrics with 95 % CIs, model and baselines."""
    lines = [*verdict(metrics), "",
             f"pooled out-of-fold: {metrics['n']} subjects, {metrics['positives']} positive, "
             f"threshold {metrics['threshold']:.3f}", *_metric_table(metrics)]
    folds = metrics.get("fold_summary", {}).get("auroc")
    if folds:
        lines.append(f"per-fold AUROC: mean {_n(folds['mean'])}, SD {_n(folds['std'])} over {int(folds['n'])} folds")
    test = metrics.get("test")
    if test:
        lines += ["", f"fixed test cohort {test['cohort']}: {test['n']} subjects, {test['positives']} positive",
                  *_metric_table(test), *verdict(test, "on the fixed test cohort")]
    return "\n".join(lines)
