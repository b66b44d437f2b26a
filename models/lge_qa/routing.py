"""Is this MR image an LGE PSIR slice? The cues the router asks for (`mr.is_lge_psir`).

The router hands over the first instance's header (possibly read with `stop_before_pixels`).
`is_lge_psir` is true only when every cue holds; a missing or malformed tag fails its cue and
nothing here raises. `explain_cues` gives (cue, passed, detail) per cue for `sidecar route
explain`; details quote only the matched token, never a whole free-text value.

Cues (all required):

1. ``modality_mr`` -- Modality is MR.
2. ``inversion_time`` -- InversionTime (0018,0082) present and positive; for Enhanced MR the
   InversionTimes (0018,9079) of the MR Modifier functional group (PS3.3 C.8.13.5.6).
3. ``inversion_time_range`` -- TI between 80 and 900 ms: LGE nulls myocardium after gadolinium at
   roughly 200-450 ms (1.5 T and 3 T; PSIR is forgiving and sites often use ~300 ms), while brain
   FLAIR (TI ~2000-2800 ms) and other long-TI sequences are not cardiac LGE.
4. ``inversion_recovery`` -- an inversion-recovery acquisition: ScanningSequence (0018,0020)
   contains IR (all vendors' 2D LGE, e.g. Siemens/Philips ``GR\\IR``); or ScanOptions contains an
   IR option (GE writes ``IR_GEMS``); or Enhanced MR InversionRecovery (0018,9009) is YES; or
   the image type says IR (Philips ``R_IR``/``M_IR``); or SequenceName mentions PSIR.
5. ``not_ti_scout`` -- not a TI scout / Look-Locker (the series that chooses the TI: several
   inversion times in one series). Cues: SeriesDescription or ProtocolName matching
   ``TI scout|TI_scout|TI-scout|ti scout|look-locker|TI scan`` (Siemens "TI_Scout", Philips
   "Look-Locker", GE "Cine IR"); or ImageComments carrying a per-image TI ("TI 150", "TI=150"),
   which vendors write precisely because TI varies within the series.
6. ``not_t1_mapping`` -- not a MOLLI/ShMOLLI/SASHA T1 map or its inversion images (also IR with
   TI in range): description, protocol or ImageType mentioning MOLLI, ShMOLLI, SASHA, T1 MAP.
7. ``psir_not_magnitude`` -- the phase-sensitive (real) image, not its magnitude companion. A
   positive cue is required and no magnitude cue may be present:

   - standard: ComplexImageComponent (0008,9208) REAL is PSIR, MAGNITUDE is the companion
     (Enhanced MR, and some vendors top-level);
   - Siemens: the pair comes as two series, "<name>_PSIR" and "<name>_MAG" (SeriesDescription);
     ImageType value 3 is "R" (real) for PSIR and "M" (magnitude) for MAG; a MAG description or
     an "M" ImageType value without a PSIR description is the magnitude;
   - Philips: ImageType contains "R_IR" (real IR, the PSIR image) or "M_IR" (magnitude IR);
   - GE: the private raw-data-type element (0043,102F), as dcm2niix reads it: 0 magnitude,
     1 phase, 2 real, 3 imaginary; GE's PSIR series are also described "PSIR" (e.g. "MDE PSIR").
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydicom import Dataset
from pydicom.tag import Tag

Cue = tuple[str, bool, str]

TI_MIN_MS = 80.0
TI_MAX_MS = 900.0

_TI_SCOUT_RE = re.compile(
    r"ti[ _-]?scout|look[ _-]?locker|ti[ _-]?scan|ti[ _-]?finder|cine[ _-]?ir", re.IGNORECASE
)
_TI_COMMENT_RE = re.compile(r"^\s*TI\s*[=:]?\s*\d+", re.IGNORECASE)
_T1_MAP_RE = re.compile(r"sh?molli|sasha|t1[ _-]?map", re.IGNORECASE)
_PSIR_RE = re.compile(r"psir", re.IGNORECASE)
_MAG_RE = re.compile(r"(?:^|[_\s-])mag(?:nitude)?(?:$|[_\s-])", re.IGNORECASE)
_GE_RAW_TYPE = Tag(0x0043, 0x102F)
_GE_RAW_NAMES = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}


def _text(ds: Dataset, keyword: str) -> str:
    """A string attribute as text ('' when missing or empty)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value)


def _tokens(ds: Dataset, keyword: str) -> list[str]:
    """A multi-valued string attribute as upper-case values ([] when missing)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        values = value.split("\\")
    else:
        try:
            values = [str(v) for v in value]
        except TypeError:
            values = [str(value)]
    return [v.strip().upper() for v in values if str(v).strip()]


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    node: Dataset | None = ds
    for keyword in path:
        seq = node.get(keyword) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node


def _mr_modifier(ds: Dataset) -> Dataset | None:
    """The MR Modifier functional group of an Enhanced MR (shared, else first frame's)."""
    return _first_item(ds, "SharedFunctionalGroupsSequence", "MRModifierSequence") or _first_item(
        ds, "PerFrameFunctionalGroupsSequence", "MRModifierSequence"
    )


def inversion_times_ms(ds: Dataset) -> list[float]:
    """InversionTime, or the Enhanced MR InversionTimes; [] when absent or malformed."""
    raw = ds.get("InversionTime")
    if raw is None or raw == "":
        item = _mr_modifier(ds)
        raw = item.get("InversionTimes") if item is not None else None
    if raw is None or raw == "":
        return []
    values = [raw] if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__") else list(raw)
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return []
    return out


def _descriptions(ds: Dataset) -> str:
    return " | ".join(t for t in (_text(ds, "SeriesDescription"), _text(ds, "ProtocolName")) if t)


def _complex_component(ds: Dataset) -> str:
    value = _text(ds, "ComplexImageComponent").upper()
    if value:
        return value
    item = _first_item(ds, "SharedFunctionalGroupsSequence", "MRImageFrameTypeSequence") or _first_item(
        ds, "PerFrameFunctionalGroupsSequence", "MRImageFrameTypeSequence"
    )
    return _text(item, "ComplexImageComponent").upper() if item is not None else ""


def _ge_raw_type(ds: Dataset) -> int | None:
    if _GE_RAW_TYPE not in ds:
        return None
    elem = ds[_GE_RAW_TYPE]
    try:
        value = elem.value
        if isinstance(value, bytes):
            value = int.from_bytes(value[:2], "little") if len(value) in (2, 4) else int(value.decode().strip())
        elif isinstance(value, (list, tuple)):
            value = value[0]
        return int(value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


# --- the cues ---------------------------------------------------------------------------------


def _cue_modality(ds: Dataset) -> Cue:
    modality = _text(ds, "Modality").upper()
    return ("modality_mr", modality == "MR", f"Modality {modality or 'missing'}")


def _cue_inversion_time(ds: Dataset) -> Cue:
    tis = inversion_times_ms(ds)
    ok = bool(tis) and all(t > 0 for t in tis)
    return ("inversion_time", ok, f"TI {', '.join(f'{t:g}' for t in tis)} ms" if tis else "no InversionTime")


def _cue_ti_range(ds: Dataset) -> Cue:
    tis = inversion_times_ms(ds)
    ok = bool(tis) and all(TI_MIN_MS <= t <= TI_MAX_MS for t in tis)
    detail = f"TI in [{TI_MIN_MS:g}, {TI_MAX_MS:g}] ms" if ok else "TI missing or outside the LGE range"
    return ("inversion_time_range", ok, detail)


def _cue_inversion_recovery(ds: Dataset) -> Cue:
    if "IR" in _tokens(ds, "ScanningSequence"):
        return ("inversion_recovery", True, "ScanningSequence has IR")
    if any(t.startswith("IR") for t in _tokens(ds, "ScanOptions")):
        return ("inversion_recovery", True, "ScanOptions has IR")
    item = _mr_modifier(ds)
    if item is not None and _text(item, "InversionRecovery").upper() == "YES":
        return ("inversion_recovery", True, "InversionRecovery YES")
    if any(t in ("R_IR", "M_IR") for t in _tokens(ds, "ImageType")):
        return ("inversion_recovery", True, "ImageType has R_IR/M_IR")
    if _PSIR_RE.search(_text(ds, "SequenceName")):
        return ("inversion_recovery", True, "SequenceName mentions PSIR")
    return ("inversion_recovery", False, "no inversion-recovery cue")


def _cue_not_ti_scout(ds: Dataset) -> Cue:
    match = _TI_SCOUT_RE.search(_descriptions(ds))
    if match:
        return ("not_ti_scout", False, f"description says {match.group(0)!r}")
    if _TI_COMMENT_RE.search(_text(ds, "ImageComments")):
        return ("not_ti_scout", False, "ImageComments carries a per-image TI")
    return ("not_ti_scout", True, "no TI scout cue")


def _cue_not_t1_mapping(ds: Dataset) -> Cue:
    text = _descriptions(ds) + " | " + " ".join(_tokens(ds, "ImageType"))
    match = _T1_MAP_RE.search(text)
    if match:
        return ("not_t1_mapping", False, f"T1 mapping cue {match.group(0)!r}")
    return ("not_t1_mapping", True, "no T1 mapping cue")


def _cue_psir(ds: Dataset) -> Cue:
    name = "psir_not_magnitude"
    component = _complex_component(ds)
    if component == "REAL":
        return (name, True, "ComplexImageComponent REAL")
    if component in ("MAGNITUDE", "PHASE", "IMAGINARY", "MIXED"):
        return (name, False, f"ComplexImageComponent {component}")
    image_type = _tokens(ds, "ImageType")
    if "M_IR" in image_type:
        return (name, False, "Philips ImageType M_IR (magnitude)")
    if "R_IR" in image_type:
        return (name, True, "Philips ImageType R_IR (real)")
    ge = _ge_raw_type(ds)
    if ge is not None and ge != 2:
        return (name, False, f"GE raw data type {ge} ({_GE_RAW_NAMES.get(ge, 'unknown')})")
    description = _text(ds, "SeriesDescription")
    psir_text = bool(_PSIR_RE.search(description))
    if _MAG_RE.search(description) and not re.search(r"psir$", description.strip(), re.IGNORECASE):
        return (name, False, "description marks the magnitude companion (MAG)")
    if len(image_type) >= 3 and image_type[2] == "M" and not psir_text:
        return (name, False, "ImageType value 3 is M (magnitude)")
    if ge == 2:
        return (name, True, "GE raw data type 2 (real)")
    if psir_text:
        return (name, True, "description says PSIR")
    if "PSIR" in image_type or (len(image_type) >= 3 and image_type[2] == "R"):
        return (name, True, "ImageType marks a real (PSIR) image")
    return (name, False, "no PSIR (real image) cue")


CUES: tuple[Callable[[Dataset], Cue], ...] = (
    _cue_modality,
    _cue_inversion_time,
    _cue_ti_range,
    _cue_inversion_recovery,
    _cue_not_ti_scout,
    _cue_not_t1_mapping,
    _cue_psir,
)


def explain_cues(ds: Dataset) -> list[Cue]:
    """(cue, passed, detail) for every cue, in order; a cue that cannot be read fails, never raises."""
    out: list[Cue] = []
    for cue in CUES:
        try:
            out.append(cue(ds))
        except Exception as exc:  # a malformed header must fail the cue, not routing
            out.append((cue.__name__.removeprefix("_cue_"), False, f"unreadable ({type(exc).__name__})"))
    return out


def is_lge_psir(ds: Dataset) -> bool:
    """True when every cue of `explain_cues` holds: an LGE PSIR image, not a scout, map or magnitude."""
    return all(passed for _, passed, _ in explain_cues(ds))
