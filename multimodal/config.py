"""YAML configs as typed dataclasses.

Two kinds of config, the data apart from the training settings:

* ``cohort.yaml`` describes data only (which column is the id, the label, each MRI sequence...);
* a run config (``configs/*.yaml``) points at a cohort config by path under ``cohort`` and holds
  ``seed``, ``run``, ``data``, ``imaging``, ``model``, ``pretrain`` and ``finetune``.

Unknown keys are an error naming the key and the nearest valid one; ``--set a.b=value`` overrides
any key from the command line; relative paths resolve against the YAML file that contains them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multimodal.config_checks import check_choice, check_folder, check_model, check_range
from multimodal.config_mapping import from_dict, to_dict, unquoted_text
from multimodal.errors import ConfigError
from multimodal.outcome import TIME_UNITS
from multimodal.plugins import import_plugins, load_entry_points
from multimodal.run_folder import read_record
from multimodal.yaml_loader import apply_overrides, read_yaml

MISSING_IMAGE_POLICIES = ("error", "drop", "zero", "drop_modality")
FEATURE_TYPES = ("continuous", "categorical")
CACHE_DTYPES = ("float32", "float16")
# Accepted ranges (docs/robustness.md): a voxel below 0.5 mm or above 30 mm is no brain MRI grid for
# this pipeline, and a grid outside 8..512 voxels per axis cannot hold a head or does not fit memory.
SPACING_MM = (0.5, 30.0)
SPATIAL_SIZE = (8, 512)
HEAD_EXTENT_MM = (30.0, 400.0)  # default cohort head_extent_mm: a human head, not millimetres or a metre


# --------------------------------------------------------------------------- cohort config
@dataclass
class CohortConfig:
    """What a cohort CSV holds and which column plays which role. Written by ``strokessl synth`` beside its CSV."""

    csv: Path  # the cohort table; image paths inside it are relative to its folder
    id: str = "subject_id"  # unique subject (patient) id column
    images: dict[str, str] = field(default_factory=dict)  # sequence name -> column of NIfTI paths
    label: str | None = "recurrence_12m"  # 0/1 outcome column, empty = unlabeled; None = no label
    # time-to-event outcome (multimodal.outcome): follow-up time column, its unit, and the 0/1 event column;
    # with finetune.horizon they give the binary label (censored before the horizon = unlabeled)
    time: str | None = None
    time_unit: str = "months"
    event: str | None = None
    # value -> 0/1; matched case-insensitively after stripping. None = 0/1, 0.0/1.0, true/false, yes/no
    label_map: dict[str, int] | None = None
    text: list[str] = field(default_factory=list)  # free-text columns (never used as features)
    ignore: list[str] = field(default_factory=list)  # columns that are neither features nor roles
    features: list[str] | None = None  # optional allow-list of clinical feature columns
    types: dict[str, str] = field(default_factory=dict)  # column -> continuous | categorical
    na_values: list[Any] = field(default_factory=list)  # extra missing-value markers, e.g. -999
    # a subject lacking a sequence: error | drop (the subject) | zero (empty channel; no sequence at
    # all = no image modality) | drop_modality (no image modality: scored from the other modalities)
    missing_images: str = "error"
    volume_index: dict[str, int] = field(default_factory=dict)  # sequence -> volume of a 4D file
    # sequence -> SeriesDescription or SeriesInstanceUID of the series to read when its cells name DICOM
    # folders holding several (a study export); two sequences may then share one column of folders
    series: dict[str, str] = field(default_factory=dict)
    # (min, max) mm a head spans along every axis: each file's field of view and the head found in it
    # must lie within (a single slice, a few millimetres or a metre is no human head)
    head_extent_mm: tuple[float, float] = HEAD_EXTENT_MM
    source: Path | None = None  # the YAML file this came from (set by the loader, not a key)

    def __post_init__(self) -> None:
        check_choice("missing_images", self.missing_images, MISSING_IMAGE_POLICIES)
        named: dict[str, str] = {}
        for sequence, column in self.images.items():
            first = named.setdefault(column, sequence)
            if first != sequence and not (sequence in self.series and first in self.series):
                raise ConfigError(f"images.{sequence} names column {column!r}, as images.{first} does: two copies of "
                                  "one channel; point each sequence at its own column (or, for folders of DICOM "
                                  "studies, pick each one's series with series: {sequence: description})")
        for column, kind in self.types.items():
            check_choice(f"types.{column}", kind, FEATURE_TYPES)
        if (self.time is None) != (self.event is None):
            raise ConfigError("time and event name a time-to-event outcome together: give both columns (follow-up "
                              "time and the 0/1 event), or neither")
        check_choice("time_unit", self.time_unit, TIME_UNITS)
        for key in ("volume_index", "series"):
            for sequence in getattr(self, key):
                if sequence not in self.images:
                    raise ConfigError(
                        f"{key} names sequence {sequence!r}, which is not in images "
                        f"({sorted(self.images)}); use a sequence name from images"
                    )
        for sequence, selector in self.series.items():
            if not isinstance(selector, str) or not selector.strip():
                raise ConfigError(f"series.{sequence} must be a SeriesDescription or SeriesInstanceUID as text, got "
                                  f"{selector!r}; quote it in cohort.yaml")
        low, high = self.head_extent_mm
        if not 0 < low < high:
            raise ConfigError(f"head_extent_mm must be [min, max] mm with 0 < min < max, got {list(self.head_extent_mm)}")
        for i, marker in enumerate(self.na_values):
            if marker is None or isinstance(marker, bool):
                raise ConfigError(unquoted_text(f"na_values[{i}]", marker))
            if not isinstance(marker, (str, int, float)):
                raise ConfigError(f"na_values[{i}] must be a word or a number, got {marker!r}")
        if self.label_map is not None:
            seen: dict[str, str] = {}  # labels match after stripping and ignoring case
            for value, target in self.label_map.items():
                if target not in (0, 1):
                    raise ConfigError(f"label_map.{value} must map to 0 or 1, got {target!r}")
                other = seen.setdefault(str(value).strip().casefold(), value)
                if other != value:
                    raise ConfigError(f"label_map names {other!r} and {value!r}, one label once case and spaces are "
                                      "ignored (as labels are matched); keep one of them")

    @property
    def root(self) -> Path:
        """Folder that image paths in the CSV are relative to."""
        return self.csv.parent


ROLE_KEYS = ("id", "images", "label", "time", "time_unit", "event", "label_map", "text", "ignore", "features",
             "types", "na_values",
             "missing_images", "volume_index", "series", "head_extent_mm")


def cohort_roles(config: CohortConfig) -> dict[str, Any]:
    """The column roles of a cohort config (every key but the file paths), as plain JSON types: a
    fine-tuning run keeps them so ``predict`` reads a bare CSV without the training cohort.yaml."""
    return {key: to_dict(getattr(config, key)) for key in ROLE_KEYS}


# --------------------------------------------------------------------------- run config
@dataclass
class RunSection:
    dir: Path | None = None  # default: runs/<config file stem>, relative to the working directory

    def __post_init__(self) -> None:
        check_folder("run.dir", self.dir)


@dataclass
class DataConfig:
    # default (None): <folder of the cohort being read>/.strokessl-cache (multimodal.data.cache_dir_for)
    cache_dir: Path | None = None
    workers: int = 4  # DataLoader workers (augmentations run there)
    cache_dtype: str = "float32"  # float16 halves the cache on disk and in memory

    def __post_init__(self) -> None:
        check_choice("data.cache_dtype", self.cache_dtype, CACHE_DTYPES)
        check_range("data.workers", self.workers, 0, 256)
        check_folder("data.cache_dir", self.cache_dir)


@dataclass
class AugmentConfig:
    """Random MRI augmentations, each drawn per sample and per call (MONAI ``Rand*d``)."""

    enabled: bool = True
    affine_prob: float = 0.5
    rotate_range: float = 0.17  # radians (~10 degrees), each axis, as MONAI reads it
    scale_range: float = 0.1  # ± fraction
    translate_range: float = 4.0  # voxels
    flip_prob: float = 0.0  # left-right; off by default as infarct side may matter clinically
    noise_prob: float = 0.3
    noise_std: float = 0.05  # in normalised (z-score) units
    bias_field_prob: float = 0.3
    bias_field_coeff: float = 0.3
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        for key in ("affine_prob", "flip_prob", "noise_prob", "bias_field_prob", "gamma_prob"):
            check_range(f"imaging.augment.{key}", getattr(self, key), 0.0, 1.0)
        check_range("imaging.augment.rotate_range", self.rotate_range, 0.0, math.pi, unit=" rad")
        check_range("imaging.augment.scale_range", self.scale_range, 0.0, 0.5)
        check_range("imaging.augment.translate_range", self.translate_range, 0.0, 64.0, unit=" voxels")
        check_range("imaging.augment.noise_std", self.noise_std, 0.0, 1.0)
        check_range("imaging.augment.bias_field_coeff", self.bias_field_coeff, 0.0, 1.0)
        low, high = self.gamma_range
        check_range("imaging.augment.gamma_range[0]", low, 0.1, 10.0)
        check_range("imaging.augment.gamma_range[1]", high, low, 10.0, hint="the range is [low, high]")


@dataclass
class ImagingConfig:
    sequences: list[str] | None = None  # channels in this order; None = all cohort sequences
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # target voxel size in mm (RAS axes)
    spatial_size: tuple[int, int, int] = (96, 112, 96)  # final grid after head crop + pad/crop
    orientation: str = "RAS"
    head_margin_mm: float = 6.0  # margin kept around the head mask when cropping
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for axis, mm in enumerate(self.spacing):
            check_range(f"imaging.spacing[{axis}]", mm, *SPACING_MM, unit=" mm")
        for axis, voxels in enumerate(self.spatial_size):
            check_range(f"imaging.spatial_size[{axis}]", voxels, *SPATIAL_SIZE, unit=" voxels")
        check_range("imaging.head_margin_mm", self.head_margin_mm, 0.0, 100.0, unit=" mm")
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in self.orientation]
        if sorted(axes, key=str) != [0, 1, 2]:
            raise ConfigError(f"imaging.orientation: {self.orientation!r} is not an orientation code; use three letters, "
                              "one of R/L, A/P and S/I each, e.g. RAS or LPS")
        if self.sequences is not None:
            repeated = sorted({s for s in self.sequences if self.sequences.count(s) > 1})
            if repeated or not self.sequences:
                raise ConfigError(f"imaging.sequences {self.sequences}: " + (
                    f"{repeated} listed more than once (two copies of one channel); list each sequence once, "
                    "e.g. [flair, dwi]" if repeated else "empty; list the channels, or leave it out for all sequences"))


@dataclass
class EncoderSpec:
    """One modality's encoder: a registered name (``multimodal.encoders``), its arguments and an
    optional local weights file (``.safetensors`` / tensors-only ``.pt``; nothing is downloaded)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None


def _default_encoders() -> dict[str, EncoderSpec]:
    return {"image": EncoderSpec("resnet3d_18"), "table": EncoderSpec("ft_transformer")}


# The flat keys of configs written before model.encoders (still read, converted, never written).
LEGACY_MODEL_KEYS = {"image_encoder": ("image", "name"), "image_encoder_args": ("image", "args"),
                     "image_weights": ("image", "weights"), "tabular_encoder": ("table", "name"),
                     "tabular_encoder_args": ("table", "args"), "tabular_weights": ("table", "weights")}


@dataclass
class ModelConfig:
    """``encoders``: modality -> ``EncoderSpec``; its keys are the modalities a model reads
    (``image``: the MRI sequences, ``table``: the clinical record, any registered other)."""

    encoders: dict[str, EncoderSpec] = field(default_factory=_default_encoders)

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """Fold the flat keys of older configs (``image_encoder``, ``tabular_encoder_args``, ...)
        into ``encoders`` (over the defaults, or over ``encoders`` when both are given)."""
        legacy = {key: data[key] for key in LEGACY_MODEL_KEYS if key in data}
        if not legacy:
            return data
        encoders = data.get("encoders") or to_dict(_default_encoders())
        encoders = {modality: dict(spec or {}) for modality, spec in encoders.items()}
        for key, value in legacy.items():
            modality, field_name = LEGACY_MODEL_KEYS[key]
            encoders.setdefault(modality, {"name": None})[field_name] = value
        rest = {key: value for key, value in data.items() if key not in LEGACY_MODEL_KEYS}
        return {**rest, "encoders": encoders}

    def without_weight_files(self) -> ModelConfig:
        """A copy without initialisation files (``weights``, ``args.backbone_weights``): what rebuilds a
        trained run's encoders, whose own weights replace those files (which need not exist there)."""
        clean = copy.deepcopy(self)
        for spec in clean.encoders.values():
            spec.weights = None
            spec.args.pop("backbone_weights", None)
        return clean

    @property
    def modalities(self) -> list[str]:
        """The modalities with an encoder, in config order."""
        return list(self.encoders)


@dataclass
class RunConfig:
    cohort: Path  # the cohort.yaml this run reads
    seed: int = 0  # drives Python, NumPy, torch and the data order
    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: dict[str, Any] = field(default_factory=dict)  # owned by the pretrain stage
    finetune: dict[str, Any] = field(default_factory=dict)  # owned by the finetune stage
    plugins: list[str] = field(default_factory=list)  # importable modules registering more modalities
    source: Path | None = None  # the YAML file this came from (set by the loader, not a key)

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, 2**32 - 1, hint="NumPy and scikit-learn take seeds in that range")




# --------------------------------------------------------------------------- reading and writing
def is_run_config(path: str | Path) -> bool:
    """True when the YAML at ``path`` is a run config (it names a ``cohort``)."""
    return "cohort" in read_yaml(path)


def load_cohort_config(path: str | Path) -> CohortConfig:
    """Read a ``cohort.yaml``; its ``csv`` path resolves against the YAML's folder."""
    path = Path(path).resolve()
    data = read_yaml(path)
    if "csv" not in data:
        raise ConfigError(f"{path} has no 'csv' key; a cohort config names its table with csv: FILE.csv")
    config = from_dict(CohortConfig, data, base=path.parent)
    config.source = path
    return config


# Paths inside the stage-owned sections, which stay plain mappings until their stage reads them:
# they still resolve against the file (or, from --set, the working directory) that gave them.
STAGE_PATH_KEYS: tuple[tuple[str, str], ...] = (("finetune", "test_cohort"),)


def _resolve_stage_paths(config: RunConfig, base: Path) -> None:
    for section, key in STAGE_PATH_KEYS:
        value = getattr(config, section).get(key)
        if isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            getattr(config, section)[key] = str(path if path.is_absolute() else base / path)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config, apply ``--set`` overrides and fill path defaults.

    Overrides given as relative paths resolve against the working directory, like any
    command-line path; paths inside the YAML resolve against the YAML's folder.
    """
    path = Path(path).resolve()
    data = read_yaml(path)
    config = from_dict(RunConfig, data, base=path.parent)
    _resolve_stage_paths(config, path.parent)
    if overrides:
        # Each --set replaces one leaf (a mapping given on the command line replaces the whole
        # mapping, e.g. pretrain.objectives={clip: 1.0}); the rest keeps the YAML's values.
        try:
            config = from_dict(RunConfig, apply_overrides(to_dict(config), overrides), base=Path.cwd())
        except ConfigError as err:  # the YAML alone loaded: the mistake is in an override
            raise ConfigError(f"{err} (from --set {' '.join(overrides)})") from err
        _resolve_stage_paths(config, Path.cwd())
    config.source = path
    if config.run.dir is None:
        config.run.dir = Path.cwd() / "runs" / path.stem
        check_folder("run.dir", config.run.dir)
    # modalities from outside the package: installed entry points, the config's plugins and, for a
    # trained run's config, the modules the run recorded (multimodal.plugins)
    load_entry_points()
    import_plugins(config.plugins)
    record = read_record(path.parent)
    if record is not None and record.facts:
        import_plugins(list(record.facts.get("plugin_modules", [])), needed_by=path.parent)
    check_model(config.model)
    return config


def changed_keys(old: Any, new: Any, ignore: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (e.g. a run's saved config and
    the one a ``--resume`` brings), leaving out the dotted keys or sections in ``ignore``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = []
        for key in sorted(set(old) | set(new)):
            if f"{prefix}{key}" not in ignore:
                keys += changed_keys(old.get(key), new.get(key), ignore, f"{prefix}{key}.")
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    from multimodal.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
