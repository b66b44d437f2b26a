"""Hand radiographs end to end: dcmtk storescu -> sidecar (demo weights) -> storescp gets SR + GSPS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from models.checkpoint import sha256_of
from models.hand_joints import joints as J
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom
from train.phantoms.dicom_writer import write
from train.phantoms.hand import hand_image

pytestmark = pytest.mark.integration

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "hand_joints" / "weights" / "demo.pt"
HAND_ROUTE = {"name": "hand-joints-by-body-part", "model": "hand_joints", "mode": "series",
              "match": {"modality": ["CR", "DX"], "body_part": ["HAND"]}, "outputs": ["sr", "gsps"],
              "destinations": ["pacs"], "quiet_s": 1.0}


def _radiographs(folder: Path) -> list[Path]:
    """A left-hand MONOCHROME1 CR (RA) and a both-hands MONOCHROME2 DX, one series each."""
    paths = []
    cases: tuple[tuple[int, dict[str, Any]], ...] = (
        (902_001, {"laterality": "L", "n_hands": 1, "monochrome1": True, "modality": "CR", "disease": "RA"}),
        (902_002, {"n_hands": 2, "monochrome1": False, "modality": "DX", "disease": "OA"}))
    for seed, kwargs in cases:
        ds = hand_image(seed, **kwargs).dataset
        ds.ImagesInAcquisition = 1
        paths.append(write(ds, folder / f"{seed}.dcm"))
    return paths


class TestHandEndToEnd:
    def test_storescu_radiographs_come_back_as_valid_sr_and_gsps(self, tmp_path: Path) -> None:
        """Each hand series returns to the PACS as one SR and one GSPS, valid, about its image."""
        files = _radiographs(tmp_path / "in")
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            cfg = write_config(
                tmp_path / "conf", routes=[HAND_ROUTE],
                models={"hand_joints": {"weights": str(DEMO_WEIGHTS), "sha256": sha256_of(DEMO_WEIGHTS),
                                        "options": {"torch_threads": 1}}},
                destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port,
                               "ae_title": "PACS"}])
            with running_sidecar(cfg) as app:
                res = storescu(files, app.port, called_aet="SIDECAR")
                assert res.returncode == 0, res.stderr
                received = pacs.wait_for_files(4, timeout=45)
        sources = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in files}
        by_modality: dict[str, list[pydicom.Dataset]] = {"SR": [], "PR": []}
        for path in received:
            ds = assert_valid_dicom(path)
            by_modality[str(ds.Modality)].append(ds)
        assert len(by_modality["SR"]) == 2 and len(by_modality["PR"]) == 2
        for pr in by_modality["PR"]:
            ref = pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            src = sources[str(ref)]
            assert pr.StudyInstanceUID == src.StudyInstanceUID
            ann = pr.GraphicAnnotationSequence[0]
            pts = np.concatenate([np.asarray(o.GraphicData, dtype=float).reshape(-1, 2)
                                  for o in ann.GraphicObjectSequence])
            assert (pts >= 0).all() and (pts[:, 0] <= src.Columns).all() and (pts[:, 1] <= src.Rows).all()
            texts = [t.UnformattedTextValue for t in ann.TextObjectSequence]
            if src.ImageLaterality == "B":  # OA indication: KL joints of both hands
                assert any(t.startswith("R ") for t in texts) and any(t.startswith("L ") for t in texts)
                assert all(" KL " in t for t in texts) and len(texts) > len(J.SCHEME_JOINTS[J.KL])
            else:  # RA indication, left hand: SHS joints
                assert all(t.startswith("L ") and "SHS JSN" in t for t in texts)
        for sr in by_modality["SR"]:
            assert sr.StudyInstanceUID in {s.StudyInstanceUID for s in sources.values()}
