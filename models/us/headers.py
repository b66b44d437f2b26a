"""What the musculoskeletal US models read from headers besides the pixels.

Laterality: Image Laterality (0020,0062) first, then the series' Laterality (0020,0060, General
Series, PS3.3 C.7.3.1); anything but L or R (empty, B, U) is unknown.
"""

from __future__ import annotations

from pydicom import Dataset


def laterality(ds: Dataset) -> str | None:
    """"L" or "R" from ImageLaterality or Laterality, else None."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None
