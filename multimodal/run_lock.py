"""``run.lock``: one process writes a run folder at a time.

The lock marks a folder a process is writing (pid, host, start, command), created atomically
(``O_CREAT | O_EXCL``); a lock whose process is gone from this host is stale and taken over with a
warning. ``multimodal.run_folder`` refuses to read a folder a live training process holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from multimodal.checkpoint import make_folder, refused_writes
from multimodal.errors import RunFolderError

logger = logging.getLogger(__name__)

LOCK = "run.lock"


def now() -> str:
    """The local time as the run record and the lock write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


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


def describe_holder(holder: dict[str, Any]) -> str:
    return (f"process {holder['pid']} (strokessl {holder.get('command', '?')}) on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def live_holder(path: Path) -> dict[str, Any] | None:
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
        elif live_holder(path) is not None:
            gone = ("is not a strokessl run (its number was reused)" if other.get("host") == socket.gethostname()
                    else "is no longer running")
            raise RunFolderError(f"run folder {path.parent} is in use by {describe_holder(other)}; wait for it to finish, "
                                 f"or delete {path} if that process {gone}")
        logger.warning("run folder %s: taking over the stale lock of %s, which is no longer running", path.parent,
                       describe_holder(other) if other is not None else "an unreadable lock file")
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
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": now(), "command": command}
    _acquire(path, holder)
    try:
        yield
    finally:
        if _read_holder(path) == holder:
            path.unlink(missing_ok=True)
