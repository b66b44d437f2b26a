"""The QA alert as a DICOM image a console can show: rendered text in a new series.

The picture is 512x512 MONOCHROME2, white text on black inside a white border, headed
"AI QA ALERT", as a Secondary Capture in the source study. Its series is its own (derived from
the source series and the model), with "AI QA ALERT" in the SeriesDescription. Only the
caller's text is rendered: no patient attribute is ever drawn, and any word of the caller's
text that is a part of the patient's name is masked, so a slip never puts a name on a console
(masking, not refusing, so the alert still goes out).
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid
from sidecar.errors import ResultError
from sidecar.results.sc import instance_number_for, load_font, secondary_capture
from sidecar.results.sr import series_description

ALERT_SERIES_NUMBER = 9990
ALERT_SIZE_PX = 512
_BORDER_PX = 6
_MARGIN_PX = 24
_TITLE_PX = 44
_TEXT_PX = 26
_LINE_GAP_PX = 8
_MAX_LINES = 12


_NAME_MASK = "***"


def _name_pattern(source: Dataset) -> re.Pattern[str] | None:
    """A whole-word, case-blind pattern for the parts of the source's PatientName."""
    name = source.get("PatientName")
    if not name:
        return None
    parts = {str(name)} | {
        p for p in (name.family_name, name.given_name, name.middle_name) if p and len(p) >= 2
    }
    alternatives = "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def mask_patient_name(text_lines: list[str], source: Dataset) -> list[str]:
    """`text_lines` with every whole-word part of the patient's name replaced by ***."""
    pattern = _name_pattern(source)
    if pattern is None:
        return list(text_lines)
    return [pattern.sub(_NAME_MASK, line) for line in text_lines]


def _wrap(line: str, room_px: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """`line` broken at spaces (or inside a word too long) to fit `room_px` in `font`."""
    chars = len(line)
    while chars > 1 and any(font.getlength(w) > room_px for w in textwrap.wrap(line, chars)):
        chars -= 1
    return textwrap.wrap(line, chars) or [""]


def render_alert(text_lines: list[str]) -> np.ndarray:
    """The alert picture: title and wrapped `text_lines`, uint8 (512, 512)."""
    image = Image.new("L", (ALERT_SIZE_PX, ALERT_SIZE_PX), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle(
        (0, 0, ALERT_SIZE_PX - 1, ALERT_SIZE_PX - 1), outline=255, width=_BORDER_PX
    )
    title_font = load_font(_TITLE_PX)
    text_font = load_font(_TEXT_PX)
    y = _MARGIN_PX
    draw.text((_MARGIN_PX, y), codes.AI_QA_ALERT, fill=255, font=title_font)
    y += _TITLE_PX + 2 * _LINE_GAP_PX
    rule_y = y - _LINE_GAP_PX
    draw.line((_MARGIN_PX, rule_y, ALERT_SIZE_PX - _MARGIN_PX, rule_y), fill=255, width=2)
    room_px = ALERT_SIZE_PX - 2 * _MARGIN_PX
    wrapped = [w for line in text_lines for w in _wrap(line, room_px, text_font)]
    if len(wrapped) > _MAX_LINES:
        wrapped = [*wrapped[:_MAX_LINES - 1], "..."]
    for line in wrapped:
        draw.text((_MARGIN_PX, y), line, fill=255, font=text_font)
        y += _TEXT_PX + _LINE_GAP_PX
    return np.asarray(image, dtype=np.uint8).copy()


def build_alert_image(
    text_lines: list[str],
    source: Dataset,
    *,
    input_uid: str,
    model_id: str,
    model_version: str,
    revision: int = 0,
    not_for_clinical_use: bool = True,
) -> Dataset:
    """A Secondary Capture that shows `text_lines` as an AI QA alert, in a new series of the study.

    The image carries the source's Modality and InstanceNumber (so a console hangs it beside the
    slice it is about) and, for demo weights, "[NOT FOR CLINICAL USE]" in its SeriesDescription.
    Parts of the patient's name in the text are masked. Raises ResultError when there is no text.
    """
    if not any(line.strip() for line in text_lines):
        raise ResultError("an alert needs at least one line of text")
    text_lines = mask_patient_name(text_lines, source)
    description = series_description(codes.AI_QA_ALERT, model_id, not_for_clinical_use)
    return secondary_capture(
        render_alert(text_lines),
        "MONOCHROME2",
        source,
        series_uid=result_uid(
            str(source.SeriesInstanceUID), model_id, model_version, "alert-series", 0
        ),
        series_number=ALERT_SERIES_NUMBER,
        sop_uid=result_uid(input_uid, model_id, model_version, "alert", revision),
        instance_number=instance_number_for(source, 1, revision),
        manufacturer=codes.SIDECAR_MANUFACTURER,
        description=description,
        comments=(f"{codes.AI_QA_ALERT}: " + " / ".join(text_lines))[:10240],  # LT
        burned_in=True,
        model_name=model_id,
        software_version=model_version,
    )
