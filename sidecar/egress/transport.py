"""The store transport seam: how the sender hands result files to one destination.

`StoreTransport` is the Protocol; `DicomTransport` (C-STORE SCU, pynetdicom) and
`FolderTransport` (atomic copy) and `DicomwebTransport` (STOW-RS, sidecar/egress/stow.py)
are the real ones; `FakeTransport` is the scripted stand-in
for tests. A transport never touches the journal: it answers one `SendOutcome` per file and
the sender decides what that means (sent, retry later, dead letter).

Retry policy for C-STORE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C):

- Success 0x0000 and the warnings 0xB000/0xB006/0xB007: delivered.
- Duplicate SOP Instance 0x0111: delivered (our result UIDs are deterministic, so the peer
  already holds this very object, e.g. after a crash between send and journal update).
- Refused: out of resources 0xA7xx and Processing failure 0x0110: retryable (transient).
- Any other failure (0xA9xx, 0xCxxx, 0x0122, 0x0124, ...): not retryable.
- Association rejected or aborted, connection refused, timeouts, no response: retryable.
- A file that cannot be read, or that no accepted presentation context can carry: not retryable.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from sidecar.dicom.status import EchoStatus, StoreStatus
from sidecar.durable import fsync_folder
from sidecar.egress.outcome import SendOutcome, classify_store_status
from sidecar.egress.stow import DicomwebTransport
from sidecar.errors import DeliveryError
from sidecar.settings import DicomDestination, DicomwebDestination, FolderDestination
from sidecar.tls import client_context

#: pynetdicom (and PS3.8) allow at most 128 presentation contexts per association request.
MAX_CONTEXTS = 128
_FALLBACK_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
@runtime_checkable
class StoreTransport(Protocol):
    """Delivers files to one destination."""

    def echo(self) -> None:
        """Check the destination answers; raises DeliveryError when it does not."""
        ...

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        """Send every file (one association for DICOM); one outcome per path, in order."""
        ...


# -- DICOM ---------------------------------------------------------------------------------


class _NoContext(DeliveryError):
    """The peer associated but accepted none of the offered contexts (not retryable)."""


@dataclass(frozen=True)
class _Loaded:
    index: int
    dataset: Dataset  # header only (read with stop_before_pixels)
    sop_class: UID
    syntax: UID
    path: str


class DicomTransport:
    """C-STORE SCU to one DICOM destination; all files of a call go over one association.

    Requests, per SOP class, a context for each transfer syntax the files are in plus one
    offering Explicit and Implicit VR Little Endian, so uncompressed data can be converted
    when the peer declines the file's own syntax. More contexts than an association can
    carry are split over several associations.
    """

    def __init__(self, dest: DicomDestination, calling_ae: str) -> None:
        self.dest = dest
        self.calling_ae = calling_ae
        self._tls_args: tuple[ssl.SSLContext, str] | None = None
        if dest.tls is not None:  # DICOM TLS (PS3.15 B.9); the context is built once
            self._tls_args = (client_context(dest.tls), dest.tls.server_name or dest.host)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        timeout = self.dest.timeout_s
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.connection_timeout = timeout
        return ae

    def _associate(self, ae: AE, contexts: list[PresentationContext]) -> Association:
        """An established association, or DeliveryError (retryable) / _NoContext (not) saying why."""
        seen: set[str] = set()
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, lambda event: seen.add("connected")),
            (evt.EVT_ACCEPTED, lambda event: seen.add("accepted")),
        ]
        assoc = ae.associate(
            self.dest.host, self.dest.port, contexts=contexts, ae_title=self.dest.ae_title, evt_handlers=handlers,
            tls_args=self._tls_args,
        )
        if assoc.is_established:
            return assoc
        where = f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"
        if "accepted" in seen and not assoc.accepted_contexts:
            offered = sorted({UID(str(cx.abstract_syntax)).name for cx in contexts})
            raise _NoContext(f"{where} accepted no presentation context for {', '.join(offered)}")
        if "connected" not in seen:
            how = "TLS handshake failed, refused or timed out" if self._tls_args else "refused or timed out"
            raise DeliveryError(f"cannot connect to {where} ({how})")
        if assoc.is_rejected:
            raise DeliveryError(f"association rejected by {where}")
        raise DeliveryError(f"association aborted by {where}")

    def echo(self) -> None:
        ae = self._ae()
        assoc = self._associate(ae, [build_context(Verification)])
        try:
            status = assoc.send_c_echo()
        finally:
            _close(assoc)
        code = getattr(status, "Status", None)
        if code is None:
            raise DeliveryError(f"no C-ECHO response from {self.dest.ae_title} (timeout or abort)")
        if code != EchoStatus.SUCCESS:
            raise DeliveryError(f"C-ECHO to {self.dest.ae_title} answered status 0x{int(code):04X}")

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        outcomes: list[SendOutcome | None] = [None] * len(paths)
        loaded: list[_Loaded] = []
        for i, path in enumerate(paths):
            try:
                ds = dcmread(path, stop_before_pixels=True)
                sop_class = UID(ds.SOPClassUID)
                str(ds.SOPInstanceUID)
                syntax = UID(ds.file_meta.TransferSyntaxUID)
            except Exception as exc:  # boundary: an unreadable file fails alone, never the batch
                outcomes[i] = SendOutcome.failed(
                    f"cannot read {Path(path).name}: {type(exc).__name__}: {exc}"[:500]
                )
                continue
            loaded.append(_Loaded(i, ds, sop_class, syntax, str(path)))
        for group, contexts in _groups(loaded):
            self._send_group(group, contexts, outcomes)
        return [o if o is not None else SendOutcome.retry("not attempted") for o in outcomes]

    def _send_group(
        self, group: list[_Loaded], contexts: list[PresentationContext], outcomes: list[SendOutcome | None]
    ) -> None:
        ae = self._ae()
        try:
            assoc = self._associate(ae, contexts)
        except _NoContext as exc:
            for item in group:
                outcomes[item.index] = SendOutcome.failed(str(exc))
            return
        except DeliveryError as exc:
            for item in group:
                outcomes[item.index] = SendOutcome.retry(str(exc))
            return
        try:
            for n, item in enumerate(group):
                if not assoc.is_established:
                    outcomes[item.index] = SendOutcome.retry("association lost before this file was sent")
                    continue
                outcomes[item.index] = self._store_one(assoc, item, msg_id=n % 65535 + 1)
        finally:
            _close(assoc)

    def _store_one(self, assoc: Association, item: _Loaded, msg_id: int) -> SendOutcome:
        try:
            if _has_context(assoc, item.sop_class, item.syntax):
                # The file's own bytes go out as they are: no decode, no re-encode.
                rsp = assoc.send_c_store(item.path, msg_id=msg_id)
            else:  # the peer wants another syntax: decode and let pynetdicom convert
                rsp = assoc.send_c_store(dcmread(item.path), msg_id=msg_id)
        except ValueError as exc:  # no accepted context, or the dataset cannot be encoded
            return SendOutcome.failed(
                f"peer accepted no presentation context for {item.sop_class.name} in {item.syntax.name}: {exc}"[:500]
            )
        except RuntimeError as exc:  # the association ended under us
            return SendOutcome.retry(f"association lost: {exc}")
        code = getattr(rsp, "Status", None)
        if code is None:
            return SendOutcome.retry("no C-STORE response (timeout, abort or invalid response)")
        return classify_store_status(int(code), str(getattr(rsp, "ErrorComment", "") or ""))


def _contexts_for(items: list[_Loaded]) -> list[tuple[str, tuple[str, ...]]]:
    """(abstract syntax, transfer syntaxes) pairs, deduplicated, in first-seen order."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        if item.syntax not in _FALLBACK_SYNTAXES:
            wanted[(item.sop_class, (item.syntax,))] = None
        wanted[(item.sop_class, tuple(_FALLBACK_SYNTAXES))] = None
    return list(wanted)


def _groups(loaded: list[_Loaded]) -> list[tuple[list[_Loaded], list[PresentationContext]]]:
    """Split files so that no association request carries more than MAX_CONTEXTS contexts."""
    groups: list[tuple[list[_Loaded], list[PresentationContext]]] = []
    current: list[_Loaded] = []
    for item in loaded:
        if current and len(_contexts_for([*current, item])) > MAX_CONTEXTS:
            groups.append((current, _build(current)))
            current = []
        current.append(item)
    if current:
        groups.append((current, _build(current)))
    return groups


def _build(items: list[_Loaded]) -> list[PresentationContext]:
    return [build_context(ab, list(ts)) for ab, ts in _contexts_for(items)]


def _has_context(assoc: Association, sop_class: UID, syntax: UID) -> bool:
    return any(
        cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == syntax
        for cx in assoc.accepted_contexts
    )


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


# -- folder --------------------------------------------------------------------------------


class FolderTransport:
    """Copies files into a folder: temp file in the same folder, fsync, rename (atomic)."""

    def __init__(self, dest: FolderDestination) -> None:
        self.dest = dest

    def echo(self) -> None:
        folder = Path(self.dest.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(f"cannot create folder for {self.dest.name}: {exc.strerror}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DeliveryError(f"folder for {self.dest.name} is not writable")

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        return [self._copy(Path(p)) for p in paths]

    def _copy(self, src: Path) -> SendOutcome:
        folder = Path(self.dest.path)
        try:
            source = src.open("rb")
        except OSError as exc:
            return SendOutcome.failed(f"cannot read {src.name}: {exc.strerror}")
        with source:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".tmp")
            except OSError as exc:
                return SendOutcome.retry(f"cannot write into folder {self.dest.name}: {exc.strerror}")
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, folder / src.name)
                fsync_folder(folder)
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                return SendOutcome.retry(f"cannot write {src.name} into folder {self.dest.name}: {exc.strerror}")
        return SendOutcome.delivered()




# -- fake ----------------------------------------------------------------------------------


class FakeTransport:
    """A scripted transport for tests; thread-safe.

    - Every file is delivered unless scripted otherwise: `script(name, *outcomes)` queues
      outcomes for files whose basename is `name` (consumed one per send of that file), and
      `outcome_for` (a function of the path) decides when nothing is queued.
    - `go_down(n)` makes the next `n` calls (send or echo) fail as an unreachable peer
      would: every file retryable; `go_down()` with no count stays down until `come_up()`.
    - `latency_s` makes every call take that long (a slow or timing-out peer).
    - Calls are recorded: `send_calls` (the paths of each call), `delivered` (paths that
      got an ok outcome), `echo_calls`.
    """

    UNREACHABLE = "fake destination unreachable"

    def __init__(
        self,
        *,
        down_for: int = 0,
        latency_s: float = 0.0,
        outcome_for: Callable[[str], SendOutcome] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._down_for: int | None = down_for
        self.latency_s = latency_s
        self._outcome_for = outcome_for
        self._scripted: dict[str, deque[SendOutcome]] = {}
        self.send_calls: list[list[str]] = []
        self.delivered: list[str] = []
        self.echo_calls = 0

    def go_down(self, n_calls: int | None = None) -> None:
        with self._lock:
            self._down_for = n_calls

    def come_up(self) -> None:
        with self._lock:
            self._down_for = 0

    def script(self, name: str, *outcomes: SendOutcome) -> None:
        with self._lock:
            self._scripted.setdefault(name, deque()).extend(outcomes)

    def _take_down(self) -> bool:
        """True if this call fails as unreachable (consumes one of the `down_for` calls)."""
        if self._down_for is None:
            return True
        if self._down_for > 0:
            self._down_for -= 1
            return True
        return False

    def echo(self) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            self.echo_calls += 1
            if self._take_down():
                raise DeliveryError(self.UNREACHABLE)

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        if self.latency_s:
            time.sleep(self.latency_s)
        with self._lock:
            self.send_calls.append(list(paths))
            if self._take_down():
                return [SendOutcome.retry(self.UNREACHABLE) for _ in paths]
            outcomes = []
            for p in paths:
                queued = self._scripted.get(Path(p).name)
                if queued:
                    outcome = queued.popleft()
                elif self._outcome_for is not None:
                    outcome = self._outcome_for(p)
                else:
                    outcome = SendOutcome.delivered(StoreStatus.SUCCESS)
                if outcome.ok:
                    self.delivered.append(p)
                outcomes.append(outcome)
            return outcomes


def make_transport(
    dest: DicomDestination | FolderDestination | DicomwebDestination, calling_ae: str
) -> StoreTransport:
    """The real transport for a configured destination."""
    if isinstance(dest, DicomDestination):
        return DicomTransport(dest, calling_ae)
    if isinstance(dest, DicomwebDestination):

        return DicomwebTransport(dest)
    return FolderTransport(dest)


__all__ = [
    "MAX_CONTEXTS",
    "DicomTransport",
    "FakeTransport",
    "FolderTransport",
    "SendOutcome",
    "StoreTransport",
    "classify_store_status",
    "make_transport",
]
