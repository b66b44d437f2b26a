"""Chunked receive: C-STORE data sets go from the socket to a spool file, never whole into memory.

pynetdicom (3.0) reads a whole PDU into memory, however long its header says it is, and keeps a
C-STORE data set in a BytesIO until the last fragment unless the process-wide
`_config.STORE_RECV_CHUNKED_DATASET` is on (which then writes to the system temp folder, not
the spool's disk, and never checks a size). Two small pieces, installed per association by
`install`, bound memory from the first byte instead:

- `BoundedSocket` refuses to read a PDU longer than the maximum length the sidecar negotiated
  (PS3.8 9.3.1: the peer must not exceed it): the association is aborted (A-ABORT, invalid PDU
  parameter value) before any of it is buffered.
- `SpoolingDimse` feeds pynetdicom's DIMSE decoder one PDV at a time; the moment a C-STORE's
  command set is complete it opens a temporary file below the spool root, writes the File Meta
  (from the command set and the accepted transfer syntax, the bytes pynetdicom writes), and every data
  set fragment after that is written straight to it. When the instance crosses
  `max_instance_bytes` the file is truncated and the rest of the instance is read and dropped,
  so the handler can answer "out of resources" and the association carries on.
"""

from __future__ import annotations

import contextlib
import uuid
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from sidecar.dicom.filemeta import FileMetaError, file_meta_bytes
from sidecar.dicom.status import AbortReason, AbortSource
from sidecar.errors import SpoolFull
from sidecar.ingest.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = structlog.get_logger("sidecar.ingest.receive")


class BoundedSocket(AssociationSocket):
    """An AssociationSocket that will not buffer a PDU longer than `max_read` bytes."""

    max_read: int = 0  # 0: no bound (max_pdu_bytes 0 in settings)

    def recv(self, nr_bytes: int) -> bytearray:
        if self.max_read and nr_bytes > self.max_read:
            log.warning("pdu_too_long", announced_bytes=nr_bytes, limit_bytes=self.max_read)
            abort = A_ABORT_RQ()
            abort.source = int(AbortSource.SERVICE_PROVIDER)
            abort.reason_diagnostic = int(AbortReason.INVALID_PDU_PARAMETER_VALUE)
            try:
                if self.socket is not None:
                    self.socket.sendall(abort.encode())
            except OSError:
                pass
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the negotiated maximum of {self.max_read}")
        return super().recv(nr_bytes)


class _Discard:
    """Where a refused instance's data set goes while the rest of it is read off the socket."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def truncate(self, size: int = 0) -> int:
        return size

    def close(self) -> None:
        pass


class SpoolFile:
    """The file a C-STORE data set is written to (what pynetdicom expects of its temp file)."""

    def __init__(self, path: Path, fh: Any, limit: int, *, on_disk: bool = True) -> None:
        self.name = str(path)
        self.on_disk = on_disk  # False: a refused instance read into a sink, no file behind the name
        self.file = fh  # unbuffered: pynetdicom calls .file.flush() after each fragment
        self.limit = limit
        self.written = 0
        self.over_limit = False
        self.write_failed = ""  # why the disk refused a fragment (full, out of inodes, I/O error)

    @property
    def refused(self) -> bool:
        return self.over_limit or bool(self.write_failed)

    def write(self, data: bytes) -> int:
        if self.refused:
            return len(data)
        self.written += len(data)
        if self.written > self.limit:
            self.over_limit = True
            self._give_back()
            return len(data)
        view = memoryview(data)
        try:
            while view:
                n = self.file.write(view)
                if not n:
                    raise OSError("no space left on the spool disk")
                view = view[n:]
        except OSError as exc:
            self.write_failed = f"spool write failed: {exc.strerror or exc}"
            log.warning("spool_write_failed", reason=self.write_failed)
            self._give_back()
        return len(data)

    def _give_back(self) -> None:
        """Free the disk at once; the rest of the instance is read and dropped."""
        with contextlib.suppress(OSError):
            self.file.truncate(0)

    def close(self) -> None:
        self.file.close()

    def __bool__(self) -> bool:
        return True


class SpoolingDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with C-STORE data sets written to the spool as they arrive."""

    def __init__(self, assoc: Association, spool: Spool, max_instance_bytes: int) -> None:
        super().__init__(assoc)
        self._spool = spool
        self._limit = max_instance_bytes
        self.files: dict[str, SpoolFile] = {}  # path -> file, until the handler has answered

    def receive_primitive(self, primitive: P_DATA) -> None:
        for pdv in primitive.presentation_data_value_list:
            one = P_DATA()
            one.presentation_data_value_list = cast(Any, [list(pdv)])  # the setter wants [id, pdv] lists
            super().receive_primitive(one)
            msg = self.message
            if (isinstance(msg, C_STORE_RQ) and msg._data_set_file is None and msg.command_set is not None
                    and not self._adopt(msg)):
                    self.dul.event_queue.put("Evt19")  # invalid message: pynetdicom aborts
                    return

    def _adopt(self, msg: C_STORE_RQ) -> bool:
        """Start the data set's spool file, once the command set is complete."""
        cx = next((c for c in self.assoc.accepted_contexts if c.context_id == msg.context_id), None)
        if cx is None or not cx.transfer_syntax:
            log.warning("store_on_unknown_context", context_id=msg.context_id)
            return False
        cs = msg.command_set
        try:
            meta = file_meta_bytes(str(cs.AffectedSOPClassUID), str(cs.AffectedSOPInstanceUID),
                                   str(cx.transfer_syntax[0]))
        except FileMetaError as exc:
            log.warning("store_command_invalid", reason=str(exc))
            return False
        try:
            fh, path = self._spool.incoming()
        except SpoolFull as exc:
            log.warning("spool_full_on_receive", reason=str(exc))
            # pynetdicom unlinks the data set file's name after the handler: never hand it a real
            # file (it once removed /dev/null), only a name below the spool that is never created
            path = self._spool.root / f".refused-{uuid.uuid4().hex}"
            spooled = SpoolFile(path, _Discard(), 0, on_disk=False)
            spooled.write_failed = str(exc)
        else:
            spooled = SpoolFile(path, fh, self._limit)
            spooled.write(meta)
            spooled.written = 0  # the limit counts the data set, not the File Meta
        msg._data_set_file = cast(Any, spooled)
        msg._data_set_path = path
        self.files[str(path)] = spooled
        # a data set fragment in the same PDV list already went to the BytesIO: move it over
        buffered = msg.data_set
        if isinstance(buffered, BytesIO) and buffered.tell():
            spooled.write(buffered.getvalue())
            buffered.seek(0)
            buffered.truncate(0)
        return True

    def discard_partial(self) -> int:
        """The association ended: remove spool files of data sets never handed to the handler."""
        n = 0
        for name, spooled in list(self.files.items()):
            self.files.pop(name, None)
            with contextlib.suppress(OSError):
                spooled.close()
            if spooled.on_disk:
                Path(name).unlink(missing_ok=True)
                n += 1
        return n

    def take(self, path: Path | None) -> SpoolFile | None:
        """The spool file of a received data set (for the C-STORE handler), forgotten after."""
        if path is None:
            return None
        return self.files.pop(str(path), None)


def install(assoc: Association, spool: Spool, *, max_read_bytes: int, max_instance_bytes: int) -> SpoolingDimse:
    """Bound this acceptor association's PDU reads (0: unbounded) and spool its C-STORE data sets."""
    sock = assoc.dul.socket
    if sock is not None:
        sock.__class__ = BoundedSocket  # same object, one overridden method: no state is copied
        cast(BoundedSocket, sock).max_read = max_read_bytes
    dimse = SpoolingDimse(assoc, spool, max_instance_bytes)
    assoc.dimse = dimse
    return dimse


__all__ = ["BoundedSocket", "SpoolFile", "SpoolingDimse", "install"]
