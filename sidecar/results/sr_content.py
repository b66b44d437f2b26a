"""The TID 1500 content tree of one result SR, built once with highdicom's templates.

Designed for what a reader sees, in a PACS viewer or OHIF (which starts its SR viewport at the
first measurement group and lists only NUM items as labels):

- Groups: detections first (TID 1410 planar ROIs, a closed SCOORD polyline of the box on the
  source image); then per-image answers and per-image measurements, each a TID 1410 planar ROI
  over its whole image (the region the answer is about); then the series summary, a planar ROI
  over the image whose result it repeats (or the first image). Every group carries a region:
  OHIF 3.12's SR viewport fails ("Something went wrong") on an SR holding a TID 1501 group
  without one, and starts at the first group, so each group is an image it can draw.
- Every answer is there three ways: the group's tracking identifier says it in words
  ("lge_qa image 3: low certainty"), a CODE evaluation names it with a coded value, and NUMs a
  viewer lists: one named by the coded answer's own meaning, valued the answer's probability in
  percent (never 0 for the winning label), and, for ordinal labels (grades, scores), the grade
  itself under the question; a flagged result lists "AI QA alert for technologist" the same way.
- An input the domain guard refused (`Findings.domain`) is "not assessed": its group answers
  SNOMED CT "Not Evaluated", its label says why, and no QA recommendation is made.
- The algorithm (TID 4019) is named in the first group only; the device observer names it for all.
- A series of more than `PER_IMAGE_LIMIT` classified images gets per-image groups only for the
  images that carry a finding (flagged, not assessed, or a label other than the series' usual
  one); the summary group references every image while the series is short, and the Image
  Library lists every image always. This keeps the document readable and its
  build linear in practice (issue 15: highdicom deep-copies the whole tree once per document).
- The Image Library (TID 1600) lists each referenced image once, without per-image descriptors
  (TID 1602 is optional; building it costs ~80 ms per image in highdicom).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from highdicom.sr.value_types import ContentSequence
from pydicom import Dataset

from models.base import ModelCard
from models.findings import NOT_ASSESSED_TEXT, Classification, Detection, Findings, ImageRef, Measurement
from sidecar.dicom import codes
from sidecar.dicom.uids import derive_uid, short_uid
from sidecar.errors import ResultError

#: above this many classified images, per-image groups are written only for images with a finding
PER_IMAGE_LIMIT = 8

Group = hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


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
class _Plan:
    """What goes into one TID 1501 measurement group."""

    key: str
    refs: list[ImageRef]
    classifications: list[Classification] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    not_assessed: bool = False


def _ref_key(ref: ImageRef) -> str:
    return f"{ref.sop_instance_uid}/{ref.frame or 0}"


class ReportBuilder:
    """Turns one Findings into TID 1500 content with highdicom's templates."""

    def __init__(self, findings: Findings, index: SourceIndex, card: ModelCard, input_uid: str) -> None:
        self.findings = findings
        self.index = index
        self.card = card
        self.input_uid = input_uid
        self.vocabulary = card.vocabulary
        self.skipped_images = 0  # classified images left out of per-image groups (no finding)
        # TID 4019 without "Algorithm Manufacturer": the device observer (TID 1004) names it.
        self.algorithm = hd.sr.AlgorithmIdentification(
            name=card.name, version=card.version, family=codes.ARTIFICIAL_INTELLIGENCE
        )

    # -- words and codes ---------------------------------------------------------------------

    def label_code(self, label: str) -> CodedConcept:
        given = self.vocabulary.label_codes.get(label)
        if given is not None:
            return CodedConcept.from_code(given)
        return codes.label_concept(self.card.id, label, self.vocabulary.text(label))

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
                observer_type=codes.DEVICE_OBSERVER, observer_identifying_attributes=device
            )
        )

    # -- content items ----------------------------------------------------------------------

    def answer_numbers(self, c: Classification, question: CodedConcept) -> list[hd.sr.Measurement]:
        """NUMs a viewer lists: the grade (ordinal labels) under the question, and the answer by the
        coded answer's own meaning (so a viewer that lists only NUMs shows the coded answer's words)
        with its probability in percent; a flagged result also lists the QA alert the same way."""
        items = []
        score = self.vocabulary.ordinal.get(c.label)
        if score is not None:
            items.append(hd.sr.Measurement(name=question, value=float(score), unit=codes.unit_concept("{score}")))
        percent = round(100.0 * float(c.probabilities[c.label]), 1)
        answer = self.label_code(c.label)
        items.append(
            hd.sr.Measurement(
                name=codes.answer_concept(self.card.id, c.label, str(answer.meaning)),
                value=percent,
                unit=codes.unit_concept("%"),
            )
        )
        if c.uncertain:
            items.append(hd.sr.Measurement(name=codes.TECHNOLOGIST_ALERT, value=percent, unit=codes.unit_concept("%")))
        return items

    def probabilities(self, c: Classification) -> list[hd.sr.Measurement]:
        """One Measurement (UCUM "1") per class probability."""
        return [
            hd.sr.Measurement(
                name=codes.probability_concept(self.card.id, label, self.vocabulary.text(label)),
                value=float(p),
                unit=codes.unit_concept("1"),
            )
            for label, p in c.probabilities.items()
        ]

    def evaluations(
        self, c: Classification, question: CodedConcept, assessed: bool
    ) -> list[hd.sr.QualitativeEvaluation]:
        """The answer under `question` (or Not Evaluated), and the QA recommendation where flagged."""
        if not assessed:
            return [hd.sr.QualitativeEvaluation(name=question, value=codes.NOT_EVALUATED)]
        items = [hd.sr.QualitativeEvaluation(name=question, value=self.label_code(c.label))]
        if c.uncertain:
            items.append(hd.sr.QualitativeEvaluation(codes.RECOMMENDATION, codes.TECHNOLOGIST_ALERT))
        return items

    def not_assessed_number(self, ref: ImageRef | None) -> hd.sr.Measurement:
        """A NUM a viewer lists for an input the guard refused: the out-of-domain score."""
        scores = [v.score for v in self.findings.out_of_domain
                  if ref is None or v.source is None or _ref_key(v.source) == _ref_key(ref)]
        return hd.sr.Measurement(
            name=codes.not_assessed_concept(), value=float(max(scores, default=0.0)), unit=codes.unit_concept("{score}")
        )

    def measurement(self, m: Measurement) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=codes.measurement_concept(self.card.id, m.name),
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

    def _worth_a_group(self, c: Classification, usual: str | None) -> bool:
        assert c.source is not None
        return c.uncertain or c.label != usual or self.findings.is_out_of_domain(c.source)

    def plan_groups(self) -> list[_Plan]:
        """The series summary first, then per-image groups (only those with a finding when many)."""
        f = self.findings
        per_image = [c for c in f.classifications if c.source is not None]
        usual = Counter(c.label for c in per_image).most_common(1)[0][0] if per_image else None
        everything = len(per_image) <= PER_IMAGE_LIMIT
        groups: list[_Plan] = []
        by_ref: dict[str, _Plan] = {}
        # A long series' summary names no images itself: the Image Library lists them all once.
        series = _Plan("series", self.all_source_refs() if len(self.index.datasets) <= PER_IMAGE_LIMIT else [],
                       not_assessed=f.is_out_of_domain(None))
        for i, c in enumerate(f.classifications):
            if c.source is None:
                series.classifications.append(c)
                continue
            self.index.get(c.source)
            if not everything and not self._worth_a_group(c, usual):
                self.skipped_images += 1
                continue
            g = _Plan(f"classification/{i}/{_ref_key(c.source)}", [c.source], [c],
                      not_assessed=f.is_out_of_domain(c.source))
            groups.append(g)
            by_ref.setdefault(_ref_key(c.source), g)
        for m in f.measurements:
            if m.source is None:
                series.measurements.append(m)
                continue
            self.index.get(m.source)
            owner = by_ref.get(_ref_key(m.source))
            if owner is None:
                owner = _Plan(f"measurements/{_ref_key(m.source)}", [m.source])
                groups.append(owner)
                by_ref[_ref_key(m.source)] = owner
            owner.measurements.append(m)
        for v in f.out_of_domain:  # refused inputs with no result of their own still get a group
            if v.source is not None and _ref_key(v.source) not in by_ref:
                self.index.get(v.source)
                g = _Plan(f"not-assessed/{_ref_key(v.source)}", [v.source], not_assessed=True)
                groups.append(g)
                by_ref[_ref_key(v.source)] = g
        if not everything and not any(g.classifications for g in groups):
            # nothing stood out: the first image still gets its group, so a viewer has an image to show
            i, first = next((i, c) for i, c in enumerate(f.classifications) if c.source is not None)
            if first.source is not None:
                self.skipped_images -= 1
                groups.insert(0, _Plan(f"classification/{i}/{_ref_key(first.source)}", [first.source], [first]))
        if f.summary is not None:
            series.classifications.insert(0, f.summary)
        if series.classifications or series.measurements or (series.not_assessed and not groups):
            groups.append(series)
        return groups

    def group_label(self, g: _Plan, number: int) -> str:
        what = "series" if g.key == "series" else self.image_label(g.refs[0], number)
        if g.not_assessed:
            return f"{what}: {NOT_ASSESSED_TEXT}"
        if g.classifications:
            return f"{what}: {self.vocabulary.text(g.classifications[0].label)}"
        return what

    def summary_image(self) -> ImageRef | None:
        """The image the series summary is drawn over: the one whose result it repeats (models
        summarise by their highest-graded or most-flagged image), else the first image."""
        f = self.findings
        if f.summary is not None:
            for c in f.classifications:
                if c.source is not None and dict(c.probabilities) == dict(f.summary.probabilities):
                    return c.source
        refs = self.all_source_refs()
        return refs[0] if refs else None

    def whole_image(self, ref: ImageRef) -> hd.sr.ImageRegion:
        """The image's own extent as a closed polyline: the region a per-image answer is about."""
        ds = self.index.get(ref)
        cols, rows = float(ds.Columns), float(ds.Rows)
        return self.region(ref, (0.5, 0.5, cols - 0.5, rows - 0.5))

    def region(self, ref: ImageRef, box: tuple[float, float, float, float]) -> hd.sr.ImageRegion:
        """A closed SCOORD polyline of `box` (column/row min, max) on the image `ref` points at."""
        ds = self.index.get(ref)
        c0, r0, c1, r1 = (float(v) for v in box)
        polyline = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polyline,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                referenced_frame_numbers=[ref.frame] if ref.frame is not None else None,
            ),
        )

    def group(self, g: _Plan, number: int) -> Group:
        """A per-image answer is a planar ROI (TID 1410) over its whole image, so a viewer that
        starts at the first group draws the image with the answer; the summary and groups of
        measurements only are TID 1501 groups."""
        question = CodedConcept.from_code(self.vocabulary.question)
        evaluations: list[hd.sr.QualitativeEvaluation] = []
        measurements: list[hd.sr.Measurement] = []
        site = lat = None
        for c in g.classifications:
            evaluations += self.evaluations(c, question, not g.not_assessed)
            if not g.not_assessed:
                measurements += self.answer_numbers(c, question)
            measurements += self.probabilities(c)
            site, lat = site or c.finding_site, lat or c.laterality
        if g.not_assessed and not g.classifications:
            evaluations.append(hd.sr.QualitativeEvaluation(name=question, value=codes.NOT_EVALUATED))
        if g.not_assessed:
            measurements.insert(0, self.not_assessed_number(None if g.key == "series" else g.refs[0]))
        measurements += [self.measurement(m) for m in g.measurements]
        tracking = self.tracking(g.key, self.group_label(g, number))
        finding_type = question if (g.classifications or g.not_assessed) else None
        algorithm = self.algorithm if number == 1 else None
        sites = self.finding_sites(site, lat)
        drawn_on = self.summary_image() if g.key == "series" else (g.refs[0] if len(g.refs) == 1 else None)
        if drawn_on is not None:
            return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=self.whole_image(drawn_on),
                finding_type=finding_type, algorithm_id=algorithm, finding_sites=sites,
                measurements=measurements or None, qualitative_evaluations=evaluations or None,
            )
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding_type, algorithm_id=algorithm, finding_sites=sites,
            measurements=measurements or None, qualitative_evaluations=evaluations or None,
            source_images=self.source_images(g.refs) or None,
        )

    def detection(self, d: Detection, number: int) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        """A planar ROI group: the box as a closed SCOORD polyline on its source image."""
        region = self.region(d.source, d.box)
        assessed = not self.findings.is_out_of_domain(d.source)
        grade_concept = CodedConcept.from_code(self.vocabulary.grade_concept)
        measurements: list[hd.sr.Measurement] = []
        evaluations: list[hd.sr.QualitativeEvaluation] = []
        site = None
        label = d.label
        if d.grade is not None:
            evaluations += self.evaluations(d.grade, grade_concept, assessed)
            if assessed:
                measurements += self.answer_numbers(d.grade, grade_concept)
                label = f"{d.label} {self.vocabulary.text(d.grade.label)}"
            # no per-class probabilities on a joint: a viewer labels every NUM of every ROI, and
            # fifteen joints' full probability lists bury the grades (seen in OHIF)
            site = d.grade.finding_site
        if not assessed:
            label = f"{d.label}: {NOT_ASSESSED_TEXT}"
        measurements.append(
            hd.sr.Measurement(
                name=codes.CERTAINTY_OF_FINDING, value=float(d.confidence), unit=codes.unit_concept("1")
            )
        )
        # A detection's label names the place it found (a joint) when no site is given.
        if site is None and d.laterality is not None:
            site = d.label
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(f"detection/{number}/{_ref_key(d.source)}", label),
            referenced_region=region,
            finding_type=codes.label_concept(self.card.id, d.label, d.label),
            algorithm_id=self.algorithm if number == 1 else None,
            finding_sites=self.finding_sites(site, d.laterality),
            measurements=measurements,
            qualitative_evaluations=evaluations or None,
        )

    # -- the document -----------------------------------------------------------------------

    def image_library(self) -> hd.sr.ContainerContentItem:
        """TID 1600 with one group of TID 1601 entries (IMAGE items only, each image once)."""
        group = hd.sr.ContainerContentItem(
            name=codes.IMAGE_LIBRARY_GROUP, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        group.ContentSequence = ContentSequence(
            [
                hd.sr.ImageContentItem(
                    name=codes.SOURCE,
                    referenced_sop_class_uid=str(ds.SOPClassUID),
                    referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
                for ds in self.index.datasets
            ]
        )
        library = hd.sr.ContainerContentItem(
            name=codes.IMAGE_LIBRARY, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        library.ContentSequence = ContentSequence([group])
        return library

    def report(self, notes: Sequence[str], procedure: CodedConcept) -> hd.sr.MeasurementReport:
        # TID 4019 (algorithm) in the first group only: the device observer names the model for all.
        groups: list[Group] = [self.detection(d, n) for n, d in enumerate(self.findings.detections, start=1)]
        groups += [self.group(g, n) for n, g in enumerate(self.plan_groups(), start=len(groups) + 1)]
        if not groups:
            raise ResultError("findings hold no classification, measurement or detection")
        report = hd.sr.MeasurementReport(
            observation_context=self.observation_context(),
            procedure_reported=procedure,
            imaging_measurements=groups,
        )
        root = report[0].ContentSequence
        at = next(i for i, item in enumerate(root) if item.ValueType == "CONTAINER")
        root.insert(at, self.image_library())
        lines = list(notes)
        if self.skipped_images:
            lines.append(
                f"Per-image results are listed for the images with a finding; {self.skipped_images} "
                "image(s) with the series' usual result are covered by the series summary."
            )
        if lines:
            container = hd.sr.ContainerContentItem(
                name=codes.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            container.ContentSequence = ContentSequence(
                [
                    hd.sr.TextContentItem(
                        name=codes.COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
                    )
                    for text in lines
                ]
            )
            root.append(container)
        return report
