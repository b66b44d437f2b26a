"""Every model's SR is template-valid (pixelmed, dciodvfy) and readable in a viewer.

One result of each bundled model (tests/helpers/model_results.py, with the model's own
vocabulary) is built, written, read back strictly and checked by both validators. The warnings
each validator may still give are listed here, and explained in docs/conformance.md (SR section);
anything else fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset

from models.findings import NOT_ASSESSED_TEXT, Classification, Findings, ImageRef
from sidecar.dicom import codes
from sidecar.results import build_results, build_sr
from sidecar.results.sr_content import PER_IMAGE_LIMIT
from tests.helpers.dicom_factory import make_mr, make_mr_series
from tests.helpers.model_results import EVERY_MODEL, ModelResult, lge_slice
from tests.helpers.validate import dciodvfy_lines, pixelmed_sr_lines, read_strict

#: dciodvfy knows only the coding schemes of PS3.16 Table 8-1; our private scheme is declared
#: in the Coding Scheme Identification Sequence, which dciodvfy does not consult.
DCIODVFY_EXPLAINED = re.compile(
    r"^Warning - Unrecognized defined term <99SIDECAR> for value 1 of attribute <Coding Scheme Designator>$"
)
#: pixelmed's template table (pixelmed-apps 20220618) has no rows for the CODE qualitative
#: evaluations of TID 1501 / TID 1410 that highdicom writes, whatever their concept name.
PIXELMED_EXPLAINED = re.compile(
    r'^Warning: [0-9.]+: /CONTAINER \(126000,DCM,"Imaging Measurement Report"\)'
    r'/CONTAINER \(126010,DCM,"Imaging Measurements"\)/CONTAINER \(125007,DCM,"Measurement Group"\)'
    r"/CODE \(.*\): Content Item not in template$"
)
CASES = {**EVERY_MODEL, "lge_qa_not_assessed": lambda: lge_slice(out_of_domain=True)}


def walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def groups(sr: Dataset) -> list[Dataset]:
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return list(measurements.ContentSequence)


def tracking_text(group: Dataset) -> str:
    return next(str(i.TextValue) for i in group.ContentSequence
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039")


def nums(group: Dataset) -> dict[str, float]:
    return {str(i.ConceptNameCodeSequence[0].CodeMeaning): float(i.MeasuredValueSequence[0].NumericValue)
            for i in group.ContentSequence if i.ValueType == "NUM"}


def built(case: ModelResult) -> list[Dataset]:
    return build_results(case.findings, case.sources, case.card, case.outputs, input_uid=case.input_uid,
                         kind=case.kind)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case's SR written to disk (and read back strictly)."""
    folder = tmp_path_factory.mktemp("sr-templates")
    out = {}
    for name, make in CASES.items():
        sr = built(make())[0]
        path = folder / f"{name}.dcm"
        sr.save_as(path, enforce_file_format=True)
        read_strict(path)
        out[name] = path
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)  # pixelmed compiles its XSLT templates first (~20 s idle, minutes under load)
def test_pixelmed_reports_no_error_and_only_explained_warnings(written: dict[str, Path]) -> None:
    """pixelmed's DicomSRValidator: 0 errors on every model's SR; warnings only the explained kind."""
    report = pixelmed_sr_lines(list(written.values()))
    for name, path in written.items():
        lines = report[path]
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{name}: pixelmed errors:\n" + "\n".join(errors)
        unexplained = [line for line in lines if not PIXELMED_EXPLAINED.match(line)]
        assert not unexplained, f"{name}: unexplained pixelmed warnings:\n" + "\n".join(unexplained)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dciodvfy_reports_no_error_and_only_explained_warnings(name: str, written: dict[str, Path]) -> None:
    """dciodvfy: no error, and no warning but the private coding scheme's."""
    lines = [line for line in dciodvfy_lines(written[name]) if line.startswith(("Error", "Warning"))]
    assert not [line for line in lines if line.startswith("Error")], lines
    assert all(DCIODVFY_EXPLAINED.match(line) for line in lines), lines


@pytest.mark.parametrize("name", sorted(EVERY_MODEL))
def test_every_sr_is_comprehensive_sr_with_cid100_procedure_and_declared_scheme(name: str) -> None:
    """Comprehensive SR (no 3D coordinates), Procedure reported from CID 100, 99SIDECAR declared,
    no Algorithm Manufacturer inside the groups."""
    sr = built(EVERY_MODEL[name]())[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    procedure = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058")
    assert (procedure.ConceptCodeSequence[0].CodeValue, procedure.ConceptCodeSequence[0].CodingSchemeDesignator) in {
        ("25056-3", "LN"), ("363679005", "SCT")}
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == ["99SIDECAR"]
    assert not [i for i in walk(sr.ContentSequence) if i.ConceptNameCodeSequence[0].CodeValue == "122405"]


@pytest.mark.parametrize("name", sorted(EVERY_MODEL))
def test_first_group_says_the_answer_in_words_and_in_a_listed_number(name: str) -> None:
    """The first group's label says the answer in words; every coded answer of the group is also
    the name of a NUM (its probability in percent, never 0), so a viewer listing only NUMs shows it."""
    case = EVERY_MODEL[name]()
    sr = built(case)[0]
    first = groups(sr)[0]
    coded = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in first.ContentSequence
             if i.ValueType == "CODE" and i.RelationshipType == "CONTAINS"
             and i.ConceptNameCodeSequence[0].CodeValue != "121071"]
    assert coded
    listed = nums(first)
    assert all(listed.get(answer, 0) > 0 for answer in coded), (coded, listed)
    grade = case.findings.detections[0].grade if case.findings.detections else None
    label = grade.label if grade is not None else case.findings.classifications[0].label
    assert case.card.vocabulary.text(label) in tracking_text(first)
    assert any(i.ValueType == "SCOORD" for i in walk(first.ContentSequence))  # a region to draw


def test_hand_joints_first_group_is_a_region_and_every_joint_is_a_graded_roi() -> None:
    """Hands: each joint's box is a closed polyline on the radiograph with its grade as a NUM."""
    case = EVERY_MODEL["hand_joints"]()
    sr = built(case)[0]
    every = groups(sr)
    assert all(any(i.ValueType == "SCOORD" for i in g.ContentSequence) for g in every)  # all drawable
    rois = every[: len(case.findings.detections)]  # the joints come first
    grade = case.card.vocabulary.grade_concept.meaning
    assert [nums(g)[grade] for g in rois] == [2.0, 0.0]
    assert [tracking_text(g) for g in rois] == ["hand_joints MCP2 KL 2", "hand_joints PIP3 KL 0"]
    polyline = next(i for i in rois[0].ContentSequence if i.ValueType == "SCOORD")
    assert polyline.GraphicType == "POLYLINE" and list(polyline.GraphicData[:2]) == list(polyline.GraphicData[-2:])


def test_ordinal_answers_are_listed_as_the_grade_itself() -> None:
    """Synovitis: the summary lists the grade number (2) under the question."""
    case = EVERY_MODEL["synovitis_sgs"]()
    summary = next(g for g in groups(built(case)[0]) if tracking_text(g).startswith("synovitis_sgs series"))
    assert nums(summary)["EULAR-OMERACT synovitis grade"] == 2.0
    assert tracking_text(summary) == "synovitis_sgs series: synovitis grade 2"


def test_streaming_slices_get_one_sr_series_each() -> None:
    """Two slices of one LGE series: two SR series (a viewer shows one SR per series)."""
    a, b = (make_mr(seed=1, instance_number=n) for n in (1, 2))
    b.SeriesInstanceUID = a.SeriesInstanceUID
    b.StudyInstanceUID = a.StudyInstanceUID
    case = lge_slice()
    out = []
    for mr in (a, b):
        c = Classification("low_certainty", {"high_certainty": 0.2, "low_certainty": 0.8},
                           source=ImageRef(str(mr.SOPClassUID), str(mr.SOPInstanceUID)), uncertain=True)
        f = Findings("lge_qa", "0.1.0-demo", classifications=(c,))
        out.append(build_sr(f, [mr], case.card, input_uid=str(mr.SOPInstanceUID), kind="instance"))
    assert out[0].SeriesInstanceUID != out[1].SeriesInstanceUID
    assert [s.SeriesNumber for s in out] == [9901001, 9901002]
    assert [s.SeriesDescription.split(" [")[0][-7:] for s in out] == ["image 1", "image 2"]


def test_not_assessed_input_says_so_and_recommends_nothing() -> None:
    """Outside the domain: "Not Evaluated", a listed not-assessed NUM, the text, no recommendation."""
    sr = built(lge_slice(out_of_domain=True))[0]
    group = groups(sr)[0]
    values = [(str(i.ConceptNameCodeSequence[0].CodeMeaning), str(i.ConceptCodeSequence[0].CodeMeaning))
              for i in group.ContentSequence if i.ValueType == "CODE"]
    assert ("LGE slice certainty", "Not Evaluated") in values
    assert "Recommendation" not in {name for name, _ in values}
    assert NOT_ASSESSED_TEXT in tracking_text(group)
    assert nums(group)["Not assessed (outside validated domain): score"] == pytest.approx(41.2)
    notes = [str(i.TextValue) for i in walk(sr.ContentSequence) if i.ValueType == "TEXT"]
    assert any(n.startswith(NOT_ASSESSED_TEXT) for n in notes)


def test_elastography_sr_references_the_image_it_produced() -> None:
    """The breast SR lists its derived elastogram in the evidence it references."""
    sr, sc = built(EVERY_MODEL["breast_elastography"]())
    evidence = {str(s.ReferencedSOPInstanceUID)
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for s in series.ReferencedSOPSequence}
    assert str(sc.SOPInstanceUID) in evidence


def test_long_series_lists_per_image_groups_only_for_images_with_a_finding() -> None:
    """A series of more than PER_IMAGE_LIMIT images: summary over all, groups for flagged ones."""
    series = make_mr_series(PER_IMAGE_LIMIT + 8, seed=2)
    flagged = {0, 9}
    items = tuple(
        Classification("low_certainty" if i in flagged else "high_certainty",
                       {"high_certainty": 0.1 if i in flagged else 0.9, "low_certainty": 0.9 if i in flagged else 0.1},
                       source=ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), uncertain=i in flagged)
        for i, ds in enumerate(series))
    f = Findings("lge_qa", "0.1.0-demo", classifications=items,
                 summary=Classification("low_certainty", {"high_certainty": 0.1, "low_certainty": 0.9}, uncertain=True))
    sr = build_sr(f, series, lge_slice().card, input_uid=str(series[0].SeriesInstanceUID), kind="series")
    found = groups(sr)
    assert len(found) == 1 + len(flagged)
    library = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    listed = [i for i in walk(library.ContentSequence) if i.ValueType == "IMAGE"]
    assert len(listed) == len(series)  # every image is in the report's Image Library
    notes = [str(i.TextValue) for i in walk(sr.ContentSequence) if i.ValueType == "TEXT"]
    assert any(f"{len(series) - len(flagged)} image(s)" in n for n in notes)


def test_unlisted_unit_and_marking_still_fit_the_description() -> None:
    """A long model name is shortened by whole words; the marking is always complete."""
    from sidecar.results.sr import series_description

    text = series_description("AI", "LGE CMR slice certainty (EfficientNetV2) with a much longer tail of words", True,
                              "image 12")
    assert len(text) <= 64 and text.endswith("image 12 [NOT FOR CLINICAL USE]")
    assert "(Efficient" not in text and text.startswith("AI LGE CMR slice certainty")
    assert codes.NOT_FOR_CLINICAL_USE_TAG in text
