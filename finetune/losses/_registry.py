"""The ``LOSSES`` registry (timm ``register_model`` / ``create_model`` style).

An entry is an ``nn.Module`` class whose ``forward(logits: (B,), targets: (B,)) -> ()`` returns
a scalar. A class may define ``arguments_from_labels(labels) -> dict``: the constructor
arguments it derives from training-fold labels (positive weight, class counts, prior), so the
caller can compute them per fold with ``loss_arguments`` instead of knowing each loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from multimodal.errors import ConfigError
from multimodal.registry import Registry

LossEntry = Callable[..., nn.Module]
LOSSES = Registry("loss")
register_loss = LOSSES.register
_lookup = LOSSES.lookup


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
        LOSSES.check_arguments(name, kwargs, accepted)
        raise ConfigError(f"loss {name!r}: {err}; it accepts {accepted}") from err  # a missing argument
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
