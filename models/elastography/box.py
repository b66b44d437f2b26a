"""The elastography box: where the strain map is shown, as vendor strain elastography shows it.

A console's strain elastography mode draws the colour map only inside an ROI box that the
operator places around the lesion, with the B-mode image outside it, and maps strain relative
to what is inside the box (the box's median strain is the display's middle). This model does
the same with a box it places itself (`place_box`), so a shadow or the depth of a lesion-free
image is never painted over the whole field:

1. **Candidate.** Lesions are hypoechoic and, from Tsukuba 2 on, stiffer than their
   surroundings; fat lobules are dark but soft, gland is bright. The candidate map is darkness
   (how far the smoothed B-mode lies below its median) times hardness (1 - the generated mapped
   strain, smoothed), inside the rows and columns a lesion can occupy (not the skin line at the
   top, not the last quarter of the depth where shadows and attenuation sit, not the edges).
2. **Box.** The bounding box of the candidate's connected blob at half its peak, grown by a
   margin on every side (the lesion plus surrounding tissue, as Itoh et al. 2006 ask for the
   box), at least a minimum and at most a maximum size, kept inside the region. Without a candidate (its peak below `MIN_SCORE`), the default box:
   the centre of the field at mid-depth, where a console puts it before the operator moves it.

`BoxConfig` holds the numbers. Coordinates are B-mode region pixels, inclusive bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage


@dataclass(frozen=True)
class StrainBox:
    """The ROI box in region pixels (inclusive); `found` False for the default (central) box."""

    x0: int
    y0: int
    x1: int
    y1: int
    found: bool = True

    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) slices of the box in its region."""
        return slice(self.y0, self.y1 + 1), slice(self.x0, self.x1 + 1)

    def contains(self, row: float, col: float) -> bool:
        return self.y0 <= row <= self.y1 and self.x0 <= col <= self.x1


@dataclass(frozen=True)
class BoxConfig:
    """Where a lesion may be (fractions of the region), the margin and the smallest box."""

    rows: tuple[float, float] = (0.12, 0.75)
    cols: tuple[float, float] = (0.08, 0.92)
    margin: float = 0.3  # of the blob's height/width, on each side
    max_size: tuple[float, float] = (0.8, 0.8)  # rows, cols fractions of the region
    min_size: tuple[float, float] = (0.3, 0.3)  # rows, cols fractions of the region
    min_score: float = 0.08
    smooth: float = 0.02  # Gaussian sigma as a fraction of the region width


def grow_box(y0: float, x0: float, y1: float, x1: float, shape: tuple[int, int],
             config: BoxConfig = BoxConfig(), found: bool = True) -> StrainBox:
    """A blob's bounds grown by the margin and to the minimum size, kept inside `shape`."""
    rows, cols = shape
    h, w = y1 - y0 + 1, x1 - x0 + 1
    h = max(h * (1 + 2 * config.margin), config.min_size[0] * rows)
    w = max(w * (1 + 2 * config.margin), config.min_size[1] * cols)
    h, w = min(h, config.max_size[0] * rows), min(w, config.max_size[1] * cols)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top = int(round(min(max(cy - h / 2, 0), rows - h)))
    left = int(round(min(max(cx - w / 2, 0), cols - w)))
    return StrainBox(left, top, min(cols - 1, left + int(round(w)) - 1), min(rows - 1, top + int(round(h)) - 1),
                     found)


def default_box(shape: tuple[int, int], config: BoxConfig = BoxConfig()) -> StrainBox:
    """The central box at mid-depth (the console's starting place), of the minimum size x 1.5."""
    rows, cols = shape
    h, w = 1.5 * config.min_size[0] * rows, 1.5 * config.min_size[1] * cols
    cy = (config.rows[0] + config.rows[1]) / 2 * rows
    return grow_box(cy - h / 2, cols / 2 - w / 2, cy + h / 2 - 1, cols / 2 + w / 2 - 1, shape,
                    BoxConfig(margin=0.0, min_size=config.min_size, max_size=config.max_size), found=False)


def candidate_map(grey: npt.ArrayLike, strain: npt.ArrayLike, config: BoxConfig = BoxConfig()) -> npt.NDArray[np.float64]:
    """Darkness x hardness, zero outside where a lesion may be (region-sized arrays in [0, 1])."""
    g = np.asarray(grey, dtype=np.float64)
    s = np.asarray(strain, dtype=np.float64)
    if g.shape != s.shape or g.ndim != 2:
        raise ValueError(f"grey {g.shape} and strain {s.shape} must be one 2D region")
    rows, cols = g.shape
    sigma = max(1.0, config.smooth * cols)
    smooth_g = ndimage.gaussian_filter(g, sigma)
    hard = 1.0 - ndimage.gaussian_filter(s, sigma)
    median = float(np.median(smooth_g))
    dark = np.clip((median - smooth_g) / max(median, 1e-3), 0.0, 1.0)
    score = dark * np.clip(hard, 0.0, 1.0)
    keep = np.zeros_like(score, dtype=bool)
    keep[int(config.rows[0] * rows) : int(np.ceil(config.rows[1] * rows)),
         int(config.cols[0] * cols) : int(np.ceil(config.cols[1] * cols))] = True
    return np.where(keep, score, 0.0)


def place_box(grey: npt.ArrayLike, strain: npt.ArrayLike, config: BoxConfig = BoxConfig()) -> StrainBox:
    """The box around the lesion candidate of a B-mode region and its generated strain."""
    score = candidate_map(grey, strain, config)
    peak = float(score.max())
    if peak < config.min_score:
        return default_box(score.shape, config)
    labels, _ = ndimage.label(score >= 0.5 * peak)
    r, c = np.unravel_index(int(np.argmax(score)), score.shape)
    ys, xs = np.nonzero(labels == labels[r, c])
    return grow_box(float(ys.min()), float(xs.min()), float(ys.max()), float(xs.max()), score.shape, config)


def relative_to_box(mapped: npt.ArrayLike, box: StrainBox) -> npt.NDArray[np.float32]:
    """Mapped strain (linear in log strain) re-centred so the box's median is the display's middle."""
    m = np.asarray(mapped, dtype=np.float32)
    centre = float(np.median(m[box.slices()]))
    result: npt.NDArray[np.float32] = np.clip(m - centre + 0.5, 0.0, 1.0).astype(np.float32)
    return result
