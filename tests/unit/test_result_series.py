"""AI series hang where they belong: source modality, increasing numbers, complete marked descriptions."""

from __future__ import annotations

from sidecar.results import build_alert_image, build_results
from tests.helpers.dicom_factory import make_mr
from tests.helpers.model_results import elastography_image
from tests.helpers.validate import assert_valid_dicom


class TestAlertImage:
    """The QA alert image is placed with the MR series it is about."""

    def test_alert_carries_source_modality_number_and_demo_marking(self) -> None:
        """Modality MR, the slice's InstanceNumber, "[NOT FOR CLINICAL USE]" in the description."""
        mr = make_mr(seed=2, instance_number=7)
        image = build_alert_image(["Result: low certainty"], mr, input_uid=str(mr.SOPInstanceUID),
                                  model_id="lge_qa", model_version="0.1.0-demo")
        back = assert_valid_dicom(image)
        assert back.Modality == "MR"
        assert back.InstanceNumber == 7
        assert back.SeriesDescription == "AI QA ALERT lge_qa [NOT FOR CLINICAL USE]"

    def test_alerts_of_later_slices_number_higher_and_clinical_models_are_unmarked(self) -> None:
        """Slices 3 and 5: alert numbers 3 and 5; a clinical model's alert has no demo marking."""
        numbers = []
        for n in (3, 5):
            mr = make_mr(seed=2, instance_number=n)
            image = build_alert_image(["x"], mr, input_uid=str(mr.SOPInstanceUID), model_id="m", model_version="1",
                                      not_for_clinical_use=False)
            numbers.append(int(image.InstanceNumber))
            assert "NOT FOR CLINICAL USE" not in image.SeriesDescription
        assert numbers == [3, 5]


class TestDerivedImage:
    """The elastography image is an US-family SC whose description keeps its marking whole."""

    def test_elastogram_is_us_with_source_number_and_whole_word_description(self) -> None:
        """Modality US, InstanceNumber of its B-mode, "NOT FOR DIAGNOSIS" and the demo marking kept."""
        case = elastography_image()
        _, sc = build_results(case.findings, case.sources, case.card, case.outputs, input_uid=case.input_uid,
                              kind=case.kind)
        back = assert_valid_dicom(sc)
        assert back.Modality == "US"
        assert back.InstanceNumber == case.sources[0].InstanceNumber
        description = str(back.SeriesDescription)
        assert len(description) <= 64 and description.startswith("AI NOT FOR DIAGNOSIS ")
        assert description.endswith(" [NOT FOR CLINICAL USE]")
        words = description.removesuffix(" [NOT FOR CLINICAL USE]").split()
        assert all(w in f"{case.card.name} {case.findings.images[0].description}" for w in words[4:])
        assert words[-1] in case.card.name.split() + case.findings.images[0].description.split()
