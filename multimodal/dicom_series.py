"""DICOM series as image input: one folder of single-frame slices -> a 3D volume and its world affine.

An image cell may name a folder (a series or a whole study export) instead of a NIfTI file.
``scan_folder`` reads every file's header (no pixels), groups the slices by SeriesInstanceUID and
checks each series' geometry; ``choose_series`` picks the one a cohort's ``series:`` entry names
(by SeriesInstanceUID or SeriesDescription); ``read_series`` loads its voxels (RescaleSlope /
Intercept applied) in the order of the slices' positions along the slice normal, with the world
affine built from ImagePositionPatient, ImageOrientationPatient and PixelSpacing (LPS -> RAS).

Hand-written on pydicom because MONAI's ``PydicomReader`` stacks every file of a folder without
grouping by series, sorts slices by InstanceNumber only and builds a made-up affine for
multi-frame files; ITK takes the first series of a folder with a warning.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.errors import ImageError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_HEADER_TAGS = ["SeriesInstanceUID", "SeriesDescription", "ImagePositionPatient", "ImageOrientationPatient",
                "PixelSpacing", "Rows", "Columns", "NumberOfFrames", "SpacingBetweenSlices", "SliceThickness",
                "InstanceNumber", "SamplesPerPixel"]
TILT_DEGREES = 0.5  # a slice stack this far off the slice normal is a gantry tilt (reported, read sheared)
SPACING_TOLERANCE = 0.01  # relative deviation of one slice step from the median step


@dataclass
class Series:
    """One SeriesInstanceUID of a folder: its slices (sorted along the normal when the geometry
    allows) and what is wrong with it. ``errors`` make it unreadable; ``warnings`` do not."""

    uid: str
    description: str
    files: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, int, int] | None = None  # (columns, rows, slices) of the volume read
    affine: np.ndarray | None = None  # (4, 4) voxel -> world, RAS mm

    @property
    def label(self) -> str:
        return f"{self.uid} ({self.description or 'no SeriesDescription'}, {len(self.files)} file(s))"


@dataclass
class FolderScan:
    """Every series of a folder, plus the files that are not DICOM or cannot be read."""

    folder: str
    series: dict[str, Series]
    unreadable: list[str]  # DICOM files whose header cannot be parsed: "name (reason)"
    not_dicom: int  # other files (notes, thumbnails, DICOMDIR), skipped


def folder_files(folder: str) -> list[str]:
    """Every regular file under ``folder`` (subfolders included, hidden files skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return found


def scan_folder(folder: str) -> FolderScan:
    """Headers of every DICOM file under ``folder`` grouped by SeriesInstanceUID, each series'
    geometry checked (``Series.errors`` / ``warnings``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    unreadable, not_dicom = [], 0
    for path in folder_files(folder):
        if os.path.basename(path).upper() == "DICOMDIR":
            not_dicom += 1
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except InvalidDicomError:
            not_dicom += 1
            continue
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
            unreadable.append(f"{os.path.relpath(path, folder)} ({type(err).__name__})")
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:  # a truncated file parses up to where it stops; no series is no image slice
            unreadable.append(f"{os.path.relpath(path, folder)} (no SeriesInstanceUID: truncated or not an image)")
            continue
        groups[uid].append((path, header))
    series = {uid: _check_series(uid, members) for uid, members in groups.items()}
    return FolderScan(folder, series, unreadable, not_dicom)


def _vector(header: Any, tag: str, size: int) -> np.ndarray | None:
    value = header.get(tag)
    try:
        out = np.array([float(v) for v in value], dtype=float) if value is not None else None
    except (TypeError, ValueError):
        return None
    return out if out is not None and out.shape == (size,) and np.isfinite(out).all() else None


def _check_series(uid: str, members: list[tuple[str, Any]]) -> Series:
    headers = [h for _, h in members]
    out = Series(uid, str(headers[0].get("SeriesDescription", "") or ""), [p for p, _ in members])
    frames = [int(h.get("NumberOfFrames", 1) or 1) for h in headers]
    if max(frames) > 1:
        out.errors.append(f"holds multi-frame file(s) ({max(frames)} frames in one file), whose per-frame geometry "
                          "is not read here; export the series as single-frame slices or convert it with dcm2niix")
        return out
    if any(int(h.get("SamplesPerPixel", 1) or 1) != 1 for h in headers):
        out.errors.append("holds colour (RGB) slices, not MR magnitude images; export the scalar series")
        return out
    orientation = [_vector(h, "ImageOrientationPatient", 6) for h in headers]
    position = [_vector(h, "ImagePositionPatient", 3) for h in headers]
    spacing = [_vector(h, "PixelSpacing", 2) for h in headers]
    if any(v is None for v in orientation + position + spacing):
        out.errors.append("has slices without ImagePositionPatient / ImageOrientationPatient / PixelSpacing, so its "
                          "geometry is unknown; export the original series (not a screenshot or secondary capture)")
        return out
    if np.ptp(np.array(orientation), axis=0).max() > 1e-4:
        distinct = len({tuple(np.round(o, 4)) for o in orientation})
        out.errors.append(f"mixes {distinct} slice orientations (ImageOrientationPatient), e.g. a localizer in the "
                          "series; keep one orientation's slices")
        return out
    sizes = {(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for h in headers}
    if len(sizes) > 1 or np.ptp(np.array(spacing), axis=0).max() > 1e-4:
        out.errors.append(f"mixes slice sizes or pixel spacings ({len(sizes)} sizes); keep one acquisition's slices")
        return out
    row, col = orientation[0][:3], orientation[0][3:]
    normal = np.cross(row, col)
    along = np.array([p @ normal for p in position])
    order = np.argsort(along, kind="stable")
    out.files = [out.files[i] for i in order]
    positions, along = np.array(position)[order], along[order]
    steps = np.diff(along)
    duplicated = int((steps < 1e-3).sum())
    if duplicated:
        out.errors.append(f"has {duplicated} duplicated slice position(s) ({len(along)} files, "
                          f"{len(np.unique(np.round(along, 3)))} positions): several volumes (echoes, time points, "
                          "diffusion directions) or copied files in one series; keep one volume's slices")
        return out
    if len(steps):
        step = float(np.median(steps))
        off = np.abs(steps - step) > SPACING_TOLERANCE * step + 1e-3
        if off.any():
            gaps = steps[off] / step
            if np.allclose(gaps, np.round(gaps), atol=0.05) and (gaps > 1).all():
                missing = int(np.round(gaps).sum() - len(gaps))
                out.errors.append(f"misses {missing} slice(s): the positions along the slice normal jump by "
                                  f"{', '.join(f'{g:.0f}' for g in gaps)}× the {step:.3g} mm spacing; export the "
                                  "complete series")
            else:
                out.errors.append(f"has non-uniform slice spacing ({steps.min():.3g}-{steps.max():.3g} mm between "
                                  "slices); resample it (e.g. dcm2niix) or export a uniformly spaced series")
            return out
        stack = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:  # one slice: its thickness is the only spacing there is
        thickness = headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness") or 1.0
        stack = normal * float(thickness)
    tilt = float(np.degrees(np.arccos(np.clip(abs(stack @ normal) / np.linalg.norm(stack), 0, 1))))
    if tilt > TILT_DEGREES:
        out.warnings.append(f"has a gantry tilt of {tilt:.1f}° (slices stacked off their normal); read with its "
                            "sheared geometry")
    pixel = spacing[0]  # (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * pixel[1], col * pixel[0], stack, positions[0]
    out.affine = _LPS_TO_RAS @ lps
    out.shape = (sizes.pop()[1], int(headers[0].get("Rows")), len(out.files))
    return out


def choose_series(scan: FolderScan, selector: str | None, where: str) -> Series:
    """The series of ``scan`` that ``selector`` (a SeriesInstanceUID or SeriesDescription; None when the
    folder holds one series) names, or an ``ImageError`` starting with ``where`` that lists the series."""
    listing = "; ".join(s.label for s in scan.series.values())
    if not scan.series:
        extra = f" ({len(scan.unreadable)} unreadable: {', '.join(scan.unreadable[:3])})" if scan.unreadable else ""
        raise ImageError(f"{where}: folder {scan.folder} holds no readable DICOM slices{extra}; give a DICOM "
                         "series folder or a NIfTI file")
    if selector is None:
        if len(scan.series) > 1:
            raise ImageError(f"{where}: folder {scan.folder} holds {len(scan.series)} DICOM series: {listing}; pick "
                             "one with series: {sequence: <SeriesDescription or SeriesInstanceUID>} in the cohort config")
        return next(iter(scan.series.values()))
    wanted = str(selector).strip()
    exact = [s for s in scan.series.values() if wanted in (s.uid, s.description)]
    if not exact:  # a description written with other case or spacing, or part of it
        exact = [s for s in scan.series.values() if wanted.casefold() in s.description.casefold()]
    if len(exact) != 1:
        raise ImageError(f"{where}: series {wanted!r} matches {len(exact)} of the DICOM series in {scan.folder} "
                         f"({listing}); name exactly one by its SeriesDescription or SeriesInstanceUID")
    return exact[0]


def series_problem(series: Series, scan: FolderScan) -> str | None:
    """Why the chosen series cannot be read (its first error, or unreadable files beside it), or None."""
    if scan.unreadable:  # first: a broken file also shows as a missing slice
        return (f"holds {len(scan.unreadable)} unreadable DICOM file(s) ({', '.join(scan.unreadable[:3])}); "
                "re-export the series or remove the broken files")
    if series.errors:
        return f"series {series.label} {series.errors[0]}"
    return None


def read_series(folder: str, selector: str | None, where: str,
                scan: FolderScan | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The chosen series of ``folder`` as ``(X, Y, Z)`` float64 voxels (X along the rows' direction,
    Z along the slice normal; RescaleSlope / Intercept applied) and its ``(4, 4)`` RAS affine.
    Anything that keeps it from being read right is an ``ImageError`` starting with ``where``.
    ``scan``: the folder's ``scan_folder`` result when the caller has it (headers are not read twice)."""
    import pydicom

    scan = scan or scan_folder(folder)
    series = choose_series(scan, selector, where)
    problem = series_problem(series, scan)
    if problem is not None:
        raise ImageError(f"{where}: {folder} {problem}")
    slices = []
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float64)
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, NotImplementedError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ImageError(f"{where}: cannot read the pixels of {path} ({first_line}); export the series "
                             "uncompressed (e.g. dcmdjpeg / gdcmconv --raw) or convert it with dcm2niix") from err
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        slices.append((pixels * slope + intercept).T)  # (Rows, Columns) -> (columns, rows)
    return np.stack(slices, axis=-1), series.affine


def is_series_folder(path: str | Path) -> bool:
    """True when an image cell names a folder (read as a DICOM series) rather than a file."""
    return os.path.isdir(path)
