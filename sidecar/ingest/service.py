"""The ingest service: one received file in, a named status out. Shared by C-STORE and STOW-RS.

The file is already on the spool's disk (a temporary file below the spool root, written as the
bytes arrived). `IngestService.ingest` reads the few header tags it needs from it (nothing is
decoded into pixels or re-encoded), decides duplicates, fsyncs and renames it into place,
records it in the journal and only then says Success. Anything it cannot keep gets a named
DIMSE status with a short reason (no patient data in it), and the temporary file is removed.

Duplicates (docs/conformance.md, "Duplicate SOP Instances"):
- same SOP Instance UID, same series, same bytes: Success, kept once;
- same UID, same series, other bytes: refused, "duplicate SOP instance" (0x0111): a console that
  corrects an image must give it a new UID (PS3.3 C.12.1.1.1);
- same UID in another study or series: refused, "duplicate SOP instance" (a UID is unique).
"""

from __future__ import annotations

import filecmp
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydicom.uid import UID

from sidecar.dicom.headers import InstanceHeader, read_header_file
from sidecar.dicom.status import StoreStatus
from sidecar.errors import (
    InstanceRefused,
    InstanceTooLarge,
    InvalidInstance,
    JournalError,
    SpoolFull,
)
from sidecar.handoff import InstanceReceived
from sidecar.ingest.spool import Spool
from sidecar.journal import InstanceRecord, Journal, Recorded

log = structlog.get_logger("sidecar.ingest")

_LOCK_STRIPES = 64


@dataclass(frozen=True)
class Outcome:
    """What ingest answered: a named status, a short reason (ErrorComment), what was kept."""

    status: StoreStatus
    comment: str = ""
    header: InstanceHeader | None = None
    path: str | None = None
    recorded: Recorded | None = None

    @property
    def ok(self) -> bool:
        return self.status == StoreStatus.SUCCESS


def uid_name(uid: str) -> str:
    """A SOP Class's name when pydicom knows it, else the UID itself."""
    name = UID(uid).name
    return name if name and name != uid else uid


class IngestService:
    """Keeps a received file durably and journals it; no model work, no network."""

    def __init__(
        self,
        spool: Spool,
        journal: Journal,
        on_instance: Callable[[InstanceReceived], None],
        *,
        max_instance_bytes: int,
        max_pixels: int = 1 << 31,
        on_phi: Callable[..., None] | None = None,
    ) -> None:
        self.spool, self.journal = spool, journal
        self._on_instance, self._on_phi = on_instance, on_phi
        self.max_instance_bytes, self.max_pixels = max_instance_bytes, max_pixels
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def ingest(
        self,
        temp: Path,
        *,
        calling_ae: str,
        context_sop_class: str | None = None,
        affected_sop_class: str | None = None,
        affected_sop_instance: str | None = None,
        expected_study_uid: str | None = None,
    ) -> Outcome:
        """Keep `temp` (a Part 10 file below the spool root) or refuse it; `temp` is gone after.

        `context_sop_class`: the presentation context's abstract syntax (C-STORE);
        `expected_study_uid`: the study a STOW-RS request's URL names.
        """
        try:
            return self._ingest(temp, calling_ae, context_sop_class, affected_sop_class, affected_sop_instance,
                                expected_study_uid)
        except InvalidInstance as exc:
            return _refused(StoreStatus.CANNOT_UNDERSTAND, str(exc), calling_ae)
        except InstanceRefused as exc:
            return _refused(StoreStatus.REFUSED_NOT_AUTHORIZED, str(exc), calling_ae)
        except (SpoolFull, InstanceTooLarge) as exc:
            return _refused(StoreStatus.REFUSED_OUT_OF_RESOURCES, str(exc), calling_ae)
        except JournalError as exc:
            return _refused(StoreStatus.REFUSED_OUT_OF_RESOURCES, f"journal unavailable: {exc}", calling_ae)
        except Exception as exc:  # boundary: never crash the caller's thread
            log.exception("ingest_unexpected_error", error_type=type(exc).__name__)
            return _refused(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}", calling_ae)
        finally:
            temp.unlink(missing_ok=True)

    def _ingest(self, temp: Path, calling_ae: str, context_sop_class: str | None,
                affected_sop_class: str | None, affected_sop_instance: str | None,
                expected_study_uid: str | None) -> Outcome:
        size = temp.stat().st_size
        if size > self.max_instance_bytes:
            raise InstanceTooLarge(f"instance exceeds the limit of {self.max_instance_bytes} bytes")
        header, _ = read_header_file(temp, max_pixels=self.max_pixels)
        if affected_sop_instance is not None and header.sop_instance_uid != affected_sop_instance:
            raise InvalidInstance("SOPInstanceUID differs from Affected SOP Instance UID")
        if context_sop_class is not None and header.sop_class_uid != context_sop_class:
            log.warning("store_context_mismatch", dataset_sop_class=header.sop_class_uid,
                        context_sop_class=context_sop_class, calling_ae=calling_ae)
            return _refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            f"dataset is {uid_name(header.sop_class_uid)}, context "
                            f"{uid_name(context_sop_class)}", calling_ae)
        if affected_sop_class is not None and header.sop_class_uid != affected_sop_class:
            raise InvalidInstance("SOPClassUID differs from Affected SOP Class UID")
        if expected_study_uid is not None and header.study_uid != expected_study_uid:
            return _refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            "StudyInstanceUID is not the study the request names", calling_ae)
        if self._on_phi is not None:
            self._on_phi(*header.phi)
        path = self.spool.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
        with self._locks[zlib.crc32(header.sop_instance_uid.encode()) % _LOCK_STRIPES]:
            existing = self.journal.instance(header.sop_instance_uid)
            if existing is not None:
                return self._duplicate(temp, header, existing.series_uid, Path(existing.path),
                                       existing.size, calling_ae)
            self.spool.commit(temp, path)
            recorded = self.journal.record_instance(InstanceRecord(
                sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
                series_uid=header.series_uid, study_uid=header.study_uid, modality=header.modality,
                path=str(path), size=size, calling_ae=calling_ae, expected_count=header.expected_count,
            ))
        if recorded.new:
            self._on_instance(InstanceReceived(header, str(path), recorded, calling_ae))
        return Outcome(StoreStatus.SUCCESS, header=header, path=str(path), recorded=recorded)

    def _duplicate(self, temp: Path, header: InstanceHeader, series_uid: str, kept: Path, kept_size: int,
                   calling_ae: str) -> Outcome:
        if series_uid != header.series_uid:
            return _refused(StoreStatus.DUPLICATE_SOP_INSTANCE,
                            "SOP Instance UID already stored in another series", calling_ae)
        if kept.is_file():
            same = filecmp.cmp(temp, kept, shallow=False)
        else:  # the spool copy was already removed by retention: sizes only
            same = temp.stat().st_size == kept_size
        if not same:
            return _refused(StoreStatus.DUPLICATE_SOP_INSTANCE,
                            "SOP Instance UID already stored with other content", calling_ae)
        log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid, calling_ae=calling_ae)
        return Outcome(StoreStatus.SUCCESS, header=header, path=str(kept))


def _refused(status: StoreStatus, comment: str, calling_ae: str) -> Outcome:
    log.warning("store_refused", status=status.name, reason=comment, calling_ae=calling_ae)
    return Outcome(status, comment[:64])  # ErrorComment is LO: 64 characters


__all__ = ["IngestService", "Outcome", "uid_name"]
