"""The ``LOSSES`` registry (timm ``register_model`` / ``create_model`` style).

An entry is an ``nn.Module`` class whose ``forward(logits: (B,), targets: (B,)) -> ()`` returns
a scalar. A class may define ``arguments_from_labels(labels) -> dict``: the constructor
arguments it derives from training-fold labels (positive weight, class counts, prior), so the
caller can compute them per fold with ``loss_arguments`` instead of knowing each loss.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from multimodal.errors import ConfigError

LossEntry = Callable[..., nn.Module]
LOSSES: dict[str, LossEntry] = {}

_Entry = TypeVar("_Entry", bound=LossEntry)


def register_loss(name: str) -> Callable[[_Entry], _Entry]:
    """Decorator storing a loss class (or factory) under ``name``; a duplicate is a ``ValueError``."""

    def decorate(entry: _Entry) -> _Entry:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered; taken: {sorted(LOSSES)}")
        LOSSES[name] = entry
        return entry

    return decorate


def list_losses() -> list[str]:
    """Sorted registered loss names."""
    return sorted(LOSSES)


def _lookup(name: str) -> LossEntry:
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown loss {name!r}{hint} Registered losses: {sorted(LOSSES)}")
    return LOSSES[name]


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name``; ``None`` kwargs are dropped (constructor defaults).

    Raises ``ConfigError`` for an unknown name (listing the registry and the nearest name), an
    unknown or missing argument (naming the loss and the argument), or a value the loss's
    ``__init__`` rejects.
    """
    entry = _lookup(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    # Bind first, so a typo in a config key is reported as such rather than as whatever
    # TypeError the constructor would raise.
    signature = inspect.signature(entry)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = [p for p in signature.parameters if p not in ("args", "kwargs")]
        unknown = [key for key in kwargs if key not in signature.parameters]
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, accepted, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        what = f"unknown argument {', '.join(hints)}" if hints else str(err)
        raise ConfigError(f"loss {name!r}: {what}; it accepts {accepted}") from err
    try:
        return entry(**kwargs)
    except ValueError as err:  # __init__ validation: a value the user set
        raise ConfigError(f"loss {name!r}: {err}") from err


def loss_arguments(name: str, labels: Any) -> dict[str, Any]:
    """Constructor arguments that loss ``name`` derives from training-fold ``labels`` (N,) of 0/1.

    ``{"pos_weight": ...}`` for ``weighted_bce``, ``{"samples_per_class": (n_neg, n_pos)}`` for
    ``class_balanced``, ``{"prior": ...}`` for ``logit_adjusted``, ``{}`` for losses that need
    none. Pass the training fold's labels only. Typical use:
    ``create_loss(name, **{**loss_arguments(name, train_labels), **config_kwargs})``.
    """
    derive = getattr(_lookup(name), "arguments_from_labels", None)
    return {} if derive is None else dict(derive(labels))
