"""Atomic file writes and safe weight loading.

Every file a run writes goes through a temp file in the same folder and ``os.replace``, so a
killed process never leaves a half-written file under the final name (open_clip ``main.py``).
Weights are ``.safetensors``; other tensors load with ``torch.load(weights_only=True)`` only,
which refuses pickled code (timm ``_helpers.py``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from multimodal.errors import StrokeSSLError

# Wrappers that prefix parameter names: DistributedDataParallel, torch.compile, Lightning.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# What to do when the file system refuses a write (full disk, quota, permissions, read-only mount).
_WRITE_ADVICE = {errno.ENOSPC: "free disk space there", errno.EDQUOT: "free space within your disk quota there",
                 errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable",
                 errno.EROFS: "choose a folder on a writable file system"}


def _refusal(path: Path, err: OSError) -> StrokeSSLError:
    return StrokeSSLError(f"cannot write {path} ({err.strerror}): {_WRITE_ADVICE[err.errno]} "
                          f"({path.parent}) and run the command again (--resume continues a run)")


@contextlib.contextmanager
def refused_writes(path: str | Path) -> Iterator[None]:
    """A write to ``path`` the file system refuses (full disk, quota, permissions, read-only) becomes one
    ``StrokeSSLError`` saying what to free or fix; any other ``OSError`` passes unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno not in _WRITE_ADVICE:
            raise
        raise _refusal(Path(path), err) from err


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` that answers a refusal (permissions, full disk, read-only) like ``atomic_path``, and a
    file in the way with its name."""
    path = Path(path)
    try:
        with refused_writes(path):
            path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:  # the folder, or one above it, is a file
        file = next((p for p in (path, *path.parents) if p.is_file()), path)
        raise StrokeSSLError(f"cannot make the folder {path}: {file} is a file; give a folder path") from err
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``. A write the file
    system refuses (full disk, no permission) is a ``StrokeSSLError`` saying what to free or fix;
    the temp file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    tmp_path: Path | None = None
    make_folder(path.parent)
    try:
        with refused_writes(path):
            handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(handle)
            tmp_path = Path(tmp)
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or ±inf float replaced by None: ``json.dumps`` would write bare
    ``NaN``, which R's, JavaScript's and most other JSON parsers refuse."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def atomic_write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented, strict JSON (``strict_json``: NaN and ±inf as null), written atomically."""
    atomic_write_text(path, json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n")


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save a state dict as ``.safetensors`` atomically (tensors made contiguous, shared storage split)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path: str | Path, strip_prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> dict[str, torch.Tensor]:
    """Load a state dict from a local ``.safetensors`` or a tensors-only ``.pt``/``.pth`` file.

    Prefixes left by wrappers (``module.``, ``_orig_mod.``) are stripped. A ``.pt`` holding a
    dict with ``state_dict`` / ``model`` is unwrapped. Nothing is ever downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise StrokeSSLError(f"weights file {path} does not exist; give a local file path")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own untyped errors on corrupt headers
            raise StrokeSSLError(f"weights file {path} is not a readable safetensors file: {err}") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise StrokeSSLError(
                f"weights file {path} could not be loaded with weights_only=True ({err}); "
                "convert it to .safetensors, we never unpickle code"
            ) from err
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise StrokeSSLError(f"weights file {path} does not hold a state dict of tensors")
    stripped = {}
    for key, value in state.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def load_into(module: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load local weights into ``module``; a mismatch names the missing and unexpected keys."""
    state = load_weights(path)
    result = module.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise StrokeSSLError(
            f"weights file {path} does not match {type(module).__name__}: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}; "
            "check the encoder name and arguments match the ones the weights were trained with"
        )
