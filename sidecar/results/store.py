"""The results store: the DICOM objects the sidecar made, as files, until every destination has them.

Layout: <root>/<SeriesUID of the input>/<SOPInstanceUID of the result>.dcm, from UIDs that passed
the UID grammar. Writes are durable (`sidecar.durable`) and respect the same free-space
watermark as the spool, so results never fill the disk the listener needs.
"""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import Dataset

from sidecar.dicom.uids import is_valid_uid
from sidecar.durable import write_durably
from sidecar.errors import ResultError


class ResultStore:
    """Durable file store for result objects."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes

    def path_for(self, series_uid: str, sop_instance_uid: str) -> Path:
        if not is_valid_uid(sop_instance_uid) or not is_valid_uid(series_uid):
            raise ResultError("result has an invalid UID")
        return self.root / series_uid / f"{sop_instance_uid}.dcm"

    def save(self, series_uid: str, ds: Dataset) -> Path:
        """Encode `ds` as a DICOM file (PS3.10) and write it durably; returns its path."""
        path = self.path_for(series_uid, str(ds.SOPInstanceUID))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_durably(path, buf.getvalue(), min_free_bytes=self.min_free_bytes, what="results")
        return path
