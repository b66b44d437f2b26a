"""Durable file writes shared by the spool (received instances) and the results store.

A write goes to a temporary file in the destination folder, is fsynced, renamed into place and
the folder fsynced, so after a crash a file is either whole or absent. A write that would leave
less than `min_free_bytes` on the disk is refused before a byte is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sidecar.errors import SpoolFull

#: Prefix and suffix of the temporary files; a crash can leave them, `sweep_partials` removes them.
PARTIAL_PREFIX = ".incoming-"
PARTIAL_SUFFIX = ".part"


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder`."""
    return shutil.disk_usage(folder).free


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so a rename or a new file in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, min_free_bytes: int = 0, what: str = "spool") -> None:
    """Write `data` to `path` durably; raises SpoolFull (with sizes, never content) on no space."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = free_bytes(folder)
        if free - len(data) < min_free_bytes:
            raise SpoolFull(f"{what} disk: {free // 1024} KiB free, {len(data) // 1024} KiB needed,"
                            f" watermark {min_free_bytes // 1024} KiB")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_folder(folder)
    except OSError as exc:
        raise SpoolFull(f"{what} write failed: {exc.strerror or exc}") from exc


def sweep_partials(root: Path) -> int:
    """Remove temporary files a crash left mid-write below `root` (never acknowledged)."""
    n = 0
    for tmp in root.rglob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n
