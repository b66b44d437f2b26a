"""Scrubbing of the free text the journal stores: job reasons, timeline details, delivery errors.

What the journal keeps is served again (`sidecar status`, `GET /api/series/{uid}/timeline`, the
dashboard) and outlives the log's retention, so patient data is taken out when the text is
written, not only when a log line is. An error message can quote a header value: pydicom's
"Invalid value for VR DA: '1901-12-31'" names a PatientBirthDate. Masked here:

- the patient identifiers this process registered (`sidecar.logging.register_phi`) and
  dataset-dump lines of the Patient group (0010,xxxx), as in the log;
- values quoted before or after a VR that carries patient data in the Patient module (PS3.3 C.7.1.1:
  PN, DA, DT, TM, LO, SH, CS, AS), which a worker process may never have registered;
- calendar dates (YYYY-MM-DD, YYYY/MM/DD, and YYYYMMDD standing alone, not inside a UID);
- `PatientXxx=...` / `BirthDate: ...` pairs, and caret-separated person names (DOE^JOHN).
"""

from __future__ import annotations

import re

from sidecar.logging import PHI_MASK, scrub_text

_QUOTED_AFTER_VR = re.compile(r"""(\bVR\s*['"]?(?:PN|DA|DT|TM|LO|SH|CS|AS)\b['"]?[^'"\n]{0,40}?)(['"])[^'"\n]*\2""")
_QUOTED_BEFORE_VR = re.compile(
    r"""(['"])[^'"\n]*\1(\s+(?:to|for|as|of)\s+(?:VR\s+)?['"]?(?:PN|DA|DT|TM|LO|SH|CS|AS)\b)"""
)
_CARET_NAME = re.compile(r"[^\s'\",;:=()\[\]]+\^[^\s'\",;:=()\[\]]*")  # PN components: DOE^JOHN
_DATE = re.compile(
    r"(?<![\w.])(?:1[89]|20)\d{2}(?P<sep>[-/])(?:0[1-9]|1[0-2])(?P=sep)(?:0[1-9]|[12]\d|3[01])(?![\w.])"
    r"|(?<![\w.])(?:1[89]|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w.])"
)
_PATIENT_PAIR = re.compile(r"(?i)\b((?:Patient\w*|\w*Birth\w*)\s*[:=]\s*)(['\"]?)[^,;'\"\n]*\2")


def scrub_stored(text: str) -> str:
    """`text` as the journal may keep and serve it: no patient data (see the module docstring)."""
    if not text:
        return text
    out = scrub_text(text)
    out = _QUOTED_AFTER_VR.sub(rf"\1\2{PHI_MASK}\2", out)
    out = _QUOTED_BEFORE_VR.sub(rf"\1{PHI_MASK}\1\2", out)
    out = _CARET_NAME.sub(PHI_MASK, out)
    out = _PATIENT_PAIR.sub(rf"\1{PHI_MASK}", out)
    return _DATE.sub(PHI_MASK, out)
