"""Misbehaving peers on the raw socket: garbage, huge PDU lengths, abandoned associations, aborts.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import MRImageStorage

from tests.helpers.bad_input import (
    A_ABORT,
    BAD_INPUT_MARKS,
    Service,
    _associate_rq,
    _p_data,
    _raw_peer,
    _read_pdu,
    _store_command,
    module_service,
)
from tests.helpers.dicom_factory import make_mr

pytestmark = BAD_INPUT_MARKS


service = module_service("bad-input-peers")


def _answer_to_garbage(sock: socket.socket) -> int | None:
    """The sidecar's first PDU type after garbage, or None when it just closed the connection.

    PS3.8 9.2 (AA-1): an unrecognised PDU is answered with an A-ABORT, after which the acceptor
    waits for the peer to close the transport (the test closes it at once).
    """
    pdu = _read_pdu(sock)
    return None if pdu is None else pdu[0]


class TestMisbehavingPeers:
    """Garbage and aborts on the socket never hurt the service or what it acknowledged."""

    @pytest.mark.parametrize(("garbage", "aborts"), [
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", True, id="http-request"),
        pytest.param(b"\x09\x00\x00\x00\x00\x10" + bytes(16), True, id="unknown-pdu-type"),
        pytest.param(np.random.default_rng(7).bytes(4096), False, id="random-bytes"),
    ])
    def test_garbage_bytes_do_not_stop_the_service(self, service: Service, garbage: bytes, aborts: bool) -> None:
        """Bytes that are not an upper layer PDU get an A-ABORT (or a wait) and other peers are served meanwhile."""
        with _raw_peer(service) as sock:
            sock.sendall(garbage)
            sock.settimeout(2.0)
            try:
                answer: int | str | None = _answer_to_garbage(sock)
            except TimeoutError:
                answer = "still reading"  # e.g. a random byte that looks like a PDU type with a huge length
            if aborts:
                assert answer == 0x07, f"expected an A-ABORT PDU, got {answer}"
            else:
                assert answer in (0x07, None, "still reading")
            service.assert_still_serving()  # while the garbage connection is still open

    def test_pdu_announcing_gigabytes_then_closing_is_survived(self, service: Service) -> None:
        """A PDU header claiming a 4 GiB body, followed by a close, leaves the service serving."""
        with _raw_peer(service) as sock:
            sock.sendall(struct.pack(">BxI", 0x04, 0xFFFFFFF0) + bytes(1024))
        service.assert_still_serving()

    def test_associate_request_then_close_is_survived(self, service: Service) -> None:
        """An A-ASSOCIATE-RQ that is accepted and then simply closed leaves the service serving."""
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu}"
        service.assert_still_serving()

    @pytest.mark.parametrize("ending", ["close", "a-abort"])
    def test_abort_mid_transfer_keeps_nothing_and_the_service_keeps_serving(
        self, service: Service, ending: str,
    ) -> None:
        """Half an instance then a close or an A-ABORT: nothing is spooled or journalled for it."""
        ds = make_mr(seed=61)
        uid = str(ds.SOPInstanceUID)
        data = _encoded(ds)
        before = service.spooled_files()
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu}"
            sock.sendall(_p_data(1, 0x03, _store_command(MRImageStorage, uid)))
            sock.sendall(_p_data(1, 0x00, data[: len(data) // 2]))  # not the last fragment
            if ending == "a-abort":
                sock.sendall(A_ABORT)
                assert _read_pdu(sock) is None, "the sidecar answered an A-ABORT"
        service.assert_still_serving()
        assert not service.app.journal.has_instance(uid)
        assert not [p for p in service.spooled_files() - before if uid in p.name]
        assert not list(service.spool.rglob(".incoming-*"))

    def test_complete_raw_store_succeeds(self, service: Service) -> None:
        """The scripted peer is sound: the same PDUs, sent whole, store an instance with Success."""
        ds = make_mr(seed=62)
        uid = str(ds.SOPInstanceUID)
        data = _encoded(ds)
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, ExplicitVRLittleEndian))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02
            sock.sendall(_p_data(1, 0x03, _store_command(MRImageStorage, uid)))
            sock.sendall(_p_data(1, 0x02, data))
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x04, f"expected the C-STORE-RSP, got {pdu}"
            sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))  # A-RELEASE-RQ
            pdu = _read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x06
        stored = service.app.journal.instance(uid)
        assert stored is not None
        service.acknowledged[uid] = Path(stored.path)
        service.assert_still_serving()


def _encoded(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, as a peer sends it."""
    data = encode(ds, False, True)
    assert data is not None, "pydicom could not encode the test data set"
    return bytes(data)
