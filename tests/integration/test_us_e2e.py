"""Musculoskeletal ultrasound end to end: dcmtk storescu -> sidecar (bundled routes, demo weights)
-> SR at a dcmtk storescp PACS stand-in, validated with dciodvfy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from sidecar.settings import absolute_model_paths
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom
from train.phantoms import dicom_writer
from train.phantoms.joint_us import demo_series as synovitis_demo
from train.phantoms.mtp1 import demo_series as gout_demo

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "conf"
MODELS = ("synovitis_spd", "gout_mtp1")


def _bundled_models() -> dict[str, Any]:
    entries = yaml.safe_load((CONF / "models.yaml").read_text())["models"]
    out = {}
    for model_id in MODELS:
        entry = absolute_model_paths(entries[model_id], CONF)  # weights and ONNX file: the bundled ones
        entry["options"] = {"torch_threads": 1}
        out[model_id] = entry
    return out


def _bundled_routes() -> list[dict[str, Any]]:
    routes = yaml.safe_load((CONF / "routes.yaml").read_text())["routes"]
    keep = [r for r in routes if r["model"] in MODELS]
    for r in keep:
        r["quiet_s"] = 1.0
        r["destinations"] = ["pacs"]
    return keep


def _text_values(sr: pydicom.Dataset) -> set[str]:
    """Every string value in the SR (the device observer's model name is the model id)."""
    return {str(e.value) for e in sr.iterall() if isinstance(e.value, str)}


class TestUltrasoundEndToEnd:
    def test_power_doppler_joint_and_mtp1_images_come_back_as_valid_srs(self, tmp_path: Path) -> None:
        """A PD joint still and an MTP1 still sent by storescu each come back as an SR of their model."""
        inputs = []
        for name, ds in (("joint", synovitis_demo(seed=3)[0]), ("mtp1", gout_demo(seed=3)[0])):
            inputs.append(dicom_writer.write(ds, tmp_path / "in" / f"{name}.dcm"))
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            cfg = write_config(tmp_path / "conf", routes=_bundled_routes(), models=_bundled_models(),
                               destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1",
                                              "port": pacs.port, "ae_title": "PACS"}])
            with running_sidecar(cfg) as app:
                assert set(MODELS) <= set(app.models), app.unavailable
                res = storescu(inputs, app.port, called_aet="SIDECAR")
                assert res.returncode == 0, res.stderr
                received = pacs.wait_for_files(2, timeout=40)
        srs = [assert_valid_dicom(path) for path in received]
        assert all(sr.Modality == "SR" for sr in srs)
        for path, model in zip(inputs, MODELS, strict=True):
            src = pydicom.dcmread(path)
            mine = [sr for sr in srs if model in _text_values(sr)]
            assert len(mine) == 1, f"no SR of {model}"
            assert mine[0].StudyInstanceUID == src.StudyInstanceUID
