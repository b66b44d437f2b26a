"""Connection admission before association (issue 14): strangers cannot hold the door shut.

Real listener (the whole sidecar, in this process), raw-socket strangers, dcmtk storescu as the
allowed scanner. Every peer here stops by itself: drips end when the test ends, sockets close.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import MRImageStorage

from sidecar.app import Sidecar
from tests.helpers.dcmtk import storescu
from tests.helpers.dicom_factory import make_mr
from tests.helpers.raw_peer import HOST, associate_rq, connect, read_pdu
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.reliability]

SCANNER_AE = "SCANNER"
N_DRIP, N_SILENT = 20, 200
DRIP_EVERY_S = 10.0


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    cfg = write_config(tmp_path_factory.mktemp("front-door") / "conf", routes=[],
                       access={"calling_ae_titles": [SCANNER_AE]})
    with running_sidecar(cfg) as sidecar:
        yield sidecar


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Sidecar]:
    """A sidecar with a 1 s request deadline and a 1 s association idle timeout."""
    cfg = write_config(tmp_path / "conf", routes=[],
                       limits={"min_free_disk_bytes": 0, "request_deadline_s": 1.0, "association_idle_s": 1.0})
    with running_sidecar(cfg) as sidecar:
        yield sidecar


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the sidecar closed the connection (FIN, or RST when our bytes were left unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class _Drippers:
    """Peers that announce a 1000-byte A-ASSOCIATE-RQ, then send one byte every 10 s."""

    def __init__(self, port: int, n: int) -> None:
        self.socks = [socket.create_connection((HOST, port), timeout=5) for _ in range(n)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Self:
        for s in self.socks:
            s.sendall(struct.pack(">BxI", 0x01, 1000))
        self._thread.start()
        return self

    def _drip(self) -> None:
        while not self._stop.wait(DRIP_EVERY_S):
            for s in self.socks:
                with contextlib.suppress(OSError):  # dropped by the gate: what it should do
                    s.sendall(b"\x00")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DRIP_EVERY_S + 1)
        for s in self.socks:
            s.close()


class TestAdmission:
    """Allowed scanners get through while strangers hold connections open."""

    def test_allowed_storescu_stores_past_drips_and_silent_sockets(self, app: Sidecar, tmp_path: Path) -> None:
        """20 drip peers and 200 silent sockets connected: storescu on the allow-list gets Success within 5 s."""
        ds = make_mr(seed=314)
        path = tmp_path / "slice.dcm"
        ds.save_as(path, enforce_file_format=True)
        silent = [socket.create_connection((HOST, app.port), timeout=5) for _ in range(N_SILENT)]
        try:
            with _Drippers(app.port, N_DRIP):
                result = storescu([path], app.port, aet=SCANNER_AE, called_aet="SIDECAR", timeout_s=5.0)
        finally:
            for s in silent:
                s.close()
        assert result.returncode == 0, result.stderr
        assert app.journal.has_instance(str(ds.SOPInstanceUID))

    def test_stranger_is_still_refused_at_association(self, app: Sidecar) -> None:
        """The gate does not replace the allow-list: an unknown AE gets A-ASSOCIATE-RJ."""
        with connect(app.port) as sock:
            sock.sendall(associate_rq(MRImageStorage, ExplicitVRLittleEndian, calling="STRANGER"))
            pdu = read_pdu(sock)
        assert pdu is not None and pdu[0] == 0x03, f"expected A-ASSOCIATE-RJ, got {pdu}"

    def test_half_a_request_then_silence_is_dropped_at_the_deadline(self, quick: Sidecar) -> None:
        """Half an A-ASSOCIATE-RQ and nothing more: the connection is closed (deadline 1 s), no answer."""
        rq = associate_rq(MRImageStorage, ExplicitVRLittleEndian)
        with connect(quick.port, timeout_s=15) as sock:
            sock.sendall(rq[: len(rq) // 2])
            assert _closed_by_peer(sock), "the half request got an answer instead of a close"

    def test_request_longer_than_the_limit_is_closed(self, quick: Sidecar) -> None:
        """A PDU header announcing a 1 MiB A-ASSOCIATE-RQ (limit 64 KiB) is closed at once."""
        with connect(quick.port, timeout_s=15) as sock:
            sock.sendall(struct.pack(">BxI", 0x01, 1 << 20) + bytes(1024))
            assert _closed_by_peer(sock)

    def test_idle_association_is_dropped(self, quick: Sidecar) -> None:
        """An association that sends nothing after A-ASSOCIATE-AC is ended at association_idle_s (1 s)."""
        with connect(quick.port, timeout_s=15) as sock:
            sock.sendall(associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02
            answer = read_pdu(sock)
        assert answer is None or answer[0] == 0x07, f"expected an A-ABORT or a close, got {answer}"
