"""Patient and study attributes a result copies from its source, repaired where they are invalid.

A result must never fail because the source carries a value its VR does not allow (issue 13
case 6: PatientBirthDate "1901-12-31", the ACR-NEMA style common in old archives). Before a writer
hands the source to highdicom, `repaired_source` checks every attribute highdicom copies (the
Patient, General Study and Patient Study modules) against its VR with pydicom's own validators:

- a date, time or date-time in a recognisable non-standard form is rewritten in the DICOM form
  ("1901-12-31" or "1901.12.31" -> "19011231"; "12:30:05" -> "123005");
- a code string is upper-cased and trimmed when that makes it valid;
- anything else invalid is emptied (Type 2 attributes stay present, as the IOD requires).

Each repair is reported by attribute keyword and what was done, never with the value, so the
notes the SR carries and any reason or log line hold no patient data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydicom.config
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.valuerep import validate_value

#: the attributes highdicom copies from the evidence into an SR, SC or derived image
COPIED_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "OtherPatientIDs", "EthnicGroup", "PatientComments",
    "IssuerOfPatientID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription", "Occupation", "AdditionalPatientHistory", "SeriesDate",
    "SeriesTime", "ContentDate", "ContentTime", "AcquisitionDateTime", "InstitutionName",
)

_DATE_PARTS = re.compile(r"^\s*(\d{4})[-./: ]?(\d{2})[-./: ]?(\d{2})\s*$")
_TIME_PARTS = re.compile(r"^\s*(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?\s*$")


@dataclass(frozen=True)
class Repair:
    """One attribute that was changed: its keyword and what was done ("reformatted", "emptied")."""

    keyword: str
    action: str

    def note(self) -> str:
        return f"Source {self.keyword} was not valid DICOM and was {self.action} in this result."


def _valid(vr: str, value: object) -> bool:
    try:
        validate_value(vr, value, pydicom.config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _reformat(vr: str, text: str) -> str | None:
    """`text` in the DICOM form of `vr` when it is a recognisable variant; None otherwise."""
    if vr == "DA":
        m = _DATE_PARTS.match(text)
        return "".join(m.groups()) if m else None
    if vr == "TM":
        m = _TIME_PARTS.match(text)
        return "".join(p for p in m.groups() if p) if m else None
    if vr == "DT":
        date, _, rest = text.strip().partition(" ")
        d = _reformat("DA", date[:10])
        t = _reformat("TM", rest) if rest else ""
        return d + t if d is not None and t is not None else None
    if vr == "CS":
        return text.strip().upper()
    return None


def _allowed(keyword: str, value: object) -> bool:
    """Enumerated values highdicom checks beyond the VR (PatientSex: M, F or O, PS3.3 C.7.1.1)."""
    return keyword != "PatientSex" or value in ("M", "F", "O")


def _as_text(value: object) -> str | None:
    if isinstance(value, (str, bytes)):
        return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def repaired_source(source: Dataset) -> tuple[Dataset, list[Repair]]:
    """`source` itself when every copied attribute is valid, else a shallow copy with repairs."""
    repairs: list[Repair] = []
    fixed: Dataset | None = None
    for keyword in COPIED_KEYWORDS:
        elem = source.data_element(keyword) if keyword in source else None
        if elem is None or elem.value in (None, ""):
            continue
        vr = elem.VR
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if all(_valid(vr, v) and _allowed(keyword, v) for v in values):
            continue
        new_values: list[object] = []
        action = "reformatted"
        for v in values:
            text = _as_text(v)
            candidate = _reformat(vr, text) if text is not None else None
            if candidate is not None and _valid(vr, candidate) and _allowed(keyword, candidate):
                new_values.append(candidate)
            elif _valid(vr, v) and _allowed(keyword, v):
                new_values.append(v)
            else:
                action = "left empty"
                new_values = []
                break
        if fixed is None:
            fixed = Dataset()  # its own element dict (elements shared): the source is never changed
            fixed.update(source)
        value = (new_values if len(new_values) > 1 else new_values[0]) if new_values else None
        fixed[keyword] = DataElement(elem.tag, vr, value)
        repairs.append(Repair(keyword, action))
    return (fixed if fixed is not None else source), repairs
