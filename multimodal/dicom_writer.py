"""Writing a DICOM MR series from a volume and its RAS affine (pydicom): ``strokessl synth --dicom``
and the DICOM reader's tests. One single-frame file per slice, as scanners export them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_series(folder: Path, volume: np.ndarray, affine: np.ndarray, description: str = "AX FLAIR",
                 uid: str | None = None, names: list[str] | None = None, slope: float | None = 0.5,
                 intercept: float | None = -100.0, patient_id: str = "anon") -> list[Path]:
    """One file per slice along the volume's last axis: pixel (row r, column c) of slice k is voxel
    (c, r, k), ImagePositionPatient the world point of (0, 0, k) (DICOM's LPS), stored as int16 with
    ``RescaleSlope`` / ``RescaleIntercept`` (None: chosen so the volume's range fills int16).
    ``names``: file names (default ``slice_###.dcm``).
    Columns 0 and 1 of ``affine`` must be orthogonal (DICOM rows and columns are)."""
    folder.mkdir(parents=True, exist_ok=True)
    low, high = float(np.min(volume)), float(np.max(volume))
    intercept = low if intercept is None else intercept
    slope = (max(high - intercept, 1e-6) / 32000.0) if slope is None else slope
    lps = RAS_TO_LPS @ affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # voxel axis 0 runs along a row (column index)
    uid = uid or generate_uid()
    paths = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID = "MR", patient_id, "1.2.3"
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.InstanceNumber = uid, description, volume.shape[2] - k
        ds.ImageOrientationPatient = [*(col_step / np.linalg.norm(col_step)), *(row_step / np.linalg.norm(row_step))]
        ds.ImagePositionPatient = list(lps[:3, 3] + lps[:3, 2] * k)
        ds.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        pixels = np.round((volume[:, :, k].T - intercept) / slope).astype("<i2")  # (rows, columns)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.tobytes()
        path = folder / (names[k] if names else f"slice_{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

