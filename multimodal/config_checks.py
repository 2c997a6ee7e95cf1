"""Checks of config values that the typed sections run when they load (and ``validate`` runs on a
run config): a word among the allowed ones, numbers within the range their stage can use, folders
that can be folders, encoder entries that name a registered modality and encoder, input files that
exist. Each refusal is one ``ConfigError`` naming the dotted key, what is wrong and the accepted range.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.errors import ConfigError

if TYPE_CHECKING:
    from multimodal.config import ModelConfig, RunConfig


def check_choice(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    """Raise a ``ConfigError`` naming ``key`` and the closest allowed value."""
    if value in allowed:
        return
    hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}{did_you_mean}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None, *,
                above: bool = False, below: bool = False, unit: str = "", hint: str = "") -> None:
    """Raise a ``ConfigError`` naming ``key`` unless ``value`` is a finite number in ``[low, high]``
    (``above`` / ``below``: the low / high end excluded); ``hint`` is added to the message."""
    span = f"{'(' if above else '['}{_number(low) if low is not None else '-inf'}, " \
           f"{_number(high) if high is not None else 'inf'}{')' if below else ']'}{unit}"
    advice = f"; use a value in {span}" + (f" ({hint})" if hint else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number{advice}")
    if low is not None and (value < low or (above and value == low)):
        relation = "is not above" if above and value == low else "is below"
        raise ConfigError(f"{key}: {_number(value)}{unit} {relation} {_number(low)}{unit}{advice}")
    if high is not None and (value > high or (below and value == high)):
        relation = "is not below" if below and value == high else "is above"
        raise ConfigError(f"{key}: {_number(value)}{unit} {relation} {_number(high)}{unit}{advice}")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_folder(key: str, path: Path | None) -> None:
    """A folder setting must not name an existing file, or lie inside one (it would fail at the first write)."""
    for candidate in [path, *path.parents] if path is not None else []:
        if candidate.exists():
            if not candidate.is_dir():
                where = "" if candidate == path else f" ({candidate} is a file)"
                raise ConfigError(f"{key}: {path} cannot be a folder{where}; give a folder path (new or existing)")
            return


def missing_files(config: RunConfig) -> list[str]:
    """One line per input file a run config names that is not there: encoder weights and backbone
    weights, the fixed test cohort. Checked by ``validate`` (a trained run's saved config may name files
    that have moved since, so loading does not check them)."""
    from multimodal.config import STAGE_PATH_KEYS  # the module that imports this one

    named = [(f"model.encoders.{m}.weights", spec.weights) for m, spec in config.model.encoders.items()]
    named += [(f"model.encoders.{m}.args.backbone_weights", spec.args.get("backbone_weights"))
              for m, spec in config.model.encoders.items()]
    named += [(f"{section}.{key}", getattr(config, section).get(key)) for section, key in STAGE_PATH_KEYS]
    return [f"{key}: {path} does not exist (or is not a file); give the path of a local file"
            for key, path in named if isinstance(path, (str, Path)) and not Path(path).is_file()]


def check_model(model: ModelConfig) -> None:
    """Each ``model.encoders`` entry must name a known modality and an encoder registered for it, so a
    typo is refused when the config loads (``validate`` too), not when a stage first builds data."""
    # imported here: torch loads only once a run config is read
    from multimodal.data import BUILT_IN_MODALITIES, MODALITY_READERS
    from multimodal.encoders import ENCODERS, encoder_modality, list_encoders

    modalities = [*BUILT_IN_MODALITIES, *sorted(MODALITY_READERS)]
    for modality, spec in model.encoders.items():
        if modality not in modalities:
            hint = difflib.get_close_matches(modality, modalities, n=1)
            raise ConfigError(f"model.encoders.{modality}: no modality {modality!r}"
                              + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" Modalities: {modalities} (another needs a reader: multimodal.data.register_modality)")
        if spec.name not in ENCODERS or encoder_modality(spec.name) != modality:
            choices = list_encoders(modality) if modality in {encoder_modality(n) for n in ENCODERS} else []
            hint = difflib.get_close_matches(str(spec.name), choices, n=1)
            raise ConfigError(f"model.encoders.{modality}.name: {spec.name!r} is not {'an' if modality[0] in 'aeiou' else 'a'} "
                              f"{modality} encoder" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" Choose one of {choices}")
