"""Virtual elastography through real peers: dcmtk storescu -> sidecar -> storescp, and Orthanc."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import SecondaryCaptureImageStorage

from models.checkpoint import sha256_of
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom
from train.phantoms.breast import demo_series
from train.phantoms.dicom_writer import write

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO_WEIGHTS = REPO / "models" / "elastography" / "weights" / "demo.pt"
needs_weights = pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason=f"demo weights missing: {DEMO_WEIGHTS}")


def _breast_routes(destination: str) -> list[dict[str, Any]]:
    """The bundled breast rules, with a short quiet time and the test's destination."""
    rules = yaml.safe_load((REPO / "conf" / "routes.yaml").read_text())["routes"]
    out = [copy.deepcopy(r) for r in rules if r["model"] == "breast_elastography"]
    for r in out:
        r.update(quiet_s=1.0, destinations=[destination])
    return out


def _write_series(folder: Path) -> list[Path]:
    return [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(demo_series(0))]


@needs_weights
class TestElastographyEndToEnd:
    def test_storescu_breast_series_returns_valid_sc_per_image_and_sr(self, tmp_path: Path) -> None:
        """Two B-mode images sent by dcmtk come back to a storescp PACS as two derived images
        (same study, new series, same geometry, referencing their source) and one SR."""
        files = _write_series(tmp_path / "in")
        sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in files)}
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            cfg = write_config(
                tmp_path / "conf",
                destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port,
                               "ae_title": "PACS"}],
                routes=_breast_routes("pacs"),
                models={"breast_elastography": {"weights": str(DEMO_WEIGHTS), "sha256": sha256_of(DEMO_WEIGHTS),
                                                "options": {"torch_threads": 1}}},
            )
            with running_sidecar(cfg):
                res = storescu(files, _port(cfg), called_aet="SIDECAR")
                assert res.returncode == 0, res.stderr
                received = pacs.wait_for_files(3, timeout=45)
        objects = [assert_valid_dicom(p) for p in received]
        srs = [o for o in objects if o.Modality == "SR"]
        scs = [o for o in objects if o.SOPClassUID == SecondaryCaptureImageStorage]
        assert len(srs) == 1 and len(scs) == 2
        study = next(iter(sources.values())).StudyInstanceUID
        for sc in scs:
            src = sources[sc.SourceImageSequence[0].ReferencedSOPInstanceUID]
            assert sc.StudyInstanceUID == study and sc.SeriesInstanceUID != src.SeriesInstanceUID
            assert (sc.Rows, sc.Columns) == (src.Rows, src.Columns)
            assert sc.SequenceOfUltrasoundRegions == src.SequenceOfUltrasoundRegions
            assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription
        assert "Tsukuba" in str(srs[0].ContentSequence)


@needs_weights
@pytest.mark.e2e
def test_derived_image_opens_and_previews_in_orthanc(tmp_path: Path) -> None:
    """Orthanc stores the derived elastography image and renders its preview as a PNG."""
    import torch

    from models.elastography.wrapper import build
    from sidecar.results import build_results
    from tests.helpers.orthanc import Orthanc

    torch.set_num_threads(2)
    src = demo_series(0)[0]
    model = build(DEMO_WEIGHTS, {})
    sc = build_results(model.predict(model.prepare([src])), [src], model.card, ["sc"],
                       input_uid=str(src.SOPInstanceUID), kind="series")[0]
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    with Orthanc() as orthanc:
        answer = orthanc.upload(path)
        assert answer["Status"] in {"Success", "AlreadyStored"}
        tags = orthanc.instance_tags(answer["ID"])
        assert tags["SOPInstanceUID"] == sc.SOPInstanceUID
        png = orthanc.rest("GET", f"/instances/{answer['ID']}/preview")
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"


def _port(cfg: Path) -> int:
    return int(yaml.safe_load((cfg / "sidecar.yaml").read_text())["port"])
