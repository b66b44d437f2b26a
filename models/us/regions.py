"""The Sequence of Ultrasound Regions (PS3.3 C.8.5.5): where the image is, and its pixel size.

Consoles describe each rectangle of the screen: its data type (RegionDataType, C.8.5.5.1.2:
1 tissue, 2 colour flow, 3 PW and 4 CW spectral Doppler, 10-12 physiological traces, 13 grey
bar, 14 colour bar ...), its spatial format (1: 2D) and its physical deltas (units C.8.5.5.1.15:
3 = cm). Real files get this wrong in small ways (Philips writes MaxX1 = Columns), so bounds
are clipped to the image, and nothing here raises on a malformed item: it is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

TISSUE = 1
COLOR_FLOW = 2
PW_DOPPLER = 3
CW_DOPPLER = 4
GRAY_BAR = 13
COLOR_BAR = 14
#: data types that are 2D images of the body (tissue, colour flow, integrated backscatter)
IMAGING_TYPES = frozenset({TISSUE, COLOR_FLOW, 15})
#: data types that are display furniture to mask out of an image region
FURNITURE_TYPES = frozenset({GRAY_BAR, COLOR_BAR, 10, 11, 12, 5, 6, 7, 8})
SPATIAL_2D = 1
UNITS_CM = 3


@dataclass(frozen=True)
class Region:
    """One calibrated rectangle, inclusive pixel bounds, deltas in mm per pixel (None if not cm)."""

    x0: int
    y0: int
    x1: int
    y1: int
    data_type: int
    spatial_format: int
    mm_per_px_x: float | None
    mm_per_px_y: float | None

    @property
    def area(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)

    def contains(self, other: Region) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1

    def overlaps(self, other: Region) -> bool:
        return not (other.x1 < self.x0 or other.x0 > self.x1 or other.y1 < self.y0 or other.y0 > self.y1)


def _int(item: Dataset, keyword: str) -> int | None:
    try:
        value = item.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _mm(item: Dataset, delta: str, units: str) -> float | None:
    try:
        if _int(item, units) != UNITS_CM:
            return None
        value = float(item.get(delta))
    except (TypeError, ValueError):
        return None
    return value * 10.0 if 0.0 < value < 1.0 else None  # a plausible cm/pixel


def parse_regions(ds: Dataset, shape: tuple[int, int] | None = None) -> list[Region]:
    """Every readable region, bounds clipped to `shape` (rows, cols) or to Rows/Columns."""
    try:
        seq = ds.get("SequenceOfUltrasoundRegions")
    except Exception:  # a corrupt sequence reads as none
        return []
    if not seq:
        return []
    if shape is None:
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    else:
        rows, cols = shape
    out = []
    for item in seq:
        read = [_int(item, k) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                        "RegionLocationMaxX1", "RegionLocationMaxY1")]
        bounds = [b for b in read if b is not None]
        if len(bounds) < 4:
            continue
        x0, y0, x1, y1 = bounds
        if cols:
            x0, x1 = max(0, min(x0, cols - 1)), max(0, min(x1, cols - 1))
        if rows:
            y0, y1 = max(0, min(y0, rows - 1)), max(0, min(y1, rows - 1))
        if x1 <= x0 or y1 <= y0:
            continue
        out.append(Region(x0, y0, x1, y1, _int(item, "RegionDataType") or 0,
                          _int(item, "RegionSpatialFormat") or 0,
                          _mm(item, "PhysicalDeltaX", "PhysicalUnitsXDirection"),
                          _mm(item, "PhysicalDeltaY", "PhysicalUnitsYDirection")))
    return out


def imaging_region(regions: list[Region]) -> Region | None:
    """The region to crop to: the largest 2D tissue region (a colour box sits inside it); a
    colour-flow region when no tissue region is described; None when there is no 2D region."""
    two_d = [r for r in regions if r.spatial_format in (SPATIAL_2D, 0) and r.data_type in IMAGING_TYPES]
    if not two_d:
        return None
    tissue = [r for r in two_d if r.data_type == TISSUE]
    return max(tissue or two_d, key=lambda r: r.area)


def color_regions(regions: list[Region]) -> list[Region]:
    """The colour-flow (Doppler) boxes."""
    return [r for r in regions if r.data_type == COLOR_FLOW]


def furniture(regions: list[Region]) -> list[Region]:
    """Grey and colour bars and traces: masked where they overlap the imaging region."""
    return [r for r in regions if r.data_type in FURNITURE_TYPES]
