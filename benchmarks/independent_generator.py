"""A second, independent synthetic stroke cohort: a recipe that gains only on our own generator is
tuned to it, so the quality benchmark also reports the default on this one.

    python benchmarks/independent_generator.py OUT --n N --seed S [--labeled-fraction F] [--prevalence P]
        [--grid G] [--workers W] [--t1] [--check-oracle]

Written from a short description of stroke imaging, not from ``multimodal/synthetic*.py``: a
procedural head (noise-perturbed superquadric skull, scalp and brain; a cortical ribbon folded by
the zero sets of a random plane-wave field, so sulci are thin CSF sheets that widen with atrophy;
analytic deep grey nuclei and lateral/third ventricles), small-vessel disease (periventricular
caps and bands, punctate deep foci, lacunes with a gliotic rim), acute infarcts as irregular blobs
clipped to vascular-territory wedges (MCA, ACA, PCA) or small deep lacunar infarcts, one to three
territories (the embolic pattern). Every sequence is evaluated analytically at its own voxel
centres (two samples across each slice for partial volume), so a subject's FLAIR and DWI agree in
world space whatever their grids, orientations (RAS, LPS, LAS, oblique) and dtypes. The risk model
is its own: a logistic link on clinical factors (with an atrial-fibrillation x no-anticoagulation
interaction) plus image quantities (log infarct volume, log WMH volume, lacune count, atrophy,
territories) that the record predicts only partly.

The record and risk model live in ``independent_record.py``, the head in ``independent_anatomy.py``;
this module renders each scanner's grid and writes the cohort: ``OUT/images/<id>_{flair,dwi}.nii.gz``,
``OUT/cohort.csv``, ``OUT/cohort.yaml``, ``OUT/risk.csv`` (the latent truth, never a column of
cohort.csv) and ``OUT/truth.json``; see ``write_independent_cohort``. ``draw_independent_table``
draws the record and the latents alone (no images), for calibration: ``--check-oracle`` fits the
benchmark's logistic regression with and without the true image quantities on a 600 / 600 split
drawn that way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when run from a checkout

from independent_anatomy import INFARCT, Anatomy, label_points, make_anatomy, rotation_matrix
from independent_record import (
    IMAGE_QUANTITIES,
    LABEL,
    TYPES,
    auroc_or_none,
    check_oracle,
    draw_independent_table,
)

from multimodal.errors import CohortError

SEQUENCES = ("flair", "dwi")

logger = logging.getLogger("independent_generator")

# =========================================================================== scanners
@dataclass(frozen=True)
class Protocol:
    """One acquisition: matrix, voxel size (mm), axis codes, slice tilt, stored dtype, SNR."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    oblique_deg: float
    dtype: str
    snr: float


PROTOCOLS = {
    "flair": [Protocol("flair_a", (80, 96, 26), (2.6, 2.4, 6.5), "RAS", 0.0, "int16", 24.0),
              Protocol("flair_b", (96, 96, 32), (2.4, 2.4, 5.0), "LPS", 0.0, "float32", 30.0),
              Protocol("flair_c", (88, 88, 24), (2.5, 2.6, 7.0), "LAS", 12.0, "int16", 20.0)],
    "dwi": [Protocol("dwi_a", (64, 64, 24), (3.6, 3.6, 6.5), "LPS", 0.0, "int16", 9.0),
            Protocol("dwi_b", (72, 72, 28), (3.2, 3.2, 5.5), "RAS", 8.0, "float32", 12.0),
            Protocol("dwi_c", (60, 64, 22), (3.8, 3.6, 7.0), "LAS", 0.0, "int16", 8.0)],
    "t1": [Protocol("t1_a", (72, 88, 64), (2.4, 2.6, 2.6), "RAS", 0.0, "int16", 28.0),
           Protocol("t1_b", (80, 96, 56), (2.2, 2.4, 3.0), "LPS", 6.0, "float32", 32.0),
           Protocol("t1_c", (68, 84, 60), (2.5, 2.7, 2.8), "LAS", 0.0, "int16", 24.0)],
}
# Tissue intensities (index = tissue code; infarct handled separately).
CONTRAST = {
    "flair": np.array([0.0, 0.55, 0.06, 0.12, 0.78, 0.58, 0.72, 1.25, 0.14, 1.15, 0.0], dtype=np.float32),
    "dwi": np.array([0.0, 0.12, 0.03, 0.08, 0.62, 0.50, 0.58, 0.62, 0.10, 0.55, 0.0], dtype=np.float32),
    "t1": np.array([0.0, 0.9, 0.05, 0.15, 0.5, 0.75, 0.55, 0.62, 0.13, 0.5, 0.0], dtype=np.float32),
}
# Where each voxel is sampled across its slice (fractions of the slice thickness); more samples
# give partial volume in thick slices at proportional cost.
SLICE_SAMPLES = (0.0,)
_AXES = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def scaled(protocol: Protocol, grid: int | None) -> Protocol:
    """``protocol`` with its in-plane matrix brought to about ``grid`` voxels (same field of view)."""
    if grid is None:
        return protocol
    factor = grid / 96.0
    shape = tuple(max(6, round(s * factor)) for s in protocol.shape)
    spacing = tuple(float(sp * s / t) for sp, s, t in zip(protocol.spacing, protocol.shape, shape, strict=True))
    return Protocol(protocol.name, shape, spacing, protocol.orientation, protocol.oblique_deg,  # type: ignore[arg-type]
                    protocol.dtype, protocol.snr)


def affine_for(protocol: Protocol, fov_centre: np.ndarray) -> np.ndarray:
    """Voxel-to-world (RAS mm) affine whose grid centre lies at ``fov_centre``."""
    directions = np.array([_AXES[c] for c in protocol.orientation], dtype=float).T
    linear = rotation_matrix(np.array([protocol.oblique_deg, 0.0, 0.0])) @ directions @ np.diag(protocol.spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = fov_centre - linear @ ((np.array(protocol.shape) - 1) / 2.0)
    return affine


def render(anat: Anatomy, subject: pd.Series, sequence: str, protocol: Protocol, affine: np.ndarray,
           head_centre: np.ndarray, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sequence's voxel array (float32, arbitrary scale before storage)."""
    shape = protocol.shape
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    # Voxel index -> head coordinates in one affine map: pose^T (A ijk + t - head centre).
    linear = (pose.T @ affine[:3, :3]).astype(np.float32)
    contrast = CONTRAST[sequence]
    onset = float(subject["onset_to_scan_h"])
    if sequence == "flair":  # FLAIR turns bright a few hours after onset
        infarct = float(np.clip(0.55 + 0.7 * (1.0 - np.exp(-onset / 5.0)), 0.5, 1.25))
    elif sequence == "t1":  # acute infarcts: faintly dark on T1
        infarct = float(rng.uniform(0.45, 0.6))
    else:
        infarct = float(rng.uniform(1.8, 2.5))
    total = np.zeros(len(ijk), dtype=np.float32)
    offsets = SLICE_SAMPLES
    for offset in offsets:
        shift = pose.T @ (affine[:3, :3] @ np.array([0.0, 0.0, offset]) + affine[:3, 3] - head_centre)
        points = ijk @ linear.T + shift.astype(np.float32)
        labels, texture = label_points(points, anat)
        value = contrast[labels] * (np.float32(1.0) + np.float32(0.05) * texture)
        lesion = labels == INFARCT
        value[lesion] = infarct * (1.0 + 0.08 * texture[lesion])
        total += value
    image = (total / len(offsets)).reshape(shape)
    # Smooth multiplicative bias field over the field of view, then Rician noise.
    grid = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    gx, gy, gz = np.meshgrid(*grid, indexing="ij", sparse=True)
    strength = 0.25 if sequence == "dwi" else 0.15
    b = rng.normal(0.0, strength, 6).astype(np.float32)
    image *= np.exp(b[0] * gx + b[1] * gy + b[2] * gz + b[3] * gx * gy + b[4] * (gx ** 2 - 0.3) + b[5] * gz ** 2)
    sigma = 0.55 / protocol.snr
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(sigma)
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)


def _save(image: np.ndarray, affine: np.ndarray, protocol: Protocol, path: Path, rng: np.random.Generator) -> None:
    """Store ``image`` in the protocol's dtype at a random intensity scale, qform and sform set."""
    if protocol.dtype == "int16":
        data = np.clip(np.round(image * rng.uniform(600.0, 2400.0)), -32768, 32767).astype(np.int16)
    else:
        data = (image * rng.uniform(0.5, 300.0)).astype(np.float32)
    nifti = nib.Nifti1Image(data, affine)
    nifti.header.set_xyzt_units("mm", "sec")
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=2 if protocol.name.endswith("b") else 1)
    nifti.header["descrip"] = f"independent generator {protocol.name}".encode()
    nib.save(nifti, str(path))


def render_subject(subject_id: str, subject: pd.Series, out: Path, seed: int, index: int,
                   grid: int | None, sequences: tuple[str, ...] = SEQUENCES) -> dict[str, str]:
    """Render and save every sequence of one subject; returns {sequence: path relative to ``out``}."""
    rng = np.random.default_rng([seed, 2, index])
    anat = make_anatomy(subject, rng)
    head_centre = rng.normal(0.0, [6.0, 8.0, 6.0]) + np.array([0.0, 10.0, 15.0])
    pose = rotation_matrix(rng.normal(0.0, [6.0, 2.5, 3.0]))
    site = int(rng.integers(3))
    paths = {}
    for j, sequence in enumerate(sequences):
        choice = site if rng.random() < 0.8 else int(rng.integers(3))
        protocol = scaled(PROTOCOLS[sequence][(choice + j) % 3], grid)
        affine = affine_for(protocol, head_centre + rng.normal(0.0, 4.0, 3))
        image = render(anat, subject, sequence, protocol, affine, head_centre, pose, rng)
        relative = f"images/{subject_id}_{sequence}.nii.gz"
        _save(image, affine, protocol, out / relative, rng)
        paths[sequence] = relative
    return paths


# =========================================================================== the cohort
def _render_job(job: tuple[str, pd.Series, Path, int, int, int | None, tuple[str, ...]]) -> dict[str, str]:
    """``render_subject`` on one argument tuple (picklable for a process pool)."""
    return render_subject(*job)


def write_independent_cohort(out: str | Path, n: int, grid: int | None = None, labeled_fraction: float = 0.5,
                             seed: int = 0, prevalence: float = 0.15, *, workers: int = 1,
                             sequences: tuple[str, ...] = SEQUENCES) -> Path:
    """Write an ``n``-subject cohort into ``out``; returns ``out/cohort.yaml``.

    ``grid``: None keeps the native protocols (in-plane matrices 60-96); an integer brings every
    in-plane matrix to about that many voxels at the same field of view (small grids for tests).
    Files: ``images/<id>_<seq>.nii.gz``, ``cohort.csv`` (ids, image paths, clinical columns with
    empty cells, ``recurrence_12m`` empty for the unlabeled), ``cohort.yaml``, ``risk.csv`` (latent
    truth per subject) and ``truth.json`` (image-quantity names, prevalence, oracle AUROCs on the
    labeled subjects). ``workers`` > 1 renders in that many processes (the same files: every
    subject draws from its own seeded stream). ``sequences``: any of flair, dwi, t1 (T1 is off by
    default: it doubles the rendering time). Raises ``CohortError`` if ``out`` already holds a
    cohort.csv.
    """
    out = Path(out)
    if (out / "cohort.csv").exists():
        raise CohortError(f"{out} already holds a cohort.csv; choose an empty folder")
    if grid is not None and grid < 8:
        raise CohortError(f"grid must be at least 8 voxels, got {grid}")
    unknown = sorted(set(sequences) - set(PROTOCOLS))
    if unknown or not sequences:
        raise CohortError(f"sequences {list(sequences)}: choose from {sorted(PROTOCOLS)}")
    record, truth = draw_independent_table(n, seed, labeled_fraction, prevalence)
    (out / "images").mkdir(parents=True, exist_ok=True)
    columns: dict[str, list[str]] = {f"{s}_file": [] for s in sequences}
    start = time.perf_counter()
    jobs = [(subject_id, truth.loc[subject_id], out, seed, i, grid, tuple(sequences))
            for i, subject_id in enumerate(truth.index)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rendered = list(tqdm(pool.map(_render_job, jobs, chunksize=4), total=n, desc="rendering", unit="subject"))
    else:
        rendered = [_render_job(job) for job in tqdm(jobs, desc="rendering", unit="subject")]
    for paths in rendered:
        for sequence, path in paths.items():
            columns[f"{sequence}_file"].append(path)
    elapsed = time.perf_counter() - start
    logger.info("rendered %d subjects in %.1f s (%.3f s per subject)", n, elapsed, elapsed / max(n, 1))

    table = pd.concat([pd.DataFrame(columns, index=truth.index), record], axis=1)
    table.to_csv(out / "cohort.csv", index=True, lineterminator="\n")
    config = {"csv": "cohort.csv", "id": "subject_id", "images": {s: f"{s}_file" for s in sequences},
              "label": LABEL, "types": TYPES}
    (out / "cohort.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    risk = truth[["labeled", "drawn_label", "true_risk", "logit", "image_component", "tabular_component",
                  *IMAGE_QUANTITIES, "wmh_ml", "lacunes", "infarct_ml", "territory", "svd_burden"]]
    risk.to_csv(out / "risk.csv", index=True, lineterminator="\n", float_format="%.6g")
    lab = truth[truth["labeled"] == 1]
    y = lab["drawn_label"].to_numpy()
    info = {
        "generator": "independent", "image_quantities": IMAGE_QUANTITIES, "prevalence": prevalence,
        "auroc": {"bayes_labeled": auroc_or_none(y, lab["true_risk"].to_numpy()),
                  "image_only_labeled": auroc_or_none(y, lab["image_component"].to_numpy()),
                  "tabular_only_labeled": auroc_or_none(y, lab["tabular_component"].to_numpy())},
        "n": n, "seed": seed, "labeled": len(lab), "labeled_positives": int(y.sum()), "grid": grid,
        "seconds_per_subject": round(elapsed / max(n, 1), 4),
    }
    (out / "truth.json").write_text(json.dumps(info, indent=2) + "\n")
    return out / "cohort.yaml"


def main(argv: list[str] | None = None) -> int:
    """CLI: write a cohort (or, with ``--check-oracle``, report the calibration figures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (must not hold a cohort.csv)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled-fraction", type=float, default=0.5)
    parser.add_argument("--prevalence", type=float, default=0.15)
    parser.add_argument("--grid", type=int, default=None, help="in-plane matrix (default: native protocols)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--t1", action="store_true", help="also render a T1 (about doubles the time)")
    parser.add_argument("--check-oracle", action="store_true",
                        help="no images: LR test AUROC with and without the true image quantities (600 / 600)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.check_oracle:
        logger.info("%s", json.dumps(check_oracle(seed=args.seed, prevalence=args.prevalence)))
        return 0
    path = write_independent_cohort(args.out, args.n, args.grid, args.labeled_fraction, args.seed, args.prevalence,
                                    workers=args.workers, sequences=(*SEQUENCES, "t1") if args.t1 else SEQUENCES)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
