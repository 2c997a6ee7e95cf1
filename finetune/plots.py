"""Report figures for a fine-tuning run: ROC, precision–recall, calibration, risk groups, Kaplan–Meier.

Each function draws one PNG for the run's ``report/`` folder and returns its path. Figures are
built on matplotlib's object API with the Agg canvas (no pyplot global state, no display
needed) and written atomically: saved to a temp file in the target folder, then ``os.replace``d,
so a killed run never leaves a half-written image. Labels are worded for
clinical readers (sensitivity / specificity, not TPR / FPR alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from finetune.metrics import (
    ECE_BINS,
    check_predictions,
    equal_mass_bins,
    expected_calibration_error,
)
from multimodal.checkpoint import atomic_path
from multimodal.survival_metrics import kaplan_meier

_DPI = 150


def _new_figure(width: float = 5.5, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)  # attaches the Agg canvas: rendering never touches a GUI backend
    return figure


def _save_atomic(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (``atomic_path``: a refused write is one clear line)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", bbox_inches="tight")
    return path


def _check_models(labels: np.ndarray, probs_by_model: dict[str, np.ndarray]) -> np.ndarray:
    if not probs_by_model:
        raise ValueError("probs_by_model is empty: pass {model name: probabilities (N,)}")
    y = None
    for probabilities in probs_by_model.values():
        y, _ = check_predictions(labels, probabilities)
    assert y is not None
    if y.min() == y.max():
        raise ValueError("ROC and precision–recall curves need both outcome classes in labels")
    return y


def plot_roc(labels: np.ndarray, probs_by_model: dict[str, np.ndarray], path: str | os.PathLike,
             title: str = "ROC curve: recurrence prediction") -> Path:
    """ROC curve per model (AUROC in the legend) with the chance diagonal."""
    y = _check_models(labels, probs_by_model)
    figure = _new_figure()
    ax = figure.add_subplot()
    for name, probabilities in probs_by_model.items():
        fpr, tpr, _ = roc_curve(y, probabilities)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUROC {roc_auc_score(y, probabilities):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Chance (AUROC 0.500)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title,
           xlabel="1 − Specificity (false-positive rate)", ylabel="Sensitivity (true-positive rate)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save_atomic(figure, path)


def plot_pr(labels: np.ndarray, probs_by_model: dict[str, np.ndarray], path: str | os.PathLike,
            title: str = "Precision–recall curve: recurrence prediction") -> Path:
    """Precision–recall curve per model (AUPRC = average precision in the legend).

    The no-skill line sits at the prevalence: with rare events, this is the baseline a reader
    should compare against, not 0.5.
    """
    y = _check_models(labels, probs_by_model)
    figure = _new_figure()
    ax = figure.add_subplot()
    for name, probabilities in probs_by_model.items():
        precision, recall, _ = precision_recall_curve(y, probabilities)
        auprc = average_precision_score(y, probabilities)
        ax.step(recall, precision, where="post", lw=1.8, label=f"{name} (AUPRC {auprc:.3f})")
    prevalence = float(y.mean())
    ax.axhline(prevalence, ls="--", color="grey", lw=1,
               label=f"No skill (prevalence {prevalence:.1%})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title,
           xlabel="Sensitivity (recall)", ylabel="Positive predictive value (precision)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save_atomic(figure, path)


def _wilson_interval(events: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval for binomial proportions (stays inside [0, 1] for small bins)."""
    rate = events / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def plot_calibration(labels: np.ndarray, probabilities: np.ndarray, path: str | os.PathLike,
                     bins: int = ECE_BINS, title: str = "Calibration: predicted vs observed risk") -> Path:
    """Reliability diagram over equal-mass bins (as the ECE), with 95 % intervals per bin.

    Points on the diagonal mean that predicted risks match observed event rates. A lower panel
    shows how the predicted risks are distributed in subjects with and without the event.
    """
    y, p = check_predictions(labels, probabilities)
    mean_p, rate, counts = equal_mass_bins(y, p, bins)
    low, high = _wilson_interval(rate * counts, counts.astype(float))
    figure = _new_figure(5.5, 6.5)
    ax, hist = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="Perfect calibration")
    ax.errorbar(mean_p, rate, yerr=[rate - low, high - rate], fmt="o-", lw=1.5, capsize=3,
                label=f"Model ({len(counts)} groups of about equal size, ECE {expected_calibration_error(y, p, bins):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title, ylabel="Observed event rate (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0, 1, 41)
    hist.hist(p[y == 0], bins=edges, alpha=0.6, label="No event")
    hist.hist(p[y == 1], bins=edges, alpha=0.6, label="Event")
    hist.set(xlabel="Predicted risk", ylabel="Subjects")
    hist.legend(fontsize=8)
    return _save_atomic(figure, path)


def plot_risk_groups(risk_groups_dict: dict, path: str | os.PathLike,
                     title: str = "Observed recurrence by predicted risk group") -> Path:
    """Bar chart of observed event rates in the low- and high-risk groups.

    ``risk_groups_dict`` is the output of :func:`finetune.metrics.risk_groups`; each bar is
    annotated with events / subjects, and the title gives the relative risk and Fisher's p.
    """
    try:
        groups = [risk_groups_dict["low"], risk_groups_dict["high"]]
        threshold = float(risk_groups_dict["threshold"])
    except KeyError as missing:
        raise ValueError(f"risk_groups_dict lacks {missing}; pass finetune.metrics.risk_groups(...)") from None
    rates = [100 * g["event_rate"] if g["n"] else 0.0 for g in groups]
    figure = _new_figure(5.0, 4.5)
    ax = figure.add_subplot()
    names = [f"Low risk\n(predicted < {threshold:.2f})", f"High risk\n(predicted ≥ {threshold:.2f})"]
    bars = ax.bar(names, rates, color=["tab:blue", "tab:red"], width=0.6)
    for bar, group in zip(bars, groups, strict=True):
        ax.annotate(f"{group['events']} / {group['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom")
    subtitle = (f"relative risk {risk_groups_dict.get('relative_risk', float('nan')):.2f}, "
                f"Fisher exact p = {risk_groups_dict.get('fisher_p_value', float('nan')):.3g}")
    ax.set(title=f"{title}\n{subtitle}", ylabel="Observed event rate (%)",
           ylim=(0, max(max(rates) * 1.2, 5.0)))
    ax.grid(axis="y", alpha=0.3)
    return _save_atomic(figure, path)


def plot_kaplan_meier(groups: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, horizon: float,
                      time_unit: str, logrank_p: float | None = None) -> Path:
    """Kaplan–Meier curves of recurrence-free survival, one per group (``{name: ((N,) time, (N,) 0/1
    event)}``), censoring marks, the horizon dashed and the number at risk there in the legend."""
    figure = _new_figure(6.5, 4.8)
    ax = figure.add_subplot()
    for name, (time, event) in groups.items():
        if len(time) == 0:
            continue
        times, km = kaplan_meier(event, time)
        steps, survival = np.r_[0.0, times], np.r_[1.0, km]
        at_risk = int((np.asarray(time) >= horizon).sum())
        line = ax.step(steps, survival, where="post", label=f"{name} (n = {len(time)}, {int(np.sum(event))} events; "
                       f"{at_risk} at risk at the horizon)")[0]
        censored = np.unique(np.asarray(time)[~np.asarray(event, bool)])
        ax.plot(censored, survival[np.searchsorted(steps, censored, side="right") - 1], "|", color=line.get_color(),
                markersize=6)
    ax.axvline(horizon, color="grey", linestyle="--", linewidth=1)
    title = "Recurrence-free survival by risk group"
    if logrank_p is not None:
        title += f" (log-rank p = {logrank_p:.3g})"
    ax.set(xlabel=f"time since baseline ({time_unit})", ylabel="recurrence-free probability", ylim=(0, 1.02),
           title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save_atomic(figure, path)


def plot_decision_curve(curve: dict[str, Any], path: str | os.PathLike, title: str = "Decision curve") -> Path:
    """Net benefit against threshold probability (``clinical_utility.decision_curve``'s output): each
    model, treat all (grey) and treat none (black); the y-axis is cut just below 0, where treating by
    the model or everyone stops being worth it."""
    figure = _new_figure(6.0, 4.6)
    ax = figure.add_subplot()
    thresholds = np.asarray(curve["thresholds"])
    styles = {"treat_all": {"color": "grey", "linestyle": "--", "label": "treat all"},
              "treat_none": {"color": "black", "linewidth": 1, "label": "treat none"}}
    top = 0.0
    for name, values in curve["net_benefit"].items():
        values = np.asarray(values)
        top = max(top, float(values.max()))
        ax.plot(thresholds, values, **styles.get(name, {"label": name}))
    ax.set(xlim=(0, thresholds.max()), ylim=(-0.05 * max(top, 0.01), 1.1 * max(top, 0.01)), title=title,
           xlabel="threshold probability (treat when the predicted risk is at least this)", ylabel="net benefit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_atomic(figure, path)


def plot_survival_calibration(calibration: dict[str, Any], path: str | os.PathLike, horizon_words: str) -> Path:
    """Predicted probability of recurrence by the horizon against the Kaplan–Meier observed one, per
    equal-mass group (``clinical_utility.survival_calibration``)."""
    figure = _new_figure(5.0, 5.0)
    ax = figure.add_subplot()
    groups = calibration["groups"]
    predicted = [g["predicted"] for g in groups]
    observed = [g["observed"] for g in groups]
    top = max(0.1, *predicted, *observed) * 1.15
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(predicted, observed, "o-", label=f"model ({len(groups)} groups of about equal size)")
    ax.set(xlim=(0, top), ylim=(0, top), title=f"Calibration at {horizon_words}",
           xlabel=f"predicted probability of recurrence by {horizon_words}",
           ylabel="observed (Kaplan–Meier)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save_atomic(figure, path)
