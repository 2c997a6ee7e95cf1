"""Synthetic stroke cohorts in the real cohort format, built on the MNI152 template.

``write_synthetic_cohort(OUT)`` writes what a user would bring (NIfTI images, a cohort CSV and
its cohort.yaml) plus the ground truth a benchmark needs:

* ``OUT/images/sub-XXXX_<seq>.nii.gz``: one 3D NIfTI per subject and sequence, each with its own
  field of view, voxel size, slice thickness, orientation, intensity scale and on-disk dtype;
* ``OUT/cohort.csv`` (ids, image paths, clinical columns with gaps, a free-text report, the
  12-month recurrence label and the observed follow-up: ``followup_months`` with its ``recurrence``
  event, administratively and randomly censored; outcomes empty for unlabeled subjects) and
  ``OUT/cohort.yaml``; with ``dicom_fraction`` some subjects' images are DICOM series folders
  ``OUT/images/sub-XXXX_<seq>/`` instead;
* ``OUT/risk.csv`` (true risk, its logit components, latent image quantities, latent event and
  censoring times: a constant hazard whose 12-month probability is the true risk) and
  ``OUT/truth.json`` (prevalence and the AUROC an oracle reaches with all / image / tabular parts).

The anatomy comes from nilearn's bundled MNI152 T1 template and GM/WM probability maps, padded
and wrapped in a CSF / skull / scalp shell. Per subject the model varies global size and pose,
atrophy (tissue within d(age) mm of CSF becomes CSF), periventricular white-matter
hyperintensities (WMH) and an acute middle-cerebral-artery infarct. Every sequence samples the
same subject-space model through its own affine, so the sequences of a subject are aligned in
world space. Everything is drawn from ``seed``; the same seed gives a byte-identical CSV.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from multimodal.dicom_writer import write_series
from multimodal.errors import CohortError
from multimodal.synthetic_clinical import (
    draw_clinical,
    get_profile,
    image_quantities,
    observed_follow_up,
)
from multimodal.synthetic_reports import draw_wmh_reading, radiology_report
from multimodal.synthetic_truth import truth_summary

logger = logging.getLogger(__name__)

SEQUENCES = ("flair", "dwi", "t1")
PAD = 12  # template voxels (24 mm) added on each side so the scalp and some background fit
TISSUES = ("csf", "gm", "wm", "wmh", "infarct", "skull", "scalp")
# Relative signal per tissue and sequence (WM on T1 ≈ 0.85, like the template's own scale).
CONTRAST = {
    "t1": dict(csf=0.25, gm=0.62, wm=0.86, wmh=0.66, infarct=0.55, skull=0.04, scalp=1.0),
    "flair": dict(csf=0.08, gm=0.62, wm=0.48, wmh=1.05, infarct=0.95, skull=0.04, scalp=0.85),
    "dwi": dict(csf=0.12, gm=0.55, wm=0.45, wmh=0.50, infarct=1.80, skull=0.02, scalp=0.10),
}
# Slice thickness relative to the in-plane voxel size (clinical DWI ~5 mm slices on ~1.8 mm pixels).
SLICE_RATIO = {"flair": (1.3, 1.8), "dwi": (1.8, 2.4), "t1": (1.0, 1.2)}
ORIENTATIONS = {"RAS": (1, 1, 1), "LAS": (-1, 1, 1), "LPS": (-1, -1, 1)}


# --------------------------------------------------------------------------- anatomy (subject-independent)
@dataclass(frozen=True)
class Anatomy:
    """Template maps on the padded 2 mm MNI grid, computed once per process."""

    table: np.ndarray  # (X*Y*Z, 7) float32 rows: t1, gm, wm, csf, dist_csf, dist_vent, dist_out (mm)
    shape: tuple[int, int, int]  # padded template grid
    tissue: np.ndarray  # (X, Y, Z) gm + wm probability, for placing and measuring infarcts
    affine: np.ndarray  # padded voxel -> MNI mm
    centre: np.ndarray  # (3,) MNI mm, centre of the brain's bounding box
    wmh_radius: np.ndarray  # periventricular radius (mm) ...
    wmh_volume: np.ndarray  # ... and the WMH volume (ml, template size) it gives, for calibration


@lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Load the bundled MNI152 maps and precompute the distance maps every subject reuses."""
    from nilearn import datasets  # imported here: nilearn is slow to import and only needed once

    images = [datasets.load_mni152_template(resolution=2), datasets.load_mni152_gm_template(resolution=2),
              datasets.load_mni152_wm_template(resolution=2)]
    t1, gm, wm = (np.pad(np.asarray(img.get_fdata(), np.float32), PAD) for img in images)
    affine = images[0].affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, PAD)
    brain = ndi.binary_fill_holes((t1 > 0.01) | (gm + wm > 0.1))
    # Smoothed mask gives partial volume at the brain surface instead of a voxel staircase.
    inside = np.clip(ndi.gaussian_filter(brain.astype(np.float32), 0.7), 0, 1)
    gm, wm = np.clip(gm, 0, 1) * inside, np.clip(wm, 0, 1) * inside
    csf = np.clip(inside - gm - wm, 0, 1)
    csf_mask = (csf > 0.5) | ~brain
    dist_csf = ndi.distance_transform_edt(~csf_mask, sampling=2.0)
    depth = ndi.distance_transform_edt(brain, sampling=2.0)
    labels, count = ndi.label((csf > 0.5) & (depth > 15))  # deep CSF = ventricles
    sizes = ndi.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    ventricles = np.isin(labels, 1 + np.flatnonzero(sizes > 500))
    dist_vent = ndi.distance_transform_edt(~ventricles, sampling=2.0)
    dist_out = ndi.distance_transform_edt(~brain, sampling=2.0)
    table = np.stack([t1, gm, wm, csf, dist_csf, dist_vent, dist_out], axis=-1).astype(np.float32)
    # WMH volume as a function of the periventricular radius (the ramp of _fractions, 8 mm³ voxels).
    hist, edges = np.histogram(dist_vent, bins=np.arange(0, 61, 1.0), weights=wm)
    mids = (edges[:-1] + edges[1:]) / 2
    radius = np.linspace(0, 45, 181)
    ramp = np.clip((radius[:, None] - mids[None]) / 3 + 0.5, 0, 1)
    volume = (ramp * hist).sum(1) * 8e-3
    idx = np.argwhere(brain)
    centre = (affine[:3, :3] @ ((idx.min(0) + idx.max(0)) / 2) + affine[:3, 3])
    logger.debug("anatomy ready: grid %s, ventricles %.0f ml", t1.shape, ventricles.sum() * 8e-3)
    return Anatomy(table.reshape(-1, table.shape[-1]), t1.shape, gm + wm, affine, centre, radius, volume)


# --------------------------------------------------------------------------- images
@dataclass
class Subject:
    """Per-subject anatomy (template space) and pose (scanner world -> template voxels)."""

    to_template: np.ndarray  # 4x4: scanner world mm -> padded template voxel
    centre: np.ndarray  # head centre in scanner world mm
    atrophy: float  # mm
    wmh_radius: float  # mm of periventricular WM that turns hyperintense
    lesion_centre: np.ndarray  # MNI mm
    lesion_axes: np.ndarray  # 3x3: rows = ellipsoid axes scaled by 1/radius (mm^-1)
    side: float  # +1 right hemisphere, -1 left (MNI x sign); 0 = no lesion
    noise: np.ndarray  # (3, 9, 10, 9) smooth random fields: WMH edge, lesion edge, skull thickness


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


def _lesion(q: np.ndarray, mni_x: np.ndarray, noise: np.ndarray, side: float) -> np.ndarray:
    """Lesion fraction in [0, 1]: a noisy-edged ellipsoid (q = normalised radius) in one hemisphere."""
    inside = np.clip((1 - q + 0.2 * noise) / 0.15 + 0.5, 0, 1)
    return inside * np.clip(side * mni_x / 2.0, 0, 1)


def _trilinear(table: np.ndarray, shape: tuple[int, int, int], vox: np.ndarray) -> np.ndarray:
    """Linear interpolation of all channels of ``table`` (X*Y*Z, C) at voxel points (3, N) -> (C, N).

    Same values as ``ndi.map_coordinates(order=1, mode="nearest")`` per channel, but the corner
    indices and weights are computed once for all channels: 2x faster on the hot path.
    """
    size = np.array(shape)
    v = np.clip(vox, 0, (size - 1 - 1e-6)[:, None])
    corner = np.floor(v).astype(np.intp)
    f = (v - corner).astype(np.float32)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    base = strides @ corner
    out = np.zeros((vox.shape[1], table.shape[1]), np.float32)
    for dx, dy, dz in np.ndindex(2, 2, 2):
        w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
        out += w[:, None] * table[base + dx * strides[0] + dy * strides[1] + dz]
    return out.T


def _sample(anat: Anatomy, subj: Subject, vox: np.ndarray) -> dict[str, np.ndarray]:
    """Tissue fractions (summing to ≤ 1; the rest is air) at padded-template voxel coordinates (3, N)."""
    t1, gm, wm, csf, dist_csf, dist_vent, dist_out = _trilinear(anat.table, anat.shape, vox)
    shape = np.array(anat.shape)
    coarse = vox * ((np.array(subj.noise.shape[1:]) - 1) / (shape - 1))[:, None]
    noise = [ndi.map_coordinates(field, coarse, order=1, mode="nearest") for field in subj.noise]
    # Atrophy: tissue within `atrophy` mm of CSF (sulci, ventricles, brain surface) becomes CSF.
    lost = np.clip((subj.atrophy - dist_csf) / 2 + 0.5, 0, 1) * (dist_csf > 0)
    csf = csf + (gm + wm) * lost
    gm, wm = gm * (1 - lost), wm * (1 - lost)
    wmh = wm * np.clip((subj.wmh_radius * (1 + 0.25 * noise[0]) - dist_vent) / 3 + 0.5, 0, 1)
    wm = wm - wmh
    frac = dict(csf=csf, gm=gm, wm=wm, wmh=wmh, infarct=np.zeros_like(gm))
    if subj.side:
        mni = anat.affine[:3, :3] @ vox + anat.affine[:3, 3:]
        q = np.linalg.norm(subj.lesion_axes @ (mni - subj.lesion_centre[:, None]), axis=0)
        lesion = _lesion(q, mni[0], noise[1], subj.side)
        frac["infarct"] = lesion * (gm + wm + wmh)
        for key in ("gm", "wm", "wmh"):
            frac[key] = frac[key] * (1 - lesion)
    # Shell outside the brain: CSF, then skull (dark everywhere), then scalp fat, then air.
    air = 1 - np.clip(gm + wm + wmh + csf, 0, 1)
    skull_start, skull_end = 3.0, 9.0 + 1.5 * noise[2]  # mm outside the brain
    scalp_end = skull_end + 5.0

    def step(edge: np.ndarray | float) -> np.ndarray:  # 1 inside `edge` mm, ramped over 2 mm
        return np.clip((edge - dist_out) / 2 + 0.5, 0, 1)
    frac["csf"] = frac["csf"] + air * step(skull_start)
    frac["skull"] = air * (step(skull_end) - step(skull_start))
    frac["scalp"] = air * (step(scalp_end) - step(skull_end))
    frac["texture"] = t1 - (0.62 * gm + 0.86 * wm + 0.3 * csf)  # template detail beyond tissue classes
    return frac


def _grid(sequence: str, grid: int, centre: np.ndarray, rng: np.random.Generator) -> tuple[tuple, np.ndarray, int]:
    """Output shape, voxel -> world affine and slice (thick) voxel axis for one sequence."""
    fov = rng.uniform(200, 240)
    inplane = fov / grid
    thick = inplane * rng.uniform(*SLICE_RATIO[sequence])
    # Axial acquisitions (slice axis = world z), but T1 is often sagittal and FLAIR sometimes coronal.
    slice_world = {"t1": 0 if rng.random() < 0.5 else 2, "flair": 1 if rng.random() < 0.15 else 2}.get(sequence, 2)
    spacing = np.full(3, inplane)
    spacing[slice_world] = thick
    counts = np.array([grid, grid, grid])
    counts[(slice_world + 1) % 3] = round(grid * rng.uniform(0.8, 1.0))  # rectangular phase FOV
    counts[slice_world] = max(4, min(grid, round(rng.uniform(130, 170) / thick)))
    perm = rng.permutation(3) if rng.random() < 0.25 else np.arange(3)  # voxel axis j <- world axis perm[j]
    signs = np.array(ORIENTATIONS[rng.choice(list(ORIENTATIONS))])
    direction = np.zeros((3, 3))
    for j, w in enumerate(perm):
        direction[w, j] = signs[w] * spacing[w]
    linear = _rotation(rng, 5.0) @ direction  # a few degrees of obliquity
    shape = tuple(int(counts[w]) for w in perm)
    offset = centre + rng.uniform(-12, 12, 3)  # off-centre field of view
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = offset - linear @ ((np.array(shape) - 1) / 2)
    return shape, affine, int(np.flatnonzero(perm == slice_world)[0])


def _render(anat: Anatomy, subj: Subject, sequence: str, shape: tuple, affine: np.ndarray, slice_axis: int,
            rng: np.random.Generator) -> np.ndarray:
    """Signal on one output grid: partial-volume sampled tissue mix, bias field, scale, Rician noise."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    # Thick slices average sub-samples along the slice axis (partial volume), as a real slice does.
    offsets = (-0.25, 0.25) if spacing[slice_axis] > 1.5 * spacing.min() else (0.0,)
    matrix = subj.to_template @ affine
    contrast = CONTRAST[sequence]
    texture_gain = {"t1": 1.0, "flair": -0.4, "dwi": -0.3}[sequence]
    signal = np.zeros(ijk.shape[1])
    for off in offsets:
        points = ijk.copy()
        points[slice_axis] += off
        frac = _sample(anat, subj, matrix[:3, :3] @ points + matrix[:3, 3:])
        brain = frac["gm"] + frac["wm"] + frac["wmh"]
        signal += sum(frac[t] * contrast[t] for t in TISSUES) + texture_gain * frac["texture"] * (brain > 0.3)
    signal /= len(offsets)
    bias = np.exp(0.15 * ndi.zoom(rng.normal(0, 1, (3, 3, 3)), np.array(shape) / 3, order=1, grid_mode=True,
                                  mode="nearest"))
    sigma = rng.uniform(0.015, 0.04)
    signal = signal.reshape(shape) * bias
    noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician magnitude
    return noisy * np.exp(rng.uniform(np.log(100), np.log(3000)))  # scanner units differ by site


def _make_subject(anat: Anatomy, row: pd.Series, rng: np.random.Generator) -> Subject:
    """Pose, atrophy, WMH radius and an infarct ellipsoid calibrated to the latent volumes."""
    scale, rot, shift = float(row["head_scale"]), _rotation(rng, 8.0), rng.uniform(-5, 5, 3)
    # scanner = scale * rot @ (mni - c) + c + shift  ->  invert to reach template voxels.
    to_mni = np.eye(4)
    to_mni[:3, :3] = rot.T / scale
    to_mni[:3, 3] = anat.centre - rot.T @ (anat.centre + shift) / scale
    to_template = np.linalg.inv(anat.affine) @ to_mni
    wmh_radius = float(np.interp(row["wmh_volume_ml"] / scale**3, anat.wmh_volume, anat.wmh_radius))
    noise = rng.normal(0, 1, (3, 9, 10, 9))
    subj = Subject(to_template, anat.centre + shift, float(row["atrophy"]), wmh_radius, np.zeros(3), np.eye(3), 0.0, noise)
    volume = float(row["infarct_volume_ml"])
    if volume <= 0:
        return subj
    subj.side = float(rng.choice([-1.0, 1.0]))
    tissue = anat.tissue
    inv = np.linalg.inv(anat.affine)
    for _ in range(50):  # lateral MCA territory; the centre must sit in brain tissue
        centre = np.array([subj.side * rng.uniform(25, 50), rng.uniform(-30, 20), rng.uniform(-5, 35)])
        if tissue[tuple(np.round(inv[:3, :3] @ centre + inv[:3, 3]).astype(int))] > 0.5:
            break
    subj.lesion_centre = centre
    radii = (rng.uniform(0.7, 1.3, 3) * (volume / scale**3 * 1000 * 3 / (4 * np.pi)) ** (1 / 3))
    axes = _rotation(rng, 90.0)
    # Tissue and the midline clip part of the ellipsoid: grow it by k in [0.5, 2] until the volume
    # measured on the template grid matches the latent one (q scales as 1/k, so measure q once).
    half = np.ceil(1.3 * radii.max()) + 2  # template voxels covering q <= 1.3 at k = 2
    step = max(1, int(radii.max() // 8))  # ~4 samples per radius measure the volume well enough
    c = np.round(inv[:3, :3] @ centre + inv[:3, 3])
    box = np.stack(np.meshgrid(*[np.arange(max(ci - half, 0), min(ci + half, s - 1) + 1, step)
                                 for ci, s in zip(c, tissue.shape, strict=True)], indexing="ij")).reshape(3, -1)
    coarse = box * ((np.array(noise.shape[1:]) - 1) / (np.array(tissue.shape) - 1))[:, None]
    edge = ndi.map_coordinates(noise[1], coarse, order=1, mode="nearest")
    mni = anat.affine[:3, :3] @ box + anat.affine[:3, 3:]
    q = np.linalg.norm((axes / radii[:, None]) @ (mni - centre[:, None]), axis=0)
    ml = tissue[tuple(box.astype(int))] * 8e-3 * step**3 * scale**3
    low, high = 0.5, 2.0
    for _ in range(12):  # bisection to 0.04 %
        k = (low + high) / 2
        low, high = (k, high) if (_lesion(q / k, mni[0], edge, subj.side) * ml).sum() < volume else (low, k)
    subj.lesion_axes = axes / (radii * (low + high) / 2)[:, None]
    return subj


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> None:
    """Save as int16 or float32, little- or (sometimes) big-endian, with scanner-space s/qform."""
    big_endian = rng.random() < 0.2
    if rng.random() < 0.5:
        dtype = np.dtype(">i2" if big_endian else "<i2")
        data = np.clip(np.round(data), 0, np.iinfo(np.int16).max)
    else:
        dtype = np.dtype(">f4" if big_endian else "<f4")
    header = nib.Nifti1Header(endianness=">" if big_endian else "<")
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), affine, header=header)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


_COHORT_YAML_HEADER = """\
# Synthetic cohort (strokessl synth). recurrence_12m is the 12-month outcome as the generator knows it,
# complete follow-up included; followup_months / recurrence are what the cohort observed (some patients
# censored before 12 months). A run uses recurrence_12m unless finetune.horizon is set (the binary label
# at that horizon from time and event; censored before it = unlabeled) or finetune.task is survival.
"""


# --------------------------------------------------------------------------- public entry point
def _check_arguments(out: Path, n: int, grid: int, labeled_fraction: float, sequences: Sequence[str],
                     prevalence: float) -> None:
    if n < 2:
        raise CohortError(f"n must be at least 2 subjects, got {n}; pass --n 2 or more")
    if not 0.0 <= labeled_fraction <= 1.0:
        raise CohortError(f"labeled_fraction must be in [0, 1], got {labeled_fraction}; e.g. --labeled-fraction 0.5")
    if not 0.01 <= prevalence <= 0.9:
        raise CohortError(f"prevalence must be in [0.01, 0.9], got {prevalence}; e.g. --prevalence 0.15")
    if grid < 8:
        raise CohortError(f"grid must be at least 8 voxels, got {grid}; tests use 16-24, benchmarks 32-64")
    unknown = [s for s in sequences if s not in SEQUENCES]
    if unknown or len(set(sequences)) < 2 or len(set(sequences)) != len(sequences):
        raise CohortError(f"sequences must be 2 or 3 distinct names from {list(SEQUENCES)}, got {list(sequences)}; "
                          "e.g. --sequences flair,dwi")
    if (out / "cohort.csv").exists():
        raise CohortError(f"{out} already holds a cohort.csv; choose an empty or new folder for the synthetic cohort")


def write_synthetic_cohort(out: str | Path, n: int = 60, grid: int = 48, labeled_fraction: float = 0.5,
                           seed: int = 0, sequences: Sequence[str] = ("flair", "dwi"),
                           prevalence: float = 0.15, profile: str = "standard",
                           dicom_fraction: float = 0.0) -> Path:
    """Write a synthetic stroke cohort (NIfTI images, CSV, cohort.yaml, ground truth) into ``out``.

    Args:
        out: folder to create or fill; refused if it already holds a ``cohort.csv``.
        n: number of subjects (≥ 2).
        grid: approximate voxel count along the longest axis of every image (FOV 200-240 mm).
        labeled_fraction: share of subjects whose ``recurrence_12m`` is kept; the rest are empty.
        seed: drives every random draw; the same seed gives a byte-identical ``cohort.csv``.
        sequences: at least two of ``flair``, ``dwi``, ``t1``; the first is the reference grid.
        prevalence: mean 12-month recurrence risk of the generating model.
        profile: ``standard`` (the record predicts much of what the image shows) or ``image``
            (image-only quantities carry risk the record barely predicts); see ``RiskProfile``.
        dicom_fraction: share of subjects whose images are written as DICOM series (one folder of
            single-frame MR files per sequence) instead of NIfTI; 0 = NIfTI only.

    Returns:
        The path of ``out/cohort.yaml``, ready for every ``strokessl`` stage.
    """
    out = Path(out)
    sequences = list(sequences)
    get_profile(profile)  # an unknown name fails before any file is written
    _check_arguments(out, n, grid, labeled_fraction, sequences, prevalence)
    if not 0.0 <= dicom_fraction <= 1.0:
        raise CohortError(f"dicom_fraction must be in [0, 1], got {dicom_fraction}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    table, risk = draw_clinical(n, seed=seed, prevalence=prevalence, profile=profile)
    ids = [f"sub-{i + 1:04d}" for i in range(n)]
    rng = np.random.default_rng([seed, 1])
    labeled = np.zeros(n, bool)
    labeled[rng.permutation(n)[: round(labeled_fraction * n)]] = True
    as_dicom = np.zeros(n, bool)  # its own stream: without DICOM the cohort is byte-identical to before
    as_dicom[np.random.default_rng([seed, 4]).permutation(n)[: round(dicom_fraction * n)]] = True

    anat = load_anatomy()
    paths: dict[str, list[str]] = {s: [] for s in sequences}
    reports = []
    for i in tqdm(range(n), desc="synthetic subjects", unit="subject", disable=None):
        sub_rng = np.random.default_rng([seed, 2, i])  # per subject: images do not shift other draws
        subj = _make_subject(anat, risk.iloc[i], sub_rng)
        side = "right" if subj.side > 0 else "left"
        reports.append(radiology_report(side, risk["infarct_volume_ml"].iat[i], risk["wmh_volume_ml"].iat[i],
                                        risk["atrophy"].iat[i], draw_wmh_reading(sub_rng),
                                        np.random.default_rng([seed, 5, i])))  # the report's own stream
        for sequence in sequences:
            shape, affine, slice_axis = _grid(sequence, grid, subj.centre, sub_rng)
            data = _render(anat, subj, sequence, shape, affine, slice_axis, sub_rng)
            if as_dicom[i]:
                relative = f"images/{ids[i]}_{sequence}"
                write_series(out / relative, data, affine, description=f"AX {sequence.upper()}",
                             patient_id=ids[i])
            else:
                relative = f"images/{ids[i]}_{sequence}.nii.gz"
                _write_nifti(out / relative, data, affine, sub_rng)
            paths[sequence].append(relative)

    cohort = pd.DataFrame({"subject_id": ids, **paths})
    cohort = pd.concat([cohort, table.reset_index(drop=True)], axis=1)
    cohort["report"] = reports
    cohort["recurrence_12m"] = pd.array(np.where(labeled, risk["recurrence_12m"], 0), dtype="Int64")
    cohort.loc[~labeled, "recurrence_12m"] = pd.NA
    followup, event = observed_follow_up(risk)
    cohort["followup_months"] = pd.array(np.where(labeled, followup, np.nan), dtype="Float64")
    cohort["recurrence"] = pd.array(np.where(labeled, event, 0), dtype="Int64")
    cohort.loc[~labeled, "recurrence"] = pd.NA

    risk = risk.rename(columns={"recurrence_12m": "drawn_label"})
    quantities = image_quantities(risk)
    for column in quantities.columns.difference(risk.columns):
        risk[column] = quantities[column].round(6)
    risk.insert(0, "subject_id", ids)
    risk["labeled"] = labeled.astype(int)
    risk["event_time_months"] = risk["event_time_months"].round(4)
    risk["censor_time_months"] = risk["censor_time_months"].round(4)
    risk["followup_months"], risk["event"] = followup, event
    risk.to_csv(out / "risk.csv", index=False)
    (out / "truth.json").write_text(json.dumps(truth_summary(risk, prevalence, n, grid, seed, sequences, profile), indent=2) + "\n")
    config = {"csv": "cohort.csv", "id": "subject_id", "images": {s: s for s in sequences},
              "label": "recurrence_12m", "time": "followup_months", "time_unit": "months", "event": "recurrence",
              "text": ["report"],
              "types": {"hypertension": "categorical", "diabetes": "categorical"}}
    (out / "cohort.yaml").write_text(_COHORT_YAML_HEADER + yaml.safe_dump(config, sort_keys=False))
    # cohort.csv last: its presence marks a finished cohort (an interrupted run can simply be rerun).
    cohort.to_csv(out / "cohort.csv", index=False, na_rep="")
    logger.info("synthetic cohort: %d subjects (%d labeled, %d positive) in %s", n, labeled.sum(),
                int(cohort["recurrence_12m"].sum()), out)
    return out / "cohort.yaml"
