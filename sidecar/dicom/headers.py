"""The few header facts the sidecar needs from an instance, checked before anything is kept.

`read_header` raises `InvalidInstance` (DIMSE "cannot understand") for missing or invalid UIDs,
a missing Modality, pixel data shorter than its header says, and `InstanceTooLarge` for absurd
dimensions. A missing optional tag never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.encaps import parse_fragments
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

from sidecar.dicom.uids import is_valid_uid
from sidecar.errors import InstanceTooLarge, InvalidInstance


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    number_of_frames: int
    expected_count: int | None  # instances the series should hold, when the header says
    phi: tuple[str, ...]  # patient name/ID/birth date strings, for the log scrubber only


def _get(ds: Dataset, keyword: str) -> object:
    try:
        return ds.get(keyword)
    except Exception as exc:  # a malformed element raises on access
        raise InvalidInstance(f"{keyword} cannot be read: {type(exc).__name__}") from exc


def _uid(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidInstance(f"{keyword} is missing or empty")
    if not is_valid_uid(text):
        raise InvalidInstance(f"{keyword} is not a valid UID")
    return text


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


def read_header(ds: Dataset, *, max_pixels: int = 1 << 31, dataset_bytes: int | None = None) -> InstanceHeader:
    """Check and extract what routing, assembly and the spool need."""
    sop_class = _uid(ds, "SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    modality = str(_get(ds, "Modality") or "").strip()
    if not modality:
        raise InvalidInstance("Modality is missing or empty")
    frames = _int(ds, "NumberOfFrames")
    if frames is None and str(_get(ds, "NumberOfFrames") or "").strip():
        raise InvalidInstance("NumberOfFrames is not a number")
    if frames is not None and frames < 1:
        raise InvalidInstance("NumberOfFrames is not a positive integer")
    frames = frames or 1
    if "PixelData" in ds:
        _check_pixels(ds, frames, max_pixels)
    expected: int | None = None
    if frames > 1:
        expected = 1  # one multi-frame object is the whole series
    else:
        for kw in ("ImagesInAcquisition", "CardiacNumberOfImages"):
            n = _int(ds, kw)
            if n and n > 0:
                expected = n
                break
    phi = tuple(
        s for s in (str(ds.get(k, "") or "").strip() for k in ("PatientName", "PatientID", "PatientBirthDate"))
        if len(s) >= 3
    )
    return InstanceHeader(sop_class, sop_instance, study, series, modality, frames, expected, phi)


#: Values longer than this stay on disk when a received file is read (pixel data, large blobs).
DEFER_BYTES = 16 * 1024
_PIXEL_DATA = Tag(0x7FE0, 0x0010)


def read_header_file(path: Path, *, max_pixels: int = 1 << 31) -> tuple[InstanceHeader, Dataset]:
    """Read and check a received Part 10 file without loading its pixel data.

    The whole file is parsed element by element (a length past the end, a sequence never
    closed is refused); every element's VR must be one PS3.5 defines, binary numbers must fill
    whole values, and sequences are walked item by item. Only the few elements the sidecar
    reads are decoded (`read_header`): decoding every text element cost ~2 ms per instance on
    the listener's thread and refused nothing these checks let through. The pixel data's
    length is checked against its header and against the file's size (a truncated file is
    refused). Nothing is re-encoded.
    """
    size = path.stat().st_size
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES)
        _check_elements(ds)
    except InvalidInstance:
        raise
    except Exception as exc:  # boundary: whatever pydicom raises on a broken file is "cannot understand"
        raise InvalidInstance(f"dataset cannot be decoded: {type(exc).__name__}") from exc
    raw: object = ds.get_item(_PIXEL_DATA) if _PIXEL_DATA in ds else None  # raw until accessed
    if (isinstance(raw, RawDataElement) and _deferred(raw) and raw.length != 0xFFFFFFFF
            and raw.value_tell + raw.length > size):
        raise InvalidInstance(f"pixel data is {size - raw.value_tell} bytes, its length says {raw.length}")
    return read_header(ds, max_pixels=max_pixels), ds


#: PS3.5 6.2: every VR a data element may carry (pydicom's ambiguous "US or SS" and the like
#: are resolved from the dictionary before this check)
_KNOWN_VRS = frozenset(v.value for v in VR if " or " not in v.value)
#: binary VRs of fixed-size numbers: a value must be a whole number of them
_NUMBER_BYTES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8,
                 "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_UNDEFINED = 0xFFFFFFFF


def _check_elements(ds: Dataset) -> None:
    """Structure, VRs and binary lengths of every element; sequences item by item. Text stays raw."""
    for tag, elem in ds._dict.items():
        if tag == _PIXEL_DATA:
            continue
        item: object = elem  # a RawDataElement until decoded (typed DataElement)
        vr: str | None
        raw_length: int | None
        if isinstance(item, RawDataElement):
            vr = item.VR if item.VR is not None else _dictionary_vr(tag)
            raw_length = item.length
        else:  # already decoded (a sequence pydicom parsed)
            vr, raw_length = str(elem.VR), None
        if vr is None:  # implicit VR, a private or unknown tag: pydicom reads it as UN bytes
            continue
        if " or " in vr:
            vr = vr.split(" or ")[0]
        if vr not in _KNOWN_VRS:
            raise InvalidInstance(f"element {BaseTag(tag)} has an unknown VR {vr!r}")
        size = _NUMBER_BYTES.get(vr)
        if size and raw_length not in (None, _UNDEFINED) and raw_length % size:
            raise InvalidInstance(f"element {BaseTag(tag)} ({vr}) is {raw_length} bytes, not a whole "
                                  f"number of {size}-byte values")
        if vr == "SQ":
            for child in ds[tag].value:  # parses the items; a broken one raises
                _check_elements(child)


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _deferred(raw: RawDataElement) -> bool:
    """True when pydicom left the value on disk (read with defer_size); its stub says bytes."""
    value: object = raw.value
    return value is None


def _pixel_bytes(ds: Dataset) -> int:
    """The pixel data's length, without reading a deferred value."""
    raw: object = ds.get_item(_PIXEL_DATA)  # a RawDataElement until accessed (typed DataElement)
    if isinstance(raw, RawDataElement):
        return int(raw.length) if raw.value is None else len(raw.value)
    return len(ds.PixelData)


def _check_pixels(ds: Dataset, frames: int, max_pixels: int) -> None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols or rows < 1 or cols < 1:
        raise InvalidInstance("pixel data without valid Rows and Columns")
    samples = _int(ds, "SamplesPerPixel")
    samples = 1 if samples is None else samples
    if not 1 <= samples <= 4:  # PS3.3 C.7.6.3.1.1: 1 (monochrome, palette) or 3 (colour); 4 retired
        raise InvalidInstance("SamplesPerPixel is not 1, 3 or 4")
    if samples > 1 and _int(ds, "PlanarConfiguration") not in (None, 0, 1):
        raise InvalidInstance("PlanarConfiguration is not 0 or 1")
    bits = _int(ds, "BitsAllocated") or 0
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidInstance("BitsAllocated is not 1, 8, 16, 32 or 64")
    stored = _int(ds, "BitsStored")
    if stored is not None and not 1 <= stored <= bits:
        raise InvalidInstance("BitsStored is not between 1 and BitsAllocated")
    n_pixels = rows * cols * frames * samples
    if n_pixels > max_pixels:
        raise InstanceTooLarge(f"image dimensions too large ({rows}x{cols}x{frames}x{samples})")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and UID(str(ts)).is_encapsulated:
        try:
            value = ds.PixelData
        except Exception as exc:
            raise InvalidInstance(f"pixel data cannot be read: {type(exc).__name__}") from exc
        _check_fragments(value)
    if ts is not None and not UID(str(ts)).is_compressed:
        expected = (n_pixels * bits + 7) // 8
        try:
            actual = _pixel_bytes(ds)
        except Exception as exc:
            raise InvalidInstance(f"pixel data cannot be read: {type(exc).__name__}") from exc
        if actual < expected:
            raise InvalidInstance(f"pixel data is {actual} bytes, header needs {expected}")


class _FragmentPastTheEnd(ValueError):
    pass


class _BoundedBuffer(BytesIO):
    """pydicom skips over each fragment with seek(); here a skip past the end of the value is an error."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._size = len(data)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        pos = super().seek(offset, whence)
        if pos > self._size:
            raise _FragmentPastTheEnd
        return pos


def _check_fragments(value: bytes) -> None:
    """Encapsulated pixel data (PS3.5 A.4): a Basic Offset Table item, then at least one fragment
    item, each an Item tag with a defined length that fits in the value. pydicom's
    `parse_fragments` walks the items; nothing is decoded."""
    try:
        n_items, _ = parse_fragments(_BoundedBuffer(bytes(value)))
    except _FragmentPastTheEnd:
        raise InvalidInstance("encapsulated pixel data has a fragment longer than the data") from None
    except ValueError as exc:  # pydicom: a tag other than Item, or an item of undefined length
        raise InvalidInstance("encapsulated pixel data has an item that is not an Item tag "
                              "with a defined length") from exc
    if n_items < 2:
        raise InvalidInstance("encapsulated pixel data has no fragment")
