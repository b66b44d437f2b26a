"""A scripted DICOM upper-layer peer on a raw socket: PDUs built by hand (PS3.8 9.3), so a test
can send what no well-behaved SCU would (drips, huge lengths, half requests, aborts)."""

from __future__ import annotations

import socket
import struct
from io import BytesIO

from pydicom import Dataset
from pynetdicom.dsutils import decode, encode

HOST = "127.0.0.1"
RAW_AE = "RAWPEER"
RAW_TIMEOUT_S = 10.0
A_ABORT = struct.pack(">BxIBBBB", 0x07, 4, 0, 0, 0, 0)
A_RELEASE_RQ = struct.pack(">BxII", 0x05, 4, 0)


def item(item_type: int, data: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(data)) + data


def associate_rq(abstract: str, syntax: str, calling: str = RAW_AE, called: str = "SIDECAR",
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing one presentation context, id 1."""
    context = item(0x20, b"\x01\x00\x00\x00" + item(0x30, abstract.encode()) + item(0x40, syntax.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", max_pdu)) + item(0x52, b"1.2.826.0.1.3680043.9.9999.9"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def p_data(context_id: int, flags: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (flags: bit 0 command, bit 1 last fragment)."""
    pdv = struct.pack(">IBB", len(data) + 2, context_id, flags) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def store_command(sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance
    cmd.CommandGroupLength = 0
    cmd.CommandGroupLength = len(_implicit(cmd)) - 12  # group length counts what follows it
    return _implicit(cmd)


def _implicit(ds: Dataset) -> bytes:
    data = encode(ds, True, True)
    assert data is not None, "pydicom could not encode the command set"
    return bytes(data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """One PDU (type, body), or None when the peer closed the connection."""
    head = recv_exactly(sock, 6)
    if head is None:
        return None
    pdu_type, length = struct.unpack(">BxI", head)
    body = recv_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def connect(port: int, timeout_s: float = RAW_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def command_status(body: bytes) -> Dataset:
    """The command set of a P-DATA-TF body holding one whole command PDV (a DIMSE response)."""
    length, _cx, _flags = struct.unpack(">IBB", body[:6])
    return decode(BytesIO(body[6:4 + length]), True, True)


__all__ = ["A_ABORT", "A_RELEASE_RQ", "HOST", "RAW_AE", "RAW_TIMEOUT_S", "associate_rq", "command_status",
           "connect", "item", "p_data", "read_pdu", "recv_exactly", "store_command"]
