"""The GSPS writer: boxes and labels over the untouched source image, valid and deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset

from models.base import ModelCard
from models.findings import Classification, Detection, Findings, ImageRef
from sidecar.dicom import codes
from sidecar.errors import ResultError
from sidecar.results import build_results
from sidecar.results.gsps import build_gsps
from tests.helpers.dicom_factory import make_dx
from tests.helpers.validate import assert_valid_dicom

CARD = ModelCard(id="hand_joints", version="0.0.1-test", name="Hand joints test model",
                 manufacturer="test", intended_use="tests", labels=("KL 0", "KL 1"))


def _findings(ds: Dataset, boxes: list[tuple[float, float, float, float]], nfcu: bool = True) -> Findings:
    ref = ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    rng = np.random.default_rng(0)
    dets = []
    for i, box in enumerate(boxes):
        p = float(rng.uniform(0.5, 1.0))
        dets.append(Detection(
            label=f"MCP{i + 1}", box=box, confidence=0.9, source=ref, laterality="R",
            grade=Classification("KL 1", {"KL 0": 1 - p, "KL 1": p}, source=ref,
                                 finding_site=f"metacarpophalangeal joint {i + 1}", laterality="R")))
    return Findings(model_id="hand_joints", model_version=CARD.version, detections=tuple(dets),
                    not_for_clinical_use=nfcu)


@pytest.fixture
def image() -> Dataset:
    return make_dx(seed=3)


class TestBuildGsps:
    def test_gsps_passes_dciodvfy_and_references_the_image(self, image: Dataset) -> None:
        """A GSPS with two boxes validates (dciodvfy: no errors) and points at the source image."""
        gsps = build_gsps(_findings(image, [(10, 12, 30, 40), (40.5, 50.5, 60, 70)]), image, CARD,
                          input_uid=str(image.SeriesInstanceUID))
        back = assert_valid_dicom(gsps)
        assert back.Modality == "PR"
        assert back.StudyInstanceUID == image.StudyInstanceUID
        ref = back.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == image.SOPInstanceUID
        ann = back.GraphicAnnotationSequence[0]
        assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
        assert len(ann.GraphicObjectSequence) == 2 and len(ann.TextObjectSequence) == 2

    def test_boxes_are_closed_polylines_in_pixel_units(self, image: Dataset) -> None:
        """Each box is a 5-point POLYLINE in PIXEL units at the detection's coordinates."""
        gsps = build_gsps(_findings(image, [(10, 12, 30, 40)]), image, CARD, input_uid="1.2.3")
        obj = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
        assert obj.GraphicType == "POLYLINE" and obj.GraphicAnnotationUnits == "PIXEL"
        pts = np.asarray(obj.GraphicData, dtype=float).reshape(-1, 2)
        assert pts.shape == (5, 2)
        assert np.allclose(pts[0], pts[-1]) and np.allclose(pts.min(0), [10, 12]) and np.allclose(pts.max(0), [30, 40])

    def test_labels_name_side_joint_and_grade(self, image: Dataset) -> None:
        """The text object reads like 'R MCP1 KL 1 (0.82)'."""
        gsps = build_gsps(_findings(image, [(10, 12, 30, 40)]), image, CARD, input_uid="1.2.3")
        text = gsps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
        assert text.startswith("R MCP1 KL 1 (")

    def test_not_for_clinical_use_is_in_the_descriptions(self, image: Dataset) -> None:
        """Demo findings say NOT FOR CLINICAL USE in SeriesDescription and ContentDescription."""
        gsps = build_gsps(_findings(image, [(10, 12, 30, 40)]), image, CARD, input_uid="1.2.3")
        assert codes.NOT_FOR_CLINICAL_USE_TAG in gsps.SeriesDescription
        assert codes.NOT_FOR_CLINICAL_USE_TAG in gsps.ContentDescription

    def test_uids_are_deterministic_and_revisions_differ(self, image: Dataset) -> None:
        """The same input gives the same SOP Instance UID; a new revision gives a new one."""
        f = _findings(image, [(10, 12, 30, 40)])
        a = build_gsps(f, image, CARD, input_uid="1.2.3")
        b = build_gsps(f, image, CARD, input_uid="1.2.3")
        c = build_gsps(f, image, CARD, input_uid="1.2.3", revision=1)
        assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID
        assert a.SeriesInstanceUID == c.SeriesInstanceUID

    def test_boxes_reaching_past_the_image_are_clamped_onto_it(self, image: Dataset) -> None:
        """A box partly outside the image is drawn inside its bounds."""
        gsps = build_gsps(_findings(image, [(-5, -5, 500, 30)]), image, CARD, input_uid="1.2.3")
        pts = np.asarray(gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData).reshape(-1, 2)
        assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= image.Columns and pts[:, 1].min() >= 0
        assert_valid_dicom(gsps)

    def test_detection_about_another_image_is_refused(self, image: Dataset) -> None:
        """A detection whose source is not among the job's images raises ResultError."""
        other = make_dx(seed=4)
        with pytest.raises(ResultError):
            build_gsps(_findings(other, [(10, 12, 30, 40)]), image, CARD, input_uid="1.2.3")

    def test_findings_without_detections_are_refused(self, image: Dataset) -> None:
        """Nothing to draw raises ResultError."""
        empty = Findings(model_id="hand_joints", model_version=CARD.version)
        with pytest.raises(ResultError):
            build_gsps(empty, image, CARD, input_uid="1.2.3")


class TestBuildResults:
    def test_gsps_output_yields_a_presentation_state_beside_the_sr(self, image: Dataset) -> None:
        """outputs [sr, gsps] give one SR and one GSPS."""
        objs = build_results(_findings(image, [(10, 12, 30, 40)]), [image], CARD, ["sr", "gsps"],
                             input_uid=str(image.SeriesInstanceUID), kind="series")
        assert sorted(o.Modality for o in objs) == ["PR", "SR"]
