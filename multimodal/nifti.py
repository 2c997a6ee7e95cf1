"""Reading one NIfTI sequence safely: the file, its geometry and its voxels are checked first.

``load_sequence`` gives a ``(1, X, Y, Z)`` float32 MetaTensor or an ``ImageError`` naming the
subject, sequence and file with what to do: unreadable or truncated files, non-3D data, a 4D file
without (or with an out-of-range) ``volume_index``, no usable geometry (``header_problem``: qform
and sform codes 0, a degenerate affine or zero voxel size), NaN or infinite voxels.
``multimodal.validate`` runs ``header_problem`` on every file up front.
"""

from __future__ import annotations

import zlib
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import LoadImage

from multimodal.errors import ImageError

# What nibabel / zlib / MONAI raise on a missing, truncated or non-NIfTI file.
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zlib.error)


def is_missing(path: Any) -> bool:
    """True for an empty image cell (None or blank)."""
    return path is None or (isinstance(path, str) and not path.strip())


def header_problem(header: Any, affine: np.ndarray) -> str | None:
    """What makes a NIfTI's voxel-to-world mapping unusable, or None: no qform or sform (codes 0,
    so readers guess an orientation) or a degenerate or non-finite affine / zero voxel size."""
    codes = (int(header.get("qform_code", 1)), int(header.get("sform_code", 1)))
    linear = np.asarray(affine, dtype=float)[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-9:
        return "has a degenerate affine (zero or non-finite voxel size); re-export it (e.g. dcm2niix) with its geometry"
    if codes == (0, 0):
        return ("has no orientation (qform and sform codes are 0), so its position and axes would be guessed; "
                "re-export it (e.g. dcm2niix) or set its sform")
    return None


def load_sequence(subject: str, sequence: str, path: str, volume: int | None) -> MetaTensor:
    """One NIfTI as a (1, X, Y, Z) float32 MetaTensor (native byte order) with its affine."""
    # dtype=float32 converts big-endian and integer data to native float32, which torch needs.
    loader = LoadImage(reader=NibabelReader(), image_only=True, dtype=np.float32, ensure_channel_first=True)
    try:
        img = loader(path)
    except _READ_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageError(
            f"subject {subject!r}, sequence {sequence!r}: cannot read {path} ({first_line}); "
            "check the file is a complete 3D NIfTI (.nii / .nii.gz) or fix its path in the cohort CSV"
        ) from err
    if img.ndim != 4:
        raise ImageError(
            f"subject {subject!r}, sequence {sequence!r}: {path} has shape {tuple(img.shape)}, "
            "not a 3D volume; give a 3D NIfTI"
        )
    header = nib.load(path)  # the header only (the data were read above)
    problem = header_problem(header.header, header.affine)
    if problem is not None:
        raise ImageError(f"subject {subject!r}, sequence {sequence!r}: {path} {problem}")
    finite = torch.isfinite(img.as_tensor())
    if not finite.all():
        raise ImageError(f"subject {subject!r}, sequence {sequence!r}: {path} holds {int((~finite).sum())} NaN or "
                         "infinite voxels; fix the export (or replace them by 0) before using it")
    n_volumes = img.shape[0]
    if volume is None:
        if n_volumes > 1:
            raise ImageError(
                f"subject {subject!r}, sequence {sequence!r}: {path} is 4D with {n_volumes} volumes; "
                f"name the one to use with volume_index: {{{sequence}: N}} in the cohort config"
            )
        return img
    if not 0 <= volume < n_volumes:
        raise ImageError(
            f"subject {subject!r}, sequence {sequence!r}: volume_index {volume} is out of range for "
            f"{path}, which has {n_volumes} volume(s); use 0..{n_volumes - 1}"
        )
    return img[volume : volume + 1]
