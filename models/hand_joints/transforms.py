"""Hand radiograph -> canonical hands -> detector input and joint crops. One path for training
and serving.

1. **Grey levels** (`display_pixels`). Modality LUT (Rescale Slope/Intercept or a Modality LUT
   Sequence, PS3.3 C.11.1), then the VOI LUT (the first Window Center/Width, LINEAR or SIGMOID,
   or a VOI LUT Sequence, C.11.2) with pydicom's `apply_modality_lut` / `apply_voi_lut`; then
   scaled to [0, 1] and, for MONOCHROME1 (minimum is white, C.7.6.3.1.2), inverted, so bone is
   bright whatever the vendor stored. Without a window, the 0.5th-99.5th percentiles.
2. **Spacing** (`pixel_spacing_mm`). ImagerPixelSpacing (at the detector, what CR/DX carry),
   else PixelSpacing; None when neither is plausible, and then the detector grid simply fits
   the image.
3. **Laterality** (`laterality_of`). ImageLaterality, then Laterality, then the series
   description / protocol / body part text ("left", "links", "LT", "both hands", ...). "B"
   means both hands on one image; None means unknown (the model then tries both sides).
4. **Hands** (`split_hands`). One hand, or two split at the emptiest column near the middle;
   displayed facing the patient, the right hand lies on the image's left. A left hand is
   mirrored so every hand reaches the network as a canonical right hand (thumb towards column
   0); `Hand.to_source` maps canonical coordinates back, so results carry the true side.
5. **Detector input** (`detector_grid`). A `grid` x `grid` image (default 128) at 2.0 mm per
   pixel centred on the hand, coarser only when the hand image is larger than the grid
   (anti-aliased), zero outside.
6. **Joint crops** (`joint_crop`). A `crop` x `crop` patch (default 64) centred on the joint,
   turned so its bone axis points up, side = `CROP_FACTORS[joint]` bone widths, bilinear,
   from the full-resolution canonical hand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage

from models.hand_joints import joints as J

GRID = 128
GRID_MM = 2.0
CROP = 64


class HandImageError(ValueError):
    """A radiograph this model cannot read (no pixels, colour, multi-frame, absurd size)."""


# --- grey levels -----------------------------------------------------------------------------


def display_pixels(ds: Dataset) -> np.ndarray:
    """float32 (rows, cols) in [0, 1], bone bright: modality LUT, VOI LUT, polarity."""
    if "PixelData" not in ds:
        raise HandImageError("radiograph has no PixelData")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise HandImageError("radiograph is not greyscale")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise HandImageError("multi-frame radiographs are not supported")
    arr = ds.pixel_array
    if arr.ndim != 2 or min(arr.shape) < 32:
        raise HandImageError(f"expected one 2D image, got shape {arr.shape}")
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
        # the VOI output range (0 .. 2^bits - 1 for a window, the LUT's ends for a LUT): probe it
        # with two extreme inputs, which a window clips and a LUT clamps to its first/last entry
        ends = np.asarray(apply_voi_lut(np.array([-1e9, 1e9]), ds, index=0, prefer_lut=True), dtype=np.float64)
        lo, hi = float(ends.min()), float(ends.max())
    else:
        lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def pixel_spacing_mm(ds: Dataset) -> float | None:
    """Mean of ImagerPixelSpacing (else PixelSpacing) in mm; None when absent or implausible."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if 0.02 <= row <= 5.0 and 0.02 <= col <= 5.0:
            return (row + col) / 2
    return None


# --- laterality ------------------------------------------------------------------------------

_BOTH = re.compile(r"\b(both|bilat\w*|beide\w*|bds|hands)\b", re.IGNORECASE)
_LEFT = re.compile(r"\b(left|lt|links|gauche|sinistra|sin|l)\b", re.IGNORECASE)
_RIGHT = re.compile(r"\b(right|rt|rechts|droite?|dextra|dex|r)\b", re.IGNORECASE)


def laterality_of(ds: Dataset) -> str | None:
    """"L", "R", "B" (both hands) or None: ImageLaterality, Laterality, then the descriptions."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R", "B"):
            return value
    text = " ".join(str(ds.get(k, "") or "") for k in
                    ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"))
    text = text.replace("_", " ")
    if _BOTH.search(text):
        return "B"
    left, right = bool(_LEFT.search(text)), bool(_RIGHT.search(text))
    if left != right:
        return "L" if left else "R"
    return None


# --- hands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hand:
    """One hand cut from a radiograph, in canonical orientation (a right hand).

    `pixels` float32 canonical image; `col0` the source column of its first column (before any
    mirroring); `mirrored` whether it was flipped left-right; `laterality` the true side
    ("L", "R") or None when unknown; `spacing_mm` the source pixel spacing or None.
    """

    pixels: np.ndarray
    col0: int
    mirrored: bool
    laterality: str | None
    spacing_mm: float | None

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Canonical (col, row) pixel-centre coordinates -> source image coordinates."""
        pts = np.array(points, dtype=np.float64, copy=True)
        if self.mirrored:
            pts[..., 0] = (self.pixels.shape[1] - 1) - pts[..., 0]
        pts[..., 0] += self.col0
        return pts

    def box_to_source(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A canonical box in DICOM continuous coordinates -> the source image's."""
        c0, r0, c1, r1 = box
        w = self.pixels.shape[1]
        if self.mirrored:
            c0, c1 = w - c1, w - c0
        return (c0 + self.col0, r0, c1 + self.col0, r1)

    def flipped(self) -> Hand:
        """The same hand mirrored the other way (for trying the other side)."""
        side = {"L": "R", "R": "L"}.get(self.laterality or "")
        return Hand(self.pixels[:, ::-1].copy(), self.col0, not self.mirrored, side, self.spacing_mm)


def split_column(pixels: np.ndarray) -> int:
    """The column between two hands: the darkest column profile in the middle 30-70 %."""
    w = pixels.shape[1]
    profile = ndimage.uniform_filter1d(pixels.mean(axis=0), size=max(3, w // 50))
    lo, hi = int(0.3 * w), int(0.7 * w)
    return lo + int(np.argmin(profile[lo:hi]))


def split_hands(pixels: np.ndarray, laterality: str | None, spacing_mm: float | None) -> list[Hand]:
    """Canonical hands of one image: two for "B" (image left = right hand), else one."""
    if laterality == "B":
        cut = split_column(pixels)
        return [
            Hand(pixels[:, :cut].copy(), 0, False, "R", spacing_mm),
            Hand(pixels[:, cut:][:, ::-1].copy(), cut, True, "L", spacing_mm),
        ]
    if laterality == "L":
        return [Hand(pixels[:, ::-1].copy(), 0, True, "L", spacing_mm)]
    return [Hand(pixels, 0, False, laterality, spacing_mm)]


# --- detector input --------------------------------------------------------------------------


@dataclass(frozen=True)
class GridMap:
    """grid (x, y) = (image (col, row) - centre) / step + (grid - 1) / 2, per axis."""

    center: tuple[float, float]  # image (col, row) at the grid centre
    step: float  # image pixels per grid pixel
    size: int

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        half = (self.size - 1) / 2
        out = (np.asarray(xy, dtype=np.float64) - half) * self.step
        out[..., 0] += self.center[0]
        out[..., 1] += self.center[1]
        return out

    def to_grid(self, xy: np.ndarray) -> np.ndarray:
        half = (self.size - 1) / 2
        pts = np.asarray(xy, dtype=np.float64).copy()
        pts[..., 0] -= self.center[0]
        pts[..., 1] -= self.center[1]
        return pts / self.step + half


def grid_map(shape: tuple[int, int], spacing_mm: float | None, size: int = GRID,
             grid_mm: float = GRID_MM) -> GridMap:
    """The grid a hand image is sampled on: grid_mm per pixel, coarser if it would not fit."""
    h, w = shape
    fit = max(h, w) / size  # image pixels per grid pixel that fits the whole image
    step = fit if spacing_mm is None else max(grid_mm / spacing_mm, fit)
    return GridMap(((w - 1) / 2, (h - 1) / 2), float(step), size)


def detector_grid(hand: Hand, size: int = GRID) -> tuple[np.ndarray, GridMap]:
    """float32 (1, size, size) detector input and the map back to the hand's pixels."""
    gm = grid_map(hand.pixels.shape, hand.spacing_mm, size)
    image = hand.pixels.astype(np.float32)
    if gm.step > 1.5:
        image = ndimage.gaussian_filter(image, (gm.step - 1) / 2)
    idx = np.arange(size, dtype=np.float64)
    gx, gy = np.meshgrid(idx, idx, indexing="xy")
    pts = gm.to_image(np.stack([gx, gy], axis=-1))
    out = ndimage.map_coordinates(image, (pts[..., 1], pts[..., 0]), order=1, mode="constant",
                                  cval=0.0, prefilter=False)
    return out[np.newaxis].astype(np.float32), gm


# --- joint crops -----------------------------------------------------------------------------


def joint_crop(pixels: np.ndarray, geometry: J.JointGeometry, name: str, size: int = CROP,
               scale_jitter: float = 1.0) -> np.ndarray:
    """float32 (1, size, size): the joint, bone axis up, `CROP_FACTORS[name]` widths across,
    normalised to zero mean and unit SD inside the crop."""
    side = J.CROP_FACTORS[name] * geometry.width_px * scale_jitter
    step = side / size
    ax, ay = geometry.axis
    n = math.hypot(ax, ay) or 1.0
    up = np.array([ax / n, ay / n])  # crop row -1 direction (distal) in the image
    right = np.array([-up[1], up[0]])  # crop column +1 direction
    idx = (np.arange(size, dtype=np.float64) - (size - 1) / 2) * step
    cc, rr = np.meshgrid(idx, idx, indexing="xy")
    # row r of the crop lies at -r along `up` (row 0 is distal)
    cols = geometry.center[0] + cc * right[0] - rr * up[0]
    rows = geometry.center[1] + cc * right[1] - rr * up[1]
    if step > 1.5:  # anti-alias a local window only, not the whole radiograph
        sigma = (step - 1) / 2
        pad = int(3 * sigma) + 2
        h, w = pixels.shape
        r0 = max(0, int(rows.min()) - pad)
        r1 = min(h, int(rows.max()) + pad + 1)
        c0 = max(0, int(cols.min()) - pad)
        c1 = min(w, int(cols.max()) + pad + 1)
        if r0 >= r1 or c0 >= c1:
            return np.zeros((1, size, size), dtype=np.float32)
        image = ndimage.gaussian_filter(pixels[r0:r1, c0:c1], sigma)
        rows, cols = rows - r0, cols - c0
    else:
        image = pixels
    out = ndimage.map_coordinates(image, (rows, cols), order=1, mode="constant", cval=0.0,
                                  prefilter=False).astype(np.float32)
    sd = float(out.std())
    return ((out - float(out.mean())) / (sd if sd > 1e-6 else 1.0))[np.newaxis].astype(np.float32)


def hands_of(ds: Dataset, laterality: str | None = None) -> list[Hand]:
    """The canonical hands of one radiograph (laterality from the headers unless given)."""
    side = laterality if laterality is not None else laterality_of(ds)
    return split_hands(display_pixels(ds), side, pixel_spacing_mm(ds))
