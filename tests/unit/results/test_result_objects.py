"""Secondary capture, alert images, the build_results dispatch and coded concepts; every object written,
read back strictly and validated with dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from models.findings import (
    Classification,
    Findings,
    GeneratedImage,
)
from sidecar.dicom import codes
from sidecar.dicom.uids import result_uid
from sidecar.errors import ResultError
from sidecar.results import build_alert_image, build_results, build_sc, build_sr
from sidecar.results.alert_image import mask_patient_name
from tests.helpers.validate import read_strict
from tests.unit.results.cases import ELASTO_CARD, LGE_CARD, lge_findings, ref, written


class TestSecondaryCapture:
    """build_sc writes a generated image as a Secondary Capture."""

    def test_rgb_generated_image_is_valid_sc_in_source_study(
        self, us: Dataset, tmp_path: Path
    ) -> None:
        """An RGB picture becomes a valid SC in the source study, marked not for clinical use."""
        pixels = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        image = GeneratedImage(pixels, "virtual elastography", ref(us), photometric="RGB")
        sc = build_sc(image, us, ELASTO_CARD, input_uid=us.SOPInstanceUID, index=1)
        back = written(sc, tmp_path, "rgb.dcm")
        assert back.PhotometricInterpretation == "RGB"
        assert back.StudyInstanceUID == us.StudyInstanceUID
        assert "[NOT FOR CLINICAL USE]" in back.SeriesDescription
        assert "NOT FOR CLINICAL USE" in back.ImageComments
        assert back.BurnedInAnnotation == "YES"
        assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == us.SOPInstanceUID
        assert back.pixel_array.shape == (96, 128, 3)

    def test_grey_generated_image_is_valid_sc_with_orientation(
        self, mr: Dataset, tmp_path: Path
    ) -> None:
        """A MONOCHROME2 picture of an MR slice keeps the slice's orientation."""
        pixels = np.full((64, 64), 128, dtype=np.uint8)
        image = GeneratedImage(pixels, "LGE heat map", ref(mr))
        sc = build_sc(image, mr, LGE_CARD, input_uid=mr.SOPInstanceUID, index=2)
        back = written(sc, tmp_path, "grey.dcm")
        assert back.PhotometricInterpretation == "MONOCHROME2"
        assert list(back.PatientOrientation) == ["L", "P"]
        assert back.InstanceNumber == 2
        assert (back.pixel_array[40:, :] == 128).all()  # notice drawn only in the top band

    def test_sc_uids_are_deterministic_and_change_with_revision(self, us: Dataset) -> None:
        """Same input, same UIDs; revision 1 gets a new instance UID in the same series."""
        pixels = np.zeros((32, 32), dtype=np.uint8)
        image = GeneratedImage(pixels, "map", ref(us))
        a = build_sc(image, us, ELASTO_CARD, input_uid=us.SOPInstanceUID, index=1)
        b = build_sc(image, us, ELASTO_CARD, input_uid=us.SOPInstanceUID, index=1)
        c = build_sc(image, us, ELASTO_CARD, input_uid=us.SOPInstanceUID, index=1, revision=1)
        assert a.SOPInstanceUID == b.SOPInstanceUID == result_uid(
            us.SOPInstanceUID, ELASTO_CARD.id, ELASTO_CARD.version, "sc:1", 0
        )
        assert c.SOPInstanceUID != a.SOPInstanceUID
        assert c.SeriesInstanceUID == a.SeriesInstanceUID

    def test_sc_for_a_different_source_raises(self, us: Dataset, mr: Dataset) -> None:
        """The image's own source must be the dataset given."""
        image = GeneratedImage(np.zeros((8, 8), dtype=np.uint8), "map", ref(us))
        with pytest.raises(ResultError):
            build_sc(image, mr, ELASTO_CARD, input_uid=us.SOPInstanceUID, index=1)


class TestAlertImage:
    """build_alert_image renders a QA alert the console can show."""

    def test_alert_is_valid_sc_in_new_marked_series(self, mr: Dataset, tmp_path: Path) -> None:
        """The alert is a 512x512 MONOCHROME2 SC in its own series, marked AI QA ALERT."""
        alert = build_alert_image(
            ["Slice 5: LGE certainty low (0.41)", "Consider repeating the slice"],
            mr,
            input_uid=mr.SOPInstanceUID,
            model_id="lge_qa",
            model_version="1.0.0",
        )
        back = written(alert, tmp_path, "alert.dcm")
        assert back.SeriesDescription.startswith("AI QA ALERT")
        assert back.SeriesInstanceUID != mr.SeriesInstanceUID
        assert back.StudyInstanceUID == mr.StudyInstanceUID
        assert back.BurnedInAnnotation == "YES"
        pixels = back.pixel_array
        assert pixels.shape == (512, 512)
        assert pixels[0, :].min() == 255  # border
        assert 0.01 < (pixels[20:-20, 20:-20] > 0).mean() < 0.5  # text drawn, mostly black

    def test_alert_uids_are_deterministic_and_change_with_revision(self, mr: Dataset) -> None:
        """Same input, same UIDs; a revision gets a new instance."""
        args = {"input_uid": mr.SOPInstanceUID, "model_id": "lge_qa", "model_version": "1"}
        a = build_alert_image(["x"], mr, **args)
        b = build_alert_image(["x"], mr, **args)
        c = build_alert_image(["x"], mr, revision=1, **args)
        assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID
        assert a.SeriesInstanceUID == c.SeriesInstanceUID

    def test_patient_name_in_alert_text_is_masked(self, mr: Dataset) -> None:
        """Whole-word parts of the patient's name are masked; other words are kept."""
        lines = mask_patient_name(["Repeat slice for PHANTOM test", "Phantoms^Testing ok"], mr)
        assert lines == ["Repeat slice for *** ***", "Phantoms^Testing ok"]
        alert = build_alert_image(
            ["Repeat slice for Phantom"],
            mr,
            input_uid=mr.SOPInstanceUID,
            model_id="lge_qa",
            model_version="1",
        )
        assert "Phantom" not in alert.ImageComments

    def test_alert_without_text_raises(self, mr: Dataset) -> None:
        """An alert needs something to say."""
        with pytest.raises(ResultError, match="at least one line"):
            build_alert_image(
                ["  "], mr, input_uid=mr.SOPInstanceUID, model_id="lge_qa", model_version="1"
            )


class TestBuildResults:
    """build_results dispatches a route's outputs to the writers."""

    def test_sr_and_one_sc_per_generated_image(self, us: Dataset, tmp_path: Path) -> None:
        """outputs ["sr", "sc"] give one SR and one SC per image, all valid."""
        grey = np.zeros((16, 16), dtype=np.uint8)
        findings = Findings(
            model_id=ELASTO_CARD.id,
            model_version=ELASTO_CARD.version,
            classifications=(
                Classification("stiff", {"soft": 0.3, "stiff": 0.7}, source=ref(us)),
            ),
            images=(
                GeneratedImage(grey, "map a", ref(us)),
                GeneratedImage(grey + 5, "map b", ref(us)),
            ),
        )
        results = build_results(
            findings, [us], ELASTO_CARD, ["sr", "sc", "gsps"], input_uid=us.SOPInstanceUID,
            kind="instance",
        )
        # derived images keep the source's modality (SC Equipment module, PS3.3 C.8.6.1)
        assert [r.Modality for r in results] == ["SR", "US", "US"]
        assert [r.InstanceNumber for r in results[1:]] == [1, 2]
        assert len({r.SOPInstanceUID for r in results}) == 3
        for n, result in enumerate(results):
            written(result, tmp_path, f"r{n}.dcm")

    def test_generated_image_of_unknown_source_raises(self, us: Dataset, mr: Dataset) -> None:
        """An image about an instance outside the job is a ResultError."""
        findings = Findings(
            model_id=ELASTO_CARD.id,
            model_version=ELASTO_CARD.version,
            images=(GeneratedImage(np.zeros((8, 8), dtype=np.uint8), "m", ref(mr)),),
        )
        with pytest.raises(ResultError, match="not among the job's sources"):
            build_results(
                findings, [us], ELASTO_CARD, ["sc"], input_uid=us.SOPInstanceUID, kind="instance"
            )


class TestCodes:
    """Coded concepts come from one module and never crash on unknown labels."""

    def test_unknown_label_gets_stable_private_code(self) -> None:
        """An unknown label maps to the same short private code every time."""
        a = codes.label_concept("m", "weird label / with symbols")
        assert a == codes.label_concept("m", "weird label / with symbols")
        assert a.scheme_designator == codes.PRIVATE_SCHEME
        assert len(a.value) <= 16
        assert a.meaning == "weird label / with symbols"
        assert a != codes.label_concept("other_model", "weird label / with symbols")

    def test_standard_labels_use_snomed(self) -> None:
        """Labels with a standard meaning use SNOMED CT codes."""
        assert codes.label_concept("any", "Normal").value == "17621005"
        assert codes.label_concept("any", "present").scheme_designator == "SCT"

    def test_long_label_meaning_fits_lo(self) -> None:
        """Code meanings are cut to 64 characters."""
        assert len(codes.label_concept("m", "x" * 200).meaning) == 64


def test_read_strict_rejects_nothing_we_write(mr: Dataset, tmp_path: Path) -> None:
    """Strict read-back of a written SR returns the same SOP instance."""
    sr = build_sr(lge_findings(mr), [mr], LGE_CARD, input_uid=mr.SOPInstanceUID, kind="instance")
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert read_strict(path).SOPInstanceUID == sr.SOPInstanceUID
