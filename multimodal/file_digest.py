"""Content digests of image files for the volume cache key, computed once per file version.

A file replaced by other voxels of the same size whose modification time was kept (``cp -p``,
``touch -r``, some sync tools) must not be served from the cache, so the key holds a SHA-256 of
each file's bytes. ``FileDigests`` remembers each digest under the file's identity (absolute
path, size, mtime_ns, ctime_ns, inode): rewriting a file changes its ctime (the kernel sets it;
no tool can preserve it), so a replaced file is hashed again and an unchanged one never is. The
memo lives on the object, so DataLoader workers (forked or spawned) receive what the main
process hashed.
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple


class FileIdentity(NamedTuple):
    path: str  # absolute
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


def file_identity(path: str) -> FileIdentity:
    """The stat-based identity of ``path`` (``OSError`` if it cannot be stat-ed)."""
    path = os.path.abspath(path)
    stat = os.stat(path)
    return FileIdentity(path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


class FileDigests:
    """``digest(identity)`` -> SHA-256 hex of the file's bytes, hashed once per identity."""

    def __init__(self) -> None:
        self._known: dict[FileIdentity, str] = {}

    def digest(self, identity: FileIdentity) -> str:
        if identity not in self._known:
            with open(identity.path, "rb") as handle:
                self._known[identity] = hashlib.file_digest(handle, "sha256").hexdigest()
        return self._known[identity]
