"""Memory is bounded from the first byte (issue 14): a hostile length or a huge instance never
lands in the listener's memory, and the service keeps serving.

Real listener (the whole sidecar, in this process), raw-socket peers; RSS read from /proc.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import MRImageStorage

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from tests.helpers.dcmtk import echoscu
from tests.helpers.dicom_factory import fake_uid
from tests.helpers.raw_peer import (
    RAW_AE,
    associate_rq,
    command_status,
    connect,
    p_data,
    read_pdu,
    store_command,
)
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.reliability]

MiB = 1 << 20
MAX_INSTANCE_BYTES = 8 * MiB
RSS_BUDGET = 64 * MiB


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed between the glob and the stat
        return 0


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    cfg = write_config(tmp_path_factory.mktemp("front-door-memory") / "conf", routes=[],
                       limits={"min_free_disk_bytes": 0, "max_instance_bytes": MAX_INSTANCE_BYTES})
    with running_sidecar(cfg) as sidecar:
        yield sidecar


def _associated(app: Sidecar, max_pdu: int = MiB) -> socket.socket:
    sock = connect(app.port)
    sock.sendall(associate_rq(MRImageStorage, ExplicitVRLittleEndian, calling=RAW_AE, max_pdu=max_pdu))
    pdu = read_pdu(sock)
    assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu}"
    return sock


def _negotiated_max(ac_body: bytes) -> int:
    """The Maximum Length the acceptor put in its A-ASSOCIATE-AC user information (PS3.8 D.1)."""
    at = ac_body.find(b"\x51\x00\x00\x04")
    assert at >= 0, "no Maximum Length sub-item in the A-ASSOCIATE-AC"
    return int(struct.unpack(">I", ac_body[at + 4:at + 8])[0])


class TestBoundedMemory:
    """Lengths a peer announces are not believed: memory stays near idle."""

    def test_maximum_pdu_length_is_negotiated_by_default(self, app: Sidecar) -> None:
        """The A-ASSOCIATE-AC offers 1 MiB, not 'unlimited' (0)."""
        sock = connect(app.port)
        with sock:
            sock.sendall(associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02
            assert _negotiated_max(pdu[1]) == MiB

    def test_pdu_announcing_4_gib_is_aborted_with_memory_near_idle(self, app: Sidecar) -> None:
        """A P-DATA-TF header announcing ~4 GiB, then 300 MiB: the association ends, RSS stays within 64 MiB."""
        chunk = bytes(MiB)
        idle = peak = _rss()
        sent = 0
        with _associated(app) as sock:
            sock.sendall(struct.pack(">BxI", 0x04, 0xFFFFFFF0))
            try:
                while sent < 300 * MiB:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    peak = max(peak, _rss())
            except OSError:
                pass  # the sidecar closed the connection: what the test wants
            else:
                sock.settimeout(10)
                answer = read_pdu(sock)
                assert answer is None or answer[0] == 0x07, f"expected an A-ABORT or a close, got {answer}"
            peak = max(peak, _rss())
        print(f"\n4 GiB-announced PDU: RSS +{(peak - idle) / MiB:.1f} MiB, {sent // MiB} MiB sent before the abort")
        assert peak - idle < RSS_BUDGET, f"RSS rose {(peak - idle) // MiB} MiB while {sent // MiB} MiB arrived"
        assert sent < 300 * MiB, "the sidecar read 300 MiB of a PDU longer than the maximum it negotiated"
        assert echoscu(app.port, called_aet="SIDECAR").returncode == 0

    def test_instance_over_the_limit_is_out_of_resources_while_it_arrives(self, app: Sidecar) -> None:
        """A 40 MiB instance in 1 MiB PDUs (limit 8 MiB): A700 naming the limit, nothing spooled, RSS bounded."""
        uid = fake_uid("too-large")
        chunk = bytes(MiB - 64)
        idle = peak = _rss()
        largest = 0
        with _associated(app) as sock:
            sock.sendall(p_data(1, 0x03, store_command(MRImageStorage, uid)))
            for i in range(40):
                sock.sendall(p_data(1, 0x02 if i == 39 else 0x00, chunk))
                peak = max(peak, _rss())
                largest = max([largest, *(_size(p) for p in app.spool.root.glob(".incoming-*"))])
            sock.settimeout(30)
            pdu = read_pdu(sock)
        assert pdu is not None and pdu[0] == 0x04, f"expected a C-STORE-RSP, got {pdu}"
        rsp = command_status(pdu[1])
        assert rsp.Status == StoreStatus.REFUSED_OUT_OF_RESOURCES
        assert "exceeds the limit" in rsp.ErrorComment and str(MAX_INSTANCE_BYTES) in rsp.ErrorComment
        print(f"\n40 MiB instance, limit 8 MiB: RSS +{(peak - idle) / MiB:.1f} MiB, spool file at most {largest / MiB:.1f} MiB")
        assert peak - idle < RSS_BUDGET
        assert largest <= MAX_INSTANCE_BYTES + 2 * MiB, f"the spool file grew to {largest} bytes past the limit"
        assert not list(app.spool.root.glob(".incoming-*")), "the refused instance's file was left behind"
        assert not app.journal.has_instance(uid)
        assert not list(app.spool.root.rglob(f"{uid}.dcm"))
