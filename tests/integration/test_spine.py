"""The spine end to end on loopback: dcmtk/pynetdicom in, test model, SR out to a real storescp."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from sidecar.dicom.status import StoreStatus
from tests.helpers.dcmtk import StoreSCP, echoscu, storescu
from tests.helpers.dicom_factory import make_mr_series, write_series
from tests.helpers.sidecar import running_sidecar, write_config
from tests.helpers.validate import assert_valid_dicom

pytestmark = pytest.mark.integration


def _write_series(folder: Path, n: int, seed: int = 1) -> list[Path]:
    return write_series(folder, make_mr_series(n, seed=seed), name=lambda ds: f"{ds.SOPInstanceUID}.dcm")


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


class TestSpine:
    def test_storescu_series_comes_back_as_valid_sr(self, tmp_path: Path) -> None:
        """A series sent by dcmtk storescu returns to a storescp PACS as one valid SR in the same study."""
        files = _write_series(tmp_path / "in", 4)
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            cfg = write_config(tmp_path / "conf", destinations=[
                {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"}])
            with running_sidecar(cfg) as app:
                assert echoscu(app.port, called_aet="SIDECAR").returncode == 0
                res = storescu(files, app.port, called_aet="SIDECAR")
                assert res.returncode == 0, res.stderr
                received = pacs.wait_for_files(1, timeout=20)
                sr = pydicom.dcmread(received[0])
                src = pydicom.dcmread(files[0])
                assert sr.Modality == "SR"
                assert sr.StudyInstanceUID == src.StudyInstanceUID
                assert_valid_dicom(received[0])
                series = app.journal.series(str(src.SeriesInstanceUID))
                assert series is not None and series.n_instances == 4 and series.state == "complete"
                _wait(lambda: app.journal.series_delivered(str(src.SeriesInstanceUID)))
                kinds = [e.kind for e in app.journal.events(str(src.SeriesInstanceUID))]
                for k in ("received_first", "routed", "complete", "inferred", "written", "sent"):
                    assert k in kinds

    def test_expected_count_completes_without_waiting_for_quiet_time(self, tmp_path: Path) -> None:
        """With ImagesInAcquisition known, the SR leaves well before the quiet time."""
        files = _write_series(tmp_path / "in", 3, seed=2)
        for p in files:
            ds = pydicom.dcmread(p)
            ds.ImagesInAcquisition = 3
            ds.save_as(p)
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            routes = [{"name": "b", "model": "brightness", "mode": "series", "match": {"modality": ["MR"]},
                       "destinations": ["pacs"], "quiet_s": 60}]
            cfg = write_config(tmp_path / "conf", routes=routes, destinations=[
                {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"}])
            with running_sidecar(cfg):
                assert storescu(files, pacs.port if False else _port(cfg), called_aet="SIDECAR").returncode == 0
                pacs.wait_for_files(1, timeout=10)

    def test_pynetdicom_duplicate_is_stored_once_and_acknowledged(self, tmp_path: Path) -> None:
        """A resent SOP Instance gets Success and is kept once."""
        ds = make_mr_series(1, seed=3)[0]
        cfg = write_config(tmp_path / "conf")
        with running_sidecar(cfg) as app:
            ae = AE(ae_title="SCU")
            ae.add_requested_context(MRImageStorage)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", app.port, ae_title="SIDECAR")
            assert assoc.is_established
            for _ in range(2):
                status = assoc.send_c_store(ds)
                assert status.Status == StoreStatus.SUCCESS
            assoc.release()
            series = app.journal.series(str(ds.SeriesInstanceUID))
            assert series is not None and series.n_instances == 1
            files = list((tmp_path / "conf" / "var" / "spool").rglob("*.dcm"))
            assert len(files) == 1


def _port(cfg: Path) -> int:
    import yaml

    return int(yaml.safe_load((cfg / "sidecar.yaml").read_text())["port"])


class TestPowerLoss:
    def test_spool_file_missing_from_journal_is_recorded_at_start(self, tmp_path: Path) -> None:
        """An acknowledged file whose journal commit was lost is re-recorded and reported at start."""
        files = _write_series(tmp_path / "in", 2, seed=9)
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
            cfg = write_config(tmp_path / "conf", destinations=[
                {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"}])
            spool = tmp_path / "conf" / "var" / "spool"
            for p in files:  # as the listener would have left them, with no journal row
                ds = pydicom.dcmread(p)
                dest = spool / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(p.read_bytes())
            with running_sidecar(cfg) as app:
                series = app.journal.series(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
                assert series is not None and series.n_instances == 2
                pacs.wait_for_files(1, timeout=20)
