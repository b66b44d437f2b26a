"""PSIR slice -> network input. The one preprocessing path for training and for serving.

Steps, in order (`pixels_to_tensor`):

1. **Modality LUT.** Stored values times RescaleSlope plus RescaleIntercept (PS3.3 C.11.1.1.2;
   for Enhanced MR the Pixel Value Transformation functional group, C.7.6.16.2.9). Vendors store
   PSIR as unsigned pixels with a negative intercept (Siemens: -4096) or as signed pixels; after
   the LUT both are the real-valued, signed PSIR signal.
2. **Sign is kept.** PSIR is a real (phase-corrected) image: a nulled myocardium sits near zero,
   blood and scar are positive, long-T1 tissue is negative. Folding to magnitude would make a
   badly nulled (negative) myocardium look like enhancement, which is exactly what the QA model
   must tell apart, so there is no `abs` anywhere here.
3. **Robust, zero-preserving windowing.** scale = max(|p_low|, |p_high|) of the slice (default the
   1st and 99th percentiles), output = clip(x / scale, -1, 1). Zero stays zero and the sign
   stays, so "nulled" means the same number in every slice; a few hot pixels cannot set the scale.
4. **Fixed pixel spacing and size.** The slice is resampled (bilinear) from its PixelSpacing
   (row, column spacing, PS3.3 C.7.6.2.1.1) to `spacing_mm` (default 1.4 mm) on a `size` x `size`
   grid (default 192, i.e. a 269 mm field of view), in one interpolation, padding with 0 (nulled)
   outside the acquired field.
5. **Crop centred on the image centre.** Short-axis LGE is planned on the heart: the
   technologist prescribes the short-axis stack from long-axis views with the left ventricle at
   the centre of the field of view, so the image centre is a reliable heart cue on every vendor.
   A bright-blood-pool centroid was considered and rejected: in PSIR, fat, bright scar and
   inflow artefacts are as bright as blood, so the centroid drifts exactly on the slices that
   matter. 269 mm comfortably contains the heart (about 120 mm across) plus the off-centring
   a real plan has.

The result is float32 (1, size, size), values in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from scipy import ndimage

DEFAULT_SPACING_MM = 1.4
DEFAULT_SIZE = 192
DEFAULT_PERCENTILES = (1.0, 99.0)


class TransformError(ValueError):
    """A slice that cannot be turned into network input (no pixels, bad spacing or shape)."""


@dataclass(frozen=True)
class TransformConfig:
    """The preprocessing a checkpoint was trained with (stored in its metadata)."""

    spacing_mm: float = DEFAULT_SPACING_MM
    size: int = DEFAULT_SIZE
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    """The first item down a chain of sequences, or None where any link is missing or empty."""
    node: Dataset | None = ds
    for keyword in path:
        seq = getattr(node, keyword, None) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node


def _frame_group(ds: Dataset, frame: int | None, group: str) -> Dataset | None:
    """A functional group macro of an Enhanced object: per-frame first, then shared (PS3.3 C.7.6.16)."""
    if frame is not None:
        per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
        if per_frame and len(per_frame) > frame:
            item = _first_item(per_frame[frame], group)
            if item is not None:
                return item
    return _first_item(ds, "SharedFunctionalGroupsSequence", group)


def rescale_of(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    """(slope, intercept) of the modality LUT; (1, 0) where none is given."""
    item = _frame_group(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    slope = float(getattr(source, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(source, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def pixel_spacing_of(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    """(row, column) spacing in mm, from PixelSpacing or the Pixel Measures functional group."""
    item = _frame_group(ds, frame, "PixelMeasuresSequence")
    value = getattr(item, "PixelSpacing", None) if item is not None else None
    if value is None:
        value = getattr(ds, "PixelSpacing", None)
    if value is None or len(value) != 2:
        raise TransformError("slice has no PixelSpacing")
    row, col = float(value[0]), float(value[1])
    if not (0.05 <= row <= 20 and 0.05 <= col <= 20):
        raise TransformError(f"PixelSpacing {row}, {col} mm is not plausible")
    return row, col


def window(pixels: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Zero-preserving robust scaling to [-1, 1]: x / max(|p_lo|, |p_hi|), clipped."""
    lo, hi = np.percentile(pixels, [percentiles[0], percentiles[1]])
    scale = max(abs(float(lo)), abs(float(hi)))
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros_like(pixels, dtype=np.float32)
    return np.clip(pixels / scale, -1.0, 1.0).astype(np.float32)


def resample_centre(
    image: np.ndarray, spacing: tuple[float, float], spacing_mm: float, size: int
) -> np.ndarray:
    """A `size` x `size` grid at `spacing_mm`, centred on the image centre, bilinear, zero outside.

    When the target spacing is coarser than the source by more than 1.5x the image is smoothed
    first (Gaussian, sigma from the ratio) so the bilinear sampling does not alias.
    """
    rows, cols = image.shape
    step_r, step_c = spacing_mm / spacing[0], spacing_mm / spacing[1]
    if max(step_r, step_c) > 1.5:
        image = ndimage.gaussian_filter(image, (max(0.0, (step_r - 1) / 2), max(0.0, (step_c - 1) / 2)))
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    r = (rows - 1) / 2.0 + offsets * step_r
    c = (cols - 1) / 2.0 + offsets * step_c
    rr, cc = np.meshgrid(r, c, indexing="ij")
    out = ndimage.map_coordinates(image, (rr, cc), order=1, mode="constant", cval=0.0, prefilter=False)
    return out.astype(np.float32)


def pixels_to_tensor(
    stored: np.ndarray,
    spacing: tuple[float, float],
    slope: float = 1.0,
    intercept: float = 0.0,
    config: TransformConfig = TransformConfig(),
) -> np.ndarray:
    """Stored pixel values of one 2D slice -> float32 (1, size, size) in [-1, 1], sign kept."""
    array = np.asarray(stored)
    if array.ndim != 2 or min(array.shape) < 8:
        raise TransformError(f"expected one 2D slice, got shape {array.shape}")
    real = array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    scaled = window(real, config.percentiles)
    out = resample_centre(scaled, spacing, config.spacing_mm, config.size)
    return out[np.newaxis]


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unreadable."""
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def slice_to_tensor(
    ds: Dataset, frame: int | None = None, config: TransformConfig = TransformConfig()
) -> np.ndarray:
    """One slice (or 0-based `frame` of a multi-frame) of a dataset -> float32 (1, size, size).

    This is the function training and the sidecar both call.
    """
    if "PixelData" not in ds:
        raise TransformError("dataset has no PixelData")
    pixels = ds.pixel_array
    if n_frames(ds) > 1:
        if frame is None:
            raise TransformError("multi-frame dataset: say which frame")
        pixels = pixels[frame]
    return pixels_to_tensor(
        pixels, pixel_spacing_of(ds, frame), *rescale_of(ds, frame), config=config
    )
