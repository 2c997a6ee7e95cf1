"""Ground-truth infarct masks for a synthetic cohort, for checking where saliency maps look.

``write_infarct_masks(COHORT)`` replays the generator's per-subject draws (``truth.json`` holds the
seed, size, grid and sequences; the same seed gives the same subject) and writes, for every subject,
``COHORT/truth/<id>_infarct.nii.gz``: the infarct's partial-volume fraction in [0, 1] on the grid
and affine of the subject's first sequence. Nothing in the cohort itself changes; a real cohort has
no such file, and the explain stage never reads one (only ``benchmarks/explain_sanity.py`` does).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from multimodal.checkpoint import atomic_path
from multimodal.errors import CohortError
from multimodal.synthetic import _grid, _make_subject, _sample, load_anatomy
from multimodal.synthetic_clinical import draw_clinical
from multimodal.synthetic_reports import draw_wmh_reading


def write_infarct_masks(cohort_dir: str | Path) -> Path:
    """Write ``truth/<id>_infarct.nii.gz`` for every subject of the synthetic cohort in ``cohort_dir``;
    returns the ``truth`` folder."""
    cohort_dir = Path(cohort_dir)
    truth_file = cohort_dir / "truth.json"
    if not truth_file.is_file():
        raise CohortError(f"{cohort_dir} has no truth.json: infarct masks exist only for cohorts strokessl synth wrote")
    truth = json.loads(truth_file.read_text())
    n, seed, grid, first = int(truth["n"]), int(truth["seed"]), int(truth["grid"]), truth["sequences"][0]
    _, risk = draw_clinical(n, seed=seed, prevalence=float(truth["prevalence"]),
                            profile=truth.get("profile", "standard"))
    anat = load_anatomy()
    out = cohort_dir / "truth"
    out.mkdir(exist_ok=True)
    for i in tqdm(range(n), desc="infarct masks", unit="subject", disable=None):
        # The same draws, in the same order, as write_synthetic_cohort up to the first sequence's grid.
        sub_rng = np.random.default_rng([seed, 2, i])
        subj = _make_subject(anat, risk.iloc[i], sub_rng)
        draw_wmh_reading(sub_rng)
        shape, affine, _ = _grid(first, grid, subj.centre, sub_rng)
        ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
        matrix = subj.to_template @ affine
        fraction = _sample(anat, subj, matrix[:3, :3] @ ijk + matrix[:3, 3:])["infarct"].reshape(shape)
        image = nib.Nifti1Image(fraction.astype(np.float32), affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        with atomic_path(out / f"sub-{i + 1:04d}_infarct.nii.gz") as tmp:  # never a half-written mask
            tmp.write_bytes(gzip.compress(image.to_bytes()))
    return out
