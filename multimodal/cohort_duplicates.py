"""Duplicated cohort rows that a table check cannot see as repeated ids: ids that differ only in
letter case, and image cells that name one file for two subjects or two sequences."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.config import CohortConfig
from multimodal.problems import Problem


def case_duplicate_problems(config: CohortConfig, ids: list[str], lines: np.ndarray) -> list[Problem]:
    """Ids that differ only in letter case (``S01``, ``s01``) are one subject entered twice, as far as
    anyone can tell: split across folds, its two rows would leak."""
    first: dict[str, tuple[str, int]] = {}
    problems = []
    for subject, line in zip(ids, lines, strict=True):
        other, other_line = first.setdefault(str(subject).casefold(), (subject, line))
        if other != subject:
            problems.append(Problem(f"id differs from {other!r} (row {other_line}) only in letter case (row {line}): "
                                    "the same subject twice? make the ids unique beyond letter case",
                                    subject=str(subject), column=config.id))
    return problems


def file_key(path: Path) -> Any:
    """What makes two paths one file: the device and inode where it exists (symlinks, hard links,
    ``..``), else the resolved path."""
    try:
        stat = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (stat.st_dev, stat.st_ino)


def shared_image_problems(config: CohortConfig, image_paths: dict[str, dict[str, Path | None]]) -> list[Problem]:
    """One problem per image cell that names a file another cell already names: two subjects with one
    scan (a copied row: the scan would sit in a training and a test fold at once) or two sequences of
    one subject reading the same file (two copies of one channel)."""
    owner: dict[Any, tuple[str, str]] = {}
    problems = []
    for subject, paths in image_paths.items():
        for sequence, path in paths.items():
            if path is None:
                continue
            # a DICOM study folder holds one series per sequence: the folder and the chosen series identify a scan
            key = (file_key(path), config.series.get(sequence)) if path.is_dir() else file_key(path)
            first_subject, first_sequence = owner.setdefault(key, (subject, sequence))
            if (first_subject, first_sequence) == (subject, sequence):
                continue
            if first_subject == subject:
                message = (f"the {sequence} and {first_sequence} cells name the same file {path.name}; each "
                           "sequence needs its own file")
            else:
                message = (f"{sequence} file {path.name} is also subject {first_subject}'s {first_sequence} image: "
                           "one scan for two subjects would sit in training and test folds at once; give each "
                           "subject its own scan, or remove the repeated row")
            problems.append(Problem(message, subject=subject, column=config.images[sequence]))
    return problems
