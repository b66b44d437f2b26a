"""What the result-writer tests share: model cards, findings builders and ways to read an SR back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pydicom import Dataset

from models.base import ModelCard
from models.findings import (
    Classification,
    Findings,
    ImageRef,
    Measurement,
)
from models.hand_joints.concepts import VOCABULARY as HAND_VOCABULARY
from models.lge_qa.concepts import VOCABULARY as LGE_VOCABULARY
from tests.helpers.validate import assert_valid_dicom

LGE_CARD = ModelCard(
    id="lge_qa",
    version="1.0.0",
    name="LGE CMR slice certainty",
    manufacturer="Sidecar demo models",
    intended_use="Flag LGE slices to repeat while the patient is in the scanner",
    labels=("certain", "uncertain"),
    vocabulary=LGE_VOCABULARY,
)
JSN_CARD = ModelCard(
    id="hand_joints",
    version="0.3.0",
    name="Hand joint space narrowing",
    manufacturer="Sidecar demo models",
    intended_use="Grade joint space narrowing on hand radiographs",
    labels=("0", "1", "2", "3"),
    vocabulary=HAND_VOCABULARY,
)
ELASTO_CARD = ModelCard(
    id="virtual_elasto",
    version="0.1.0",
    name="Virtual elastography",
    manufacturer="Sidecar demo models",
    intended_use="Synthetic elastography from B-mode",
    labels=("soft", "stiff"),
)


def ref(ds: Dataset, frame: int | None = None) -> ImageRef:
    """An ImageRef to `ds`."""
    return ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), frame)


def walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    """Every content item of an SR content tree, depth first."""
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def meanings(sr: Dataset) -> set[str]:
    """Concept name meanings and coded value meanings anywhere in the content tree."""
    found = set()
    for item in walk(sr.ContentSequence):
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if seq in item:
                found.add(str(item[seq][0].CodeMeaning))
    return found


def texts(sr: Dataset) -> list[str]:
    """Values of all TEXT content items."""
    return [str(i.TextValue) for i in walk(sr.ContentSequence) if i.ValueType == "TEXT"]


def measurement_items(sr: Dataset) -> list[Dataset]:
    """NUM items the report CONTAINS (not the image library's acquisition context)."""
    return [
        i
        for i in walk(sr.ContentSequence)
        if i.ValueType == "NUM" and i.RelationshipType == "CONTAINS"
    ]


def numbers(sr: Dataset) -> dict[str, float]:
    """Measurement values by concept name meaning."""
    return {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): float(
            i.MeasuredValueSequence[0].NumericValue
        )
        for i in measurement_items(sr)
    }


def referenced_sop_uids(sr: Dataset) -> set[str]:
    """SOP Instance UIDs referenced by IMAGE content items."""
    return {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in walk(sr.ContentSequence)
        if i.ValueType == "IMAGE"
    }


def written(ds: Dataset, tmp_path: Path, name: str) -> Dataset:
    """`ds` saved under tmp_path, validated, and read back strictly."""
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return assert_valid_dicom(path)


def dsrdump(path: Path) -> str:
    """dcmtk's rendering of an SR with long values in full."""
    exe = shutil.which("dsrdump")
    assert exe is not None, "dsrdump (Debian package dcmtk) is required to read our SRs"
    return subprocess.run(
        [exe, "+Pl", str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def lge_findings(mr: Dataset, *, uncertain: bool = True) -> Findings:
    """One LGE slice classified as uncertain, with one measurement."""
    return Findings(
        model_id="lge_qa",
        model_version="1.0.0",
        classifications=(
            Classification(
                label="uncertain",
                probabilities={"certain": 0.23, "uncertain": 0.77},
                source=ref(mr),
                uncertain=uncertain,
                finding_site="left ventricle",
            ),
        ),
        measurements=(Measurement("Enhanced myocardium fraction", 0.12, "1", ref(mr)),),
    )
