"""The SR writer: TID 1500 content, references and identity; every SR written, read back strictly and
validated with dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from models.base import ModelCard
from models.findings import (
    Classification,
    Detection,
    Findings,
    Measurement,
)
from models.synovitis.concepts import VOCABULARY as SYNOVITIS_VOCABULARY
from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid
from sidecar.errors import ResultError
from sidecar.results import build_sr
from tests.helpers.dicom_factory import (
    FAKE_PATIENT_NAME,
    make_dx,
    make_mr,
    make_mr_series,
    make_us,
    make_us_cine,
)
from tests.unit.results.cases import (
    JSN_CARD,
    LGE_CARD,
    dsrdump,
    lge_findings,
    meanings,
    measurement_items,
    numbers,
    ref,
    referenced_sop_uids,
    texts,
    walk,
    written,
)


class TestSourceFactory:
    """The test sources themselves are valid, so SR image libraries are built from real headers."""

    @pytest.mark.parametrize("factory", [make_mr, make_us, make_us_cine, make_dx])
    def test_factory_dataset_passes_dciodvfy(self, factory, tmp_path: Path) -> None:
        """Each factory builds an object dciodvfy accepts without errors."""
        ds = written(factory(seed=3), tmp_path, "source.dcm")
        assert ds.PatientName == FAKE_PATIENT_NAME

    def test_factory_is_deterministic(self) -> None:
        """Same seed, same UIDs and pixels."""
        a, b = make_mr(seed=2), make_mr(seed=2)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData


class TestStructuredReport:
    """build_sr writes a TID 1500 Comprehensive 3D SR."""

    def test_classification_on_one_mr_image_is_valid_sr_in_source_study(
        self, mr: Dataset, tmp_path: Path
    ) -> None:
        """An instance-mode classification becomes a valid SR in the source's study."""
        sr = build_sr(
            lge_findings(mr), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance"
        )
        back = written(sr, tmp_path, "sr.dcm")
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: no 3D coordinates
        assert back.StudyInstanceUID == mr.StudyInstanceUID
        assert back.PatientID == mr.PatientID
        assert back.SeriesInstanceUID != mr.SeriesInstanceUID
        assert mr.SOPInstanceUID in referenced_sop_uids(back)

    def test_sr_content_holds_label_probabilities_and_measurement(
        self, mr: Dataset, tmp_path: Path
    ) -> None:
        """The content tree carries the label, each class probability and the measurement."""
        sr = build_sr(
            lge_findings(mr), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance"
        )
        back = written(sr, tmp_path, "sr.dcm")
        names = meanings(back)
        assert {"LGE slice certainty", "uncertain", "Left ventricle"} <= names
        assert "AI QA alert for technologist" in names
        values = numbers(back)
        assert values["Probability of certain"] == pytest.approx(0.23)
        assert values["Probability of uncertain"] == pytest.approx(0.77)
        assert values["Enhanced myocardium fraction"] == pytest.approx(0.12)
        units = {
            str(i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            for i in measurement_items(back)
        }
        assert units == {"1", "%"}
        assert values["uncertain"] == pytest.approx(77.0)  # the answer, listed as a NUM
        assert values["AI QA alert for technologist"] == pytest.approx(77.0)

    def test_sr_says_not_for_clinical_use_in_text_and_series_description(
        self, mr: Dataset, tmp_path: Path
    ) -> None:
        """Demo results say NOT FOR CLINICAL USE in a text item, the series and the flags."""
        sr = build_sr(
            lge_findings(mr), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance"
        )
        back = written(sr, tmp_path, "sr.dcm")
        assert codes.NOT_FOR_CLINICAL_USE in texts(back)
        assert back.SeriesDescription == "AI LGE CMR slice certainty image 1 [NOT FOR CLINICAL USE]"
        assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == (
            "PARTIAL",
            "UNVERIFIED",
            "PRELIMINARY",
        )
        assert codes.NOT_FOR_CLINICAL_USE in dsrdump(tmp_path / "sr.dcm")

    def test_sr_names_model_as_device_observer(self, mr: Dataset, tmp_path: Path) -> None:
        """The observer context is a DEVICE named after the model card."""
        sr = build_sr(
            lge_findings(mr), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance"
        )
        back = written(sr, tmp_path, "sr.dcm")
        observer = {
            str(i.ConceptNameCodeSequence[0].CodeMeaning): i
            for i in back.ContentSequence
            if i.RelationshipType == "HAS OBS CONTEXT"
        }
        assert observer["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"
        assert observer["Device Observer Name"].TextValue == LGE_CARD.name
        assert observer["Device Observer Manufacturer"].TextValue == LGE_CARD.manufacturer
        assert observer["Device Observer Model Name"].TextValue == LGE_CARD.id
        assert back.SoftwareVersions == LGE_CARD.version
        assert "Algorithm Version" in meanings(back)

    def test_series_summary_references_every_source_image(self, tmp_path: Path) -> None:
        """A series-mode SR has a group per classified slice, a summary, and every slice in its library."""
        series = make_mr_series(4, seed=3)
        per_slice = tuple(
            Classification(
                label="certain" if i % 2 else "uncertain",
                probabilities={"certain": 0.1 + 0.2 * i, "uncertain": 0.9 - 0.2 * i},
                source=ref(ds),
            )
            for i, ds in enumerate(series)
        )
        findings = Findings(
            model_id="lge_qa",
            model_version="1.0.0",
            classifications=per_slice,
            summary=Classification("uncertain", {"certain": 0.4, "uncertain": 0.6}),
            measurements=(Measurement("Uncertain slice fraction", 0.5, "1"),),
        )
        uid = series[0].SeriesInstanceUID
        sr = build_sr(findings, series, LGE_CARD, input_uid=uid, kind="series")
        back = written(sr, tmp_path, "series.dcm")
        assert back.SOPInstanceUID == result_uid(uid, "lge_qa", "1.0.0", "sr-series", 0)
        assert back.SOPInstanceUID != back.SeriesInstanceUID
        assert back.StudyInstanceUID == series[0].StudyInstanceUID
        assert referenced_sop_uids(back) == {str(ds.SOPInstanceUID) for ds in series}
        groups = [
            i
            for i in walk(back.ContentSequence)
            if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group"
        ]
        assert len(groups) == 5
        summary = groups[-1]  # per-image answers (ROIs over each image) first, then the series
        assert any(i.ValueType == "SCOORD" for i in summary.ContentSequence)  # drawn over an image
        library = next(i for i in back.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library")
        assert len([i for i in walk(library.ContentSequence) if i.ValueType == "IMAGE"]) == 4
        assert numbers(back)["Uncertain slice fraction"] == pytest.approx(0.5)

    def test_detections_on_dx_are_planar_rois_with_box_grade_and_laterality(
        self, dx: Dataset, tmp_path: Path
    ) -> None:
        """Each detection is an ROI group: closed box polyline, label, confidence, grade, side."""
        findings = Findings(
            model_id="hand_joints",
            model_version="0.3.0",
            detections=(
                Detection(
                    label="MCP2",
                    box=(10.0, 20.0, 30.0, 44.0),
                    confidence=0.91,
                    source=ref(dx),
                    laterality="L",
                    grade=Classification("2", {"0": 0.05, "1": 0.15, "2": 0.7, "3": 0.1}),
                ),
                Detection(label="PIP3", box=(50, 60, 70, 80), confidence=0.55, source=ref(dx)),
            ),
        )
        sr = build_sr(findings, [dx], JSN_CARD, input_uid=dx.SOPInstanceUID, kind="instance")
        back = written(sr, tmp_path, "dx.dcm")
        scoords = [i for i in walk(back.ContentSequence) if i.ValueType == "SCOORD"]
        assert len(scoords) == 2
        assert scoords[0].GraphicType == "POLYLINE"
        assert list(scoords[0].GraphicData) == [10, 20, 30, 20, 30, 44, 10, 44, 10, 20]
        assert scoords[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            dx.SOPInstanceUID
        )
        names = meanings(back)
        assert {"MCP2", "PIP3", "Hand joint grade (SHS narrowing or KL)", "2", "Left"} <= names
        assert numbers(back)["Certainty of Finding"] in (pytest.approx(0.91), pytest.approx(0.55))
        assert numbers(back)["2"] == pytest.approx(70.0)  # the grade answer, its probability in percent

    def test_multiframe_source_is_referenced_by_frame(self, tmp_path: Path) -> None:
        """A classification of one frame of a cine references that frame number."""
        cine = make_us_cine(seed=4, frames=5)
        findings = Findings(
            model_id="synovitis_sgs",
            model_version="0.1",
            classifications=(
                Classification("grade 2", {"grade 0": 0.1, "grade 2": 0.9}, source=ref(cine, 3)),
            ),
        )
        card = ModelCard("synovitis_sgs", "0.1", "Synovitis grading", "Demo", "x", ("grade 0",),
                         vocabulary=SYNOVITIS_VOCABULARY)
        sr = build_sr(findings, [cine], card, input_uid=cine.SOPInstanceUID, kind="instance")
        back = written(sr, tmp_path, "cine.dcm")
        frames = [
            int(i.ReferencedSOPSequence[0].ReferencedFrameNumber)
            for i in walk(back.ContentSequence)
            if i.ValueType == "IMAGE" and "ReferencedFrameNumber" in i.ReferencedSOPSequence[0]
        ]
        assert frames == [3]  # the region the answer is about lies on frame 3
        assert "EULAR-OMERACT synovitis grade" in meanings(back)

    def test_uids_are_deterministic_and_revision_gets_new_instance(self, mr: Dataset) -> None:
        """Two builds give the same UIDs; revision 1 is a new instance in the same series."""
        args = {"input_uid": mr.SOPInstanceUID, "kind": "instance"}
        first = build_sr(lge_findings(mr), [mr], LGE_CARD, **args)
        again = build_sr(lge_findings(mr), [mr], LGE_CARD, **args)
        revised = build_sr(lge_findings(mr), [mr], LGE_CARD, revision=1, **args)
        assert first.SOPInstanceUID == again.SOPInstanceUID
        assert first.SeriesInstanceUID == again.SeriesInstanceUID
        assert first.SOPInstanceUID == result_uid(
            mr.SOPInstanceUID, "lge_qa", "1.0.0", "sr-instance", 0
        )
        # a streaming result has a series of its own per source image (docs/DESIGN.md)
        assert first.SeriesInstanceUID == result_uid(
            mr.SOPInstanceUID, "lge_qa", "1.0.0", "sr-image-series", 0
        )
        assert (first.InstanceNumber, revised.InstanceNumber) == (1, 2)
        assert revised.SOPInstanceUID != first.SOPInstanceUID
        assert revised.SeriesInstanceUID == first.SeriesInstanceUID

    def test_revision_names_its_predecessor(self, mr: Dataset, tmp_path: Path) -> None:
        """A superseding SR lists revision-1 in PredecessorDocumentsSequence and says so."""
        args = {"input_uid": mr.SOPInstanceUID, "kind": "instance"}
        first = build_sr(lge_findings(mr), [mr], LGE_CARD, **args)
        revised = build_sr(lge_findings(mr), [mr], LGE_CARD, revision=1, **args)
        back = written(revised, tmp_path, "rev.dcm")
        study = back.PredecessorDocumentsSequence[0]
        series = study.ReferencedSeriesSequence[0]
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert f"Revision 1 supersedes SR {first.SOPInstanceUID}" in texts(back)

    def test_clinical_model_without_demo_flag_is_complete_and_unmarked(
        self, mr: Dataset, tmp_path: Path
    ) -> None:
        """Without the demo flag the SR is COMPLETE, still UNVERIFIED, with no warning text."""
        card = ModelCard(**{**LGE_CARD.__dict__, "not_for_clinical_use": False})
        findings = Findings(
            **{**lge_findings(mr).__dict__, "not_for_clinical_use": False}
        )
        sr = build_sr(findings, [mr], card, input_uid=mr.SOPInstanceUID, kind="instance")
        back = written(sr, tmp_path, "clinical.dcm")
        assert (back.CompletionFlag, back.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
        assert "NOT FOR CLINICAL USE" not in back.SeriesDescription
        assert codes.NOT_FOR_CLINICAL_USE not in texts(back)

    def test_reference_to_image_not_among_sources_raises(self, mr: Dataset) -> None:
        """A finding about an image the job does not hold is a ResultError."""
        stranger = make_mr(seed=99)
        with pytest.raises(ResultError, match="not among the job's sources"):
            build_sr(
                lge_findings(stranger), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance"
            )

    def test_frame_beyond_source_raises(self) -> None:
        """A frame number past NumberOfFrames is a ResultError."""
        cine = make_us_cine(frames=2)
        findings = Findings(
            model_id="lge_qa",
            model_version="1.0.0",
            classifications=(Classification("a", {"a": 1.0}, source=ref(cine, 3)),),
        )
        with pytest.raises(ResultError, match="frame 3"):
            build_sr(findings, [cine], LGE_CARD, input_uid=cine.SOPInstanceUID, kind="instance")

    def test_empty_findings_raise(self, mr: Dataset) -> None:
        """Findings with nothing to report are a ResultError, not an empty document."""
        with pytest.raises(ResultError, match="hold no"):
            build_sr(
                Findings("lge_qa", "1.0.0"), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID,
                kind="instance",
            )

    def test_sources_from_two_studies_raise(self, mr: Dataset) -> None:
        """A result belongs to one study."""
        other = make_mr(seed=42)
        with pytest.raises(ResultError, match="studies"):
            build_sr(
                lge_findings(mr), [mr, other], LGE_CARD, input_uid=mr.SOPInstanceUID,
                kind="series",
            )
