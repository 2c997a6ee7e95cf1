"""Binary-classification metrics with stratified bootstrap intervals.

Inputs everywhere: ``labels`` (N,) of 0/1, ``probabilities`` (N,) in [0, 1] and a decision
``threshold`` (a subject is predicted positive / high-risk when ``p >= threshold``).

* Point estimates come from scikit-learn (AUROC, AUPRC = average precision, balanced accuracy,
  sensitivity, specificity, accuracy, F1, Brier score).
* Hand-written, because scikit-learn has no equivalent: the expected calibration error over
  equal-mass bins, the calibration intercept (calibration-in-the-large) and slope, and the
  bootstraps. The bootstraps recompute every metric for all resamples at once in NumPy
  (AUROC through ranks, i.e. the Mann–Whitney U statistic): calling scikit-learn 2,000 times
  per metric would take tens of seconds per run, this takes well under a second at N ≈ 600.
* Stratified bootstrap: positives and negatives are resampled separately with replacement, so
  every resample has the original class counts, both classes, and a defined AUROC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.special import expit, logit
from scipy.stats import fisher_exact, rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
)

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = (
    "auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "f1",
    "brier", "ece", "calibration_intercept", "calibration_slope",
)
"""Metric names reported by :func:`classification_metrics` and :func:`bootstrap_ci`."""

ECE_BINS = 10  # ten equal-mass bins (each holds the same number of subjects)
PROB_CLIP = 1e-6  # keeps logit(p) finite for p = 0 or 1 in the calibration fits
_NEWTON_STEPS = 50  # these 1-2 parameter fits converge in < 10 steps; a row still moving is NaN
_NEWTON_TOL = 1e-8
_HALVINGS = 30  # step halvings per Newton step before a row is left where it is
_BLOCK_ELEMENTS = 2_000_000  # resamples are processed in blocks of about this many scores (memory)


# ---------------------------------------------------------------- input checks


def check_predictions(labels: np.ndarray, probabilities: np.ndarray,
                      threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``labels`` as int (N,) and ``probabilities`` as float (N,).

    Raises ``ValueError`` naming the problem: shapes, empty input, labels other than 0/1,
    probabilities outside [0, 1] (e.g. logits passed by mistake), a threshold outside [0, 1].
    """
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=float)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels and probabilities must be 1-D of equal length, got shapes "
                         f"{y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("labels and probabilities are empty: there is nothing to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and in [0, 1]; pass sigmoid(logit), not logits")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return y.astype(np.int64), p


def _check_both_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise ValueError(f"the stratified bootstrap needs both classes, but every label is {y[0]}")


# ---------------------------------------------------------------- hand-written metrics


def _bin_starts(n: int, bins: int) -> np.ndarray:
    """Start offsets of ``bins`` equal-mass groups over n sorted items (np.array_split sizes)."""
    bins = min(bins, n)  # never an empty bin
    sizes = np.full(bins, n // bins)
    sizes[: n % bins] += 1
    return np.concatenate(([0], np.cumsum(sizes)[:-1]))


def equal_mass_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by probability and split into ``bins`` groups of (nearly) equal size.

    Equal probabilities always share a bin (a bin edge inside a run of ties moves to its start):
    splitting ties by label would make a constant predictor look miscalibrated (ECE 0.5 instead of
    |p − event rate|). So there may be fewer, unequal bins. Returns per-bin (mean predicted
    probability, observed event rate, count), each (bins',), bins' <= bins.
    """
    y, p = check_predictions(labels, probabilities)
    order = np.argsort(p, kind="stable")
    ordered = p[order]
    starts = np.unique(np.searchsorted(ordered, ordered[_bin_starts(len(p), bins)], side="left"))
    counts = np.diff(np.append(starts, len(p)))
    return (np.add.reduceat(p[order], starts) / counts,
            np.add.reduceat(y[order].astype(float), starts) / counts, counts)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Σ_bins (n_bin / N) · |mean probability − event rate| over equal-mass bins."""
    mean_p, rate, counts = equal_mass_bins(labels, probabilities, bins)
    return float(np.sum(counts * np.abs(mean_p - rate)) / counts.sum())


def _log_likelihood(b: np.ndarray, c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) Bernoulli log-likelihood of logit P(y=1) = b + c·x per row of ``x`` (B, N)."""
    z = b[:, None] + c[:, None] * x
    return (y * z - np.logaddexp(0.0, z)).sum(1)


def _newton_rows(x: np.ndarray, y: np.ndarray, fit_slope: bool) -> tuple[np.ndarray, np.ndarray]:
    """Newton's method for logit P(y=1) = b + c·x on each row of ``x`` (B, N); labels ``y`` (N,).

    ``fit_slope=False`` fixes c = 1 (x is an offset) and fits b alone. Starts at b=0, c=1
    ("perfectly calibrated") and updates only rows still moving. NaN for rows where the
    maximum-likelihood slope does not exist, i.e. x separates the classes (in one dimension,
    (quasi-)complete separation is exactly max x of one class ≤ min x of the other), for a
    singular Hessian (constant x) and for rows that do not converge.
    """
    rows = x.shape[0]
    b, c = np.zeros(rows), np.ones(rows)
    done = np.zeros(rows, dtype=bool)
    active = np.arange(rows)
    if fit_slope:
        x_neg, x_pos = x[:, y == 0], x[:, y == 1]
        separated = (x_neg.max(1) <= x_pos.min(1)) | (x_pos.max(1) <= x_neg.min(1))
        b[separated] = c[separated] = np.nan
        active = active[~separated]
    with np.errstate(all="ignore"):  # singular / divergent rows turn non-finite: masked below
        for _ in range(_NEWTON_STEPS):
            xa = x[active]
            mu = expit(b[active, None] + c[active, None] * xa)
            w, r = mu * (1 - mu), y - mu
            if fit_slope:
                g0, g1 = r.sum(1), (r * xa).sum(1)
                h00, h01, h11 = w.sum(1), (w * xa).sum(1), (w * xa * xa).sum(1)
                det = h00 * h11 - h01 * h01
                db, dc = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
            else:
                db, dc = r.sum(1) / w.sum(1), np.zeros(len(active))
            # Step halving: plain Newton from c = 1 overshoots on over-confident predictions
            # (true slope well below 1, |logit p| large) and diverges; the log-likelihood is
            # concave, so a halved step that does not lower it always exists.
            before = _log_likelihood(b[active], c[active], xa, y)
            scale = np.ones(len(active))
            for _ in range(_HALVINGS):
                worse = ~(_log_likelihood(b[active] + scale * db, c[active] + scale * dc, xa, y) >= before - 1e-12)
                if not worse.any():
                    break
                scale[worse] /= 2
            b[active] += scale * db
            c[active] += scale * dc
            step = scale * np.maximum(np.abs(db), np.abs(dc))
            done[active] = step < _NEWTON_TOL
            failed = ~np.isfinite(step)
            b[active[failed]] = c[active[failed]] = np.nan
            active = active[~done[active] & ~failed]
            if active.size == 0:
                break
    b[active] = c[active] = np.nan  # ran out of steps
    return b, c


def _logistic_calibration(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope), each (B,), of the two logistic recalibration models per row of x.

    ``x`` (B, N) = logit(p), ``y`` (N,) labels.
    intercept: a in  logit P(y=1) = a + x        (slope fixed to 1: calibration-in-the-large)
    slope:     c in  logit P(y=1) = b + c · x
    """
    y = y.astype(float)
    intercept, _ = _newton_rows(x, y, fit_slope=False)
    _, slope = _newton_rows(x, y, fit_slope=True)
    return intercept, slope


def calibration_intercept_slope(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """Calibration intercept (calibration-in-the-large) and slope by logistic recalibration.

    Perfect calibration is intercept 0, slope 1; slope < 1 means over-confident predictions
    (too extreme), intercept < 0 means risks are overestimated on average. ``p`` is clipped to
    [1e-6, 1 − 1e-6] first. NaN when a fit is undefined (one class, separable, constant p).
    """
    y, p = check_predictions(labels, probabilities)
    if y.min() == y.max():
        return float("nan"), float("nan")
    a, c = _logistic_calibration(y, logit(np.clip(p, PROB_CLIP, 1 - PROB_CLIP))[None, :])
    return float(a[0]), float(c[0])


# ---------------------------------------------------------------- point estimates


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           threshold: float) -> dict[str, float]:
    """All of :data:`METRICS` plus ``prevalence`` and ``n`` for one set of predictions.

    Metrics undefined for a one-class sample (AUROC, AUPRC, sensitivity or specificity, the
    calibration fits) are NaN rather than an error, so a tiny fold still reports the rest.
    """
    y, p = check_predictions(labels, probabilities, threshold)
    pred = (p >= threshold).astype(np.int64)
    both = y.min() != y.max()
    nan = float("nan")
    intercept, slope = calibration_intercept_slope(y, p)
    return {
        "auroc": float(roc_auc_score(y, p)) if both else nan,
        "auprc": float(average_precision_score(y, p)) if both else nan,
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else nan,
        "sensitivity": float(recall_score(y, pred, pos_label=1)) if y.any() else nan,
        "specificity": float(recall_score(y, pred, pos_label=0)) if (y == 0).any() else nan,
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0.0)),
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "calibration_intercept": intercept,
        "calibration_slope": slope,
        "prevalence": float(y.mean()),
        "n": float(len(y)),
    }


# ---------------------------------------------------------------- vectorised resample metrics


def _auroc_rows(scores: np.ndarray, n_neg: int) -> np.ndarray:
    """AUROC of each row of ``scores`` (B, N) whose first ``n_neg`` columns are the negatives.

    Mann–Whitney: AUROC = (rank sum of positives − P(P+1)/2) / (P·Q), ties at average rank.
    """
    n_pos = scores.shape[1] - n_neg
    ranks = rankdata(scores, axis=1)
    return (ranks[:, n_neg:].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _batch_metrics(scores: np.ndarray, n_neg: int, threshold: float,
                   names: Sequence[str]) -> dict[str, np.ndarray]:
    """The metrics in ``names`` for every row of ``scores`` (B, N), negatives first.

    Same definitions as :func:`classification_metrics` (tested against it), one value per row.
    """
    n = scores.shape[1]
    n_pos = n - n_neg
    y = np.r_[np.zeros(n_neg), np.ones(n_pos)]
    out: dict[str, np.ndarray] = {}
    if "auroc" in names:
        out["auroc"] = _auroc_rows(scores, n_neg)
    if "auprc" in names:
        # Average precision = mean over positives of the precision at the lowest threshold that
        # still includes them; tied scores share one threshold, hence "end of the tie group".
        order = np.argsort(-scores, axis=1, kind="stable")
        s = np.take_along_axis(scores, order, axis=1)
        hit = order >= n_neg  # (B, N) is this ranked item a positive?
        tp = np.cumsum(hit, axis=1)
        is_end = np.ones_like(hit)
        is_end[:, :-1] = s[:, :-1] != s[:, 1:]
        end = np.where(is_end, np.arange(n), n)
        end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]  # index of each tie group's end
        precision_at_end = np.take_along_axis(tp, end, axis=1) / (end + 1)
        out["auprc"] = (precision_at_end * hit).sum(1) / n_pos
    tp = (scores[:, n_neg:] >= threshold).sum(1)
    fp = (scores[:, :n_neg] >= threshold).sum(1)
    sensitivity, specificity = tp / n_pos, (n_neg - fp) / n_neg
    threshold_metrics = {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "accuracy": (tp + n_neg - fp) / n,
        "f1": 2 * tp / (2 * tp + fp + (n_pos - tp)),  # denominator ≥ P > 0
        "brier": ((scores - y) ** 2).mean(1),
    }
    out.update({k: v for k, v in threshold_metrics.items() if k in names})
    if "ece" in names:
        order = np.argsort(scores, axis=1, kind="stable")
        s = np.take_along_axis(scores, order, axis=1)
        # equal_mass_bins' tie rule: a tie group joins the bin of its last member (edges move to its start)
        is_end = np.ones(s.shape, dtype=bool)
        is_end[:, :-1] = s[:, :-1] != s[:, 1:]
        end = np.minimum.accumulate(np.where(is_end, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
        base_bin = np.searchsorted(_bin_starts(n, ECE_BINS), np.arange(n), side="right") - 1  # (N,)
        flat = (np.arange(len(s))[:, None] * ECE_BINS + base_bin[end]).ravel()  # (B * N,) row-major bin ids
        p_sum = np.bincount(flat, weights=s.ravel(), minlength=len(s) * ECE_BINS)
        y_sum = np.bincount(flat, weights=(order >= n_neg).ravel().astype(float), minlength=len(s) * ECE_BINS)
        out["ece"] = np.abs(p_sum - y_sum).reshape(len(s), ECE_BINS).sum(1) / n
    if "calibration_intercept" in names or "calibration_slope" in names:
        x = logit(np.clip(scores, PROB_CLIP, 1 - PROB_CLIP))
        out["calibration_intercept"], out["calibration_slope"] = _logistic_calibration(y, x)
    return {k: out[k] for k in names}


# ---------------------------------------------------------------- bootstraps


def stratified_bootstrap_indices(labels: np.ndarray, n_resamples: int,
                                 rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, N) row indices into ``labels``: all negatives' draws first, then positives'.

    Negatives are drawn with replacement from the negatives and positives from the positives,
    so every resample keeps the original class counts.
    """
    y = np.asarray(labels)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    return np.concatenate([neg[rng.integers(0, len(neg), size=(n_resamples, len(neg)))],
                           pos[rng.integers(0, len(pos), size=(n_resamples, len(pos)))]], axis=1)


def _index_blocks(y: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield the resample indices in blocks that bound memory for large cohorts."""
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // len(y))
    for start in range(0, n_resamples, block):
        yield stratified_bootstrap_indices(y, min(block, n_resamples - start), rng)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lower, upper = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lower), float(upper)


# Statistics that resampling inflates: the binned ECE of a resample (ties, fewer distinct subjects
# per bin) sits above the sample's, so its plain percentile interval can lie wholly above the
# estimate (seen: 0.187 [0.200, 0.395]). Their resampled values are shifted by the bootstrap bias
# estimate, mean(resampled) - estimate, before the percentiles are taken (floored at 0).
BIAS_CORRECTED = ("ece",)


def bootstrap_ci(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                 n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                 metrics: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Stratified-bootstrap percentile intervals: ``{metric: {estimate, lower, upper}}``.

    ``estimate`` is the point estimate on the full sample (:func:`classification_metrics`);
    ``lower`` / ``upper`` are the (1 ± level)/2 percentiles over resamples in which the metric is
    defined (a calibration fit can fail on a separable resample; a warning says how often); for the
    metrics in ``BIAS_CORRECTED`` (ECE) the resampled values are first shifted by their bias.
    ``metrics`` restricts the computation to some of :data:`METRICS` (default: all).
    """
    y, p = check_predictions(labels, probabilities, threshold)
    _check_both_classes(y)
    names = list(METRICS if metrics is None else metrics)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_resamples ≥ 1 and 0 < level < 1, got {n_resamples}, {level}")
    n_neg = int((y == 0).sum())
    parts = [_batch_metrics(p[idx], n_neg, threshold, names) for idx in _index_blocks(y, n_resamples, seed)]
    point = classification_metrics(y, p, threshold)
    result: dict[str, dict[str, float]] = {}
    for name in names:
        values = np.concatenate([part[name] for part in parts])
        undefined = int((~np.isfinite(values)).sum())
        if undefined > 0.05 * n_resamples:
            logger.warning("%s is undefined in %d of %d bootstrap resamples; its interval uses the rest",
                           name, undefined, n_resamples)
        if name in BIAS_CORRECTED and np.isfinite(values).any():
            values = values - (np.nanmean(np.where(np.isfinite(values), values, np.nan)) - point[name])
        lower, upper = _percentiles(values, level)
        if name in BIAS_CORRECTED:
            lower, upper = max(lower, 0.0), max(upper, 0.0)
        result[name] = {"estimate": point[name], "lower": lower, "upper": upper}
    return result


def paired_bootstrap_delta_auroc(labels: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                                 n_resamples: int = 2000, seed: int = 0,
                                 level: float = 0.95) -> dict[str, float]:
    """AUROC(a) − AUROC(b) on the same subjects, with a paired stratified bootstrap.

    Both models are scored on the same resampled subjects, so the interval reflects only the
    difference between them. Two-sided p-value = 2 · min(share of Δ ≤ 0, share of Δ ≥ 0), at
    most 1 (a bootstrap p-value: its resolution is 1 / n_resamples).
    """
    y, pa = check_predictions(labels, prob_a)
    _, pb = check_predictions(labels, prob_b)
    _check_both_classes(y)
    n_neg = int((y == 0).sum())
    deltas = np.concatenate([_auroc_rows(pa[idx], n_neg) - _auroc_rows(pb[idx], n_neg)
                             for idx in _index_blocks(y, n_resamples, seed)])
    lower, upper = _percentiles(deltas, level)
    p_value = min(1.0, 2 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    return {"delta": float(roc_auc_score(y, pa) - roc_auc_score(y, pb)),
            "lower": lower, "upper": upper, "p_value": p_value}


# ---------------------------------------------------------------- risk groups and folds


def risk_groups(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """High-risk (p ≥ threshold) vs low-risk subjects: observed event rates and Fisher's test.

    Returns ``{"threshold", "high": {n, events, event_rate}, "low": {...}, "relative_risk",
    "odds_ratio", "fisher_p_value"}``; the 2×2 table is [[high events, high non-events],
    [low events, low non-events]]. A rate of an empty group is NaN; relative risk is inf when
    the low-risk group has no events but the high-risk group does.
    """
    y, p = check_predictions(labels, probabilities, threshold)
    high = p >= threshold
    groups = {}
    for name, mask in (("high", high), ("low", ~high)):
        n, events = int(mask.sum()), int(y[mask].sum())
        groups[name] = {"n": n, "events": events, "event_rate": events / n if n else float("nan")}
    table = [[groups["high"]["events"], groups["high"]["n"] - groups["high"]["events"]],
             [groups["low"]["events"], groups["low"]["n"] - groups["low"]["events"]]]
    odds_ratio, p_value = fisher_exact(table, alternative="two-sided")
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_risk = float(np.float64(groups["high"]["event_rate"]) / groups["low"]["event_rate"])
    return {"threshold": float(threshold), **groups, "relative_risk": relative_risk,
            "odds_ratio": float(odds_ratio), "fisher_p_value": float(p_value)}


def summarise_folds(per_fold: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) across folds for each numeric metric.

    Keys present in every fold with numeric values are summarised; NaN folds are skipped and
    ``n`` says how many folds entered. With a single usable fold the std is NaN.
    """
    if not per_fold:
        raise ValueError("summarise_folds needs at least one fold's metrics")
    keys = [k for k in per_fold[0] if all(isinstance(f.get(k), (int, float)) for f in per_fold)]
    summary = {}
    for key in keys:
        values = np.array([float(f[key]) for f in per_fold])
        values = values[np.isfinite(values)]
        summary[key] = {
            "mean": float(values.mean()) if values.size else float("nan"),
            "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
            "n": float(values.size),
        }
    return summary
