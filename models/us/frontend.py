"""Ultrasound image -> network channels: crop, mask, separate power Doppler, sample cine frames.

For one frame (`frame_channels`):

1. **Locate the image.** With a US Region Calibration module: the largest 2D tissue region
   (`regions.imaging_region`); grey/colour bars and traces that overlap it are masked. Without
   one: the image sector, found from the pixels (`find_sector`): luminance above the
   background, opened with a square of 1/32 of the frame so burned-in text and calipers drop off, the largest
   component, filled row by row (fans and linear images are convex along each row).
   Everything outside the region or sector (patient text, vendor menus, scale bars) is
   never seen by the network.
2. **Separate power Doppler** (`doppler_mask`): colour pixels (chroma >= 50, value >= 60) of a
   Doppler palette hue (red-orange-yellow, or blue for directional colour flow; green and cyan
   are annotation colours and are refused), inside the colour-flow boxes when the header gives
   them, opened with a 3x3 square (thin colour-box outlines and text strokes vanish), and
   without solid tall rectangles (colour bars). When the header says there is no colour flow
   (`headers.doppler_from_header` is False) the channel is empty whatever the pixels hold.
3. **Greyscale channel.** Luminance (BT.601), with colour pixels and thin saturated overlays
   (calipers, colour-box outlines: >= 245 and removed by a 3x3 opening) filled in from their
   neighbourhood (normalised Gaussian convolution), so neither leaks into the B-mode channel.
4. **Fixed size.** Both channels resized with the aspect ratio kept (Gaussian pre-filter when
   shrinking, bilinear), centred on a `size` x `size` canvas of zeros. Values in [0, 1];
   Doppler intensity is the colour pixel's value (brightest palette entries = most power).

Cine (`sample_frames`): `uniform` takes evenly spaced frames; `doppler` scores up to
`4 * n` evenly spaced candidates by Doppler pixel count and keeps the `n` with most flow, in
time order (pulsatile flow: systolic frames carry the signal a reader grades).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from models.us.decode import decode_frame, n_frames
from models.us.headers import doppler_from_header
from models.us.regions import Region, color_regions, furniture, imaging_region, parse_regions

Sampling = Literal["uniform", "doppler"]


@dataclass(frozen=True)
class FrontEndConfig:
    """The preprocessing a checkpoint was trained with (stored in its metadata)."""

    size: int = 128
    chroma_min: int = 50
    value_min: int = 60
    overlay_min: int = 245
    background_margin: float = 8.0


@dataclass(frozen=True)
class Layout:
    """Where the image is in the frame: crop box (inclusive), mask inside it, colour boxes."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray = field(repr=False)  # bool (rows, cols) of the crop: image pixels
    color_boxes: tuple[tuple[int, int, int, int], ...]  # in crop coordinates, inclusive
    mm_per_px: tuple[float, float] | None  # (x, y) of the source pixels
    source: Literal["region", "sector"]
    doppler_allowed: bool  # False when the header says there is no colour flow


@dataclass(frozen=True)
class FrameChannels:
    """One frame ready for a network: channels (2, size, size) float32 and what was found."""

    grey: np.ndarray
    doppler: np.ndarray
    doppler_fraction: float  # share of image pixels that are power Doppler
    layout: Layout


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 frame, float32 0-255."""
    f = rgb.astype(np.float32)
    result: np.ndarray = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return result


def square_opening(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary opening by a k x k square (k odd), outside the image counted as background.

    The same result as `ndimage.binary_opening(mask, structure=np.ones((k, k)))`, computed as
    separable minimum and maximum filters: linear in the image size instead of k² per pixel, which
    matters on the large frames (2,000-line radiographs, say) a misrouted image can bring.
    """
    u8 = mask.astype(np.uint8)
    eroded = ndimage.minimum_filter(u8, size=(k, k), mode="constant", cval=0)
    opened: np.ndarray = ndimage.maximum_filter(eroded, size=(k, k), mode="constant", cval=0) > 0
    return opened


def find_sector(rgb: np.ndarray, margin: float = 8.0) -> tuple[int, int, int, int, np.ndarray]:
    """(x0, y0, x1, y1, mask) of the image sector in a frame without region calibration."""
    lum = ndimage.gaussian_filter(luminance(rgb), 2.0)
    threshold = max(10.0, float(np.percentile(lum, 5)) + margin)
    k = max(5, int(min(lum.shape) / 32) | 1)  # 15 px on a 480-line frame: text lines drop off
    fg = square_opening(lum > threshold, k)
    labels, n = ndimage.label(fg)
    if n == 0:
        rows, cols = lum.shape
        return 0, 0, cols - 1, rows - 1, np.ones((rows, cols), bool)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    comp = labels == (int(np.argmax(sizes)) + 1)
    comp = ndimage.binary_fill_holes(comp)
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    sub = comp[y0 : y1 + 1, x0 : x1 + 1]
    filled = np.zeros_like(sub)
    any_row = sub.any(axis=1)
    left = np.argmax(sub, axis=1)
    right = sub.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    cols = np.arange(sub.shape[1])
    filled[any_row] = (cols[None, :] >= left[any_row, None]) & (cols[None, :] <= right[any_row, None])
    return x0, y0, x1, y1, filled


def locate(ds: Dataset, rgb: np.ndarray, config: FrontEndConfig = FrontEndConfig()) -> Layout:
    """The crop, its mask and colour boxes for this object (regions first, sector fallback)."""
    rows, cols = rgb.shape[:2]
    regions = parse_regions(ds, (rows, cols))
    decided, _ = doppler_from_header(ds)
    main = imaging_region(regions)
    if main is not None:
        mask = np.ones((main.y1 - main.y0 + 1, main.x1 - main.x0 + 1), bool)
        for bar in furniture(regions):
            if main.overlaps(bar):
                mask[max(bar.y0, main.y0) - main.y0 : min(bar.y1, main.y1) - main.y0 + 1,
                     max(bar.x0, main.x0) - main.x0 : min(bar.x1, main.x1) - main.x0 + 1] = False
        boxes = tuple(_relative(c, main) for c in color_regions(regions) if main.overlaps(c))
        mm_x, mm_y = main.mm_per_px_x, main.mm_per_px_y
        return Layout(main.x0, main.y0, main.x1, main.y1, mask, boxes,
                      (mm_x, mm_y) if mm_x and mm_y else None, "region", decided is not False)
    x0, y0, x1, y1, mask = find_sector(rgb, config.background_margin)
    return Layout(x0, y0, x1, y1, mask, (), None, "sector", decided is not False)


def _relative(c: Region, main: Region) -> tuple[int, int, int, int]:
    return (max(c.x0, main.x0) - main.x0, max(c.y0, main.y0) - main.y0,
            min(c.x1, main.x1) - main.x0, min(c.y1, main.y1) - main.y0)


def _hue_deg(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    mx, mn = f.max(axis=-1), f.min(axis=-1)
    chroma = mx - mn
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return hue * 60.0, chroma, mx


def colour_mask(rgb: np.ndarray, config: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Any saturated colour (annotations included): what the greyscale channel must not keep."""
    _, chroma, mx = _hue_deg(rgb)
    return (chroma >= config.chroma_min) & (mx >= config.value_min)


def _drop_bars(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    keep = mask.copy()
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):  # labels 1..n have no gaps: no None
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        fill = float((labels[sl] == i).sum()) / float(h * w)
        if h >= 3 * w and h >= 12 and fill > 0.7:
            keep[sl][labels[sl] == i] = False
    return keep


def doppler_mask(rgb: np.ndarray, layout: Layout, config: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Power/colour Doppler pixels of a cropped RGB frame (bool, crop shape)."""
    if not layout.doppler_allowed:
        return np.zeros(rgb.shape[:2], bool)
    hue, chroma, mx = _hue_deg(rgb)
    palette = (hue <= 70.0) | (hue >= 330.0) | ((hue >= 190.0) & (hue <= 265.0))
    mask = (chroma >= config.chroma_min) & (mx >= config.value_min) & palette & layout.mask
    if layout.color_boxes:
        inside = np.zeros_like(mask)
        for x0, y0, x1, y1 in layout.color_boxes:
            inside[max(0, y0 - 2) : y1 + 3, max(0, x0 - 2) : x1 + 3] = True
        mask &= inside
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    return _drop_bars(mask)


def _fill_in(grey: np.ndarray, hole: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Replace `hole` pixels by the Gaussian-weighted mean of the valid pixels around them."""
    if not hole.any():
        return grey
    valid = (~hole).astype(np.float32)
    num = ndimage.gaussian_filter(grey * valid, sigma)
    den = ndimage.gaussian_filter(valid, sigma)
    filled = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    return np.where(hole, filled, grey).astype(np.float32)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio onto a centred `size` x `size` canvas of zeros."""
    h, w = image.shape
    scale = size / max(h, w)
    if scale < 1.0:
        image = ndimage.gaussian_filter(image, max(0.0, (1.0 / scale - 1.0) / 2.0))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    r = (np.arange(nh) + 0.5) / scale - 0.5
    c = (np.arange(nw) + 0.5) / scale - 0.5
    rr, cc = np.meshgrid(np.clip(r, 0, h - 1), np.clip(c, 0, w - 1), indexing="ij")
    small = ndimage.map_coordinates(image, (rr, cc), order=1, mode="nearest", prefilter=False)
    out = np.zeros((size, size), np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def frame_channels(rgb: np.ndarray, layout: Layout, config: FrontEndConfig = FrontEndConfig()) -> FrameChannels:
    """A full RGB frame -> grey and Doppler channels of the image region at `config.size`."""
    crop = rgb[layout.y0 : layout.y1 + 1, layout.x0 : layout.x1 + 1]
    if crop.shape[:2] != layout.mask.shape:
        raise ValueError(f"frame {rgb.shape[:2]} does not fit the layout")
    dop = doppler_mask(crop, layout, config)
    lum = luminance(crop)
    bright = lum >= config.overlay_min
    thin_bright = bright & ~ndimage.binary_opening(bright, structure=np.ones((3, 3), bool))
    hole = (colour_mask(crop, config) | thin_bright) & layout.mask
    grey = _fill_in(lum, hole) * layout.mask
    power = np.where(dop, crop.max(axis=-1).astype(np.float32), 0.0)
    n_img = max(1, int(layout.mask.sum()))
    return FrameChannels(
        grey=letterbox(grey / 255.0, config.size),
        doppler=letterbox(power / 255.0, config.size),
        doppler_fraction=float(dop.sum()) / n_img,
        layout=layout,
    )


def doppler_count(rgb: np.ndarray, layout: Layout, config: FrontEndConfig = FrontEndConfig()) -> int:
    """Doppler pixels in one full frame (for choosing cine frames)."""
    crop = rgb[layout.y0 : layout.y1 + 1, layout.x0 : layout.x1 + 1]
    return int(doppler_mask(crop, layout, config).sum())


def uniform_indices(total: int, n: int) -> list[int]:
    """`n` evenly spaced frame indices of `total` (repeats when total < n)."""
    if total <= 0 or n <= 0:
        return []
    return [round(v) for v in np.linspace(0, total - 1, n)]


def sample_frames(ds: Dataset, n: int, mode: Sampling = "uniform",
                  config: FrontEndConfig = FrontEndConfig()) -> list[FrameChannels]:
    """`n` frames of a cine (or the one frame of a still, repeated) as channels, in time order."""
    total = n_frames(ds)
    first = decode_frame(ds, 0)
    layout = locate(ds, first, config)
    if mode == "doppler" and total > 1 and layout.doppler_allowed:
        candidates = sorted(set(uniform_indices(total, min(total, 4 * n))))
        decoded = {i: (first if i == 0 else decode_frame(ds, i)) for i in candidates}
        scores = {i: doppler_count(f, layout, config) for i, f in decoded.items()}
        if max(scores.values()) > 0:
            ranked = sorted(candidates, key=lambda i: (-scores[i], i))
            chosen = sorted(ranked[:n])
            while len(chosen) < n:  # fewer candidates than n: repeat, still in order
                chosen = sorted(chosen + chosen[: n - len(chosen)])
            made = {i: frame_channels(decoded[i], layout, config) for i in set(chosen)}
            return [made[i] for i in chosen]
    cache: dict[int, np.ndarray] = {0: first}
    channels: dict[int, FrameChannels] = {}  # a repeated index (fewer frames than n) is made once
    out = []
    for i in uniform_indices(total, n):
        if i not in channels:
            if i not in cache:
                cache[i] = decode_frame(ds, i)
            channels[i] = frame_channels(cache[i], layout, config)
        out.append(channels[i])
    return out


def still_channels(ds: Dataset, config: FrontEndConfig = FrontEndConfig(), frame: int = 0) -> FrameChannels:
    """One frame (the first, unless told) of an object as channels."""
    rgb = decode_frame(ds, frame)
    return frame_channels(rgb, locate(ds, rgb, config), config)


def pixel_doppler_fraction(ds: Dataset, config: FrontEndConfig = FrontEndConfig()) -> float:
    """Share of image pixels that are power Doppler in the first frame (pixels only)."""
    return still_channels(ds, config).doppler_fraction
