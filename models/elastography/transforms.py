"""B-mode image -> network input, network output -> strain display. Shared by training and serving.

Input path (`dataset_to_input`, the call the sidecar makes; `region_to_input` is what training
calls on phantom regions, the same code after decoding):

1. **Decode** the stored pixels to one greyscale frame in [0, 1] (`decode_grey`): MONOCHROME1/2,
   RGB and YBR (pydicom converts YBR to RGB), palette colour; RGB is reduced to luma (Rec. 601).
   Multi-frame cine: the first frame. When the shared ultrasound front end (`models.us`, issue 5)
   is installed its decoder (`models.us.decode.decode_frame`) and region reader
   (`models.us.regions`) are used; the code here is the fallback without it. Its `frame_channels`
   is not used: it letterboxes (keeps the aspect) and fills in bright overlays, while this model
   follows the open study's plain resize and must paint its output back onto the exact region.
2. **Region crop** (`tissue_region`): the first 2D tissue region of the US Region Calibration
   module (PS3.3 C.8.5.5; RegionSpatialFormat 1, RegionDataType 1), which is where the console
   draws the B-mode image and where the elastogram is drawn back. Without calibration, the
   bounding box of the non-dark area (a fallback for files that lost the module).
3. **Resize** the region to `SIZE` x `SIZE` (bilinear, antialiased; the aspect is not kept, as
   in the open study's 256 x 256 inputs), **scale** [0, 1] -> [-1, 1].

Output path: the generator's 4 channels in [-1, 1] are the colour E-mode image (RGB) and the
mapped strain (1 soft ... 0 hard after `from_unit`); `colorize` is the console-style colour map
soft red -> yellow -> green -> cyan -> hard blue (Hitachi's convention), `resize_to` puts a map
back at the region's size.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydicom import Dataset

SIZE = 256
#: colour stops of the strain display, from hard (0) to soft (1): blue, cyan, green, yellow, red
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 200], [0, 170, 255], [0, 200, 0], [255, 230, 0], [220, 0, 0]],
                    dtype=np.float64)
_TISSUE, _SPATIAL_2D = 1, 1
ELASTOGRAPHY_CUES = ("ELASTO", "STRAIN", "E-MODE", "EMODE", "SWE", "SHEAR")


class TransformError(ValueError):
    """An image this model cannot read (no pixels, no usable region, wrong shape)."""


@dataclass(frozen=True)
class Region:
    """The B-mode region in the source frame: inclusive pixel bounds and pixel size in cm."""

    x0: int
    y0: int
    x1: int
    y1: int
    delta_x_cm: float | None = None
    delta_y_cm: float | None = None
    calibrated: bool = True

    @property
    def rows(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def cols(self) -> int:
        return self.x1 - self.x0 + 1


# --- colour map --------------------------------------------------------------------------------


def colorize(mapped: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Mapped strain (1 soft ... 0 hard) -> uint8 RGB as consoles draw it (soft red, hard blue)."""
    m = np.clip(np.asarray(mapped, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.interp(m, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def colour_bar(height: int, width: int) -> npt.NDArray[np.uint8]:
    """A vertical colour bar, soft (red) at the top to hard (blue) at the bottom."""
    ramp = np.linspace(1.0, 0.0, max(height, 2))[:, None] * np.ones((1, max(width, 1)))
    return colorize(ramp)


# --- decoding and region ---------------------------------------------------------------------


def _us_module(name: str) -> Any | None:
    """A module of the shared ultrasound front end (models.us, issue 5), None when not installed."""
    try:
        return importlib.import_module(f"models.us.{name}")
    except ModuleNotFoundError:
        return None


def to_grey(pixels: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """uint8/uint16 grey or RGB pixels -> float32 grey in [0, 1] (RGB by Rec. 601 luma)."""
    arr = np.asarray(pixels)
    top = 255.0 if arr.dtype == np.uint8 else float(max(arr.max(initial=1), 1))
    f = arr.astype(np.float32) / np.float32(top)
    if f.ndim == 3 and f.shape[-1] == 3:
        f = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    if f.ndim != 2:
        raise TransformError(f"expected a 2D frame, got shape {arr.shape}")
    result: npt.NDArray[np.float32] = np.clip(f, 0.0, 1.0).astype(np.float32)
    return result


def decode_grey(ds: Dataset) -> npt.NDArray[np.float32]:
    """The (first) frame of `ds` as float32 grey in [0, 1], rows x columns of the source.

    The shared front end's `models.us.decode.decode_frame` (every US photometric and transfer
    syntax, as RGB) when installed; otherwise pydicom's decoding here.
    """
    if "PixelData" not in ds:
        raise TransformError("dataset has no PixelData")
    decode = _us_module("decode")
    if decode is not None:
        try:
            return to_grey(decode.decode_frame(ds, 0))
        except ValueError as exc:
            raise TransformError(str(exc)) from exc
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        arr = (arr >> 8).astype(np.uint8) if arr.dtype != np.uint8 else arr
    grey = to_grey(arr)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def tissue_region(ds: Dataset, grey: npt.NDArray[np.float32] | None = None) -> Region:
    """The B-mode region: the largest 2D tissue region of the US Region Calibration (via
    `models.us.regions` when installed), else the non-dark bounding box of the frame."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    regions = _us_module("regions")
    if regions is not None:
        found = regions.imaging_region(regions.parse_regions(ds, (rows, cols)))
        if found is not None and found.x1 - found.x0 >= 15 and found.y1 - found.y0 >= 15:
            def to_cm(v: float | None) -> float | None:
                return None if v is None else v / 10.0
            return Region(found.x0, found.y0, found.x1, found.y1, to_cm(found.mm_per_px_x),
                          to_cm(found.mm_per_px_y))
    else:
        for item in getattr(ds, "SequenceOfUltrasoundRegions", None) or []:
            if int(getattr(item, "RegionSpatialFormat", 0)) != _SPATIAL_2D:
                continue
            if int(getattr(item, "RegionDataType", 0)) != _TISSUE:
                continue
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1 = min(int(item.RegionLocationMaxX1), cols - 1)
            y1 = min(int(item.RegionLocationMaxY1), rows - 1)
            if x1 - x0 < 15 or y1 - y0 < 15:
                continue
            cm = int(getattr(item, "PhysicalUnitsXDirection", 0)) == 3
            return Region(x0, y0, x1, y1,
                          float(item.PhysicalDeltaX) if cm else None,
                          float(item.PhysicalDeltaY) if cm else None)
    if grey is None:
        grey = decode_grey(ds)
    return fallback_region(grey)


def fallback_region(grey: npt.NDArray[np.float32]) -> Region:
    """Bounding box of the rows and columns where most pixels are not dark (no calibration)."""
    lit = grey > 0.04
    r = np.nonzero(lit.mean(axis=1) > 0.3)[0]
    c = np.nonzero(lit.mean(axis=0) > 0.3)[0]
    if r.size < 16 or c.size < 16:
        return Region(0, 0, grey.shape[1] - 1, grey.shape[0] - 1, calibrated=False)
    return Region(int(c[0]), int(r[0]), int(c[-1]), int(r[-1]), calibrated=False)


# --- resizing and scaling --------------------------------------------------------------------


def resize(image: npt.ArrayLike, rows: int, cols: int) -> npt.NDArray[np.float32]:
    """Bilinear, antialiased resize of (H, W) or (H, W, C) float to (rows, cols[, C])."""
    arr = np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
    res = out[0, 0] if arr.ndim == 2 else out[0].permute(1, 2, 0)
    return res.numpy().astype(np.float32)


def to_unit(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """[0, 1] -> [-1, 1]."""
    return (np.asarray(x, dtype=np.float32) * 2.0 - 1.0).astype(np.float32)


def from_unit(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """[-1, 1] -> [0, 1], clipped."""
    result: npt.NDArray[np.float32] = np.clip((np.asarray(x, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    return result


def region_to_input(grey_region: npt.ArrayLike, size: int = SIZE) -> npt.NDArray[np.float32]:
    """A B-mode region (grey in [0, 1]) -> float32 (1, size, size) in [-1, 1]."""
    arr = np.asarray(grey_region, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 16:
        raise TransformError(f"expected a 2D region of at least 16x16 pixels, got {arr.shape}")
    return to_unit(np.clip(resize(arr, size, size), 0, 1))[None]


def target_to_tensor(mapped: npt.ArrayLike, emode: npt.ArrayLike, size: int = SIZE) -> npt.NDArray[np.float32]:
    """Training target at region size -> float32 (4, size, size): E-mode RGB then mapped strain."""
    rgb = resize(np.asarray(emode, dtype=np.float32) / 255.0, size, size)
    strain = resize(mapped, size, size)
    return to_unit(np.concatenate([rgb.transpose(2, 0, 1), strain[None]], axis=0).clip(0, 1))


def dataset_to_input(ds: Dataset, size: int = SIZE) -> tuple[npt.NDArray[np.float32], Region, npt.NDArray[np.float32]]:
    """(network input (1, size, size), the B-mode region, the decoded grey frame) of one image."""
    grey = decode_grey(ds)
    region = tissue_region(ds, grey)
    crop = grey[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1]
    return region_to_input(crop, size), region, grey


def is_elastography_or_doppler(ds: Dataset) -> bool:
    """Header cues that an image is already an elastogram (or carries Doppler): never an input."""
    text = " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "ProtocolName", "ImageComments"))
    text += " " + " ".join(str(v) for v in (ds.get("ImageType") or []))
    if any(cue in text.upper() for cue in ELASTOGRAPHY_CUES):
        return True
    for item in getattr(ds, "SequenceOfUltrasoundRegions", None) or []:
        if int(getattr(item, "RegionDataType", 0)) in (2, 3, 4):  # colour flow, PW, CW Doppler
            return True
    return False
