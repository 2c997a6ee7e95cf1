"""Where in the MRI the fold ensemble looks: occlusion saliency, on the subject's original grid.

``occlusion_saliency`` slides a cube (``window`` voxels, step ``stride``) over the preprocessed
volume, replaces it by the head's mean intensity (0 after the per-channel z-score) in every channel
and records how much the ensemble's mean recurrence logit drops (Captum ``Occlusion``; the clinical
record and other modalities stay the subject's own). Positive = the region raised the predicted
risk. Occlusion rather than Grad-CAM: at CPU-sized grids (32³, and 16³ in tests) the 3D ResNet's
last stage is 1×1×1, where a class-activation map has nothing to localise.

``to_original_grid`` brings a map from the preprocessed grid (whose voxel-to-world affine the cache
keeps) back onto the grid of the subject's own NIfTI (nibabel ``resample_from_to``: crop, spacing
and orientation undone in one resampling), so it opens over the input in ITK-SNAP or 3D Slicer.
``montage`` draws the most attributed axial slices over the image.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from captum.attr import Occlusion
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from nibabel.processing import resample_from_to

from finetune.inference import FoldModels
from multimodal.checkpoint import atomic_path
from multimodal.cohort import Cohort
from multimodal.data import build_dataset, to_device, volume_cache
from multimodal.errors import StrokeSSLError


def occlusion_saliency(models: FoldModels, cohort: Cohort, subject: str, window: int = 4,
                       stride: int = 4) -> dict[str, np.ndarray]:
    """``{"saliency": (H, W, D), "image": (C, H, W, D), "affine": (4, 4)}`` for one subject of ``cohort``
    (the preprocessed grid), averaged over the fold models."""
    if "image" not in models.modalities:
        raise StrokeSSLError("this run reads no MRI: there is no image saliency to compute")
    if subject not in cohort.ids:
        raise StrokeSSLError(f"--subject {subject!r} is not in cohort {cohort.config.source}")
    device = next(models.folds[0].model.parameters()).device
    cache = volume_cache(models.run_config, cohort.config, models.sequences)
    record = cohort.records([subject])[0]
    if not cache.has_image(record):
        raise StrokeSSLError(f"subject {subject!r} has no image to explain")
    cached = cache.load(record)
    image = cached["image"][None].to(device)  # (1, C, H, W, D)
    maps = []
    for fold in models.folds:
        item = build_dataset(cohort, [subject], preprocessor=fold.preprocessor if "table" in models.modalities else None,
                             others=models.others, seed=models.run_config.seed)[0]
        batch = to_device({m: _batched(item[m]) for m in fold.model.modalities if m != "image"}, device)
        with torch.no_grad():
            fixed = {m: fold.model.encoder(m)(batch[m]) for m in batch}

        def logit(volumes: torch.Tensor, fold=fold, fixed=fixed) -> torch.Tensor:
            n = volumes.shape[0]
            embeddings = {m: e.expand(n, -1) for m, e in fixed.items()}
            embeddings["image"] = fold.model.encoder("image")(volumes)
            return fold.model.forward_from_embeddings(embeddings)

        channels = image.shape[1]
        with torch.no_grad():
            attribution = Occlusion(logit).attribute(
                image, sliding_window_shapes=(channels, window, window, window), strides=(channels, stride, stride, stride),
                baselines=0.0, perturbations_per_eval=16)
        maps.append(attribution[0].sum(dim=0).cpu().numpy())  # (H, W, D): summed over the sequences
    return {"saliency": np.mean(maps, axis=0), "image": cached["image"].numpy(),
            "affine": cached["affine"].numpy().astype(np.float64)}


def _batched(value):
    if isinstance(value, dict):
        return {k: v[None] for k, v in value.items()}
    return value[None]


def to_original_grid(saliency: np.ndarray, affine: np.ndarray, reference: str | Path) -> nib.Nifti1Image:
    """The ``(H, W, D)`` map (voxel-to-world ``affine`` of the preprocessed grid) resampled onto the grid
    and affine of the NIfTI at ``reference`` (trilinear; zero outside the preprocessed field of view)."""
    target = nib.load(str(reference))
    shape = target.shape[:3]
    source = nib.Nifti1Image(saliency.astype(np.float32), affine)
    out = resample_from_to(source, (shape, target.affine), order=1, mode="constant", cval=0.0)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), target.affine)


def save_nifti(image: nib.Nifti1Image, path: str | Path) -> Path:
    """Write a NIfTI (gzipped for ``.nii.gz``) atomically."""
    path = Path(path)
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path


def montage(image: np.ndarray, saliency: np.ndarray, path: str | Path, slices: int = 6,
            title: str = "Occlusion saliency (red: raised the predicted risk)") -> Path:
    """PNG of the ``slices`` axial slices holding the most |saliency|, the first MRI channel in grey
    under the map; ``image`` ``(C, H, W, D)``, ``saliency`` ``(H, W, D)``."""
    mass = np.abs(saliency).sum(axis=(0, 1))  # (D,)
    chosen = sorted(np.argsort(mass)[::-1][:slices])
    limit = float(np.abs(saliency).max()) or 1.0
    figure = Figure(figsize=(2.2 * len(chosen), 2.6), dpi=110)
    FigureCanvasAgg(figure)
    for i, z in enumerate(chosen):
        ax = figure.add_subplot(1, len(chosen), i + 1)
        ax.imshow(np.rot90(image[0, :, :, z]), cmap="gray")
        ax.imshow(np.rot90(saliency[:, :, z]), cmap="bwr", vmin=-limit, vmax=limit, alpha=0.45)
        ax.set_title(f"axial slice {z}", fontsize=8)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", bbox_inches="tight")
    return path


def subject_saliency(run_dir: str | Path, cohort: Cohort, subject: str,
                     models: FoldModels | None = None) -> list[Path]:
    """A fine-tuning run's occlusion saliency for ``subject``: ``RUN/report/subjects/<ID>_saliency.nii.gz``
    (on the grid of the subject's first sequence) and ``<ID>_saliency.png``; returns both paths.
    ``models``: the run's fold models when already loaded."""
    from finetune.inference import load_fold_models

    if not (Path(run_dir) / "model.json").is_file():
        raise StrokeSSLError("--subject needs a fine-tuning run (image saliency explains its fold models)")
    models = models or load_fold_models(run_dir)
    result = occlusion_saliency(models, cohort, subject)
    reference = next(p for p in (cohort.image_paths[subject].get(s) for s in models.sequences) if p is not None)
    folder = Path(run_dir) / "report" / "subjects"
    nifti = save_nifti(to_original_grid(result["saliency"], result["affine"], reference),
                       folder / f"{subject}_saliency.nii.gz")
    return [nifti, montage(result["image"], result["saliency"], folder / f"{subject}_saliency.png")]
