"""The one owner of a run folder: what it holds, whether it finished, its weights, who writes it.

``run.json`` (the run record) says the folder's kind (``pretraining`` or ``fine-tuning``), the
strokessl version that made it, when it was created and finished, and a sha256 digest of every
weight file the run published; ``facts`` holds what the run knew at training time for later
stages. ``run.lock`` marks a folder a process is writing (pid, host, start, command), created
atomically (``O_CREAT | O_EXCL``); a lock whose process is gone from this host is stale and
taken over with a warning.

Every command goes through here: writers (``pretrain``, ``finetune``, ``explain``) lock the
folder and refuse one of another kind; readers (``predict``, ``embed``, ``explain``,
``finetune --init``) refuse a folder of the wrong kind, an unfinished run, one being trained,
and weights whose digest differs from the record. An output path (``predict --out``, ``embed
--out``, ``synth OUT``) may neither lie in a run folder nor be one of the command's inputs.

Folders written before the record existed still load: their kind is read from their files
(``model.json`` / ``folds.json``: fine-tuning; ``checkpoints/latest.json`` or published encoder
weights: pretraining), their weights load unchecked with a warning, and the first run that writes
into one adds a record (``adopted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.checkpoint import atomic_write_json, make_folder, refused_writes
from multimodal.errors import RunFolderError

logger = logging.getLogger(__name__)

RECORD = "run.json"
LOCK = "run.lock"
PRETRAINING, FINETUNING = "pretraining", "fine-tuning"
_MAKES = {PRETRAINING: "strokessl pretrain CONFIG", FINETUNING: "strokessl finetune CONFIG"}
_TRAINING_COMMANDS = ("pretrain", "finetune")  # lock holders that change weights and metrics
_unchecked_warned: set[Path] = set()  # folders already warned about (once per process)


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


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
    if (run_dir / "model.json").is_file() or (run_dir / "folds.json").is_file():
        return FINETUNING
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "latest.json").is_file() or any(checkpoints.glob("*_encoder.safetensors")):
        return PRETRAINING
    return None


def is_finished(run_dir: Path) -> bool:
    """Whether the run's last writer finished (the record), or, before records, ``metrics.json`` exists."""
    record = read_record(run_dir)
    return record.finished is not None if record is not None else (Path(run_dir) / "metrics.json").is_file()


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
    holder = _live_holder(run_dir / LOCK)
    if holder is not None and holder.get("command") in _TRAINING_COMMANDS:
        raise RunFolderError(f"{command} {run_dir}: the run is being written by {_describe(holder)}; wait for it "
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
        adopted = _now() if folder_kind(run_dir) is not None else None
        record = RunRecord(kind=kind, strokessl=_version(), created=_now(), adopted=adopted)
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
    record.finished = _now()
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


# --------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError):  # a killed, not yet reaped process holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _describe(holder: dict[str, Any]) -> str:
    return (f"process {holder['pid']} (strokessl {holder.get('command', '?')}) on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _live_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder if the lock exists and its process may be running (always, on another host)."""
    holder = _read_holder(path) if path.is_file() else None
    if holder is None:
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"]):
        return None
    return holder


def _acquire(path: Path, holder: dict[str, Any]) -> None:
    for _ in range(3):
        try:
            with refused_writes(path):
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(handle, "w") as out:
                json.dump(holder, out)
            return
        other = _read_holder(path)
        if other is None:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime < 10:  # being created by another process right now
                    raise RunFolderError(f"run folder {path.parent} is being locked by another process ({path}); "
                                         "wait for it to finish")
        elif _live_holder(path) is not None:
            gone = ("is not a strokessl run (its number was reused)" if other.get("host") == socket.gethostname()
                    else "is no longer running")
            raise RunFolderError(f"run folder {path.parent} is in use by {_describe(other)}; wait for it to finish, "
                                 f"or delete {path} if that process {gone}")
        logger.warning("run folder %s: taking over the stale lock of %s, which is no longer running", path.parent,
                       _describe(other) if other is not None else "an unreadable lock file")
        stale = path.with_name(f".{LOCK}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):  # another process may have taken it over first
            os.rename(path, stale)
            if _read_holder(stale) != other:  # it did, between our read and the rename: give its lock back
                with contextlib.suppress(FileExistsError):
                    os.link(stale, path)
            stale.unlink()
    raise RunFolderError(f"run folder {path.parent}: could not take the lock {path}; another process keeps taking it")


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` while the block runs (the folder is made first); another live
    holder is a ``RunFolderError`` naming it, a holder no longer running is taken over with a warning."""
    run_dir = make_folder(run_dir)
    path = run_dir / LOCK
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": command}
    _acquire(path, holder)
    try:
        yield
    finally:
        if _read_holder(path) == holder:
            path.unlink(missing_ok=True)
