"""Modalities from outside the package: installed entry points and a run config's ``plugins:`` list.

A modality beyond image, table and report is one module that registers a reader
(``multimodal.data.register_modality``) and an encoder (``multimodal.encoders.register_encoder``).
The CLI finds such modules two ways, both before a run config is checked:

* an installed distribution declaring an entry point in the ``strokessl.modalities`` group
  (``[project.entry-points."strokessl.modalities"] notes = "my_package.notes"``); every one is
  imported once per process (``load_entry_points``);
* ``plugins: [my_notes]`` in the run config: importable module names, imported by
  ``load_run_config`` (a folder of them on ``PYTHONPATH``, or an installed package).

A run records the modules its modalities came from (``RunFacts.plugin_modules``, via
``plugin_modules``); ``predict``, ``explain`` and fine-tuning from it import them first and refuse,
in one line, when one is gone.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from multimodal.errors import ConfigError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "strokessl.modalities"
_PACKAGES = ("multimodal", "pretrain", "finetune", "strokessl")  # ours: never a plugin


@cache
def load_entry_points() -> tuple[str, ...]:
    """Import every installed ``strokessl.modalities`` entry point once; returns the modules loaded.
    A broken one is a warning (it may serve runs other than this one); a run that needs it then
    fails on its modality's name."""
    loaded = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as err:  # a third party's import error: report it, do not crash every command
            logger.warning("entry point %r (%s) in %s failed to import: %s", point.name, point.value,
                           ENTRY_POINT_GROUP, err)
            continue
        loaded.append(point.value.split(":")[0])
    return tuple(loaded)


def import_plugins(modules: list[str], needed_by: Path | None = None) -> None:
    """Import each module name of ``modules``; one that cannot be imported is a ``ConfigError`` saying
    which and what to do (``needed_by``: the run folder that recorded it)."""
    for module in modules:
        if not isinstance(module, str) or not module.replace(".", "_").isidentifier():
            raise ConfigError(f"plugins: {module!r} is not a module name; list importable modules, e.g. plugins: [my_notes]")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            whose = f"run {needed_by} was trained with plugin module {module!r}" if needed_by else \
                f"plugins: module {module!r} cannot be imported"
            raise ConfigError(f"{whose} ({err}); install it or put its folder on PYTHONPATH") from err
        except Exception as err:  # the plugin's own failure: name it, keep the CLI's one line
            raise ConfigError(f"plugins: module {module!r} failed to import: {type(err).__name__}: {err}") from err


def plugin_modules(encoders: dict[str, str]) -> list[str]:
    """The modules outside this package that define the readers and encoders of ``encoders``
    (modality -> encoder name): what a run needs imported to be read again."""
    from multimodal.data import MODALITY_READERS
    from multimodal.encoders import ENCODERS

    modules = []
    for modality, name in encoders.items():
        for entry in (MODALITY_READERS.lookup(modality), ENCODERS.lookup(name)):
            module = entry.__module__
            if module.split(".")[0] not in _PACKAGES and module not in modules:
                modules.append(module)
    return modules
