"""The QA alert as a DICOM image a console can show: rendered text in a new series.

The picture is 512x512 MONOCHROME2, white text on black inside a white border, headed
"AI QA ALERT", as a Secondary Capture in the source study. Its series is its own (derived from
the source series and the model), with "AI QA ALERT" in the SeriesDescription. Only the
caller's text is rendered: no patient attribute is ever drawn, and text that contains the
patient's name is refused.
"""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset

from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid
from sidecar.errors import ResultError
from sidecar.results.sc import load_font, secondary_capture

ALERT_SERIES_NUMBER = 9990
ALERT_SIZE_PX = 512
_BORDER_PX = 6
_MARGIN_PX = 24
_TITLE_PX = 44
_TEXT_PX = 26
_LINE_GAP_PX = 8
_MAX_LINES = 12


def _name_parts(source: Dataset) -> list[str]:
    """Components of the source's PatientName long enough to be told apart from words."""
    name = source.get("PatientName")
    if not name:
        return []
    parts = [str(name)] + [p for p in (name.family_name, name.given_name) if p]
    return [p.lower() for p in parts if len(p) >= 3]


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
    width_chars = 30  # fits 512 px at 26 px with margins
    wrapped = [w for line in text_lines for w in (textwrap.wrap(line, width_chars) or [""])]
    if len(wrapped) > _MAX_LINES:
        wrapped = wrapped[: _MAX_LINES - 1] + ["..."]
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
) -> Dataset:
    """A Secondary Capture that shows `text_lines` as an AI QA alert, in a new series of the study.

    Raises ResultError when there is no text or the text contains the patient's name.
    """
    if not any(line.strip() for line in text_lines):
        raise ResultError("an alert needs at least one line of text")
    joined = "\n".join(text_lines).lower()
    if any(part in joined for part in _name_parts(source)):
        raise ResultError("alert text contains the patient's name; alerts carry no names")
    description = f"{codes.AI_QA_ALERT} {model_id}"[:64]
    return secondary_capture(
        render_alert(text_lines),
        "MONOCHROME2",
        source,
        series_uid=result_uid(
            str(source.SeriesInstanceUID), model_id, model_version, "alert-series", 0
        ),
        series_number=ALERT_SERIES_NUMBER,
        sop_uid=result_uid(input_uid, model_id, model_version, "alert", revision),
        instance_number=1 + revision,
        manufacturer=codes.SIDECAR_MANUFACTURER,
        description=description,
        comments=(f"{codes.AI_QA_ALERT}: " + " / ".join(text_lines))[:10240],  # LT
        burned_in=True,
        model_name=model_id,
        software_version=model_version,
    )
