"""Registries by name (timm ``register_model`` style) for encoders, objectives, losses, baselines.

A ``Registry`` is a dict from name to entry function with a decorator that refuses duplicates
and a lookup whose error lists every name and suggests the nearest one, so a typo in a config
(``image_encoder: resnet3d_01``) is answered with what to write instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from multimodal.errors import ConfigError

Entry = TypeVar("Entry", bound=Callable[..., Any])


class Registry(dict[str, Callable[..., Any]]):
    """``name -> entry``; ``kind`` ("encoder", "loss", ...) words the error messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """Decorator storing an entry under ``name``; a duplicate name is a ``ValueError``."""

        def decorate(entry: Entry) -> Entry:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered; taken: {sorted(self)}")
            self[name] = entry
            return entry

        return decorate

    def lookup(self, name: str) -> Callable[..., Any]:
        """The entry for ``name``; an unknown name is a ``ConfigError`` with the nearest match."""
        if name not in self:
            close = difflib.get_close_matches(name, list(self), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} Registered: {sorted(self)}")
        return self[name]

    def check_arguments(self, name: str, given: Iterable[str], accepted: Iterable[str]) -> None:
        """Refuse keyword arguments entry ``name`` does not take, suggesting the nearest one."""
        accepted = list(accepted)
        unknown = [key for key in given if key not in accepted]
        if not unknown:
            return
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, accepted, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{self.kind} {name!r}: unknown argument {', '.join(hints)}; it accepts {accepted}")
