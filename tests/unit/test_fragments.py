"""Encapsulated pixel data is checked item by item (PS3.5 A.4) before an instance is kept."""

from __future__ import annotations

import struct

import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from sidecar.dicom.headers import read_header
from sidecar.errors import InvalidInstance
from tests.helpers.dicom_factory import make_mr

ITEM = b"\xfe\xff\x00\xe0"
SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _with_pixel_value(value: bytes) -> Dataset:
    ds = make_mr(seed=7)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds["PixelData"].VR = "OB"
    ds["PixelData"].value = value
    ds["PixelData"].is_undefined_length = True
    return ds


class TestEncapsulatedPixelData:
    def test_offset_table_and_fragments_pass(self) -> None:
        """pydicom's own encapsulation (an empty offset table, two fragments) is accepted."""
        read_header(_with_pixel_value(encapsulate([b"\x00" * 10, b"\x01" * 6])))

    def test_missing_delimiter_is_tolerated(self) -> None:
        """Whole fragments without the closing Sequence Delimitation Item are accepted."""
        read_header(_with_pixel_value(ITEM + bytes(4) + ITEM + struct.pack("<I", 8) + bytes(8)))

    def test_offset_table_alone_has_no_fragment(self) -> None:
        """Only a Basic Offset Table item: no fragment, so the instance cannot be understood."""
        with pytest.raises(InvalidInstance, match="no fragment"):
            read_header(_with_pixel_value(ITEM + bytes(4) + SEQ_END))

    def test_an_item_with_another_tag_is_refused(self) -> None:
        """A (0008,0010) where a fragment Item should be."""
        with pytest.raises(InvalidInstance, match="not an Item tag"):
            read_header(_with_pixel_value(ITEM + bytes(4) + b"\x08\x00\x10\x00" + bytes(4) + SEQ_END))

    def test_an_item_of_undefined_length_is_refused(self) -> None:
        """A fragment must have a defined length (PS3.5 A.4)."""
        with pytest.raises(InvalidInstance, match="defined length"):
            read_header(_with_pixel_value(ITEM + bytes(4) + ITEM + b"\xff\xff\xff\xff" + bytes(8)))

    def test_a_fragment_longer_than_the_data_is_refused(self) -> None:
        """A fragment claiming 1 MiB in a 16-byte value."""
        with pytest.raises(InvalidInstance, match="longer than the data"):
            read_header(_with_pixel_value(ITEM + bytes(4) + ITEM + struct.pack("<I", 1 << 20) + bytes(16)))
