"""The end of a survival run: pooled out-of-fold risks, C-indices with intervals, the Kaplan–Meier report.

``summarise_survival_run`` turns the finished folds into ``predictions.csv`` (risk score, probability
of recurrence by the horizon, risk group), ``metrics.json`` (written last: Harrell's and Uno's C,
time-dependent AUROC and Brier score at the horizon, each with a stratified bootstrap interval, for
the model and the Cox baseline, and their paired differences), ``report/kaplan_meier.png`` (the
high- and low-risk groups with the log-rank test), ``report/calibration.png`` (at the horizon),
``report/decision_curve.png``, ``report/model_report.md`` and ``report/summary.md``; ``format_survival_metrics``
gives the text the CLI prints. Subjects fall in the high-risk group when their risk is above their
fold's median training risk (averaged over repeats), so the groups never see the test outcomes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import CensoredData, logrank

from finetune.baselines import baseline_frame
from finetune.clinical_utility import decision_curve, survival_calibration
from finetune.config import FinetuneConfig
from finetune.inference import ensemble_probabilities, load_fold_models
from finetune.model_report import format_value as _n
from finetune.model_report import write_model_report
from finetune.oracle import true_image_quantities, with_truth
from finetune.plots import plot_decision_curve, plot_kaplan_meier, plot_survival_calibration
from finetune.survival_fold import COX_BASELINE, COX_ORACLE
from finetune.survival_probe import fit_predict_cox_baseline
from multimodal.checkpoint import atomic_path, atomic_write_json, atomic_write_text
from multimodal.cohort import Cohort
from multimodal.config import RunConfig
from multimodal.run_folder import run_paths
from multimodal.survival_metrics import bootstrap_survival_metrics, kaplan_meier, survival_at

logger = logging.getLogger(__name__)

_NAMES = {"harrell_c": "Harrell's C", "uno_c": "Uno's C", "td_auroc": "AUROC(t)", "brier": "Brier(t)"}
_WORDS = {COX_BASELINE: "the Cox model of the table", COX_ORACLE: "the Cox model of the table + true image quantities"}


def _pooled(results: dict[str, Any]) -> pd.DataFrame:
    """One row per subject: risk, probability and risk-above-cut averaged over the folds (repeats) that held it out."""
    rows = []
    for name, result in results.items():
        for i, subject in enumerate(result["test_ids"]):
            row = {"subject_id": subject, "fold": name, "risk": result["risk"][i],
                   "probability": result["probabilities"][i], "above_cut": result["risk"][i] - result["risk_cut"]}
            for baseline, fitted in result["baselines"].items():
                row[f"{baseline}_risk"] = fitted["risk"][i]
                row[f"{baseline}_probability"] = fitted["probabilities"][i]
                row[f"{baseline}_above_cut"] = fitted["risk"][i] - fitted["risk_cut"]
            rows.append(row)
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame.columns if c not in ("subject_id", "fold")]
    return frame.groupby("subject_id", sort=False).agg({"fold": ",".join, **{c: "mean" for c in numeric}})


def risk_group_outcomes(high: np.ndarray, event: np.ndarray, time: np.ndarray, horizon: float) -> dict[str, Any]:
    """Per group (``high`` (N,) bool): size, events, Kaplan–Meier event-free probability at the horizon;
    and the two-sided log-rank test between the groups (scipy)."""
    out: dict[str, Any] = {}
    for name, rows in (("high", high), ("low", ~high)):
        entry: dict[str, Any] = {"n": int(rows.sum()), "events": int(event[rows].sum())}
        if rows.any():
            entry["event_free_at_horizon"] = survival_at(*kaplan_meier(event[rows], time[rows]), horizon)
        out[name] = entry
    if high.any() and (~high).any():
        test = logrank(CensoredData.right_censored(time[high], ~event[high]),
                       CensoredData.right_censored(time[~high], ~event[~high]))
        out["logrank"] = {"statistic": float(test.statistic), "p_value": float(test.pvalue)}
    return out


def summarise_survival_run(run_dir: Path, run_config: RunConfig, cohort: Cohort, test: Cohort | None,
                           settings: FinetuneConfig, results: dict[str, Any], seed: int) -> Path:
    """Pooled out-of-fold risks → metrics.json, predictions.csv, report/."""
    frame = _pooled(results)
    position = {s: i for i, s in enumerate(cohort.ids)}
    rows = [position[s] for s in frame.index]
    event, time = cohort.event[rows].astype(bool), cohort.time[rows].astype(float)
    horizon = settings.survival_horizon
    at = horizon.in_unit(cohort.config.time_unit)
    frame.insert(0, "time", time)
    frame.insert(1, "event", event.astype(int))
    frame["risk_group"] = np.where(frame["above_cut"] > 0, "high", "low")
    paths = run_paths(run_dir)
    frame.drop(columns=[c for c in frame.columns if c.endswith("above_cut")]).to_csv(paths.predictions)
    models = ["model", *[b for b in (COX_BASELINE, COX_ORACLE) if f"{b}_risk" in frame]]
    column = {"model": ""} | {b: f"{b}_" for b in models[1:]}
    metrics_by_model = bootstrap_survival_metrics(
        {m: frame[f"{column[m]}risk"].to_numpy() for m in models},
        {m: 1 - frame[f"{column[m]}probability"].to_numpy() for m in models},
        event, time, at, settings.bootstrap, seed, reference=COX_BASELINE)
    delta = metrics_by_model.pop(f"delta_vs_{COX_BASELINE}")
    metrics: dict[str, Any] = {
        "task": "survival", "horizon": {"value": horizon.value, "unit": horizon.unit, "in_time_unit": at,
                                        "time_unit": cohort.config.time_unit},
        "n": len(frame), "events": int(event.sum()),
        "events_by_horizon": int((event & (time <= at)).sum()),
        "censored_before_horizon": int((~event & (time < at)).sum()),
        "model": metrics_by_model["model"],
        "baselines": {m: metrics_by_model[m] for m in models[1:]},
        "delta_vs_cox": delta,
        "risk_cut": float(np.mean([r["risk_cut"] for r in results.values()])),
        "threshold": float(np.mean([r["threshold"] for r in results.values()])),
        "risk_groups": risk_group_outcomes(frame["above_cut"].to_numpy() > 0, event, time, at),
        "per_fold": {name: r["metrics"] for name, r in results.items()},
    }
    groups = {f"{name} risk": (time[rows_], event[rows_]) for name, rows_ in
              (("high", frame["risk_group"].to_numpy() == "high"), ("low", frame["risk_group"].to_numpy() == "low"))}
    plot_kaplan_meier(groups, paths.report / "kaplan_meier.png", at, cohort.config.time_unit,
                      metrics["risk_groups"].get("logrank", {}).get("p_value"))
    if test is not None:
        metrics["test"] = evaluate_survival_test_cohort(run_dir, settings, cohort, test, metrics["risk_cut"], seed)
    probabilities = {m: frame[f"{column[m]}probability"].to_numpy() for m in models}
    metrics["calibration"] = survival_calibration(event, time, probabilities["model"], at)
    metrics["decision_curve"] = decision_curve(probabilities, event=event, time=time, horizon=at)
    words = f"{horizon.value:g} {horizon.unit}"
    plot_survival_calibration(metrics["calibration"], paths.report / "calibration.png", words)
    plot_decision_curve(metrics["decision_curve"], paths.report / "decision_curve.png",
                        title=f"Decision curve: recurrence by {words}")
    write_model_report(run_dir, run_config, cohort, settings, metrics, survival_verdict(metrics))
    atomic_write_text(paths.report / "summary.md",
                      "# Fine-tuning summary (survival)\n\n```\n" + format_survival_metrics(metrics) + "\n```\n")
    atomic_write_json(paths.metrics, metrics)
    return run_dir


def evaluate_survival_test_cohort(run_dir: Path, settings: FinetuneConfig, development: Cohort, test: Cohort,
                                  risk_cut: float, seed: int) -> dict[str, Any]:
    """Score the fixed test cohort: the fold models averaged (as ``predict``), the Cox baseline (and, on
    synthetic cohorts, the Cox oracle) refit on every development subject; the same metrics, intervals,
    paired differences and risk groups (risk above the folds' mean cut) as out of fold. Writes
    ``test_predictions.csv`` and ``report/test_kaplan_meier.png``; nothing is learned from the test cohort."""
    paths = run_paths(run_dir)
    at = settings.survival_horizon.in_unit(development.config.time_unit)
    test_at = settings.survival_horizon.in_unit(test.config.time_unit)  # the test cohort may count in days
    frame = ensemble_probabilities(load_fold_models(run_dir), test)
    event, time = test.event.astype(bool), test.time.astype(float)
    frames = {name: baseline_frame(c.features, development.continuous, development.categorical)
              for name, c in (("development", development), ("test", test))}
    fits = {COX_BASELINE: fit_predict_cox_baseline(frames["development"], development.event, development.time,
                                                   frames["test"], at, seed)}
    truth = {name: true_image_quantities(c) for name, c in (("development", development), ("test", test))}
    if all(t is not None for t in truth.values()):
        fits[COX_ORACLE] = fit_predict_cox_baseline(with_truth(frames["development"], truth["development"]),
                                                    development.event, development.time,
                                                    with_truth(frames["test"], truth["test"]), at, seed)
    risk = {"model": frame["risk_score"].to_numpy(), **{m: f["risk"] for m, f in fits.items()}}
    survival = {"model": 1 - frame["probability"].to_numpy(), **{m: 1 - f["probabilities"] for m, f in fits.items()}}
    scored = bootstrap_survival_metrics(risk, survival, event, time, test_at, settings.bootstrap, seed,
                                        reference=COX_BASELINE)
    high = risk["model"] > risk_cut
    groups = risk_group_outcomes(high, event, time, test_at)
    frame.insert(0, "time", time)
    frame.insert(1, "event", event.astype(int))
    frame.insert(frame.columns.get_loc("probability") + 1, "risk_group", np.where(high, "high", "low"))
    for name, fitted in fits.items():
        frame[f"{name}_risk"], frame[f"{name}_probability"] = fitted["risk"], fitted["probabilities"]
    with atomic_path(run_dir / "test_predictions.csv") as tmp:
        frame.to_csv(tmp)
    plot_kaplan_meier({"high risk": (time[high], event[high]), "low risk": (time[~high], event[~high])},
                      paths.report / "test_kaplan_meier.png", test_at, test.config.time_unit,
                      groups.get("logrank", {}).get("p_value"))
    logger.info("test cohort %s: %d subjects, %d events, Harrell's C %.3f", settings.test_cohort, len(event),
                int(event.sum()), scored["model"]["harrell_c"]["value"])
    return {"cohort": str(settings.test_cohort), "n": len(event), "events": int(event.sum()),
            "events_by_horizon": int((event & (time <= test_at)).sum()),
            "censored_before_horizon": int((~event & (time < test_at)).sum()),
            "model": scored["model"], "baselines": {m: scored[m] for m in fits},
            "delta_vs_cox": scored[f"delta_vs_{COX_BASELINE}"], "risk_groups": groups}


def _ci(entry: dict[str, Any], spec: str = ".3f") -> str:
    low, high = entry.get("ci", [None, None])
    return f"{_n(entry.get('value'), spec)} [{_n(low, spec)}, {_n(high, spec)}]"


def survival_verdict(metrics: dict[str, Any], where: str = "out of fold") -> list[str]:
    """Plain words: does the model order recurrences better than the Cox model of the table? From the
    paired bootstrap of Harrell's C (model − Cox); "beats" only when the whole 95 % CI is above 0."""
    model = metrics["model"]["harrell_c"]
    lines = [f"Model Harrell's C {where}: {_ci(model)}"]
    delta = metrics["delta_vs_cox"].get("model", {}).get("harrell_c")
    cox = metrics["baselines"].get(COX_BASELINE, {}).get("harrell_c")
    if delta is not None and cox is not None:
        low, high = delta["ci"]
        ci = f"{delta['value']:+.3f} [{_n(low, '+.3f')}, {_n(high, '+.3f')}]"
        if low is not None and low > 0:
            words, paid = f"the model beats {_WORDS[COX_BASELINE]} by ΔC {ci}", True
        elif high is not None and high < 0:
            words, paid = f"the model does not beat {_WORDS[COX_BASELINE]}: it is worse by ΔC {ci}", False
        else:
            words, paid = f"the model does not beat {_WORDS[COX_BASELINE]}: ΔC {ci}, the interval includes 0", False
        lines.append(f"  {words} (Cox alone: {_ci(cox)})")
        oracle = metrics["baselines"].get(COX_ORACLE, {}).get("harrell_c")
        if oracle is not None:
            lines.append(f"  generator truth: {_WORDS[COX_ORACLE]} reaches Harrell's C {_ci(oracle)}")
        lines.append("  Verdict: multimodal learning " + ("paid off: the model orders recurrences better than the Cox "
                     "model of the table." if paid else "did not pay off here: the model does not beat the Cox model "
                     "of the table."))
    return lines


def _section_table(section: dict[str, Any], horizon: dict[str, Any], where: str) -> list[str]:
    """The counts line, every metric with its 95 % CI per model, and the risk groups of one section."""
    names = ["model", *section["baselines"]]
    columns = {"model": section["model"], **section["baselines"]}
    lines = [f"{where}: {section['n']} subjects, {section['events']} events "
             f"({section['events_by_horizon']} by {horizon['value']:g} {horizon['unit']}, "
             f"{section['censored_before_horizon']} censored before it); time-dependent metrics at the horizon",
             f"{'metric':<14}" + "".join(f"{n:>26}" for n in names)]
    for key, label in _NAMES.items():
        lines.append(f"{label:<14}" + "".join(f"{_ci(columns[n][key]):>26}" for n in names))
    groups = section["risk_groups"]
    for name in ("high", "low"):
        group = groups.get(name, {})
        lines.append(f"{name}-risk group: {group.get('n', 0)} subjects, {group.get('events', 0)} events, event-free at "
                     f"the horizon {_n(group.get('event_free_at_horizon'))} (Kaplan–Meier)")
    if "logrank" in groups:
        lines.append(f"log-rank test high vs low: p = {groups['logrank']['p_value']:.3g}")
    return lines


def format_survival_metrics(metrics: dict[str, Any]) -> str:
    """The verdict first, then the table of every metric with its 95 % CI and the risk groups, out of fold
    and on the fixed test cohort when there is one."""
    lines = [*survival_verdict(metrics), "", *_section_table(metrics, metrics["horizon"], "pooled out-of-fold")]
    test = metrics.get("test")
    if test:
        lines += ["", *_section_table(test, metrics["horizon"], f"fixed test cohort {test['cohort']}"),
                  *survival_verdict(test, "on the fixed test cohort")]
    return "\n".join(lines)
