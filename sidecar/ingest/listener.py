"""The DICOM listener (SCP): C-ECHO and C-STORE, thin handlers that return named statuses.

Connections wait at the admission gate (`admission.py`) until their A-ASSOCIATE-RQ is whole;
C-STORE data sets are written to a spool temp file as they arrive (`receive.py`); the handler
passes that file to the ingest service (`service.py`), which checks the few header tags it
needs, fsyncs, renames, journals and only then answers Success. No model work runs on the
association thread: the assembler is told through a callback that only enqueues.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid, uid_to_service_class

from sidecar.dicom.status import EchoStatus, ProviderRejectReason, RejectReason, RejectResult, RejectSource, StoreStatus
from sidecar.errors import SpoolFull
from sidecar.handoff import AssociationReleased, InstanceReceived
from sidecar.ingest.admission import AdmissionLimits, AdmittingServer
from sidecar.ingest.receive import SpoolingDimse, install
from sidecar.ingest.service import IngestService, Outcome
from sidecar.ingest.spool import Spool
from sidecar.journal import Journal
from sidecar.settings import Access, AllowedPeer
from sidecar.tls import LazyHandshakeContext, ListenerTls, server_context

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

#: Retired storage classes that older ultrasound and echo consoles still send (PS3.6 A.1, retired
#: in PS3.4 2004); pynetdicom's storage list no longer carries them.
RETIRED_STORAGE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
}


def _register_retired() -> None:
    """Tell pynetdicom these are Storage classes, so a C-STORE on them reaches our handler."""
    for uid, keyword in RETIRED_STORAGE.items():
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, keyword, StorageServiceClass)


_register_retired()


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    bind_host: str
    port: int
    max_instance_bytes: int
    max_associations: int = 16
    max_pdu_bytes: int = 1 << 20  # negotiated; a longer PDU aborts the association
    calling_ae_titles: tuple[str, ...] = ()
    require_called_ae_title: bool = True
    max_pixels: int = 1 << 31  # rows x columns x frames x samples above this is refused
    allowed: tuple[AllowedPeer, ...] = ()  # AE title + source networks (settings.Access)
    tls: ListenerTls | None = None
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    idle_timeout_s: float = 60.0  # an association silent this long is dropped

    @property
    def access(self) -> Access:
        return Access(calling_ae_titles=list(self.calling_ae_titles), allowed=list(self.allowed),
                      require_called_ae_title=self.require_called_ae_title)


class StoreObserver(Protocol):
    """Counts what C-STORE answered (metrics); called on the association thread, must be quick."""

    def instance_stored(self) -> None: ...

    def instance_refused(self, reason: str) -> None: ...


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
        observer: StoreObserver | None = None,
    ) -> None:
        self.config = config
        self._observer = observer
        self.spool = spool
        self.journal = journal
        self._on_instance = on_instance
        self._on_release = on_release
        self._on_phi = on_phi
        self._server: Any = None
        self._assoc_series: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._access = config.access
        self.service = IngestService(spool, journal, on_instance, max_instance_bytes=config.max_instance_bytes,
                                     max_pixels=config.max_pixels, on_phi=on_phi)
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.require_called_aet = self.config.require_called_ae_title
        # The calling AE title (and source address) is checked in _handle_requested.
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), TRANSFER_SYNTAXES)
        for uid in RETIRED_STORAGE:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        ae.network_timeout = self.config.idle_timeout_s  # the DUL's idle timer and each blocking read
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        return ae

    def _install(self, assoc: Any) -> None:
        """Per association: bounded PDU reads and C-STORE data sets spooled as they arrive."""
        pdu = self.config.max_pdu_bytes
        max_read = max(pdu, self.config.admission.max_request_bytes) + 6 if pdu else 0
        install(assoc, self.spool, max_read_bytes=max_read, max_instance_bytes=self.config.max_instance_bytes)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        handlers: list[Any] = [  # (event, handler) pairs, as pynetdicom's evt_handlers takes them
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
        ]
        ssl_context: Any = None
        if self.config.tls is not None:
            ssl_context = LazyHandshakeContext(server_context(self.config.tls))
        server = self.ae.make_server(
            (self.config.bind_host, self.config.port), evt_handlers=handlers, ssl_context=ssl_context,
            server_class=AdmittingServer, admission=self.config.admission,
            network_timeout_s=self.config.idle_timeout_s, install=self._install,
        )
        thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # as AE.start_server does; AssociationServer.shutdown removes it
        self._server = server
        log.info("listener_started", ae_title=self.config.ae_title, host=self.config.bind_host,
                 port=self.port, tls=self.config.tls is not None,
                 mutual_tls=bool(self.config.tls and self.config.tls.require_client_cert))

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def bound(self) -> bool:
        """True while the server socket is open (readiness)."""
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("listener_stopped")

    # -- handlers --------------------------------------------------------------------------

    def _handle_echo(self, event: evt.Event) -> int:
        return EchoStatus.SUCCESS

    def _handle_requested(self, event: evt.Event) -> None:
        """The allow-list, at A-ASSOCIATE-RQ: a stranger gets A-ASSOCIATE-RJ, rejected-permanent,
        service-user, "calling AE title not recognized" (PS3.8 9.3.4), before any data."""
        if not self._access.restricted:
            return
        primitive = event.assoc.requestor.primitive  # requestor.ae_title is set only later
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        peer = _peer(event)
        if self._access.admits(calling, peer):
            return
        log.warning("association_rejected", calling_ae=calling, peer=peer,
                    reason="calling AE title not allowed from this address")
        event.assoc.acse.send_reject(RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                                     RejectReason.CALLING_AE_NOT_RECOGNIZED)
        event.assoc.kill()

    def _handle_rejected(self, event: evt.Event) -> None:
        log.warning("association_rejected", calling_ae=_calling_ae(event), peer=_peer(event),
                    reason=_reject_reason(event))

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

    def _handle_closed(self, event: evt.Event) -> None:
        """A connection ended (released, aborted or dropped): no half-received instance stays."""
        dimse = getattr(event.assoc, "dimse", None)
        if isinstance(dimse, SpoolingDimse):
            n = dimse.discard_partial()
            if n:
                log.info("partial_instances_discarded", n=n, calling_ae=_calling_ae(event))

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
        """Answer a C-STORE (`_store_status`) and count the answer for the metrics."""
        status = self._store_status(event)
        if self._observer is not None:
            if isinstance(status, Dataset):
                code = int(status.Status)
                names = {int(s): s.name.lower() for s in StoreStatus}
                self._observer.instance_refused(names.get(code, f"0x{code:04x}"))
            else:
                self._observer.instance_stored()
        return status

    def _store_status(self, event: evt.Event) -> Dataset | int:
        """Keep the instance durably, then say Success; anything else is a named failure."""
        calling_ae = _calling_ae(event)
        try:
            outcome = self._store(event, calling_ae)
        except SpoolFull as exc:
            return _failure(StoreStatus.REFUSED_OUT_OF_RESOURCES, str(exc), calling_ae)
        except Exception as exc:  # boundary: never crash the association thread
            log.exception("store_unexpected_error", error_type=type(exc).__name__)
            return _failure(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}", calling_ae)
        if not outcome.ok:
            return _response(outcome.status, outcome.comment)
        if outcome.header is not None:
            with self._lock:
                self._assoc_series.setdefault(id(event.assoc), set()).add(outcome.header.series_uid)
        return StoreStatus.SUCCESS

    def _store(self, event: evt.Event, calling_ae: str) -> Outcome:
        dimse = event.assoc.dimse
        path: Path | None = getattr(event.request, "_dataset_path", None)  # set by SpoolingDimse
        spooled = dimse.take(path) if isinstance(dimse, SpoolingDimse) else None
        if spooled is None or path is None:  # not spooled as it arrived: spool it now, same checks
            fh, path = self.spool.incoming()
            with fh:
                fh.write(event.encoded_dataset(include_meta=True))
        elif spooled.refused:
            if spooled.on_disk:
                path.unlink(missing_ok=True)
            if spooled.write_failed:
                raise SpoolFull(spooled.write_failed)
            return _refusal(StoreStatus.REFUSED_OUT_OF_RESOURCES,
                            f"instance exceeds the limit of {self.config.max_instance_bytes} bytes", calling_ae)
        request: Any = event.request  # a C_STORE primitive (EVT_C_STORE)
        request = event.request
        assert isinstance(request, C_STORE)  # the C-STORE handler's event
        return self.service.ingest(
            path, calling_ae=calling_ae, context_sop_class=str(event.context.abstract_syntax),
            affected_sop_class=str(request.AffectedSOPClassUID),
            affected_sop_instance=str(request.AffectedSOPInstanceUID),
        )


def _refusal(status: StoreStatus, comment: str, calling_ae: str) -> Outcome:
    log.warning("store_refused", status=status.name, reason=comment, calling_ae=calling_ae)
    return Outcome(status, comment[:64])


def _response(status: StoreStatus, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = comment[:64]  # LO: 64 characters
    return rsp


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


def _reject_reason(event: evt.Event) -> str:
    """The A-ASSOCIATE-RJ reason pynetdicom sent, in words (PS3.8 9.3.4)."""
    primitive: Any = event.assoc.acceptor.primitive
    try:
        diagnostic = int(primitive.diagnostic)
        source = int(primitive.result_source)
    except (AttributeError, TypeError):
        return ""
    if source == RejectSource.SERVICE_PROVIDER_PRESENTATION and diagnostic == ProviderRejectReason.LOCAL_LIMIT_EXCEEDED:
        return "local limit exceeded (too many associations)"
    words: dict[int, str] = {RejectReason.CALLING_AE_NOT_RECOGNIZED: "calling AE title not recognized",
                             RejectReason.CALLED_AE_NOT_RECOGNIZED: "called AE title not recognized"}
    return words.get(diagnostic, f"source {source}, diagnostic {diagnostic}")


def _peer(event: evt.Event) -> str:
    try:
        return str(event.assoc.requestor.address)
    except AttributeError:
        return ""


__all__ = [
    "RETIRED_STORAGE",
    "TRANSFER_SYNTAXES",
    "AssociationReleased",
    "InstanceReceived",
    "Listener",
    "ListenerConfig",
]
