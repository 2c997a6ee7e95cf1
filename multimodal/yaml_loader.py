"""How every config YAML (cohort.yaml, run configs, ``--set`` values) is read.

PyYAML follows YAML 1.1, which reads ``no``, ``yes``, ``on`` and ``off`` as booleans, ``010`` as
octal 8, ``1:30`` as 90 and ``3e-4`` as text, and keeps the last of two equal keys without a
word. A cohort's ``na_values: [no, off]`` or ``label_map: {yes: 1, no: 0}`` then names markers no
cell holds. This loader keeps PyYAML's safe constructors with YAML 1.2's core rules for plain
scalars: only ``true`` / ``false`` are booleans, integers are decimal (or ``0x`` / ``0o``), a float
may omit the dot before its exponent, and a key given twice in one mapping is an error naming
both lines.

``read_yaml`` reads a config file as a mapping and ``apply_overrides`` applies ``--set a.b=value``
strings to one; each refusal is a ``ConfigError`` saying how to fix the file or the override.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from multimodal.errors import ConfigError

BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$")  # 2_000 as YAML 1.1 allowed
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class DuplicateKeyError(yaml.YAMLError):
    """One mapping gives the same key twice (PyYAML would keep the last silently)."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 core scalars and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(f"key {key!r} is given twice in one mapping (lines {seen[key]} and {line}): "
                                        "YAML would keep the last one silently; keep one of them")
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        return int(text, 0) if text[:2] in ("0x", "0o") else int(text, 10)


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (BOOL, INT, FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigLoader.add_implicit_resolver(INT, _INT, list("-+0123456789"))
ConfigLoader.add_implicit_resolver(FLOAT, _FLOAT, list("-+.0123456789"))
ConfigLoader.add_constructor(INT, ConfigLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """``text`` parsed by :class:`ConfigLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader subclass: builds plain types only


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start}); a config is "
                          "YAML text: key: value lines") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from err
    if data is None:
        raise ConfigError(f"{path} is empty; a cohort config needs at least csv: FILE.csv and images: "
                          "{sequence: column}, a run config at least cohort: path/to/cohort.yaml")
    if not isinstance(data, dict):
        kind = "a list ('- item' lines)" if isinstance(data, list) else f"a single value ({data!r})"
        raise ConfigError(f"{path} holds {kind}, not keys; write key: value lines at the top level "
                          "(e.g. csv: cohort.csv)")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested mapping, in place."""
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set expects key=value, got {override!r}")
        dotted, raw = override.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data
