"""A ninth model added from outside sidecar/ and models/ runs the whole loop (issue 12).

The toy model lives in tests/plugins/toy_contrast (its wrapper, card and ReportVocabulary) and is
named only in the test's conf/models.yaml (`factory:`) and routes.yaml. dcmtk's storescu sends a
flat MR slice to the real listener; the SR and the QA alert image come back to a real storescp,
worded by the toy's own card: its question, its label words, its alert advice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom
from tests.plugins.toy_contrast.concepts import IMAGE_CONTRAST

pytestmark = pytest.mark.integration


def _walk(items: list[Dataset]) -> list[Dataset]:
    out = []
    for item in items:
        out.append(item)
        out += _walk(list(item.get("ContentSequence", [])))
    return out


def test_toy_model_named_only_in_conf_gets_its_own_sr_and_alert(tmp_path: Path) -> None:
    """storescu in, SR and alert image out to storescp, in the toy model's own words."""
    ds = make_mr(seed=5)
    flat = np.full((int(ds.Rows), int(ds.Columns)), 500, dtype=np.uint16)
    flat[0, 0] = 501
    ds.PixelData = flat.tobytes()
    src = tmp_path / "in" / "flat.dcm"
    src.parent.mkdir()
    ds.save_as(src, enforce_file_format=True)
    with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
        dest = {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"}
        routes = [{"name": "toy", "model": "toy_contrast", "mode": "instance", "match": {"modality": ["MR"]},
                   "outputs": ["sr", "alert"], "destinations": ["pacs"]}]
        models = {"toy_contrast": {"factory": "tests.plugins.toy_contrast.wrapper:build", "options": {"threshold": 0.5}}}
        cfg = write_config(tmp_path / "conf", destinations=[dest], routes=routes, models=models,
                           alert_channels=[{"kind": "dicom", "destination": "pacs"}])
        with running_sidecar(cfg) as app:
            res = storescu([src], app.port, called_aet="SIDECAR")
            assert res.returncode == 0, res.stderr
            received = [pydicom.dcmread(p) for p in pacs.wait_for_files(2, timeout=60)]
    sr = next(r for r in received if r.Modality == "SR")
    alert = next(r for r in received if r.Modality != "SR")
    assert_valid_dicom(sr)
    items = _walk(list(sr.ContentSequence))
    meanings = {str(i.ConceptNameCodeSequence[0].CodeMeaning) for i in items}
    assert IMAGE_CONTRAST.meaning in meanings
    tracking = [str(i.TextValue) for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039"]
    assert any("flat contrast" in t for t in tracking)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    assert "Toy advice: check the window settings." in str(alert.ImageComments)
    assert alert.Modality == "MR"
