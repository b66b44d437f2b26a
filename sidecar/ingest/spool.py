"""The spool: received instances as files, durable before they are acknowledged.

Layout: <root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm, built only from UIDs that passed the
UID grammar (so no crafted UID can leave the root). A write goes to a temporary file in the
same folder, is fsynced, renamed into place and the folder fsynced, so after a crash a file is
either whole or absent.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.dicom.uids import is_valid_uid
from sidecar.durable import free_bytes, sweep_partials, write_durably
from sidecar.errors import InvalidInstance


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
