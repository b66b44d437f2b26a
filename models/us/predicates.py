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

from models.us.regions import COLOR_FLOW, parse_regions

Cue = tuple[str, bool, str]
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
    except Exception as exc:  # a predicate must never raise  # noqa: BLE001
        return None, f"unreadable header ({type(exc).__name__})"
    return None, "no header cue"


def has_doppler(ds: Dataset) -> bool:
    """True when the image carries colour or power Doppler (header first, pixels if silent)."""
    decided, _ = doppler_from_header(ds)
    if decided is not None:
        return decided
    if "PixelData" not in ds:
        return False
    try:
        from models.us.frontend import pixel_doppler_fraction

        return pixel_doppler_fraction(ds) >= 0.002
    except Exception:  # undecodable pixels: no Doppler cue  # noqa: BLE001
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
    except Exception:  # an unreadable value is shown as such  # noqa: BLE001
        frames = "unreadable"
    return [("is_cine", is_cine(ds), f"NumberOfFrames {frames}")]


def explain_cues(ds: Dataset) -> list[Cue]:
    """Both predicates' cues."""
    return explain_doppler(ds) + explain_cine(ds)
