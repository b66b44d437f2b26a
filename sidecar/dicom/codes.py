"""Every coded concept and fixed wording the result writers use, in one place.

Standard concepts come from DICOM (DCM, PS3.16), SNOMED CT (SCT), UMLS and UCUM, checked
against pydicom's code dictionary. Where no standard concept exists (task-specific grades, model
labels) a concept of the private coding scheme ``99SIDECAR`` is used: PS3.16 §8.2 reserves
designators starting with "99" for private schemes, and every SR we write declares it in the
Coding Scheme Identification Sequence (PS3.3 C.12.1.1.5), see `PRIVATE_SCHEME_IDENTIFICATION`.

Private code values are derived from a stable key by hashing, so an unknown label never crashes
a writer and the same label always gets the same code.
"""

from __future__ import annotations

import re

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

from models.base import PRIVATE_SCHEME as PRIVATE_SCHEME, private_code as _model_private_code

# --- Coding schemes -------------------------------------------------------------------------

PRIVATE_SCHEME_NAME = "DICOM AI sidecar private concepts"
_LO_MAX = 64  # Code Meaning is LO


def private_code(key: str, meaning: str) -> CodedConcept:
    """A concept of the private scheme whose code value is a hash of `key` (stable, <= 16 chars)."""
    return CodedConcept.from_code(_model_private_code(key, meaning))


def coding_scheme_identification() -> list[CodingSchemeIdentificationItem]:
    """Declarations of the non-DICOM-registered schemes our SRs use (PS3.3 C.12.1.1.5)."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name=PRIVATE_SCHEME_NAME,
            responsible_organization="DICOM AI sidecar project",
        ),
    ]


# --- Standard concepts ----------------------------------------------------------------------

FINDING = CodedConcept("121071", "DCM", "Finding")
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")
COMMENT = CodedConcept("121106", "DCM", "Comment")
DEVICE_OBSERVER = CodedConcept("121007", "DCM", "Device")  # CID 270
ARTIFICIAL_INTELLIGENCE = CodedConcept("123110", "DCM", "Artificial Intelligence")  # CID 7162
# TID 1500 row 12: the report-level container for CODE and TEXT qualitative evaluations.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PRESENT = CodedConcept("52101004", "SCT", "Present")
NOT_EVALUATED = CodedConcept("373121007", "SCT", "Not Evaluated")  # an input outside the domain
RECOMMENDATION = CodedConcept("121075", "DCM", "Recommendation")  # names the QA alert evaluation
# TID 1600 Image Library and its TID 1601 entries
IMAGE_LIBRARY = CodedConcept("111028", "DCM", "Image Library")
IMAGE_LIBRARY_GROUP = CodedConcept("126200", "DCM", "Image Library Group")
SOURCE = CodedConcept("260753009", "SCT", "Source")
ABSENT = CodedConcept("272519000", "SCT", "Absent")

LEFT = CodedConcept("7771000", "SCT", "Left")
RIGHT = CodedConcept("24028007", "SCT", "Right")
_LATERALITY = {"L": LEFT, "R": RIGHT}

# Procedure reported (TID 1500 row 4) from CID 100 "Quantitative Diagnostic Imaging Procedures",
# chosen by the source Modality: CID 100 has LOINC "unspecified body region" concepts for MR and CT
# and only the generic SNOMED CT "Imaging procedure" for ultrasound and radiography.
_IMAGING = CodedConcept("363679005", "SCT", "Imaging procedure")
_PROCEDURE_BY_MODALITY = {
    "MR": CodedConcept("25056-3", "LN", "MRI unspecified body region"),
    "CT": CodedConcept("25045-6", "LN", "CT unspecified body region"),
}

# UCUM meanings for the units models report; unknown units keep the code as meaning.
_UCUM_MEANINGS = {
    "1": "no units",
    "%": "Percent",
    "mm": "mm",
    "cm": "cm",
    "mm2": "mm2",
    "ms": "ms",
    "s": "s",
    "kPa": "kPa",
    "m/s": "m/s",
    "cm/s": "cm/s",
    "{ratio}": "ratio",
    "{score}": "score",
}

# Anatomic sites models name, normalised (lower case, single spaces).
_SITES = {
    "heart": CodedConcept("80891009", "SCT", "Heart"),
    "left ventricle": CodedConcept("87878005", "SCT", "Left ventricle"),
    "left ventricle myocardium": CodedConcept("49848007", "SCT", "Left Ventricle Myocardium"),
    "hand": CodedConcept("85562004", "SCT", "Hand"),
    "foot": CodedConcept("56459004", "SCT", "Foot"),
    "knee": CodedConcept("72696002", "SCT", "Knee"),
    "knee joint": CodedConcept("49076000", "SCT", "Knee joint"),
    "wrist joint": CodedConcept("74670003", "SCT", "Wrist joint"),
    # hand_joints: the radiocarpal joint is the wrist joint proper; the other hand joints have
    # no concept in pydicom's SCT dictionary and get private codes keyed on their names.
    "radiocarpal joint": CodedConcept("74670003", "SCT", "Wrist joint"),
    "finger joint": CodedConcept("125682004", "SCT", "Finger joint"),
    "joint": CodedConcept("39352004", "SCT", "Joint"),
    "breast": CodedConcept("76752008", "SCT", "Breast"),
}

# Labels with an obvious standard meaning, whatever model says them.
_STANDARD_LABELS = {
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    "abnormal": CodedConcept("263654008", "SCT", "Abnormal"),
    "present": PRESENT,
    "absent": ABSENT,
    "indeterminate": CodedConcept("82334004", "SCT", "Indeterminate"),
    "unknown": CodedConcept("261665006", "SCT", "Unknown"),
}

# --- Private concepts (no standard code exists) ---------------------------------------------
# Each model's own concepts (its question, label codes) live in models/<name>/concepts.py.

# Derivation of an AI-generated image (General Image DerivationCodeSequence; CID 7203 has no
# synthesis concept) and the purpose of its source reference (CID 7202).
AI_GENERATED_IMAGE = private_code("derivation/ai-generated", "AI-generated image")
SOURCE_FOR_PROCESSING = CodedConcept("121322", "DCM", "Source image for image processing operation")
# The value of the "Recommendation" evaluation on a result flagged for the technologist.
TECHNOLOGIST_ALERT = private_code("concept/technologist-alert", "AI QA alert for technologist")

# --- Fixed wording ----------------------------------------------------------------------------

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE - demo weights trained on synthetic phantoms"
NOT_FOR_CLINICAL_USE_TAG = "[NOT FOR CLINICAL USE]"
AI_QA_ALERT = "AI QA ALERT"
SIDECAR_MANUFACTURER = "DICOM AI sidecar"


# --- Look-ups -------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def label_concept(model_id: str, label: str, meaning: str | None = None) -> CodedConcept:
    """The coded value of a model's label: a standard concept where one fits, else private.

    Private codes are keyed on (model_id, label), so two models' same-named labels never share
    a code by accident; the meaning is `meaning` (the label's words) or the label itself.
    """
    standard = _STANDARD_LABELS.get(_normalise(label))
    if standard is not None:
        return standard
    return private_code(f"label/{model_id}/{label}", meaning or label)


def answer_concept(model_id: str, label: str, meaning: str) -> CodedConcept:
    """The name of the NUM that lists the answer: private, its meaning the coded answer's
    (`meaning`), its value the answer's probability in percent."""
    return private_code(f"answer/{model_id}/{label}", meaning)


def probability_concept(model_id: str, label: str, words: str | None = None) -> CodedConcept:
    """The concept name of the probability of one class (private: "Probability of <words>")."""
    return private_code(f"probability/{model_id}/{label}", f"Probability of {words or label}")


def not_assessed_concept() -> CodedConcept:
    """The NUM that says an input was not assessed, its value the guard's out-of-domain score."""
    return private_code("concept/not-assessed-domain-score", "Not assessed (outside validated domain): score")


def measurement_concept(model_id: str, name: str) -> CodedConcept:
    """The concept name of a named model measurement (private, keyed on model and name)."""
    return private_code(f"measurement/{model_id}/{name}", name)


def unit_concept(unit: str) -> CodedConcept:
    """A UCUM unit concept for a unit string (e.g. "1", "mm", "%")."""
    if not unit:
        raise ValueError("a measurement needs a UCUM unit (use '1' for none)")
    return CodedConcept(unit, "UCUM", _UCUM_MEANINGS.get(unit, unit))


def site_concept(name: str) -> CodedConcept:
    """An anatomic site concept for a site name (SCT where known, else private)."""
    return _SITES.get(_normalise(name)) or private_code(f"site/{_normalise(name)}", name)


def laterality_concept(laterality: str | None) -> CodedConcept | None:
    """SCT Left/Right for "L"/"R"; None for no or unknown laterality."""
    if laterality is None:
        return None
    return _LATERALITY.get(laterality.strip().upper()[:1])


def procedure_concept(modality: str) -> CodedConcept:
    """The procedure reported (TID 1500) for a source Modality."""
    return _PROCEDURE_BY_MODALITY.get(modality, _IMAGING)
