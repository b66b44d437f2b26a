"""Comprehensive 3D SR (TID 1500 Measurement Report) from a model's `Findings`.

The document lives in the source study (patient and study modules copied by highdicom from the
evidence), names the model as a DEVICE observer (TID 1004), and holds one measurement group
(TID 1501) per classified image, one for the series summary, and one planar ROI group
(TID 1410) per detection. Report-level notes (NOT FOR CLINICAL USE, revision, model notes) are
TEXT items in TID 1500's "Qualitative Evaluations" container (row 12).

UIDs are derived (sidecar.dicom.uids), so a rerun yields the same document; a revision gets a
new SOP instance in the same result series and names its predecessor in the
Predecessor Documents Sequence (PS3.3 C.17.2.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from highdicom.sr.value_types import ContentSequence
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from models.base import ModelCard
from models.findings import Classification, Detection, Findings, ImageRef, Measurement
from sidecar.dicom import codes
from sidecar.dicom.uids import derive_uid, result_uid, short_uid
from sidecar.errors import ResultError

SR_SERIES_NUMBER = 9901
_LO_MAX = 64  # SeriesDescription is LO


def sr_series_uid(source_series_uid: str, card: ModelCard) -> str:
    """The one result series all SRs of `card`'s model for one source series share.

    Its kind is "sr-result-series", not "sr-series": the SR of a series-mode job is itself
    kind "sr-series" with the source series UID as input, and the two UIDs must differ.
    """
    return result_uid(source_series_uid, card.id, card.version, "sr-result-series", 0)


def sr_instance_uid(input_uid: str, card: ModelCard, kind: str, revision: int) -> str:
    """The SOP Instance UID of one SR (kind e.g. "instance" or "series")."""
    return result_uid(input_uid, card.id, card.version, f"sr-{kind}", revision)


def series_description(prefix: str, name: str, not_for_clinical_use: bool) -> str:
    """`"<prefix> <name> [NOT FOR CLINICAL USE]"`, the name shortened to fit LO (64 chars)."""
    tag = f" {codes.NOT_FOR_CLINICAL_USE_TAG}" if not_for_clinical_use else ""
    room = _LO_MAX - len(prefix) - 1 - len(tag)
    return f"{prefix} {name[:room].strip()}{tag}"


class SourceIndex:
    """The source datasets of a job, looked up by SOP Instance UID with reference checks."""

    def __init__(self, sources: Sequence[Dataset]) -> None:
        if not sources:
            raise ResultError("no source datasets to reference")
        studies = {str(ds.StudyInstanceUID) for ds in sources}
        if len(studies) != 1:
            raise ResultError(f"sources span {len(studies)} studies; a result belongs to one")
        self.datasets = list(sources)
        self._by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}

    def get(self, ref: ImageRef) -> Dataset:
        """The source `ref` points at; ResultError when it is not a source or does not fit."""
        ds = self._by_uid.get(ref.sop_instance_uid)
        if ds is None:
            raise ResultError(
                f"finding references image {short_uid(ref.sop_instance_uid)} "
                "which is not among the job's sources"
            )
        if str(ds.SOPClassUID) != ref.sop_class_uid:
            raise ResultError(
                f"finding references image {short_uid(ref.sop_instance_uid)} with SOP class "
                f"{ref.sop_class_uid}, but the source is {ds.SOPClassUID}"
            )
        if ref.frame is not None:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            if not 1 <= ref.frame <= frames:
                raise ResultError(
                    f"finding references frame {ref.frame} of image "
                    f"{short_uid(ref.sop_instance_uid)}, which has {frames} frame(s)"
                )
        return ds


@dataclass
class _Group:
    """What goes into one TID 1501 measurement group."""

    key: str
    refs: list[ImageRef]
    classifications: list[Classification] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


def _ref_key(ref: ImageRef) -> str:
    return f"{ref.sop_instance_uid}/{ref.frame or 0}"


class _ReportBuilder:
    """Turns one Findings into TID 1500 content with highdicom's templates."""

    def __init__(
        self, findings: Findings, index: SourceIndex, card: ModelCard, input_uid: str
    ) -> None:
        self.findings = findings
        self.index = index
        self.card = card
        self.input_uid = input_uid
        self.concepts = codes.model_concepts(findings.model_id)
        self.algorithm = hd.sr.AlgorithmIdentification(
            name=card.name,
            version=card.version,
            family=codes.ARTIFICIAL_INTELLIGENCE,
            manufacturer=card.manufacturer,
        )

    # -- identifiers ------------------------------------------------------------------------

    def image_label(self, ref: ImageRef, number: int) -> str:
        """"image <InstanceNumber>" (and frame) as the console shows it; the group index otherwise."""
        instance_number = self.index.get(ref).get("InstanceNumber")
        label = f"image {instance_number}" if instance_number not in (None, "") else f"image #{number}"
        return f"{label} frame {ref.frame}" if ref.frame is not None else label

    def tracking(self, key: str, label: str) -> hd.sr.TrackingIdentifier:
        """A tracking identifier whose UID is stable across reruns and revisions."""
        uid = derive_uid(self.input_uid, self.card.id, self.card.version, "tracking", key)
        return hd.sr.TrackingIdentifier(uid=uid, identifier=f"{self.card.id} {label}")

    def observation_context(self) -> hd.sr.ObservationContext:
        """The model as the DEVICE observer (TID 1004)."""
        device_uid = derive_uid("device", self.card.id, self.card.version)
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid,
            name=self.card.name,
            manufacturer_name=self.card.manufacturer,
            model_name=self.card.id,
            serial_number=short_uid(device_uid),
        )
        return hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DEVICE_OBSERVER,
                observer_identifying_attributes=device,
            )
        )

    # -- content items ----------------------------------------------------------------------

    def probabilities(self, c: Classification) -> list[hd.sr.Measurement]:
        """One Measurement (UCUM "1") per class probability."""
        return [
            hd.sr.Measurement(
                name=codes.probability_concept(self.findings.model_id, label),
                value=float(p),
                unit=codes.unit_concept("1"),
            )
            for label, p in c.probabilities.items()
        ]

    def evaluations(
        self, c: Classification, name: CodedConcept
    ) -> list[hd.sr.QualitativeEvaluation]:
        """The winning label under `name`, and the technologist alert where flagged."""
        items = [
            hd.sr.QualitativeEvaluation(
                name=name, value=codes.label_concept(self.findings.model_id, c.label)
            )
        ]
        if c.uncertain:
            items.append(hd.sr.QualitativeEvaluation(codes.TECHNOLOGIST_ALERT, codes.PRESENT))
        return items

    def measurement(self, m: Measurement) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=codes.measurement_concept(self.findings.model_id, m.name),
            value=float(m.value),
            unit=codes.unit_concept(m.unit),
        )

    @staticmethod
    def finding_sites(site: str | None, laterality: str | None) -> list[hd.sr.FindingSite] | None:
        if site is None:
            return None
        return [
            hd.sr.FindingSite(
                anatomic_location=codes.site_concept(site),
                laterality=codes.laterality_concept(laterality),
            )
        ]

    def source_images(self, refs: Sequence[ImageRef]) -> list[hd.sr.SourceImageForMeasurementGroup]:
        items = []
        for ref in refs:
            ds = self.index.get(ref)
            items.append(
                hd.sr.SourceImageForMeasurementGroup(
                    referenced_sop_class_uid=str(ds.SOPClassUID),
                    referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                    referenced_frame_numbers=[ref.frame] if ref.frame is not None else None,
                )
            )
        return items

    def all_source_refs(self) -> list[ImageRef]:
        return [ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in self.index.datasets]

    # -- groups -----------------------------------------------------------------------------

    def plan_groups(self) -> list[_Group]:
        """Per-image groups (classifications + their measurements), then the series group."""
        f = self.findings
        groups: list[_Group] = []
        by_ref: dict[str, _Group] = {}
        series = _Group("series", self.all_source_refs())
        for i, c in enumerate(f.classifications):
            if c.source is None:
                series.classifications.append(c)
                continue
            self.index.get(c.source)
            g = _Group(f"classification/{i}/{_ref_key(c.source)}", [c.source], [c])
            groups.append(g)
            by_ref.setdefault(_ref_key(c.source), g)
        for m in f.measurements:
            if m.source is None:
                series.measurements.append(m)
                continue
            self.index.get(m.source)
            g = by_ref.get(_ref_key(m.source))
            if g is None:
                g = _Group(f"measurements/{_ref_key(m.source)}", [m.source])
                groups.append(g)
                by_ref[_ref_key(m.source)] = g
            g.measurements.append(m)
        if f.summary is not None:
            series.classifications.insert(0, f.summary)
        if series.classifications or series.measurements:
            groups.append(series)
        return groups

    def group(self, g: _Group, number: int) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        evaluations: list[hd.sr.QualitativeEvaluation] = []
        measurements: list[hd.sr.Measurement] = []
        site = lat = None
        for c in g.classifications:
            evaluations += self.evaluations(c, self.concepts.classification)
            measurements += self.probabilities(c)
            site, lat = site or c.finding_site, lat or c.laterality
        measurements += [self.measurement(m) for m in g.measurements]
        what = "series" if g.key == "series" else self.image_label(g.refs[0], number)
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(g.key, what),
            finding_type=self.concepts.classification if g.classifications else None,
            algorithm_id=self.algorithm,
            finding_sites=self.finding_sites(site, lat),
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
            source_images=self.source_images(g.refs),
        )

    def detection(
        self, d: Detection, number: int
    ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        """A planar ROI group: the box as a closed SCOORD polyline on its source image."""
        ds = self.index.get(d.source)
        c0, r0, c1, r1 = (float(v) for v in d.box)
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polyline,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                referenced_frame_numbers=[d.source.frame] if d.source.frame is not None else None,
            ),
        )
        measurements = [
            hd.sr.Measurement(
                name=codes.CERTAINTY_OF_FINDING,
                value=float(d.confidence),
                unit=codes.unit_concept("1"),
            )
        ]
        evaluations: list[hd.sr.QualitativeEvaluation] = []
        site = None
        if d.grade is not None:
            evaluations += self.evaluations(d.grade, self.concepts.grade)
            measurements += self.probabilities(d.grade)
            site = d.grade.finding_site
        # A detection's label names the place it found (a joint) when no site is given.
        if site is None and d.laterality is not None:
            site = d.label
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(
                f"detection/{number}/{_ref_key(d.source)}", f"detection {number} {d.label}"
            ),
            referenced_region=region,
            finding_type=codes.label_concept(self.findings.model_id, d.label),
            algorithm_id=self.algorithm,
            finding_sites=self.finding_sites(site, d.laterality),
            measurements=measurements,
            qualitative_evaluations=evaluations or None,
        )

    def notes(
        self, not_for_clinical_use: bool, revision: int, predecessor: str | None
    ) -> list[str]:
        lines = []
        if not_for_clinical_use:
            lines.append(codes.NOT_FOR_CLINICAL_USE)
        if revision > 0 and predecessor is not None:
            lines.append(f"Revision {revision} supersedes SR {predecessor}")
        lines += list(self.findings.notes)
        return lines

    def report(self, notes: Sequence[str]) -> hd.sr.MeasurementReport:
        plans = self.plan_groups()
        groups: list[
            hd.sr.MeasurementsAndQualitativeEvaluations
            | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        ] = [self.group(g, n) for n, g in enumerate(plans, start=1)]
        groups += [self.detection(d, n) for n, d in enumerate(self.findings.detections, start=1)]
        if not groups:
            raise ResultError("findings hold no classification, measurement or detection")
        report = hd.sr.MeasurementReport(
            observation_context=self.observation_context(),
            procedure_reported=codes.procedure_concept(str(self.index.datasets[0].Modality)),
            imaging_measurements=groups,
            referenced_images=self.index.datasets,
        )
        if notes:
            container = hd.sr.ContainerContentItem(
                name=codes.QUALITATIVE_EVALUATIONS,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            container.ContentSequence = ContentSequence(
                [
                    hd.sr.TextContentItem(
                        name=codes.COMMENT,
                        value=text,
                        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                    )
                    for text in notes
                ]
            )
            report[0].ContentSequence.append(container)
        return report


def build_sr(
    findings: Findings,
    sources: Sequence[Dataset],
    card: ModelCard,
    *,
    input_uid: str,
    kind: str,
    revision: int = 0,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) of `findings` about `sources`, in the sources' study.

    `kind` is the job kind ("instance" or "series"); `revision` > 0 builds a superseding
    document that references revision-1 as its predecessor. Raises ResultError when the
    findings cannot be written (references outside the sources, nothing to report, ...).
    """
    if revision < 0:
        raise ResultError(f"revision must be >= 0, got {revision}")
    index = SourceIndex(sources)
    first = index.datasets[0]
    series_uid = sr_series_uid(str(first.SeriesInstanceUID), card)
    nfcu = findings.not_for_clinical_use or card.not_for_clinical_use
    predecessors = None
    predecessor_uid = None
    if revision > 0:
        predecessor_uid = sr_instance_uid(input_uid, card, kind, revision - 1)
        previous = Dataset()
        previous.SOPClassUID = Comprehensive3DSRStorage
        previous.SOPInstanceUID = predecessor_uid
        previous.StudyInstanceUID = first.StudyInstanceUID
        previous.SeriesInstanceUID = series_uid
        predecessors = [previous]
    builder = _ReportBuilder(findings, index, card, input_uid)
    try:
        report = builder.report(builder.notes(nfcu, revision, predecessor_uid))
        sr = hd.sr.Comprehensive3DSR(
            evidence=index.datasets,
            content=report,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sr_instance_uid(input_uid, card, kind, revision),
            instance_number=instance_number,
            manufacturer=card.manufacturer,
            is_complete=not nfcu,
            is_final=not nfcu,
            is_verified=False,
            previous_versions=predecessors,
            series_description=series_description("AI", card.name, nfcu),
            manufacturer_model_name=card.id,
            software_versions=card.version,
            coding_schemes=codes.coding_scheme_identification(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultError(f"cannot build SR for model {card.id}: {exc}") from exc
    return sr
