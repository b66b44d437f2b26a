"""The chunked receiver's File Meta bytes are exactly what pydicom writes for the same values."""

from __future__ import annotations

import io
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage
from pynetdicom.dsutils import create_file_meta

from sidecar.dicom.filemeta import FileMetaError, file_meta_bytes


def _pydicom_bytes(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    fh = io.BytesIO()
    fh.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(cast(Any, fh), create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                              transfer_syntax=UID(syntax)))
    return fh.getvalue()


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), [
    (MRImageStorage, "1.2.826.0.1.3680043.9.9999.1", ExplicitVRLittleEndian),  # odd length: padded
    (MRImageStorage, "1.2.826.0.1.3680043.9.9999.12", JPEG2000Lossless),  # even length
    ("1.2.840.10008.5.1.4.1.1.6.1", "2.25." + "9" * 59, ExplicitVRLittleEndian),  # a 64-character UID
])
def test_same_bytes_as_pydicom(sop_class: str, sop_instance: str, syntax: str) -> None:
    ours = file_meta_bytes(sop_class, sop_instance, syntax)
    assert ours == _pydicom_bytes(sop_class, sop_instance, syntax)
    meta = dcmread(io.BytesIO(ours + b"\x08\x00\x60\x00CS\x02\x00MR"), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == syntax


def test_a_value_too_long_for_its_length_field_is_refused() -> None:
    with pytest.raises(FileMetaError, match="65535"):
        file_meta_bytes(MRImageStorage, "1." * 40000, ExplicitVRLittleEndian)
