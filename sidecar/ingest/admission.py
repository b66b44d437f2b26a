"""Connection admission before association: strangers cannot hold the door shut.

What pynetdicom (3.0) does on its own, and why this layer exists (docs/conformance.md,
"Admission"): its server hands every accepted socket to a new association thread at once;
that thread counts against `maximum_associations` before a byte is read, and reads PDUs with
blocking receives outside the ARTIM timer. So sockets that send nothing, or that announce an
A-ASSOCIATE-RQ and then drip one byte at a time, fill every slot for as long as they like, and
an allowed scanner is refused ("local limit exceeded") by callers that never sent an AE title.

`AdmissionGate` sits between the accept loop and pynetdicom: one thread with an edge-triggered
epoll that waits, without consuming a byte (MSG_PEEK), until the first protocol unit is in the
kernel's buffer whole: an A-ASSOCIATE-RQ PDU (no longer than `max_request_bytes`) or, on a TLS
port, the first TLS record. Only then is the socket handed to pynetdicom, which reads the same
bytes as if the gate were not there. Until then a connection holds no thread and no
association slot, and
- it is closed at `deadline_s` after it connected (a total deadline, not per read);
- at most `per_address` connections from one source address and `total` from all may wait: a
  newcomer over either cap evicts the oldest waiting one (the one from its address first), so a
  scanner that sends its request at once always gets through, however many sockets a stranger
  holds open.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = structlog.get_logger("sidecar.ingest.admission")

_A_ASSOCIATE_RQ = 0x01
_TLS_HANDSHAKE = 0x16
_PDU_HEADER = struct.Struct(">BxL")  # type, reserved, length (PS3.8 9.3.1)
_TLS_HEADER = struct.Struct(">BHH")  # content type, version, length (RFC 8446 5.1)
_TLS_MAX_RECORD = (1 << 14) + 2048


@dataclass(frozen=True)
class AdmissionLimits:
    deadline_s: float = 10.0  # the whole first request must arrive within this of connecting
    per_address: int = 32  # waiting (not yet associated) connections from one source address
    total: int = 256  # waiting connections from everyone
    max_request_bytes: int = 64 * 1024  # an A-ASSOCIATE-RQ longer than this is refused
    backlog: int = 128  # the listen backlog (pynetdicom's default is 5)


@dataclass
class _Waiting:
    sock: socket.socket
    address: tuple[str, int]
    deadline: float
    seq: int = field(default=0)


class AdmissionGate:
    """Holds accepted sockets until their first request is complete, then hands them over."""

    def __init__(self, limits: AdmissionLimits, hand_over: Callable[[socket.socket, tuple[str, int]], None],
                 *, tls: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self._hand_over, self._tls, self._clock = limits, hand_over, tls, clock
        self._epoll = select.epoll()
        self._waiting: dict[int, _Waiting] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admission", daemon=True)
        self.evicted = 0
        self.expired = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        with self._lock:
            for w in list(self._waiting.values()):
                self._drop(w)
        self._epoll.close()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def offer(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """A new connection (from the accept loop; never blocks)."""
        with self._lock:
            host = address[0]
            same = [w for w in self._waiting.values() if w.address[0] == host]
            if len(same) >= self.limits.per_address:
                self._evict(min(same, key=lambda w: w.seq), "per-address cap")
            if len(self._waiting) >= self.limits.total:
                self._evict(min(self._waiting.values(), key=lambda w: w.seq), "total cap")
            self._seq += 1
            w = _Waiting(sock, address, self._clock() + self.limits.deadline_s, self._seq)
            self._waiting[sock.fileno()] = w
            # registering a socket that already holds data reports it at once (edge-triggered too)
            self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def _evict(self, w: _Waiting, why: str) -> None:
        self.evicted += 1
        log.warning("connection_evicted", peer=w.address[0], reason=why)
        self._drop(w)

    def _drop(self, w: _Waiting) -> None:
        fd = w.sock.fileno()
        self._waiting.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        with contextlib.suppress(OSError):
            w.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._epoll.poll(0.2)
            except (OSError, ValueError):
                return
            for fd, _ in events:
                with self._lock:
                    w = self._waiting.get(fd)
                    verdict = self._look(w) if w is not None else None
                    if w is None or verdict is None:
                        continue
                    self._waiting.pop(fd, None)
                    with contextlib.suppress(OSError, ValueError):
                        self._epoll.unregister(fd)
                if verdict:
                    try:
                        self._hand_over(w.sock, w.address)
                    except Exception as exc:  # boundary: one bad socket must not stop the gate
                        log.error("hand_over_failed", error_type=type(exc).__name__)
                        w.sock.close()
                else:
                    w.sock.close()
            self._expire()

    def _expire(self) -> None:
        now = self._clock()
        with self._lock:
            late = [w for w in self._waiting.values() if w.deadline <= now]
            for w in late:
                self.expired += 1
                log.warning("connection_dropped", peer=w.address[0],
                            reason=f"no complete request within {self.limits.deadline_s:g} s")
                self._drop(w)

    def _look(self, w: _Waiting) -> bool | None:
        """True: the first request is whole, hand over; False: refuse and close; None: wait."""
        want = _TLS_MAX_RECORD if self._tls else self.limits.max_request_bytes + _PDU_HEADER.size
        try:
            data = w.sock.recv(want, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return False
        if not data:
            return False  # closed before a request
        header = _TLS_HEADER if self._tls else _PDU_HEADER
        if len(data) < header.size:
            return None
        if self._tls:
            kind, _, length = _TLS_HEADER.unpack_from(data)
            if kind != _TLS_HANDSHAKE:
                return True  # not TLS: the handshake on the association's thread refuses it
            return True if len(data) >= header.size + length else None
        kind, length = _PDU_HEADER.unpack_from(data)
        if kind != _A_ASSOCIATE_RQ:
            return True  # pynetdicom answers a PDU out of order with an A-ABORT
        if length > self.limits.max_request_bytes:
            log.warning("association_request_too_long", peer=w.address[0], announced_bytes=length,
                        limit_bytes=self.limits.max_request_bytes)
            return False
        return True if len(data) >= header.size + length else None


class AdmittingServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the admission gate between accept and association.

    Built by `AE.make_server(..., server_class=AdmittingServer, admission=..., ...)`. A TLS
    context is applied at hand-over (after the gate), not in the accept loop.
    """

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any, ssl_context: Any = None,
                 evt_handlers: Any = None, *, admission: AdmissionLimits, network_timeout_s: float | None,
                 install: Callable[[Any], None] | None = None) -> None:
        self.request_queue_size = admission.backlog  # read by server_activate() during __init__
        self.install_association = install
        self.network_timeout_s = network_timeout_s
        self.tls_context = ssl_context
        self.gate = AdmissionGate(admission, self._admitted, tls=ssl_context is not None)
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers=evt_handlers,
                         request_handler=InstallingHandler)
        self.gate.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """From the accept loop: wait at the gate, not on an association thread."""
        self.gate.offer(request, client_address)

    def _admitted(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.settimeout(self.network_timeout_s)  # no blocking read waits for ever on a silent peer
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True)
        ThreadedAssociationServer.process_request(self, sock, address)

    def shutdown(self) -> None:
        self.gate.stop()
        super().shutdown()


class InstallingHandler(RequestHandler):
    """pynetdicom's request handler; the server's `install_association` sees each new association."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        install = getattr(self.server, "install_association", None)
        if install is not None:
            install(assoc)
        return assoc


__all__ = ["AdmissionGate", "AdmissionLimits", "AdmittingServer", "InstallingHandler"]
