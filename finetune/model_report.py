"""``report/model_report.md``: a TRIPOD+AI-style description of a fine-tuning run, written from the run folder.

The sections follow what a reviewer of a clinical prediction model asks for (TRIPOD+AI, Collins et al.
2024): the data (size, outcome events and censoring, missingness per predictor, imaging), the model and
its pretraining, the validation scheme, every metric with its 95 % interval, calibration, risk groups,
the decision curve, and the plain-words verdict against the tabular baselines. Only aggregate figures
appear: no subject identifier, no free text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from finetune.clinical_utility import TABLE_THRESHOLDS
from finetune.config import FinetuneConfig, resolved_repeats
from multimodal.checkpoint import atomic_write_text
from multimodal.cohort import Cohort
from multimodal.config import RunConfig, load_run_config
from multimodal.run_folder import run_paths
from pretrain.config import pretrain_config


def format_value(value: Any, spec: str = ".3f") -> str:
    """``value`` formatted, or "n/a" where it is undefined (NaN in memory, null in metrics.json): every
    report and summary prints numbers through this."""
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def _data(cohort: Cohort, metrics: dict[str, Any], settings: FinetuneConfig) -> list[str]:
    config = cohort.config
    lines = ["## 1. Data", "",
             f"- Subjects in the analysis: {metrics['n']} (cohort table `{Path(config.csv).name}`)."]
    if metrics.get("task") == "survival":
        horizon = metrics["horizon"]
        lines += [f"- Outcome: time to recurrence (`{config.time}`, in {config.time_unit}; event `{config.event}`).",
                  f"- Events: {metrics['events']} ({metrics['events_by_horizon']} by the horizon of "
                  f"{horizon['value']:g} {horizon['unit']}); censored before the horizon without an event: "
                  f"{metrics['censored_before_horizon']}.",
                  f"- Follow-up: median {format_value(float(np.nanmedian(cohort.time)), '.1f')} {config.time_unit} "
                  f"(range {format_value(float(np.nanmin(cohort.time)), '.1f')}–{format_value(float(np.nanmax(cohort.time)), '.1f')})."]
    else:
        lines.append(f"- Outcome: binary, {metrics['positives']} positive ({metrics['positives'] / metrics['n']:.1%}).")
        counts = cohort.outcome
        if counts.get("horizon"):
            lines.append(f"- Label at {counts['horizon']} from follow-up time and event: "
                         f"{counts.get('event_by_horizon', 0)} events by the horizon, "
                         f"{counts.get('followed_past_horizon', 0)} followed past it without one, "
                         f"{counts.get('censored_before_horizon', 0)} censored before it (left out, not negatives).")
        elif config.label:
            lines.append(f"- Label column `{config.label}`.")
    sequences = list(config.images)
    if sequences:
        present = [f"{s} {np.mean([cohort.image_paths[i].get(s) is not None for i in cohort.ids]):.0%}"
                   for s in sequences]
        lines.append(f"- MRI sequences (share of subjects with each): {', '.join(present)}.")
    lines += ["", "| predictor | type | missing |", "|---|---|---|"]
    missing = cohort.features.isna().mean()
    for column, kind in cohort.feature_types.items():
        lines.append(f"| {column} | {kind} | {missing[column]:.1%} |")
    return lines


def _model(run_dir: Path, settings: FinetuneConfig) -> list[str]:
    architecture = json.loads(run_paths(run_dir).model.read_text())
    lines = ["", "## 2. Model", ""]
    for modality, spec in architecture.get("encoders", {}).items():
        lines.append(f"- {modality} encoder: `{spec['name']}` {json.dumps(spec.get('args', {}))}.")
    init = architecture.get("init")
    if init:
        pretraining = Path(init) if Path(init).is_absolute() else Path.cwd() / init
        described = f"- Pretrained encoders from `{Path(init).name}`"
        if run_paths(pretraining).config.is_file():
            config = pretrain_config(load_run_config(run_paths(pretraining).config))
            described += (f": objectives {json.dumps(config.objectives)}, {config.epochs} epochs, rows `{config.rows}` "
                          "(no outcome labels read)")
        lines.append(described + f"; fine-tuning mode `{settings.mode}`.")
    else:
        lines.append(f"- Encoders trained from random initialisation (mode `{settings.mode}`).")
    if settings.task == "survival" and settings.head == "mlp":
        lines.append(f"- Head: {settings.fusion} fusion and an MLP ({settings.head_layers} hidden layers) on the frozen "
                     "embeddings, trained by the Cox partial likelihood (Efron ties) over the whole inner-train split, "
                     "the epoch chosen by the inner-validation partial likelihood.")
    elif settings.task == "survival":
        lines.append("- Head: L2-penalised Cox proportional-hazards model (Efron ties) on the frozen embeddings' "
                     f"leading principal components ({settings.probe_pcs} per block) and the clinical features; "
                     "block weights and the penalty by inner cross-validated partial likelihood.")
    elif settings.head == "probe":
        lines.append("- Head: L2 logistic regression on the frozen embeddings' leading principal components "
                     f"({settings.probe_pcs} per block) and the clinical features; block weights and C by inner "
                     "5-fold CV on log loss" + (", then fine-tuned from it (LP-FT)." if settings.mode == "trainable"
                                                  else "."))
    else:
        lines.append(f"- Head: {settings.fusion} fusion and an MLP ({settings.head_layers} hidden layers), "
                     f"loss `{settings.loss}`, early stopping on the inner-validation loss.")
    return lines


def _validation(metrics: dict[str, Any], settings: FinetuneConfig, cohort: Cohort) -> list[str]:
    stratum = "event" if settings.task == "survival" else "outcome"
    repeats = resolved_repeats(settings, int(np.nansum(cohort.labels)))
    baselines = "a Cox model of the table" if settings.task == "survival" else ", ".join(settings.baselines)
    return ["", "## 3. Validation", "",
            f"- Internal validation: {settings.folds}-fold cross-validation stratified by {stratum}, {repeats} "
            f"repeat(s), patient-level; every metric is computed on pooled out-of-fold predictions.",
            f"- Baselines fitted on the same training folds: {baselines}.",
            f"- 95 % intervals: {settings.bootstrap} stratified bootstrap resamples (percentile); differences "
            "against the baseline by a paired bootstrap on the same resamples.",
            "- No external test cohort." if "test" not in metrics else "- A fixed external test cohort (section 4)."]


def _survival_table(section: dict[str, Any]) -> list[str]:
    names = ["model", *section["baselines"]]
    columns = {"model": section["model"], **section["baselines"]}
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in (("harrell_c", "Harrell's C"), ("uno_c", "Uno's C (to the horizon)"),
                       ("td_auroc", "AUROC at the horizon"), ("brier", "Brier score at the horizon")):
        cells = [f"{format_value(columns[n][key]['value'])} [{format_value(columns[n][key]['ci'][0])}, {format_value(columns[n][key]['ci'][1])}]"
                 for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _test_lines(metrics: dict[str, Any], table: Any) -> list[str]:
    """The fixed test cohort's table, when the run had one."""
    test = metrics.get("test")
    if not test:
        return []
    return ["", f"Fixed test cohort ({test['n']} subjects; nothing was tuned on it):", "", *table(test)]


def _survival_performance(metrics: dict[str, Any]) -> list[str]:
    lines = ["", "## 4. Performance", "", "Pooled out of fold:", "", *_survival_table(metrics),
             *_test_lines(metrics, _survival_table)]
    calibration = metrics.get("calibration", {})
    lines += ["", "## 5. Calibration at the horizon", "",
              f"Mean predicted probability of recurrence by the horizon {format_value(calibration.get('mean_predicted'))}, "
              f"observed (Kaplan–Meier) {format_value(calibration.get('observed'))}.", "",
              "| group | n | predicted | observed |", "|---|---|---|---|"]
    for i, group in enumerate(calibration.get("groups", []), 1):
        lines.append(f"| {i} | {group['n']} | {format_value(group['predicted'])} | {format_value(group['observed'])} |")
    groups = metrics["risk_groups"]
    lines += ["", "## 6. Risk groups", "", "| group | n | events | event-free at the horizon (KM) |", "|---|---|---|---|"]
    for name in ("high", "low"):
        group = groups.get(name, {})
        lines.append(f"| {name} | {group.get('n', 0)} | {group.get('events', 0)} | "
                     f"{format_value(group.get('event_free_at_horizon'))} |")
    if "logrank" in groups:
        lines.append(f"\nLog-rank test high vs low: p = {groups['logrank']['p_value']:.3g} "
                     "(`kaplan_meier.png`).")
    return lines


def _binary_table(section: dict[str, Any]) -> list[str]:
    names = ["model", *section["baselines"]]
    columns = {"model": section["model"], **section["baselines"]}
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "f1", "brier"):
        cells = [f"{format_value(columns[n][key]['estimate'])} [{format_value(columns[n][key]['lower'])}, {format_value(columns[n][key]['upper'])}]"
                 for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _binary_performance(metrics: dict[str, Any]) -> list[str]:
    lines = ["", "## 4. Performance", "", f"Pooled out of fold, threshold (chosen out of fold) {metrics['threshold']:.3f}:",
             "", *_binary_table(metrics), *_test_lines(metrics, _binary_table)]
    model = metrics["model"]
    lines += ["", "## 5. Calibration", "",
              f"Calibration intercept {format_value(model['calibration_intercept']['estimate'])} "
              f"[{format_value(model['calibration_intercept']['lower'])}, {format_value(model['calibration_intercept']['upper'])}], "
              f"slope {format_value(model['calibration_slope']['estimate'])} "
              f"[{format_value(model['calibration_slope']['lower'])}, {format_value(model['calibration_slope']['upper'])}], "
              f"ECE {format_value(model['ece']['estimate'])} (`calibration.png`)."]
    groups = metrics["risk_groups"]
    lines += ["", "## 6. Risk groups", "", "| group | n | events | event rate |", "|---|---|---|---|"]
    for name in ("high", "low"):
        group = groups[name]
        lines.append(f"| {name} | {group['n']} | {group['events']} | {format_value(group['event_rate'])} |")
    lines.append(f"\nRelative risk {format_value(groups.get('relative_risk'), '.2f')}, Fisher exact p = "
                 f"{format_value(groups.get('fisher_p_value'), '.3g')}.")
    return lines


def _decision_curve(metrics: dict[str, Any]) -> list[str]:
    curve = metrics["decision_curve"]
    names = list(curve["net_benefit"])
    lines = ["", "## 7. Clinical utility (decision curve)", "",
             "Net benefit at threshold probabilities (`decision_curve.png`): true positives per subject minus false "
             "positives weighted by the odds of the threshold.", "",
             "| threshold | " + " | ".join(n.replace("_", " ") for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for threshold in TABLE_THRESHOLDS:
        i = curve["thresholds"].index(threshold)
        lines.append(f"| {threshold:.2f} | " + " | ".join(f"{curve['net_benefit'][n][i]:.3f}" for n in names) + " |")
    return lines


def write_model_report(run_dir: Path, run_config: RunConfig, cohort: Cohort, settings: FinetuneConfig,
                       metrics: dict[str, Any], verdict: list[str]) -> Path:
    """Write ``RUN/report/model_report.md`` from the finished run's ``metrics`` (before they are written)."""
    survival = metrics.get("task") == "survival"
    lines = ["# Model report", "",
             "A TRIPOD+AI-style summary of this fine-tuning run, written by StrokeSSL from the run folder.", "",
             *_data(cohort, metrics, settings), *_model(run_dir, settings), *_validation(metrics, settings, cohort),
             *(_survival_performance(metrics) if survival else _binary_performance(metrics)),
             *_decision_curve(metrics), "", "## 8. Verdict", "", *[f"- {line.strip()}" for line in verdict]]
    path = run_paths(run_dir).report / "model_report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
