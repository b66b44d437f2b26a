"""Header cues the router asks for: `us.has_doppler` and `us.is_cine`.

They work on a header read with `stop_before_pixels` and never raise: a missing or malformed
tag is simply no evidence. `explain_doppler` / `explain_cine` give (cue, passed, detail) for `sidecar route explain`.

has_doppler, in order of authority:

1. UltrasoundColorDataPresent (0028,0014) = 0: the console says there is no colour: False.
2. A Sequence of Ultrasound Regions is present: True iff one region is colour flow
   (RegionDataType 2, PS3.3 C.8.5.5.1.2). Colour inside tissue-only regions is annotation
   (Philips sets UltrasoundColorDataPresent = 1 on palette images with no flow at all).
3. ImageType value 4, the US mode bits (C.8.5.6.1.1): colour Doppler 0x0010, colour M-mode
   0x0020, colour power mode 0x0100.
4. Otherwise, when pixel data is at hand, the front end's colour analysis (a header read
   without pixels says False: grey is the safe default, the greyscale model still answers).

is_cine: NumberOfFrames > 1 (US Multi-frame Image Storage with one frame is a still).
"""

from __future__ import annotations

from pydicom import Dataset

from models.us.frontend import pixel_doppler_fraction
from models.us.headers import doppler_from_header

Cue = tuple[str, bool, str]


def has_doppler(ds: Dataset) -> bool:
    """True when the image carries colour or power Doppler (header first, pixels if silent)."""
    decided, _ = doppler_from_header(ds)
    if decided is not None:
        return decided
    if "PixelData" not in ds:
        return False
    try:
        return pixel_doppler_fraction(ds) >= 0.002
    except Exception:  # undecodable pixels: no Doppler cue
        return False


def is_cine(ds: Dataset) -> bool:
    """True for a multi-frame (cine) object."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except (TypeError, ValueError):
        return False


def explain_doppler(ds: Dataset) -> list[Cue]:
    """(cue, passed, detail) of `has_doppler`; details never quote free text."""
    decided, why = doppler_from_header(ds)
    return [("has_doppler", has_doppler(ds), why if decided is not None else f"{why}; pixels decide")]


def explain_cine(ds: Dataset) -> list[Cue]:
    """(cue, passed, detail) of `is_cine`."""
    try:
        frames = str(ds.get("NumberOfFrames", "absent"))
    except Exception:  # an unreadable value is shown as such
        frames = "unreadable"
    return [("is_cine", is_cine(ds), f"NumberOfFrames {frames}")]


def explain_cues(ds: Dataset) -> list[Cue]:
    """Both predicates' cues."""
    return explain_doppler(ds) + explain_cine(ds)
