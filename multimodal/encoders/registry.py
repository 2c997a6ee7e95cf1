"""The encoder registry: names → entry functions, each registered for the modality it reads.

timm's ``register_model`` / ``create_model`` pattern: an encoder file decorates its entry functions
with ``@register_encoder(name, modality=...)``; a config names one (``model.encoders.image.name:
resnet3d_10``) and ``create_encoder`` builds it, optionally loading local weights. Modalities are
open: a new one (report text, ...) registers its encoders under its own name. Nothing is ever
downloaded.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from multimodal.checkpoint import load_into
from multimodal.errors import ConfigError, StrokeSSLError
from multimodal.registry import Registry

EntryFn = Callable[..., nn.Module]
ENCODERS = Registry("encoder")
_MODALITY: dict[str, str] = {}  # encoder name -> the modality it reads ("image", "table", ...)
NORMS = ("group", "batch", "instance")
_MAX_GROUPS = 16  # GroupNorm groups: the largest divisor of the channel count up to 16


def register_encoder(name: str, modality: str = "image") -> Callable[[EntryFn], EntryFn]:
    """Decorator storing an entry function under ``name`` for ``modality``; a duplicate name is a
    ``ValueError``."""
    if not modality or not modality.isidentifier():
        raise ValueError(f"modality {modality!r} must be a non-empty identifier (it names batch keys)")

    def decorate(entry: EntryFn) -> EntryFn:
        ENCODERS.register(name)(entry)
        _MODALITY[name] = modality
        return entry

    return decorate


def encoder_modality(name: str) -> str:
    """The modality the encoder registered as ``name`` reads (unknown name: ``ConfigError``)."""
    ENCODERS.lookup(name)
    return _MODALITY[name]


def list_encoders(modality: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those reading ``modality``."""
    if modality is not None and modality not in _MODALITY.values():
        raise ConfigError(f"no encoder is registered for modality {modality!r}; modalities with encoders: "
                          f"{sorted(set(_MODALITY.values()))}")
    return sorted(name for name in ENCODERS if modality is None or _MODALITY[name] == modality)


def create_encoder(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name``; ``None`` kwargs are dropped (config defaults).

    ``weights`` is a local ``.safetensors`` / tensors-only ``.pt`` file loaded strictly.
    Raises ``ConfigError`` for an unknown name or argument, ``StrokeSSLError`` for weights that
    do not fit.
    """
    entry = ENCODERS.lookup(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    try:
        model = entry(**kwargs)
    except TypeError as err:
        # Only a bad or missing keyword is the user's; another TypeError inside a model is a bug.
        if "argument" not in str(err):
            raise
        raise ConfigError(
            f"encoder {name!r} does not accept these arguments ({err}); given {sorted(kwargs)}"
        ) from err
    if weights is not None:
        try:
            load_into(model, weights)
        except RuntimeError as err:  # load_state_dict's answer to a tensor shape mismatch
            raise StrokeSSLError(
                f"weights file {weights} does not fit encoder {name!r} with {kwargs}: {err}; "
                "use the name and arguments the weights were trained with"
            ) from err
    return model


def check_norm(norm: str) -> None:
    """``norm`` must be one of ``NORMS`` (a ``ConfigError`` suggesting the nearest otherwise)."""
    if norm not in NORMS:
        close = difflib.get_close_matches(norm, NORMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"norm {norm!r} is not one of {NORMS}{hint}")


def num_groups(channels: int) -> int:
    """GroupNorm groups for ``channels``: the largest divisor up to 16."""
    return math.gcd(channels, _MAX_GROUPS)
