"""The Part 10 preamble and File Meta group of a received instance, encoded directly (PS3.10 7.1).

The chunked receiver writes this in front of every C-STORE data set it spools. pydicom's
`create_file_meta` + `write_file_meta_info` produce the same bytes (tests/unit/test_filemeta.py
compares them) but cost ~0.6 ms per instance on the listener's thread, a tenth of what pynetdicom
itself spends on a 256x256 slice; these seven elements are fixed in form, so they are packed here.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"
_LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN")  # 2 reserved bytes, then a 4-byte length


class FileMetaError(ValueError):
    """A value that cannot be written in the File Meta group (longer than its 2-byte length allows)."""


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise FileMetaError(f"(0002,{element:04X}) is {len(value)} bytes; its length field holds 65535")
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _sh(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the File Meta group, Explicit VR Little Endian, as pynetdicom writes them."""
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _ui(sop_class_uid)),  # Media Storage SOP Class UID
        _element(0x0003, b"UI", _ui(sop_instance_uid)),  # Media Storage SOP Instance UID
        _element(0x0010, b"UI", _ui(transfer_syntax)),  # Transfer Syntax UID
        _element(0x0012, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID))),  # Implementation Class UID
        _element(0x0013, b"SH", _sh(PYNETDICOM_IMPLEMENTATION_VERSION)),  # Implementation Version Name
    ))
    return _PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


__all__ = ["FileMetaError", "file_meta_bytes"]
