"""The one owner of a run folder: its file names, whether it finished, what it knew, its weights.

Layout (``RunPaths`` names every file; no stage spells a name itself)::

    run.json            the run record: kind, version, created / finished, weight digests, facts
    run.lock            held while a process writes the folder (``multimodal.run_lock``)
    config.yaml         the resolved run config
    metrics.json        written last by every run
    report/             figures and reports
    pretraining:        preprocessor.json, checkpoints/ (latest.json, epoch files, <modality>_encoder.safetensors)
    fine-tuning:        model.json (the fold models' architecture), folds.json (the splits),
                        folds/<rRfF>.json + .safetensors (one per fold), predictions.csv

``run.json`` says the folder's kind (``pretraining`` or ``fine-tuning``), the strokessl version
that made it, when it was created and finished (**finished** = ``metrics.json`` exists and the
record's ``finished`` is set, after it; ``is_finished``), a sha256 digest of
every weight file the run published, and ``facts`` (``RunFacts``): what the run knew at training
time (task, horizon, resolved sequences, column roles, plugin modalities, which encoders every fold
model shares), so later stages read them instead of rediscovering them.

Every command goes through here: writers (``pretrain``, ``finetune``, ``explain``) lock the
folder and refuse one of another kind; readers (``predict``, ``embed``, ``explain``,
``finetune --init``) refuse a folder of the wrong kind, an unfinished run, one being trained,
and weights whose digest differs from the record. An output path (``predict --out``, ``embed
--out``, ``synth OUT``) may neither lie in a run folder nor be one of the command's inputs.

Folders written before the record existed still load: their kind is read from their files
(``model.json`` / ``folds.json``: fine-tuning; ``checkpoints/latest.json`` or published encoder
weights: pretraining), their facts from ``model.json`` where it held them, their weights load
unchecked with a warning, and the first run that writes into one adds a record (``adopted``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.checkpoint import atomic_write_json
from multimodal.errors import RunFolderError
from multimodal.run_lock import LOCK, describe_holder, live_holder, now

logger = logging.getLogger(__name__)

RECORD = "run.json"
PRETRAINING, FINETUNING = "pretraining", "fine-tuning"
_MAKES = {PRETRAINING: "strokessl pretrain CONFIG", FINETUNING: "strokessl finetune CONFIG"}
_TRAINING_COMMANDS = ("pretrain", "finetune")  # lock holders that change weights and metrics
_unchecked_warned: set[Path] = set()  # folders already warned about (once per process)


@dataclass(frozen=True)
class RunPaths:
    """Every file of a run folder by what it is (see the layout above)."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / RECORD

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def preprocessor(self) -> Path:
        return self.root / "preprocessor.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.json"

    @property
    def model(self) -> Path:
        return self.root / "model.json"

    @property
    def splits(self) -> Path:
        return self.root / "folds.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    def fold(self, name: str) -> Path:
        """``folds/<name>.json``, the fold's record (its presence marks the fold done)."""
        return self.folds / f"{name}.json"

    def fold_weights(self, name: str) -> Path:
        return self.folds / f"{name}.safetensors"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"


def run_paths(run_dir: str | Path) -> RunPaths:
    return RunPaths(Path(run_dir))


@dataclass
class RunFacts:
    """What a run knew at training time, recorded once in ``run.json`` for every later stage."""

    task: str | None = None  # fine-tuning: binary | survival
    horizon: dict[str, Any] | None = None  # {"value", "unit", "time_unit", "in_time_unit"} of the outcome
    sequences: list[str] = field(default_factory=list)  # image channels, in the order the encoder reads them
    column_roles: dict[str, Any] = field(default_factory=dict)  # the cohort's roles, to read a bare CSV
    plugins: dict[str, str] = field(default_factory=dict)  # modality beyond image / table -> encoder name
    plugin_modules: list[str] = field(default_factory=list)  # modules outside the package those came from
    shared_encoders: list[str] = field(default_factory=list)  # modalities whose encoder every fold model shares


def record_facts(run_dir: Path, facts: RunFacts) -> None:
    """Store ``facts`` in the run's record (after ``begin_record``)."""
    record = _existing(run_dir)
    record.facts = dataclasses.asdict(facts)
    _write(run_dir, record)


def run_facts(run_dir: str | Path) -> RunFacts:
    """The run's recorded facts; for a folder from before they were recorded, what its ``model.json``
    held (binary task, no encoder known to be shared)."""
    record = read_record(Path(run_dir))
    if record is not None and record.facts:
        known = {f.name for f in dataclasses.fields(RunFacts)}
        return RunFacts(**{k: v for k, v in record.facts.items() if k in known})
    model = run_paths(run_dir).model
    if not model.is_file():
        return RunFacts()
    architecture = json.loads(model.read_text())
    return RunFacts(task=architecture.get("task", "binary"), horizon=architecture.get("horizon"),
                    sequences=list(architecture.get("sequences", [])),
                    column_roles=architecture.get("cohort_roles") or {})


def has_started(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds any output of a run (a finished or a stopped one): a resumable
    checkpoint, a finished fold, or metrics."""
    paths = run_paths(run_dir)
    return paths.metrics.exists() or paths.latest.exists() or any(paths.folds.glob("*.json"))


@dataclass
class RunRecord:
    """The content of ``run.json``."""

    kind: str  # PRETRAINING or FINETUNING
    strokessl: str  # the version that created the folder
    created: str  # ISO time
    finished: str | None = None  # ISO time the run last finished; None while (re)written or stopped
    weights: dict[str, str] = field(default_factory=dict)  # path relative to the folder -> sha256
    adopted: str | None = None  # the folder predates records: its older weights carry no digest
    facts: dict[str, Any] = field(default_factory=dict)  # what the run knew at training, for later stages


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("strokessl")


# --------------------------------------------------------------------------- reading
def read_record(run_dir: Path) -> RunRecord | None:
    """The folder's ``run.json``, or None where there is none (a folder from before records)."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return RunRecord(**{k: data[k] for k in data if k in {f.name for f in dataclasses.fields(RunRecord)}})
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"run record {path} is damaged ({err}); it is written atomically, so it was edited: "
                             "restore it from a copy of the run folder") from err


def folder_kind(run_dir: Path) -> str | None:
    """PRETRAINING, FINETUNING, or None for a folder that holds no run (or does not exist)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir) if run_dir.is_dir() else None
    if record is not None:
        return record.kind
    if not run_dir.is_dir():
        return None
    paths = run_paths(run_dir)
    if paths.model.is_file() or paths.splits.is_file():
        return FINETUNING
    if paths.latest.is_file() or any(paths.checkpoints.glob("*_encoder.safetensors")):
        return PRETRAINING
    return None


def is_finished(run_dir: Path) -> bool:
    """Whether the run finished: its ``metrics.json`` (written last) exists and, where the folder has a
    record, the record says its last writer finished (a run being rewritten has cleared it)."""
    record = read_record(run_dir)
    return run_paths(run_dir).metrics.is_file() and (record is None or record.finished is not None)


def enclosing_run(path: Path) -> Path | None:
    """The run folder ``path`` is or lies in, if any."""
    for folder in (Path(path).resolve(), *Path(path).resolve().parents):
        if folder.is_dir() and folder_kind(folder) is not None:
            return folder
    return None


def require_run(run_dir: str | Path, kinds: tuple[str, ...], command: str, finished: bool = True) -> str:
    """Check that ``run_dir`` holds a run of one of ``kinds``, finished (unless ``finished=False``) and not
    being trained by a live process, for ``command`` to read; returns its kind. Anything else is a
    ``RunFolderError`` saying what to give instead."""
    run_dir = Path(run_dir)
    wanted = " or ".join(kinds)
    give = f"give the folder {_MAKES[kinds[0]]} wrote"
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise RunFolderError(f"{command} {run_dir} {what}: not a {wanted} run folder; {give}")
    kind = folder_kind(run_dir)
    if kind is None:
        raise RunFolderError(f"{command} {run_dir} holds no run (no {RECORD}, model.json or checkpoints/): not a "
                             f"{wanted} run folder; {give}")
    if kind not in kinds:
        raise RunFolderError(f"{command} {run_dir} holds a {kind} run, not a {wanted} run; {give}")
    holder = live_holder(run_dir / LOCK)
    if holder is not None and holder.get("command") in _TRAINING_COMMANDS:
        raise RunFolderError(f"{command} {run_dir}: the run is being written by {describe_holder(holder)}; wait for it "
                             "to finish")
    if finished and not is_finished(run_dir):
        raise RunFolderError(f"{command} {run_dir}: the {kind} run has not finished; resume it first with "
                             f"{_MAKES[kind]} --resume{' ' + str(run_dir) if kind == PRETRAINING else ''}")
    return kind


# --------------------------------------------------------------------------- writing
def check_writable(run_dir: Path, kind: str, inputs: Iterable[Path] = ()) -> None:
    """Refuse to write a ``kind`` run into ``run_dir`` when it is a file, holds a run of another
    kind (which the run would overwrite), or holds one of ``inputs`` (the cohort's files)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise RunFolderError(f"run.dir {run_dir} is a file, not a folder; choose a folder with --set run.dir=...")
    other = folder_kind(run_dir)
    if other is not None and other != kind:
        raise RunFolderError(f"run folder {run_dir} holds a {other} run; a {kind} run there would replace its "
                             "metrics.json and weights: choose another folder with --set run.dir=...")
    root = run_dir.resolve()
    for path in inputs:
        if Path(path).resolve().is_relative_to(root):
            raise RunFolderError(f"run folder {run_dir} holds {path}, an input of the run; a run writes config.yaml, "
                                 "metrics.json and more into its folder: choose another with --set run.dir=...")


def begin_record(run_dir: Path, kind: str) -> RunRecord:
    """Create the record of a new run, or mark an existing one as being written again (not finished)."""
    record = read_record(run_dir)
    if record is None:
        adopted = now() if folder_kind(run_dir) is not None else None
        record = RunRecord(kind=kind, strokessl=_version(), created=now(), adopted=adopted)
    record.finished = None
    _write(run_dir, record)
    return record


def record_weights(run_dir: Path, paths: Iterable[Path]) -> None:
    """Store the sha256 of each weight file in the run's record (call after writing them, before the
    file that marks their step done)."""
    record = _existing(run_dir)
    for path in paths:
        record.weights[_relative(run_dir, path)] = sha256_file(path)
    _write(run_dir, record)


def finish_record(run_dir: Path) -> None:
    """Mark the run finished (after its last output, ``metrics.json``, is written)."""
    record = _existing(run_dir)
    record.finished = now()
    _write(run_dir, record)


def _existing(run_dir: Path) -> RunRecord:
    record = read_record(run_dir)
    if record is None:
        raise RunFolderError(f"run folder {run_dir} lost its {RECORD} while being written; start the run again")
    return record


def _write(run_dir: Path, record: RunRecord) -> None:
    atomic_write_json(Path(run_dir) / RECORD, dataclasses.asdict(record))


def _relative(run_dir: Path, path: Path) -> str:
    return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()


# --------------------------------------------------------------------------- weights
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(run_dir: str | Path, paths: Iterable[Path]) -> None:
    """Refuse a weight file of ``run_dir`` that differs from the one the run wrote (edited, truncated,
    swapped with another fold's) or that the record does not know. A missing file is left to the loader,
    which names it. Folders from before digests load unchecked, with a warning once."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    unchecked = []
    for path in paths:
        if not Path(path).is_file():
            continue
        expected = record.weights.get(_relative(run_dir, path)) if record is not None else None
        if expected is None and (record is None or record.adopted is not None):
            unchecked.append(Path(path).name)
            continue
        if expected is None:
            raise RunFolderError(f"weights file {path} was not written by the run (no digest in {run_dir / RECORD}); "
                                 "remove it, or rerun the stage that writes it")
        if sha256_file(path) != expected:
            raise RunFolderError(f"weights file {path} differs from the one the run wrote (sha256 in {run_dir / RECORD}): "
                                 "it was damaged, edited or replaced; restore the run folder from a copy or rerun "
                                 "the run (--resume recreates only what is missing once the file is removed)")
    if unchecked and run_dir.resolve() not in _unchecked_warned:
        _unchecked_warned.add(run_dir.resolve())
        logger.warning("run folder %s predates weight digests: %s loaded without checking they are the run's own",
                       run_dir, ", ".join(unchecked[:3]) + (f" and {len(unchecked) - 3} more" if len(unchecked) > 3 else ""))


# --------------------------------------------------------------------------- outputs
def check_output(out: Path, inputs: Iterable[Path] = (), option: str = "--out") -> None:
    """Refuse an output file that lies in a run folder (it would sit among, or replace, the run's own
    files) or that is one of ``inputs`` (the cohort table, its images, the config)."""
    out = Path(out)
    run = enclosing_run(out.parent)
    if run is not None:
        raise RunFolderError(f"{option} {out} lies in run folder {run}, among the run's own files "
                             "(predictions.csv, folds.json, ...); write it outside the run folder")
    target = out.resolve()
    for path in inputs:
        path = Path(path)
        if path.resolve() == target or (out.exists() and path.exists() and os.path.samefile(out, path)):
            raise RunFolderError(f"{option} {out} is an input of this command ({path}); writing there would replace "
                                 "it: choose another file name")
