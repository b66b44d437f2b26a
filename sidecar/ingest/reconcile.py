"""Start-up reconcile and retention: the spool is the source of truth for acknowledged instances.

The journal commits with synchronous=NORMAL, so a power loss can lose the last journal rows of
instances whose files were already fsynced and acknowledged. `reconcile_spool` records every
spool file the journal lacks before the listener opens. `retention_sweep` removes spooled
instances whose series every destination acknowledged longer ago than the retention time.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import structlog
from pydicom.errors import InvalidDicomError

from sidecar.dicom.headers import read_header
from sidecar.errors import SidecarError
from sidecar.ingest.spool import Spool
from sidecar.journal import InstanceRecord, Journal

log = structlog.get_logger("sidecar.ingest.reconcile")


def reconcile_spool(spool: Spool, journal: Journal) -> int:
    """Record spool files the journal lacks (acknowledged just before a power loss); returns count."""
    known = journal.known_instance_uids()
    n = 0
    for path in spool.root.glob("*/*/*.dcm"):
        if path.stem in known:
            continue
        try:
            header = read_header(pydicom.dcmread(path, stop_before_pixels=True))
        except (SidecarError, InvalidDicomError, OSError, ValueError) as exc:
            log.error("spool_file_unreadable", error_type=type(exc).__name__)
            continue
        journal.record_instance(InstanceRecord(
            header.sop_instance_uid, header.sop_class_uid, header.series_uid, header.study_uid,
            header.modality, str(path), path.stat().st_size, "", header.expected_count))
        n += 1
    return n


def retention_sweep(spool: Spool, journal: Journal, cutoff: float) -> int:
    """Remove spooled instances whose series were delivered before `cutoff`; returns count."""
    n = 0
    for inst in journal.deletable_instances(cutoff):
        spool.remove(Path(inst.path))
        journal.mark_deleted(inst.sop_instance_uid)
        n += 1
    if n:
        log.info("spool_retention_sweep", removed=n)
    return n
