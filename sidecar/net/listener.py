"""The DICOM listener (SCP): C-ECHO and C-STORE, thin handlers that return named statuses.

The C-STORE handler checks the few attributes the sidecar needs, writes the encoded dataset
to the spool (durably), records it in the journal and only then answers Success. No model work
runs on the association thread: the assembler is told through a callback that only enqueues.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from sidecar.dicom.headers import InstanceHeader, read_header
from sidecar.dicom.status import EchoStatus, StoreStatus
from sidecar.errors import InstanceRefused, InstanceTooLarge, InvalidInstance, JournalError, SpoolFull
from sidecar.journal import InstanceRecord, Journal, Recorded
from sidecar.net.spool import Spool

log = structlog.get_logger("sidecar.listener")

TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


@dataclass(frozen=True)
class InstanceReceived:
    """Handed to the assembler after an instance is durable and journalled."""

    header: InstanceHeader
    path: str
    recorded: Recorded
    calling_ae: str


@dataclass(frozen=True)
class AssociationReleased:
    """Handed to the assembler when an association that stored instances ends normally."""

    calling_ae: str
    series_uids: frozenset[str]


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    bind_host: str
    port: int
    max_instance_bytes: int
    max_associations: int = 16
    max_pdu_bytes: int = 0
    calling_ae_titles: tuple[str, ...] = ()
    require_called_ae_title: bool = True
    max_pixels: int = 1 << 31  # rows x columns x frames x samples above this is refused


class Listener:
    """A pynetdicom AE serving C-ECHO and C-STORE on one port."""

    def __init__(
        self,
        config: ListenerConfig,
        spool: Spool,
        journal: Journal,
        on_instance: Callable[[InstanceReceived], None],
        on_release: Callable[[AssociationReleased], None] | None = None,
        on_phi: Callable[..., None] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.journal = journal
        self._on_instance = on_instance
        self._on_release = on_release
        self._on_phi = on_phi
        self._server: Any = None
        self._assoc_series: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.require_called_aet = self.config.require_called_ae_title
        if self.config.calling_ae_titles:
            ae.require_calling_aet = list(self.config.calling_ae_titles)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        return ae

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ACCEPTED, self._handle_accepted),
        ]
        self._server = self.ae.start_server(
            (self.config.bind_host, self.config.port), block=False, evt_handlers=handlers
        )
        log.info("listener_started", ae_title=self.config.ae_title, host=self.config.bind_host,
                 port=self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("listener_stopped")

    # -- handlers --------------------------------------------------------------------------

    def _handle_echo(self, event: evt.Event) -> int:
        return EchoStatus.SUCCESS

    def _handle_rejected(self, event: evt.Event) -> None:
        log.warning("association_rejected", calling_ae=_calling_ae(event), peer=_peer(event))

    def _handle_accepted(self, event: evt.Event) -> None:
        """Log the presentation contexts we turned down, so the operator sees why a store failed."""
        try:
            rejected = [
                (str(cx.abstract_syntax), int(cx.result or 0)) for cx in event.assoc.rejected_contexts
            ]
        except AttributeError:
            return
        if rejected:
            log.warning("contexts_rejected", calling_ae=_calling_ae(event),
                        contexts=[f"{uid} (result {res})" for uid, res in rejected[:8]], n=len(rejected))

    def _handle_aborted(self, event: evt.Event) -> None:
        with self._lock:
            self._assoc_series.pop(id(event.assoc), None)
        log.info("association_aborted", calling_ae=_calling_ae(event))

    def _handle_released(self, event: evt.Event) -> None:
        with self._lock:
            series = self._assoc_series.pop(id(event.assoc), set())
        if series and self._on_release is not None:
            try:
                self._on_release(AssociationReleased(_calling_ae(event), frozenset(series)))
            except Exception as exc:  # boundary: a release hook must not break the association
                log.error("release_hook_failed", error=str(exc))

    def _handle_store(self, event: evt.Event) -> Dataset | int:
        """Keep the instance durably, then say Success; anything else is a named failure."""
        calling_ae = _calling_ae(event)
        try:
            status = self._store(event, calling_ae)
        except InvalidInstance as exc:
            return _failure(StoreStatus.CANNOT_UNDERSTAND, str(exc), calling_ae)
        except InstanceRefused as exc:
            return _failure(StoreStatus.REFUSED_NOT_AUTHORIZED, str(exc), calling_ae)
        except (SpoolFull, InstanceTooLarge) as exc:
            return _failure(StoreStatus.REFUSED_OUT_OF_RESOURCES, str(exc), calling_ae)
        except JournalError as exc:
            return _failure(StoreStatus.REFUSED_OUT_OF_RESOURCES, f"journal unavailable: {exc}", calling_ae)
        except Exception as exc:  # boundary: never crash the association thread
            log.exception("store_unexpected_error", error_type=type(exc).__name__)
            return _failure(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}", calling_ae)
        return status

    def _store(self, event: evt.Event, calling_ae: str) -> int:
        raw = event.request.DataSet
        size = raw.getbuffer().nbytes if raw is not None else 0
        if size > self.config.max_instance_bytes:
            raise InstanceTooLarge(
                f"instance of {size} bytes exceeds the limit of {self.config.max_instance_bytes} bytes"
            )
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:
            raise InvalidInstance(f"dataset cannot be decoded: {type(exc).__name__}") from exc
        header = read_header(ds, max_pixels=self.config.max_pixels, dataset_bytes=size)
        if header.sop_instance_uid != str(event.request.AffectedSOPInstanceUID):
            raise InvalidInstance("SOPInstanceUID differs from Affected SOP Instance UID")
        if header.sop_class_uid != str(event.request.AffectedSOPClassUID):
            raise InvalidInstance("SOPClassUID differs from Affected SOP Class UID")
        if self._on_phi is not None:
            self._on_phi(*header.phi)
        path = self.spool.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
        if self.journal.has_instance(header.sop_instance_uid):
            log.info("instance_duplicate", sop_instance_uid=header.sop_instance_uid)
            return StoreStatus.SUCCESS  # stored once; a resend is acknowledged, not kept twice
        data = event.encoded_dataset(include_meta=True)
        self.spool.write(path, data)
        recorded = self.journal.record_instance(
            InstanceRecord(
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                series_uid=header.series_uid,
                study_uid=header.study_uid,
                modality=header.modality,
                path=str(path),
                size=len(data),
                calling_ae=calling_ae,
                expected_count=header.expected_count,
            )
        )
        with self._lock:
            self._assoc_series.setdefault(id(event.assoc), set()).add(header.series_uid)
        if recorded.new:
            self._on_instance(InstanceReceived(header, str(path), recorded, calling_ae))
        return StoreStatus.SUCCESS


def _failure(status: StoreStatus, comment: str, calling_ae: str) -> Dataset:
    log.warning("store_refused", status=status.name, reason=comment, calling_ae=calling_ae)
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = comment[:64]  # LO: 64 characters
    return rsp


def _calling_ae(event: evt.Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return ""


def _peer(event: evt.Event) -> str:
    try:
        return str(event.assoc.requestor.address)
    except AttributeError:
        return ""


__all__ = ["AssociationReleased", "InstanceReceived", "Listener", "ListenerConfig", "TRANSFER_SYNTAXES"]
