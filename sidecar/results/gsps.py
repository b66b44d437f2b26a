"""Grayscale Softcopy Presentation State (PS3.3 A.33.1) with a model's detection boxes and labels.

A PACS viewer that honours presentation states draws the boxes over the untouched source
radiograph: each `Detection` becomes a closed POLYLINE graphic object in PIXEL units of its
source image (PS3.3 C.10.5.1.2, (0,0) the top left corner of the top left pixel, as the SR's
SCOORDs) and a text object with the joint and grade anchored at the box's top left corner, all
on one graphic layer, one Graphic Annotation item per referenced image. highdicom builds the
object and copies the source's VOI window, so the image looks as it did.

The object lives in the source study; its UIDs are derived (sidecar.dicom.uids) from the input
UID, model id and version, kind "gsps" and the revision, so a rerun yields the same instance.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from models.base import ModelCard
from models.findings import Detection, Findings
from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid, short_uid
from sidecar.errors import ResultError

GSPS_SERIES_NUMBER = 9902
LAYER = "AI_FINDINGS"
_LO_MAX = 64  # SeriesDescription / ContentDescription are LO
_CS_MAX = 16  # ContentLabel is CS


def gsps_series_uid(source_series_uid: str, card: ModelCard) -> str:
    """The result series every GSPS of `card`'s model for one source series shares."""
    return result_uid(source_series_uid, card.id, card.version, "gsps-result-series", 0)


def _text(d: Detection) -> str:
    """"R MCP2 SHS JSN 2 (0.87)": side, joint, grade and its probability (LO-sized)."""
    parts = [d.laterality or "", d.label]
    if d.grade is not None:
        parts.append(f"{d.grade.label} ({float(d.grade.probabilities[d.grade.label]):.2f})")
    return " ".join(p for p in parts if p)[:_LO_MAX]


def _description(card: ModelCard, not_for_clinical_use: bool) -> str:
    tag = f" {codes.NOT_FOR_CLINICAL_USE_TAG}" if not_for_clinical_use else ""
    room = _LO_MAX - len("AI boxes ") - len(tag)
    return f"AI boxes {card.name[:room].strip()}{tag}"


def _inside(d: Detection, ds: Dataset) -> tuple[float, float, float, float]:
    """The box clamped to the image, so every graphic point lies on it (dciodvfy checks)."""
    cols, rows = float(ds.Columns), float(ds.Rows)
    c0, r0, c1, r1 = (float(v) for v in d.box)
    return (min(max(c0, 0.0), cols), min(max(r0, 0.0), rows),
            min(max(c1, 0.0), cols), min(max(r1, 0.0), rows))


def build_gsps(
    findings: Findings,
    source: Sequence[Dataset] | Dataset,
    card: ModelCard,
    *,
    input_uid: str,
    revision: int = 0,
    series_number: int = GSPS_SERIES_NUMBER,
) -> Dataset:
    """A GSPS with one box and one label per detection, referencing the source image(s).

    `source` is the job's image (or images, all of one series). Raises ResultError when there
    is nothing to draw or a detection points at an image that is not a source.
    """
    sources = [source] if isinstance(source, Dataset) else list(source)
    if not sources:
        raise ResultError("no source image to present")
    if revision < 0:
        raise ResultError(f"revision must be >= 0, got {revision}")
    if not findings.detections:
        raise ResultError("findings hold no detection to draw")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    nfcu = findings.not_for_clinical_use or card.not_for_clinical_use
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description=f"{card.id} detections",
                               display_color=hd.color.CIELabColor(60.0, 80.0, 60.0))
    per_image: dict[str, tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = {}
    for d in findings.detections:
        ds = by_uid.get(d.source.sop_instance_uid)
        if ds is None:
            raise ResultError(f"detection {d.label} is about image {short_uid(d.source.sop_instance_uid)}, "
                              "not among the job's sources")
        c0, r0, c1, r1 = _inside(d, ds)
        if not (c1 > c0 and r1 > r0):
            continue  # entirely outside the image: nothing to draw
        graphics, texts = per_image.setdefault(str(ds.SOPInstanceUID), ([], []))
        graphics.append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float),
            units=hd.pr.AnnotationUnitsValues.PIXEL))
        texts.append(hd.pr.TextObject(
            text_value=_text(d), units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=(c0, r0), anchor_point_visible=False))
    if not per_image:
        raise ResultError("no detection box lies on its image")
    annotations = [
        hd.pr.GraphicAnnotation(referenced_images=[by_uid[uid]], graphic_layer=layer,
                                graphic_objects=graphics, text_objects=texts)
        for uid, (graphics, texts) in per_image.items()
    ]
    referenced = [by_uid[uid] for uid in per_image]
    description = _description(card, nfcu)
    try:
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=referenced,
            series_instance_uid=gsps_series_uid(str(referenced[0].SeriesInstanceUID), card),
            series_number=series_number,
            sop_instance_uid=result_uid(input_uid, card.id, card.version, "gsps", revision),
            instance_number=1 + revision,
            manufacturer=card.manufacturer,
            manufacturer_model_name=card.id,
            software_versions=card.version,
            device_serial_number=short_uid(f"{card.id}/{card.version}"),
            content_label="AI_JOINTS" if card.id == "hand_joints" else "AI_FINDINGS",
            content_description=description,
            graphic_annotations=annotations,
            graphic_layers=[layer],
            institution_name=str(referenced[0].get("InstitutionName", "") or "") or None,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultError(f"cannot build GSPS for model {card.id}: {exc}") from exc
    gsps.SeriesDescription = description
    # General Series Laterality is Type 2C for paired body parts (PS3.3 C.7.3.1): the source's
    # side where it has one, else empty (both hands, or unknown).
    side = str(referenced[0].get("ImageLaterality", "") or referenced[0].get("Laterality", "") or "")
    gsps.Laterality = side if side in ("L", "R") else ""
    return gsps
