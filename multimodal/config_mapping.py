"""A YAML mapping <-> a typed config dataclass.

``from_dict`` builds a dataclass from a mapping: an unknown key is an error naming the nearest
valid one, and each value is coerced to its field's annotation (relative paths resolve against
the YAML file's folder). ``to_dict`` turns a dataclass back into plain YAML-safe types.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from multimodal.errors import ConfigError

T = TypeVar("T")

# The YAML 1.1 words for a switch (multimodal.yaml_loader reads them as text): accepted where a bool is asked.
YAML11_BOOLEANS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def unquoted_text(key: str, value: Any) -> str:
    """The fix for a word YAML read as a boolean or null where text was meant (``na_values: [null]``)."""
    read = "null (null, ~ or nothing)" if value is None else f"the boolean {str(value).lower()}"
    return (f"{key}: YAML reads this unquoted value as {read}, not as text; quote it (e.g. "
            f"'{'null' if value is None else str(value).lower()}') to mean the word in the table")


def _unknown_key_error(where: str, key: str, valid: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {sorted(valid)}"
    return ConfigError(f"unknown config key {where + key!r}{did_you_mean}")


def _coerce(value: Any, annotation: Any, key: str, base: Path | None) -> Any:
    """Turn a YAML value into ``annotation``; relative paths resolve against ``base``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key, base)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
        return from_dict(annotation, value, where=f"{key}.", base=base)
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key} must be a path, got {value!r}")
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    if annotation is bool:
        if isinstance(value, str) and value.strip().casefold() in YAML11_BOOLEANS:
            return YAML11_BOOLEANS[value.strip().casefold()]  # where a switch is asked for, yes / off mean one
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation in (int, float, str):
        if annotation is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if annotation is float and isinstance(value, str):
            # PyYAML (YAML 1.1) reads 3e-4 as a string; it only knows 3.0e-4 as a float.
            try:
                return float(value)
            except ValueError:
                pass
        if annotation is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if annotation is str and (value is None or isinstance(value, bool)):
            raise ConfigError(unquoted_text(key, value))
        raise ConfigError(f"{key} must be a {annotation.__name__}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            # A single value where a list is expected is a common hand-written YAML slip.
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} values, got {list(value)!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]", base) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        coerced = [_coerce(v, item, f"{key}[{i}]", base) for i, v in enumerate(value)]
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {
            _coerce(k, key_type, key, base): _coerce(v, value_type, f"{key}.{k}", base)
            for k, v in value.items()
        }
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "", base: Path | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    migrate = getattr(cls, "migrate", None)  # a config section that still reads older keys
    if migrate is not None and isinstance(data, dict):
        data = migrate(data)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise _unknown_key_error(where, str(key), names)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}", base)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in kwargs:
            raise ConfigError(f"config key {where}{name!r} is required")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe types (paths as strings, tuples as lists) from a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "source"}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
