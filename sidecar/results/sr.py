"""Comprehensive SR (TID 1500 Measurement Report) from a model's `Findings`.

The document lives in the source study (patient and study modules copied by highdicom from the
evidence, repaired first where the source's values are invalid: `sidecar.results.patient`),
names the model as a DEVICE observer (TID 1004), and holds the content `sr_content` builds.
It is Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33), not Comprehensive 3D: we write no 3D
coordinates, and more PACS and dcmtk's default storescu accept 88.33. Report-level notes
(NOT FOR CLINICAL USE, revision, repairs, model notes) are TEXT items in TID 1500's
"Qualitative Evaluations" container (row 12).

Result series. A series job's SR sits in one result series per source series and model. A
streaming (instance) job's SR sits in a series of its own per source image: OHIF shows one SR per
SR series, so one series per slice keeps every slice's result reachable (docs/DESIGN.md). A
revision is the next instance (InstanceNumber 1 + revision) in the same series and names its
predecessor in the Predecessor Documents Sequence (PS3.3 C.17.2.1). UIDs are derived
(sidecar.dicom.uids), so a rerun yields the same document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import ComprehensiveSRStorage

from models.base import ModelCard
from models.findings import NOT_ASSESSED_TEXT, Findings
from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid, short_uid
from sidecar.errors import ResultError
from sidecar.results.patient import repaired_source
from sidecar.results.sr_content import ReportBuilder, SourceIndex

__all__ = ["SR_SERIES_NUMBER", "SourceIndex", "build_sr", "series_description", "sr_instance_uid", "sr_series_uid"]

SR_SERIES_NUMBER = 9901
_SLICE_SERIES_BASE = SR_SERIES_NUMBER * 1000  # per-image SR series: 9901000 + InstanceNumber
_LO_MAX = 64  # SeriesDescription is LO


def sr_series_uid(source_series_uid: str, card: ModelCard) -> str:
    """The result series the SRs of a series job (and their revisions) share.

    Its kind is "sr-result-series", not "sr-series": the SR of a series-mode job is itself
    kind "sr-series" with the source series UID as input, and the two UIDs must differ.
    """
    return result_uid(source_series_uid, card.id, card.version, "sr-result-series", 0)


def sr_image_series_uid(source_sop_uid: str, card: ModelCard) -> str:
    """The result series of one source image's streaming SRs (one series per slice)."""
    return result_uid(source_sop_uid, card.id, card.version, "sr-image-series", 0)


def sr_instance_uid(input_uid: str, card: ModelCard, kind: str, revision: int) -> str:
    """The SOP Instance UID of one SR (kind e.g. "instance" or "series")."""
    return result_uid(input_uid, card.id, card.version, f"sr-{kind}", revision)


def fit_words(text: str, room: int) -> str:
    """`text` shortened to `room` characters by whole words: parentheses go first, then words
    from the end; never a word cut in the middle."""
    text = " ".join(text.split())
    if len(text) <= room:
        return text
    while "(" in text and len(text) > room:
        shorter = re.sub(r"\s*\([^()]*\)\s*$", "", text) if text.endswith(")") else re.sub(r"\s*\([^()]*\)", "", text, count=1)
        if shorter == text:
            break
        text = " ".join(shorter.split())
    words = text.split(" ")
    while len(" ".join(words)) > room and len(words) > 1:
        words.pop()
    out = " ".join(words).rstrip(",;:-")
    return out if len(out) <= room else ""


def series_description(prefix: str, name: str, not_for_clinical_use: bool, suffix: str = "") -> str:
    """`"<prefix> <name> <suffix> [NOT FOR CLINICAL USE]"` in LO (64 chars): the name is
    shortened by whole words, the prefix, suffix and marking are always complete."""
    tag = f" {codes.NOT_FOR_CLINICAL_USE_TAG}" if not_for_clinical_use else ""
    tail = f" {suffix}" if suffix else ""
    room = _LO_MAX - len(prefix) - 1 - len(tail) - len(tag)
    fitted = fit_words(name, max(room, 0))
    return " ".join(p for p in (prefix, fitted) if p) + tail + tag


def _instance_number(ds: Dataset) -> int | None:
    try:
        value = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 1000 else None


def build_sr(
    findings: Findings,
    sources: Sequence[Dataset],
    card: ModelCard,
    *,
    input_uid: str,
    kind: str,
    revision: int = 0,
    derived: Sequence[Dataset] = (),
) -> Dataset:
    """A Comprehensive SR (TID 1500) of `findings` about `sources`, in the sources' study.

    `kind` is the job kind ("instance" or "series"); `revision` > 0 builds a superseding
    document that references revision-1 as its predecessor. `derived` are the images this job
    produced (SC, derived images): the SR lists them as evidence, so it references them. Raises
    ResultError when the findings cannot be written (references outside the sources, nothing
    to report, ...).
    """
    if revision < 0:
        raise ResultError(f"revision must be >= 0, got {revision}")
    index = SourceIndex(sources)
    first = index.datasets[0]
    if kind == "instance" and len(index.datasets) == 1:
        series_uid = sr_image_series_uid(str(first.SOPInstanceUID), card)
        number = _instance_number(first)
        series_number = _SLICE_SERIES_BASE + number if number is not None else SR_SERIES_NUMBER
        suffix = f"image {number}" if number is not None else ""
    else:
        series_uid = sr_series_uid(str(first.SeriesInstanceUID), card)
        series_number, suffix = SR_SERIES_NUMBER, ""
    nfcu = findings.not_for_clinical_use or card.not_for_clinical_use
    predecessors = None
    predecessor_uid = None
    if revision > 0:
        predecessor_uid = sr_instance_uid(input_uid, card, kind, revision - 1)
        previous = Dataset()
        previous.SOPClassUID = ComprehensiveSRStorage
        previous.SOPInstanceUID = predecessor_uid
        previous.StudyInstanceUID = first.StudyInstanceUID
        previous.SeriesInstanceUID = series_uid
        predecessors = [previous]
    header, repairs = repaired_source(first)
    notes: list[str] = []
    if nfcu:
        notes.append(codes.NOT_FOR_CLINICAL_USE)
    if revision > 0 and predecessor_uid is not None:
        notes.append(f"Revision {revision} supersedes SR {predecessor_uid}")
    notes += [f"{NOT_ASSESSED_TEXT} ({short_uid(v.source.sop_instance_uid) if v.source else 'all inputs'}"
              f"{': ' + v.reason if v.reason else ''})" for v in findings.out_of_domain]
    notes += [r.note() for r in repairs]
    notes += list(findings.notes)
    notes += [f"Derived image: {d.get('SeriesDescription', 'AI image')}" for d in derived]
    builder = ReportBuilder(findings, index, card, input_uid)
    try:
        report = builder.report(notes, codes.procedure_concept(str(first.get("Modality", ""))))
        sr = hd.sr.ComprehensiveSR(
            evidence=[header, *index.datasets[1:], *derived],
            content=report,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sr_instance_uid(input_uid, card, kind, revision),
            instance_number=1 + revision,
            manufacturer=card.manufacturer,
            is_complete=not nfcu,
            is_final=not nfcu,
            is_verified=False,
            previous_versions=predecessors,
            series_description=series_description("AI", card.name, nfcu, suffix),
            manufacturer_model_name=card.id,
            software_versions=card.version,
            coding_schemes=codes.coding_scheme_identification(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultError(f"cannot build SR for model {card.id}: {type(exc).__name__}") from exc
    return sr
