"""What the musculoskeletal US models read from headers besides the pixels.

Doppler: `doppler_from_header` decides from the header alone when it can (the order of authority
is in `models.us.predicates`); the front end and the router's predicate both start from it.

Laterality: Image Laterality (0020,0062) first, then the series' Laterality (0020,0060, General
Series, PS3.3 C.7.3.1); anything but L or R (empty, B, U) is unknown.
"""

from __future__ import annotations

from pydicom import Dataset

from models.us.regions import COLOR_FLOW, parse_regions


def laterality(ds: Dataset) -> str | None:
    """"L" or "R" from ImageLaterality or Laterality, else None."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


COLOUR_MODE_BITS = 0x0010 | 0x0020 | 0x0100


def _mode_bits(ds: Dataset) -> int | None:
    try:
        value = ds.get("ImageType")
        values = [value] if isinstance(value, str) else list(value or [])
        if len(values) < 4:
            return None
        return int(str(values[3]).strip(), 16)
    except (TypeError, ValueError):
        return None


def _colour_present(ds: Dataset) -> int | None:
    try:
        value = ds.get("UltrasoundColorDataPresent")
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def doppler_from_header(ds: Dataset) -> tuple[bool | None, str]:
    """(True/False when the header decides, None when it is silent; the reason)."""
    try:
        if _colour_present(ds) == 0:
            return False, "UltrasoundColorDataPresent 0"
        regions = parse_regions(ds)
        if regions:
            if any(r.data_type == COLOR_FLOW for r in regions):
                return True, "colour-flow region"
            return False, f"{len(regions)} regions, none colour flow"
        bits = _mode_bits(ds)
        if bits is not None:
            return bool(bits & COLOUR_MODE_BITS), f"ImageType modes {bits:04X}"
    except Exception as exc:  # a predicate must never raise
        return None, f"unreadable header ({type(exc).__name__})"
    return None, "no header cue"
