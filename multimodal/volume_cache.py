"""The disk cache of preprocessed volumes: one ``<cache_dir>/<key>.safetensors`` per subject.

``VolumeCache`` owns the key (what a cached volume depends on: each file's content and the
settings), reading an entry (an unusable one is rebuilt), building missing ones in DataLoader
workers (``warm``) and saying whether a subject has an image modality under its missing-image
policy (``has_image``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from multimodal.checkpoint import atomic_path, make_folder
from multimodal.config import (
    CACHE_DTYPES,
    HEAD_EXTENT_MM,
    MISSING_IMAGE_POLICIES,
    ImagingConfig,
)
from multimodal.config_checks import check_choice
from multimodal.dicom_series import folder_files
from multimodal.errors import ImageError, StrokeSSLError
from multimodal.file_digest import FileDigests, file_identity
from multimodal.imaging import preprocess_subject
from multimodal.nifti import is_missing

logger = logging.getLogger(__name__)

CACHE_KEYS = ("image", "head_mask", "modality_mask", "affine")


class VolumeCache:
    """Preprocessed volumes on disk, one ``<cache_dir>/<key>.safetensors`` per subject.

    The key hashes each sequence's absolute path, size, mtime_ns and the SHA-256 of its bytes
    (``FileDigests``: hashed once per file version and process), the imaging settings that change
    preprocessing (not augmentation), the missing-image policy, the volume indices, the head
    extent bounds and the strokessl and MONAI versions, so a replaced file (even one whose size
    and modification time were kept) or a changed setting never reuses a stale entry. The source
    files are checked once per cache object, i.e. once per run (``warm`` keys every subject first):
    later ``key`` / ``load`` calls of the same subject reuse that key, so a training epoch neither
    stats nor opens a source file (a network drive is read once per run, not once per subject and
    epoch), and a file replaced between runs is noticed by the next run. An entry that is unreadable,
    of the wrong shape or non-finite is rebuilt with a warning. ``built`` / ``hits`` count builds and
    cache hits in this process.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        imaging: ImagingConfig,
        sequences: Sequence[str],
        missing_images: str = "error",
        volume_index: dict[str, int] | None = None,
        dtype: str = "float32",
        head_extent_mm: tuple[float, float] = HEAD_EXTENT_MM,
        series: dict[str, str] | None = None,
    ) -> None:
        check_choice("missing_images", missing_images, MISSING_IMAGE_POLICIES)
        check_choice("data.cache_dtype", dtype, CACHE_DTYPES)
        if not sequences:
            raise ValueError("sequences is empty; name at least one MRI sequence")
        self.cache_dir = Path(cache_dir)
        self.imaging = imaging
        self.sequences = list(sequences)
        self.missing_images = missing_images
        self.volume_index = {s: int(v) for s, v in (volume_index or {}).items() if s in self.sequences}
        self.dtype = dtype
        self.head_extent_mm = (float(head_extent_mm[0]), float(head_extent_mm[1]))
        self.series = {s: str(v) for s, v in (series or {}).items() if s in self.sequences}
        self.built = 0
        self.hits = 0
        self.digests = FileDigests()
        self._masks: dict[str, list[float]] = {}  # key -> the entry's modality mask (what is present)
        # (subject, its sequence cells) -> key, computed once per run; workers inherit it with the object
        self._keys: dict[tuple[Any, ...], str] = {}

    def key(self, record: dict[str, Any]) -> str:
        """sha256 hex digest identifying this subject's preprocessed volume (its files checked on the
        first call for this subject and these cells, then remembered for the run)."""
        memo = (record["subject_id"], *(str(record["image"].get(s)) for s in self.sequences))
        if memo not in self._keys:
            self._keys[memo] = self._compute_key(record)
        return self._keys[memo]

    def _compute_key(self, record: dict[str, Any]) -> str:
        files = []
        for sequence in self.sequences:
            path = record["image"].get(sequence)
            if is_missing(path):
                files.append([sequence, None])
                continue
            try:
                identity = file_identity(path)
                # a DICOM folder: every file under it (a changed, added or removed slice is a new entry)
                digest = (self._folder_digest(identity.path) if os.path.isdir(identity.path)
                          else self.digests.digest(identity))
            except OSError as err:
                raise ImageError(
                    f"subject {record['subject_id']!r}, sequence {sequence!r}: {os.path.abspath(path)} cannot be "
                    f"opened ({err.strerror}); fix the path in the cohort CSV"
                ) from err
            files.append([sequence, identity.path, identity.size, identity.mtime_ns, digest])
        settings = {
            "files": files,
            "spacing": list(self.imaging.spacing),
            "spatial_size": list(self.imaging.spatial_size),
            "orientation": self.imaging.orientation,
            "head_margin_mm": self.imaging.head_margin_mm,
            # each policy its own entries: drop_modality and zero cache subjects whose image error refuses
            "missing_images": self.missing_images,
            "volume_index": sorted(self.volume_index.items()),
            **({"series": sorted(self.series.items())} if self.series else {}),  # old keys stay valid
            "head_extent_mm": list(self.head_extent_mm),
            "dtype": self.dtype,  # so switching to float16 really shrinks the cache
            "strokessl": importlib.metadata.version("strokessl"),
            "monai": monai.__version__,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def _folder_digest(self, folder: str) -> str:
        """SHA-256 over the relative path and content digest of every file under ``folder``."""
        listing = [[os.path.relpath(f, folder), self.digests.digest(file_identity(f))] for f in folder_files(folder)]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def has_image(self, record: dict[str, Any]) -> bool:
        """False for a subject whose image modality is absent under the policy: ``drop_modality``: a
        sequence is missing or unusable; ``zero``: every sequence is. Under those policies the
        subject's entry (built if needed) says which sequences preprocessing found usable."""
        if not self._files_allow_image(record):
            return False
        if self.missing_images not in ("zero", "drop_modality"):
            return True  # error / drop: an unusable sequence is refused in preprocessing
        key = self.key(record)
        if key not in self._masks:
            self._entry(record, key)
        return any(self._masks[key])

    def path(self, record: dict[str, Any]) -> Path:
        """Where this subject's entry lives: ``<cache_dir>/<key>.safetensors``."""
        return self.cache_dir / f"{self.key(record)}.safetensors"

    def _read(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The cached tensors, or None (with a warning) when the entry is unusable."""
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            logger.warning("cache entry %s is unreadable (%s); rebuilding it", path, err)
            return None
        channels, size = len(self.sequences), tuple(self.imaging.spatial_size)
        expected = {"image": (channels, *size), "head_mask": size, "modality_mask": (channels,), "affine": (4, 4)}
        if set(tensors) != set(CACHE_KEYS) or any(tuple(tensors[k].shape) != v for k, v in expected.items()):
            logger.warning("cache entry %s does not hold a %s volume; rebuilding it", path, expected["image"])
            return None
        tensors["image"] = tensors["image"].float()
        if not all(torch.isfinite(t.double()).all() for t in tensors.values()):
            logger.warning("cache entry %s holds NaN or infinite values; rebuilding it", path)
            return None
        return tensors

    def _peek(self, path: Path) -> list[float] | None:
        """The entry's modality mask when its header holds the expected tensors (the voxels are not
        read: ``load`` checks them, and rebuilds a damaged entry, when training reads it); else None."""
        channels, size = len(self.sequences), tuple(self.imaging.spatial_size)
        expected = {"image": (channels, *size), "head_mask": size, "modality_mask": (channels,), "affine": (4, 4)}
        try:
            with safe_open(str(path), framework="pt") as entry:
                if set(entry.keys()) != set(CACHE_KEYS) or any(
                        tuple(entry.get_slice(k).get_shape()) != v for k, v in expected.items()):
                    return None
                mask = entry.get_tensor("modality_mask")
        except (SafetensorError, OSError, ValueError):
            return None
        return mask.tolist() if bool(torch.isfinite(mask).all()) else None

    def _entry(self, record: dict[str, Any], key: str) -> tuple[str, list[float]]:
        """``("hit" | "built", modality mask)``: an existing entry is checked by its header alone
        (warming a cache of N subjects reads N headers, not N volumes), a missing or malformed one built."""
        path = self.cache_dir / f"{key}.safetensors"
        mask = self._peek(path) if path.is_file() else None
        if mask is not None:
            self._masks[key] = mask
            return "hit", mask
        status, tensors = self._ensure(record, key)
        return status, tensors["modality_mask"].tolist()

    def _ensure(self, record: dict[str, Any], key: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
        key = key or self.key(record)
        path = self.cache_dir / f"{key}.safetensors"
        tensors = self._read(path) if path.is_file() else None
        status = "hit"
        if tensors is None:
            status = "built"
            tensors = preprocess_subject(record, self.imaging, self.sequences, self.missing_images,
                                         self.volume_index, self.head_extent_mm, self.series)
            stored = dict(tensors, image=tensors["image"].to(getattr(torch, self.dtype)))
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
            logger.debug("cached %s", path.name)  # no subject id: logs hold none
        self._masks[key] = tensors["modality_mask"].tolist()
        return status, tensors

    def load(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The subject's volume, built and cached first if needed.

        Returns ``image`` (C, H, W, D) float32, ``head_mask`` (H, W, D) uint8,
        ``modality_mask`` (C,) float32 and ``affine`` (4, 4) float64.
        """
        status, tensors = self._ensure(record)
        if status == "hit":
            self.hits += 1
        else:
            self.built += 1
        return tensors

    def warm(self, records: Sequence[dict[str, Any]], workers: int = 0) -> dict[str, int]:
        """Build every missing entry (``workers`` processes) and return ``{"built", "hit"}``.

        Errors from several subjects are collected and raised together as one ``ImageError``.
        The files are hashed here, in this process, so the workers and every later dataset
        reuse the digests.
        """
        make_folder(self.cache_dir)  # a file in the way: one line now, not one per subject
        records = [r for r in records if self._files_allow_image(r)]
        keys = [self.key(r) for r in records]
        loader = DataLoader(
            _WarmDataset(self, records, keys), batch_size=None, num_workers=workers, collate_fn=_identity
        )
        counts = {"built": 0, "hit": 0}
        errors = []
        for key, (status, message, mask) in tqdm(zip(keys, loader, strict=True), total=len(records),
                                                 desc="caching volumes", unit="subject"):
            if status == "error":
                errors.append(message)
            else:
                counts[status] += 1
                self._masks[key] = mask
        self.built += counts["built"]
        self.hits += counts["hit"]
        if errors:
            shown = " | ".join(errors[:3]) + (f" | and {len(errors) - 3} more" if len(errors) > 3 else "")
            raise ImageError(f"{len(errors)} subject(s) could not be preprocessed: {shown}")
        return counts

    def _files_allow_image(self, record: dict[str, Any]) -> bool:
        """The policy on the cells alone: ``drop_modality`` needs every file, ``zero`` one; ``error``
        and ``drop`` go on to preprocessing (which refuses a missing file)."""
        present = [not is_missing(record["image"].get(s)) for s in self.sequences]
        if self.missing_images == "drop_modality":
            return all(present)
        return any(present) if self.missing_images == "zero" else True


def _identity(item: Any) -> Any:
    return item


class _WarmDataset(Dataset):
    """Builds one cache entry per item, so ``warm`` can use DataLoader worker processes."""

    def __init__(self, cache: VolumeCache, records: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
        self.cache, self.records, self.keys = cache, records, keys

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[str, str, list[float]]:
        try:
            status, mask = self.cache._entry(self.records[index], self.keys[index])
        except StrokeSSLError as err:  # an unusable image, or a cache write the disk refused
            return "error", str(err), []
        return status, "", mask
