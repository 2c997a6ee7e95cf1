"""Reading one NIfTI sequence safely: the file, its geometry and its voxels are checked first.

``read_header`` opens a file's header (no voxels) and refuses what cannot be read right: a folder,
a gzip / suffix mismatch, a format without trustworthy orientation (Analyze ``.hdr/.img``, read
by nibabel as LAS whatever the scanner did), complex, RGB or other non-scalar voxel types, a
grid too large to allocate, and no usable geometry (``header_problem``). ``field_of_view_problem``
says when a file's field of view cannot hold a head (a single slice, a few millimetres, a metre),
``overlap`` how much two fields of view share. ``load_sequence`` gives a ``(1, X, Y, Z)`` float32
MetaTensor or an ``ImageError`` naming the subject, sequence and file with what to do.
``multimodal.validate`` runs the same header checks on every file up front.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import LoadImage
from nibabel.filebasedimages import ImageFileError

from multimodal.dicom_series import is_series_folder, read_series
from multimodal.errors import ImageError

# What nibabel / zlib / gzip / MONAI raise on a missing, truncated or non-NIfTI file.
READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zlib.error, gzip.BadGzipFile, ImageFileError)
_GZIP_MAGIC = b"\x1f\x8b"
# The first field of an uncompressed NIfTI-1 / NIfTI-2 header (sizeof_hdr 348 / 540), either byte order.
_NIFTI_HEADER_SIZES = {n.to_bytes(4, order) for n in (348, 540) for order in ("little", "big")}
_NIFTI = (nib.Nifti1Image, nib.Nifti1Pair, nib.Nifti2Image, nib.Nifti2Pair)
# A header claiming more voxels than this (4 GiB as float32) is refused before anything is allocated.
MAX_VOXELS = 2**30
# A sequence whose field of view shares less than this with the first sequence's lies elsewhere
# (a wrong affine, another patient position): resampled onto the first grid it would be empty.
MIN_FOV_OVERLAP = 0.5
_SCALAR = "export it as a scalar 3D NIfTI (one real value per voxel, e.g. the magnitude image)"


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


def _compression_problem(path: str) -> str | None:
    """A ``.nii.gz`` that is an uncompressed NIfTI or a ``.nii`` that is gzip-compressed (nibabel
    picks the codec by the suffix, so either would be "unreadable")."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    compressed = start[:2] == _GZIP_MAGIC
    if path.lower().endswith(".gz") and not compressed and start in _NIFTI_HEADER_SIZES:
        return f"is named {os.path.basename(path)} but is not gzip-compressed; rename it to end in .nii"
    if path.lower().endswith(".nii") and compressed:
        return f"is gzip-compressed but named {os.path.basename(path)}; rename it to end in .nii.gz"
    return None


def read_header(path: str) -> Any:
    """The nibabel image of ``path`` (header read, voxels not loaded), or an ``ImageError`` that
    starts with the path and says why it cannot be used and what to do."""
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not a NIfTI file; give the path of the .nii / .nii.gz file")
    try:
        problem = _compression_problem(path)
        image = None if problem else nib.load(path)
    except READ_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImageError(f"{path} is unreadable ({first_line}); re-export it as a complete 3D NIfTI (.nii / .nii.gz) "
                         "or fix its path in the cohort CSV") from err
    if problem is None and not isinstance(image, _NIFTI):
        kind = type(image).__name__.replace("Image", "")
        problem = (f"is {'an Analyze 7.5 .hdr/.img pair' if 'Analyze' in kind else f'a {kind} file'}, which "
                   "has no trustworthy orientation (its left and right would be guessed); convert the original "
                   "(e.g. the DICOM, with dcm2niix) to NIfTI")
    if problem is None:
        dtype = image.get_data_dtype()
        if dtype.fields is not None or dtype.kind not in "biuf":
            problem = f"holds {'RGB / structured' if dtype.fields else dtype.name} voxels; {_SCALAR}"
        elif int(np.prod(image.shape, dtype=np.int64)) > MAX_VOXELS:
            problem = (f"claims a grid of {' x '.join(map(str, image.shape))} voxels, more than {MAX_VOXELS:,}; "
                       "the header is damaged or the file is not one MRI volume: re-export it")
        else:
            problem = header_problem(image.header, image.affine)
    if problem is not None:
        raise ImageError(f"{path} {problem}")
    return image


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """(3,) mm per voxel along each voxel axis."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def field_of_view_problem(shape: Sequence[int], affine: np.ndarray, extent_mm: Sequence[float]) -> str | None:
    """Why a 3D grid cannot hold a head, or None: a single slice, or a field of view (voxels x voxel
    size along each axis) outside ``extent_mm`` = (min, max) mm (the cohort's ``head_extent_mm``)."""
    shape = [int(n) for n in shape[:3]]
    if min(shape) < 2:
        return (f"is a single slice ({' x '.join(map(str, shape))} voxels), not a 3D volume; export the whole "
                "volume as one 3D NIfTI")
    sizes = voxel_sizes(affine)
    fov = np.array(shape) * sizes
    shown = " x ".join(f"{v:.0f}" for v in fov)
    low, high = extent_mm
    if fov.min() < low:
        return (f"covers only {shown} mm (voxels {' x '.join(f'{v:.3g}' for v in sizes)} mm), less than a head "
                f"(head_extent_mm: at least {low:g} mm along every axis); give the whole-head volume, or lower "
                "head_extent_mm in the cohort config if these are not human heads")
    if fov.max() > high:
        return (f"covers {shown} mm (voxels {' x '.join(f'{v:.3g}' for v in sizes)} mm), more than any head "
                f"(head_extent_mm: at most {high:g} mm); check its voxel size in the header")
    return None


def world_box(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """(2, 3) world (mm) bounding box, lower and upper corner, of a grid's voxels (their outer faces)."""
    corners = np.array(np.meshgrid(*[(-0.5, int(n) - 0.5) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    world = np.asarray(affine, dtype=float)[:3, :3] @ corners + np.asarray(affine, dtype=float)[:3, 3:]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def overlap(box: np.ndarray, reference: np.ndarray) -> float:
    """Share of the smaller of two world boxes that lies inside the other (0: disjoint, 1: nested)."""
    sides = np.clip(np.minimum(box[1], reference[1]) - np.maximum(box[0], reference[0]), 0, None)
    smaller = min(np.prod(box[1] - box[0]), np.prod(reference[1] - reference[0]))
    return float(np.prod(sides) / smaller) if smaller > 0 else 0.0


def load_sequence(subject: str, sequence: str, path: str, volume: int | None, series: str | None = None) -> MetaTensor:
    """One NIfTI, or the DICOM series of a folder (``series``: which one, ``multimodal.dicom_series``),
    as a (1, X, Y, Z) float32 MetaTensor (native byte order) with its RAS affine.

    Intensities are divided by their largest magnitude, computed in float64: the per-channel
    z-score later makes the scale irrelevant, and this way any unit (a FLAIR near the float32
    maximum, an ADC map in m²/s) reaches float32 resampling without overflow or underflow.
    """
    def refuse(message: str) -> ImageError:
        return ImageError(f"subject {subject!r}, sequence {sequence!r}: {message}")

    if is_series_folder(path):
        voxels, affine = read_series(path, series, f"subject {subject!r}, sequence {sequence!r}")
        img = MetaTensor(torch.from_numpy(voxels)[None], affine=torch.from_numpy(affine),
                         meta={"filename_or_obj": path, "original_affine": affine})
        return _scaled(img, path, refuse)
    try:
        shape = tuple(int(n) for n in read_header(path).shape)
    except ImageError as err:
        raise refuse(str(err)) from err
    if len(shape) < 3 or len(shape) > 4:
        raise refuse(f"{path} has shape {shape}, not a 3D volume; give a 3D NIfTI")
    n_volumes = shape[3] if len(shape) == 4 else 1
    if volume is None and n_volumes > 1:
        raise refuse(f"{path} is 4D with {n_volumes} volumes; name the one to use with "
                     f"volume_index: {{{sequence}: N}} in the cohort config")
    if volume is not None and not 0 <= volume < n_volumes:
        raise refuse(f"volume_index {volume} is out of range for {path}, which has {n_volumes} volume(s); "
                     f"use 0..{n_volumes - 1}")
    try:
        img = _nifti_loader()(path)
    except READ_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise refuse(f"cannot read {path} ({first_line}); check the file is a complete 3D NIfTI (.nii / .nii.gz) "
                     "or fix its path in the cohort CSV") from err
    if volume is not None:
        img = img[volume : volume + 1]
    return _scaled(img, path, refuse)


@lru_cache(maxsize=1)
def _nifti_loader() -> LoadImage:
    """MONAI's loader with nibabel, built once: ``LoadImage`` also builds every default reader, and with
    pydicom installed MONAI's NvImgCodec DICOM reader warns on each construction that its GPU plugin is
    absent (it is never used here). float64: integer and big-endian data convert exactly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
        return LoadImage(reader=NibabelReader(), image_only=True, dtype=np.float64, ensure_channel_first=True)


def _scaled(img: MetaTensor, path: str, refuse: Any) -> MetaTensor:
    """``img`` (float64) divided by its largest magnitude, as float32; non-finite voxels refused."""
    values = img.as_tensor()
    finite = torch.isfinite(values)
    if not finite.all():
        raise refuse(f"{path} holds {int((~finite).sum())} NaN or infinite voxels; fix the export (or replace them "
                     "by 0) before using it")
    peak = float(values.abs().max())
    return (img / peak if peak > 0 else img).to(torch.float32)
