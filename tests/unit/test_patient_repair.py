"""Results never fail on an invalid patient-module value copied from the source (issue 13 case 6)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement

from models.findings import Classification, Findings, ImageRef
from sidecar.results import build_alert_image, build_sr
from sidecar.results.patient import repaired_source
from tests.helpers.dicom_factory import make_mr
from tests.helpers.model_results import lge_slice
from tests.helpers.validate import assert_valid_dicom

LEGACY_DATE = "1901-12-31"


def legacy_source(tmp_path: Path, **bad: tuple[str, str]) -> Dataset:
    """An MR slice written with invalid values (keyword -> (VR, value)) and read back as the spool does."""
    ds = make_mr(seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, (vr, value) in bad.items():
            ds[keyword] = DataElement(keyword, vr, value)
        path = tmp_path / "legacy.dcm"
        ds.save_as(path, enforce_file_format=True)
        return pydicom.dcmread(path)


def findings_for(ds: Dataset) -> Findings:
    ref = ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    return Findings("lge_qa", "0.1.0-demo", classifications=(
        Classification("low_certainty", {"high_certainty": 0.3, "low_certainty": 0.7}, source=ref, uncertain=True),))


def texts(sr: Dataset) -> list[str]:
    out = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                out.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


class TestRepairedSource:
    """repaired_source checks each copied attribute against its VR."""

    def test_valid_source_is_returned_unchanged(self) -> None:
        """Nothing to repair: the same object, no repairs."""
        ds = make_mr(seed=1)
        fixed, repairs = repaired_source(ds)
        assert fixed is ds and repairs == []

    def test_acr_nema_date_and_colon_time_are_reformatted_without_touching_the_source(self, tmp_path: Path) -> None:
        """"1901-12-31" -> "19011231", "12:30:05" -> "123005"; the source keeps its values."""
        ds = legacy_source(tmp_path, PatientBirthDate=("DA", LEGACY_DATE), StudyTime=("TM", "12:30:05"))
        fixed, repairs = repaired_source(ds)
        assert (fixed.PatientBirthDate, fixed.StudyTime) == ("19011231", "123005")
        assert ds.PatientBirthDate == LEGACY_DATE
        assert {(r.keyword, r.action) for r in repairs} == {("PatientBirthDate", "reformatted"),
                                                            ("StudyTime", "reformatted")}

    def test_unrecognisable_values_are_emptied_and_notes_never_quote_them(self, tmp_path: Path) -> None:
        """A date that is no date, and a sex that is not M/F/O, are left empty; notes name the keyword only."""
        ds = legacy_source(tmp_path, PatientBirthDate=("DA", "born 1901"), PatientSex=("CS", "male?"))
        fixed, repairs = repaired_source(ds)
        assert fixed.PatientBirthDate in ("", None) and fixed.PatientSex in ("", None)
        notes = " ".join(r.note() for r in repairs)
        assert "PatientBirthDate" in notes and "born 1901" not in notes and "male?" not in notes


class TestResultsStillGoOut:
    """The SR and the alert image are built, valid, and say what was repaired."""

    def test_legacy_birth_date_yields_a_valid_sr_that_says_so(self, tmp_path: Path) -> None:
        """PatientBirthDate "1901-12-31": the SR is built with 19011231 and a note naming the attribute."""
        ds = legacy_source(tmp_path, PatientBirthDate=("DA", LEGACY_DATE))
        sr = build_sr(findings_for(ds), [ds], lge_slice().card, input_uid=str(ds.SOPInstanceUID), kind="instance")
        back = assert_valid_dicom(sr)
        assert back.PatientBirthDate == "19011231"
        notes = texts(back)
        assert any("PatientBirthDate" in n for n in notes)
        assert not any(LEGACY_DATE in n for n in notes)

    def test_legacy_values_do_not_stop_the_alert_image(self, tmp_path: Path) -> None:
        """The QA alert image is built from a source with an invalid birth date and sex."""
        ds = legacy_source(tmp_path, PatientBirthDate=("DA", LEGACY_DATE), PatientSex=("CS", "male?"))
        image = build_alert_image(["AI QA ALERT", "low certainty"], ds, input_uid=str(ds.SOPInstanceUID),
                                  model_id="lge_qa", model_version="0.1.0-demo")
        back = assert_valid_dicom(image)
        assert back.PatientBirthDate == "19011231"


@pytest.mark.parametrize("value", ["1901.12.31", "19011231 ", "1901/12/31"])
def test_common_date_variants_are_repaired(value: str, tmp_path: Path) -> None:
    """Dotted, slashed and padded dates all become DICOM DA."""
    ds = legacy_source(tmp_path, PatientBirthDate=("DA", value))
    assert repaired_source(ds)[0].PatientBirthDate == "19011231"
