"""The spool: received instances as files, durable before they are acknowledged.

Layout: <root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm, built only from UIDs that passed the
UID grammar (so no crafted UID can leave the root). A write goes to a temporary file in the
same folder, is fsynced, renamed into place and the folder fsynced, so after a crash a file is
either whole or absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from sidecar.dicom.uids import is_valid_uid
from sidecar.durable import (
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    free_bytes,
    fsync_folder,
    sweep_partials,
    write_durably,
)
from sidecar.errors import InvalidInstance, SpoolFull


class Spool:
    """Durable file store for received instances."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                          ("SOPInstanceUID", sop_instance_uid)):
            if not is_valid_uid(uid):
                raise InvalidInstance(f"{name} is not a valid UID")
        path = (self.root / study_uid / series_uid / f"{sop_instance_uid}.dcm").resolve()
        if self.root not in path.parents:  # belt and braces: the grammar already forbids this
            raise InvalidInstance("instance path would leave the spool")
        return path

    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def write(self, path: Path, data: bytes) -> None:
        """Write `data` to `path` durably (temp file, fsync, rename, fsync folder)."""
        write_durably(path, data, min_free_bytes=self.min_free_bytes, what="spool")

    def incoming(self) -> tuple[BinaryIO, Path]:
        """A new temporary file below the root for an instance being received (swept after a crash)."""
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise SpoolFull(f"spool disk: {free // 1024} KiB free, watermark {self.min_free_bytes // 1024} KiB")
        try:
            fd, name = tempfile.mkstemp(dir=self.root, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX)
        except OSError as exc:
            raise SpoolFull(f"spool write failed: {exc.strerror or exc}") from exc
        return os.fdopen(fd, "wb", buffering=0), Path(name)  # unbuffered: each fragment is one write

    def commit(self, temp: Path, path: Path) -> None:
        """Make a received temporary file durable at `path`: fsync, rename, fsync the folders."""
        try:
            if self.free_bytes() < self.min_free_bytes:
                raise SpoolFull(f"spool disk below its watermark of {self.min_free_bytes // 1024} KiB")
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            created = not path.parent.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
            fsync_folder(path.parent)
            if created:  # new study/series folders: their entries must survive a crash too
                fsync_folder(path.parent.parent)
                fsync_folder(self.root)
        except OSError as exc:
            raise SpoolFull(f"spool write failed: {exc.strerror or exc}") from exc

    def remove(self, path: Path) -> None:
        """Remove a delivered instance; empty series/study folders go too."""
        p = Path(path)
        p.unlink(missing_ok=True)
        for folder in (p.parent, p.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def sweep_partials(self) -> int:
        """Remove temporary files left by a crash mid-write (never acknowledged). Returns count."""
        return sweep_partials(self.root)


