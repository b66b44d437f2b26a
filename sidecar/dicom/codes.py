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

import hashlib
import re
from dataclasses import dataclass

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

# --- Coding schemes -------------------------------------------------------------------------

PRIVATE_SCHEME = "99SIDECAR"
PRIVATE_SCHEME_NAME = "DICOM AI sidecar private concepts"
_SH_MAX = 16  # Code Value is SH (PS3.5 §6.2)
_LO_MAX = 64  # Code Meaning is LO


def private_code(key: str, meaning: str) -> CodedConcept:
    """A concept of the private scheme whose code value is a hash of `key` (stable, <= 16 chars)."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest().upper()
    value = ("SC" + digest)[:_SH_MAX]
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning[:_LO_MAX])


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
ABSENT = CodedConcept("272519000", "SCT", "Absent")

LEFT = CodedConcept("7771000", "SCT", "Left")
RIGHT = CodedConcept("24028007", "SCT", "Right")
_LATERALITY = {"L": LEFT, "R": RIGHT}

# CID 100-style procedure concepts, chosen by the source Modality.
_IMAGING = CodedConcept("363679005", "SCT", "Imaging")
_PROCEDURE_BY_MODALITY = {
    "MR": CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "US": CodedConcept("16310003", "SCT", "Diagnostic ultrasonography"),
    "DX": CodedConcept("168537006", "SCT", "Plain radiography"),
    "CR": CodedConcept("168537006", "SCT", "Plain radiography"),
    "CT": CodedConcept("77477000", "SCT", "Computerized axial tomography"),
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

LGE_SLICE_CERTAINTY = private_code("concept/lge-slice-certainty", "LGE slice certainty")
SYNOVITIS_GRADE = private_code("concept/eular-omeract-synovitis", "EULAR-OMERACT synovitis grade")
GOUT_MTP1_FINDING = private_code("concept/gout-mtp1-us", "Gout MTP1 ultrasound finding")
# Tsukuba elasticity score (Itoh et al., Radiology 2006), 1-5, estimated by the virtual
# elastography model; no standard code exists.
TSUKUBA_SCORE = private_code("concept/tsukuba-score", "Tsukuba elasticity score")
# Derivation of an AI-generated image (General Image DerivationCodeSequence; CID 7203 has no
# synthesis concept) and the purpose of its source reference (CID 7202).
AI_GENERATED_IMAGE = private_code("derivation/ai-generated", "AI-generated image")
SOURCE_FOR_PROCESSING = CodedConcept("121322", "DCM", "Source image for image processing operation")
JOINT_SPACE_NARROWING_GRADE = private_code("concept/jsn-grade", "Joint space narrowing grade")
KELLGREN_LAWRENCE_GRADE = private_code("concept/kellgren-lawrence", "Kellgren-Lawrence grade")
# hand_joints reports SHS narrowing and KL grades side by side; the grade's value names the
# scheme ("SHS JSN 2", "KL 3"), so the concept name covers both.
HAND_JOINT_GRADE = private_code("concept/hand-joint-grade", "Hand joint grade (SHS narrowing or KL)")
TECHNOLOGIST_ALERT = private_code("concept/technologist-alert", "AI QA alert for technologist")
AI_CLASSIFICATION = private_code("concept/ai-classification", "AI classification")
AI_GRADE = private_code("concept/ai-grade", "AI grade")


@dataclass(frozen=True)
class ModelConcepts:
    """The concept names one model's results are reported under."""

    classification: CodedConcept  # name of the per-image / per-series qualitative evaluation
    grade: CodedConcept  # name of a detection's grade


# Model id -> concepts. A model not listed here gets generic AI concepts (see `model_concepts`).
MODEL_CONCEPTS: dict[str, ModelConcepts] = {
    "lge_qa": ModelConcepts(LGE_SLICE_CERTAINTY, LGE_SLICE_CERTAINTY),
    # RA synovitis, four variants (static/dynamic x greyscale/power Doppler), one concept.
    "synovitis_sgs": ModelConcepts(SYNOVITIS_GRADE, SYNOVITIS_GRADE),
    "synovitis_dgs": ModelConcepts(SYNOVITIS_GRADE, SYNOVITIS_GRADE),
    "synovitis_spd": ModelConcepts(SYNOVITIS_GRADE, SYNOVITIS_GRADE),
    "synovitis_dpd": ModelConcepts(SYNOVITIS_GRADE, SYNOVITIS_GRADE),
    "gout_mtp1": ModelConcepts(GOUT_MTP1_FINDING, GOUT_MTP1_FINDING),
    "breast_elastography": ModelConcepts(TSUKUBA_SCORE, TSUKUBA_SCORE),
    # Hand radiographs: detections carry a grade; the scheme (SHS narrowing or KL) is named by
    # the detection's grade labels ("SHS JSN 2", "KL 3"), under one concept for both.
    "hand_joints": ModelConcepts(HAND_JOINT_GRADE, HAND_JOINT_GRADE),
}

# --- Fixed wording ----------------------------------------------------------------------------

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE - demo weights trained on synthetic phantoms"
NOT_FOR_CLINICAL_USE_TAG = "[NOT FOR CLINICAL USE]"
AI_QA_ALERT = "AI QA ALERT"
SIDECAR_MANUFACTURER = "DICOM AI sidecar"


# --- Look-ups -------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def model_concepts(model_id: str) -> ModelConcepts:
    """The concepts of `model_id`, or generic AI concepts for a model not yet listed."""
    return MODEL_CONCEPTS.get(model_id, ModelConcepts(AI_CLASSIFICATION, AI_GRADE))


def label_concept(model_id: str, label: str) -> CodedConcept:
    """The coded value of a model's label: a standard concept where one fits, else private.

    Private codes are keyed on (model_id, label), so two models' same-named labels never share
    a code by accident; the meaning is the label itself, so a reader sees what the model said.
    """
    standard = _STANDARD_LABELS.get(_normalise(label))
    if standard is not None:
        return standard
    return private_code(f"label/{model_id}/{label}", label)


def probability_concept(model_id: str, label: str) -> CodedConcept:
    """The concept name of the probability of one class (private: "Probability of <label>")."""
    return private_code(f"probability/{model_id}/{label}", f"Probability of {label}")


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
