"""The explain stage's pictures (matplotlib, Agg; no subject id drawn unless the caller passes one).

* ``projection_figure``: each modality's embedding in 2D, PCA beside t-SNE, coloured by the label;
* ``attribution_figure``: the global feature ranking as bars with their bootstrap intervals;
* ``saliency_montage``: the most attributed axial slices, MRI in grey under the occlusion map and
  under Grad-CAM;
* ``subject_figure``: one subject on one page: risk against the threshold with the risk group, the
  top features with their values and signed attributions, and the saliency montage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from multimodal.checkpoint import atomic_path
from multimodal.cohort import outcome_names

LABEL_COLOURS = {"0": "#4C72B0", "1": "#C44E52", "unlabeled": "#BBBBBB"}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", bbox_inches="tight")
    return path


def projection_figure(embeddings: dict[str, np.ndarray], present: dict[str, np.ndarray], labels: np.ndarray,
                      path: str | Path, seed: int = 0) -> Path | None:
    """PNG with one row per modality: PCA and t-SNE (perplexity ≤ 30) of its ``(N, D)`` embedding,
    subjects lacking the modality left out, coloured by ``labels`` ``(N,)`` (NaN = unlabeled). None
    (nothing drawn) when no modality has 3 subjects."""
    names = np.array(outcome_names(labels))
    embeddings = {m: v for m, v in embeddings.items() if present[m].sum() >= 3}  # a 2D layout needs a few points
    if not embeddings:
        return None
    figure = Figure(figsize=(8.4, 3.8 * len(embeddings)), dpi=100)
    for row, (modality, values) in enumerate(embeddings.items()):
        rows = present[modality]
        x = values[rows].astype(np.float64)
        tag = names[rows]
        layouts = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(x)}
        if len(x) > 5:
            perplexity = float(min(30.0, (len(x) - 1) / 3))
            layouts["t-SNE"] = TSNE(n_components=2, perplexity=perplexity, init="pca",
                                    random_state=seed).fit_transform(x)
        for col, (method, xy) in enumerate(layouts.items()):
            ax = figure.add_subplot(len(embeddings), 2, 2 * row + col + 1)
            for name in ("unlabeled", "0", "1"):  # positives drawn last, on top
                chosen = tag == name
                if chosen.any():
                    ax.scatter(xy[chosen, 0], xy[chosen, 1], s=9, c=LABEL_COLOURS[name], alpha=0.8,
                               label=f"{'label ' if name != 'unlabeled' else ''}{name} ({int(chosen.sum())})")
            ax.set_title(f"{modality} embedding, {method}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize=7, loc="best")
    return save_figure(figure, path)


def attribution_figure(ranking: list[dict[str, Any]], path: str | Path, what: str, top: int = 20,
                       measure: str = "Integrated Gradients") -> Path:
    """Horizontal bars of mean |attribution| with 95 % bootstrap intervals, largest on top; red where the
    mean signed attribution is positive (pushes the score up), blue where negative."""
    shown = ranking[:top][::-1]
    figure = Figure(figsize=(6.4, 0.32 * len(shown) + 1.2), dpi=100)
    ax = figure.add_subplot(1, 1, 1)
    y = np.arange(len(shown))
    means = np.array([r["mean_abs"] for r in shown])
    # A percentile interval need not contain the mean (skewed resamples, float rounding): clip at 0.
    errors = np.clip([[r["mean_abs"] - r["lower"] for r in shown], [r["upper"] - r["mean_abs"] for r in shown]], 0, None)
    colours = ["#C44E52" if r["mean_signed"] > 0 else "#4C72B0" for r in shown]
    ax.barh(y, means, xerr=errors, color=colours, capsize=2)
    ax.set_yticks(y, [r["feature"] for r in shown], fontsize=8)
    ax.set_xlabel(f"mean |{measure}| on the {what} (95 % bootstrap CI)", fontsize=8)
    ax.set_title("red: raises it on average, blue: lowers it", fontsize=8)
    return save_figure(figure, path)


def top_slices(saliency: np.ndarray, count: int = 6) -> list[int]:
    """The ``count`` axial slices (last axis) holding the most |saliency|, in slice order."""
    mass = np.abs(saliency).sum(axis=(0, 1))
    return sorted(int(z) for z in np.argsort(mass)[::-1][:count])


def _draw_montage(figure: Figure, grid: Any, image: np.ndarray, maps: dict[str, np.ndarray], slices: list[int],
                  head: np.ndarray | None = None) -> None:
    """One row per map over the first MRI channel; values under 10 % of the map's largest |value| and
    everything outside ``head`` ``(H, W, D)`` bool (default: the whole volume) are left transparent,
    so the anatomy stays readable."""
    inside = np.ones(image.shape[1:], dtype=bool) if head is None else np.asarray(head, dtype=bool)
    # One grey scale for every slice (a bright lesion must not darken its own slice).
    low, high = np.percentile(image[0][inside], [1, 99.5]) if inside.any() else (image.min(), image.max())
    for row, (title, values) in enumerate(maps.items()):
        signed = bool((values < 0).any())
        limit = float(np.abs(values[inside]).max()) if inside.any() else 0.0
        limit = limit or 1.0
        shown = np.ma.masked_where(~inside | (np.abs(values) < 0.1 * limit), values)
        for col, z in enumerate(slices):
            ax = figure.add_subplot(grid[row, col])
            ax.imshow(np.rot90(image[0, :, :, z]), cmap="gray", vmin=low, vmax=high)
            ax.imshow(np.rot90(shown[:, :, z]), cmap="bwr" if signed else "hot", alpha=0.55,
                      vmin=-limit if signed else 0.0, vmax=limit)
            ax.axis("off")
            if col == 0:
                # slices of the preprocessed grid, not the scanner's: the NIfTI maps sit on the subject's own grid
                ax.set_title(f"{title}\nslice {z} of {image.shape[-1]}, model grid", fontsize=7, loc="left")
            else:
                ax.set_title(f"slice {z}", fontsize=7)


def saliency_montage(image: np.ndarray, maps: dict[str, np.ndarray], path: str | Path, title: str,
                     slices: int = 6, head: np.ndarray | None = None) -> Path:
    """PNG: one row per map in ``maps`` (title -> ``(H, W, D)``) over the first MRI channel of ``image``
    ``(C, H, W, D)``, on the ``slices`` axial slices where the first map holds the most |saliency|;
    ``head`` as in ``_draw_montage``."""
    chosen = top_slices(next(iter(maps.values())), slices)
    figure = Figure(figsize=(2.0 * len(chosen), 2.2 * len(maps) + 0.4), dpi=100)
    grid = figure.add_gridspec(len(maps), len(chosen))
    _draw_montage(figure, grid, image, maps, chosen, head)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def subject_figure(path: str | Path, *, probability: float, threshold: float, features: list[dict[str, Any]],
                   image: np.ndarray | None = None, maps: dict[str, np.ndarray] | None = None,
                   slice_values: np.ndarray | None = None, head: np.ndarray | None = None, title: str = "",
                   slices: int = 6, scored_by: str = "fold-ensemble mean",
                   risk_words: str = "predicted 12-month recurrence risk",
                   words: list[dict[str, Any]] | None = None) -> Path:
    """One subject on one PNG. ``features``: ``{"feature", "value", "attribution"}`` for the top
    features (largest |attribution| first); ``image`` ``(C, H, W, D)`` and ``maps`` as in
    ``saliency_montage`` (None: no image part); ``slice_values`` ``(D,)``: each axial slice's
    attribution (slice ResNet+LSTM), drawn as bars; ``scored_by``: which models the risk averages
    (under the risk bar); ``words``: ``{"word", "effect"}`` of the report's words (occlusion), drawn
    as bars below the features."""
    group = "HIGH" if probability >= threshold else "LOW"
    maps = maps or {}
    words = words or []
    heights = ([0.9, 0.35 * max(len(features), 1) if features else 0.05] + ([0.3 * len(words) + 0.4] if words else [])
               + ([1.2] if slice_values is not None else []) + [2.2] * len(maps))
    figure = Figure(figsize=(12.0, sum(heights) + 0.6), dpi=100)
    grid = figure.add_gridspec(len(heights), slices, height_ratios=heights, hspace=0.45)
    ax = figure.add_subplot(grid[0, :])
    ax.barh([0], [probability], color="#C44E52" if group == "HIGH" else "#4C72B0", height=0.5)
    ax.axvline(threshold, color="black", linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel(f"{risk_words} ({scored_by})", fontsize=8)
    ax.set_title(f"{title + ': ' if title else ''}risk {probability:.2f}, {group} risk group "
                 f"(threshold {threshold:.2f}, dashed)", fontsize=10)
    ax = figure.add_subplot(grid[1, :])
    if features:
        shown = features[::-1]
        y = np.arange(len(shown))
        ax.barh(y, [f["attribution"] for f in shown],
                color=["#C44E52" if f["attribution"] > 0 else "#4C72B0" for f in shown])
        ax.set_yticks(y, [f"{f['feature']} = {f['value']}" for f in shown], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel("Integrated Gradients on the logit (red: towards recurrence)", fontsize=8)
    else:
        ax.axis("off")
    row = 2
    if words:
        ax = figure.add_subplot(grid[row, :])
        shown = words[::-1]
        y = np.arange(len(shown))
        ax.barh(y, [w["effect"] for w in shown], color=["#C44E52" if w["effect"] > 0 else "#4C72B0" for w in shown])
        ax.set_yticks(y, [f"report: \"{w['word']}\"" for w in shown], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel("logit with the word − without it (occlusion; red: the word raises the risk)", fontsize=8)
        row += 1
    if slice_values is not None:
        ax = figure.add_subplot(grid[row, :])
        ax.bar(np.arange(len(slice_values)), slice_values,
               color=["#C44E52" if v > 0 else "#4C72B0" for v in slice_values])
        ax.set_xlabel("axial slice", fontsize=8)
        ax.set_ylabel("attribution", fontsize=8)
        ax.set_title("each slice's contribution to the logit (Integrated Gradients, from an empty volume)", fontsize=8)
        row += 1
    if maps:
        sub = grid[row:, :].subgridspec(len(maps), slices, hspace=0.3)
        _draw_montage(figure, sub, image, maps, top_slices(next(iter(maps.values())), slices), head)
    return save_figure(figure, path)
