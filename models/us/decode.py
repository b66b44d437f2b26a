"""Any ultrasound object's frames as RGB uint8, one frame at a time.

pydicom 3 and the pylibjpeg plugins decode the transfer syntaxes consoles send (native, RLE,
JPEG baseline YBR_FULL_422, JPEG lossless, JPEG 2000 with YBR_ICT/RCT); YBR photometrics come
back as RGB. Here the rest is made uniform (PS3.3 C.7.6.3.1.2): PALETTE COLOR through its
lookup tables (8- or 16-bit entries, segmented or not), MONOCHROME1 inverted, 16-bit grey
scaled to 8 bits, grey replicated to three channels. A frame is decoded on its own
(`pydicom.pixels.pixel_array(..., index=i)`) so a 120-frame cine costs only the frames used.
"""

from __future__ import annotations

import copy

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian


class UsDecodeError(ValueError):
    """Pixel data that cannot be turned into an RGB frame; the message says why."""


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unreadable."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _to_uint8(a: np.ndarray, bits_stored: int) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    top = float(2 ** max(1, min(bits_stored, 16)) - 1)
    if a.max(initial=0) > top:
        top = float(a.max())
    result: np.ndarray = np.clip(np.rint(a.astype(np.float32) * (255.0 / max(top, 1.0))), 0, 255).astype(np.uint8)
    return result


def to_rgb(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """One decoded frame (as pydicom returns it) -> (rows, cols, 3) uint8 RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    a = np.asarray(raw)
    if photometric == "PALETTE COLOR":
        try:
            lut = apply_color_lut(a, ds)
        except (ValueError, KeyError, AttributeError) as exc:
            raise UsDecodeError(f"palette colour image without usable lookup tables: {exc}") from exc
        bits = 16 if lut.dtype != np.uint8 else 8
        return _to_uint8(lut, bits)
    bits = int(ds.get("BitsStored", 8) or 8)
    if a.ndim == 3 and a.shape[-1] == 3:
        return _to_uint8(a, bits)
    if a.ndim != 2:
        raise UsDecodeError(f"unexpected frame shape {a.shape} for {photometric}")
    if a.dtype.kind == "i":
        a = a.astype(np.int32) - int(a.min())
    grey = _to_uint8(a, bits)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., None], 3, axis=2)


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """An in-memory dataset (no file meta) with native pixels reads as Explicit VR Little Endian."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    data = ds.PixelData
    if isinstance(data, bytes) and data[:4] == b"\xfe\xff\x00\xe0":
        try:
            next(generate_fragments(data))
        except (StopIteration, ValueError):
            pass
        else:
            raise UsDecodeError("encapsulated pixel data without a Transfer Syntax UID")
    out = copy.copy(ds)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def decode_frame(ds: Dataset, index: int = 0) -> np.ndarray:
    """Frame `index` (0-based) as (rows, cols, 3) uint8 RGB."""
    if "PixelData" not in ds:
        raise UsDecodeError("dataset has no PixelData")
    total = n_frames(ds)
    if not 0 <= index < total:
        raise UsDecodeError(f"frame {index} outside 0..{total - 1}")
    ds = _with_transfer_syntax(ds)
    try:
        raw = pixel_array(ds, index=index if total > 1 else None)
    except Exception as exc:  # decoder errors come as many types; one clear error here
        raise UsDecodeError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    if total > 1 and raw.ndim == 4:  # a decoder that ignored index
        raw = raw[index]
    return to_rgb(ds, raw)
