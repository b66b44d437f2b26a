"""The domain guard and the silent trial through the real listener, with storescp as PACS and console."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from models.findings import NOT_ASSESSED_TEXT
from sidecar.trial import render, summarise, trial_route_names
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr_series, write_series
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = pytest.mark.integration


REPO = Path(__file__).resolve().parents[2]


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _texts(ds: pydicom.Dataset) -> list[str]:
    out: list[str] = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


def _lge_conf() -> dict[str, object]:
    entry = yaml.safe_load((REPO / "conf" / "models.yaml").read_text())["models"]["lge_qa"]
    return {"weights": str((REPO / "conf" / entry["weights"]).resolve()), "sha256": entry["sha256"],
            "options": {"torch_threads": 1}}


def _destinations(pacs: StoreSCP, console: StoreSCP) -> list[dict[str, object]]:
    return [{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port, "ae_title": "PACS"},
            {"kind": "dicom", "name": "console", "host": "127.0.0.1", "port": console.port, "ae_title": "CONSOLE"}]


def _jobs_done(app: Any, series_uid: str) -> Callable[[], bool]:
    def done() -> bool:
        jobs = app.journal.jobs(series_uid)
        return bool(jobs) and all(j.state in ("done", "failed") for j in jobs)
    return done


class TestOutOfDomainLge:
    def test_foreign_mr_slice_gets_a_not_assessed_sr_and_no_alert(self, tmp_path: Path) -> None:
        """A vendor MR image that is no LGE slice comes back as an SR saying "not assessed"; no alert."""
        src = Path(str(get_testdata_file("MR_small.dcm")))
        ds = pydicom.dcmread(src)
        ds.SeriesDescription = "LGE PSIR SAX"  # headers that route it to lge_qa; pixels are a head MR
        files = write_series(tmp_path / "in", [ds], name=lambda d: "slice.dcm")
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs, \
                StoreSCP(tmp_path / "console", ae_title="CONSOLE") as console:
            routes = [{"name": "lge", "model": "lge_qa", "mode": "instance", "match": {"modality": ["MR"]},
                       "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 1.0}]
            cfg = write_config(tmp_path / "conf", routes=routes, models={"lge_qa": _lge_conf()},
                               destinations=_destinations(pacs, console),
                               alert_channels=[{"kind": "log"}, {"kind": "dicom", "destination": "console"}])
            with running_sidecar(cfg) as app:
                assert storescu(files, app.port, called_aet="SIDECAR").returncode == 0
                sr = pydicom.dcmread(pacs.wait_for_files(1, timeout=60)[0])
                series_uid = str(ds.SeriesInstanceUID)
                _wait(_jobs_done(app, series_uid))
                assert app.journal.alerts(series_uid) == []
                assert not [o for o in app.journal.outbox(series_uid) if o.destination == "console"]
            assert console.files() == []
        assert sr.Modality == "SR"
        assert any(NOT_ASSESSED_TEXT in t for t in _texts(sr)), _texts(sr)


class TestSilentTrial:
    def test_live_false_sends_nothing_and_keeps_would_be_alerts(self, tmp_path: Path) -> None:
        """A trial route runs the model, keeps its results and would-be alerts, and sends nothing."""
        series = make_mr_series(3, seed=808)  # the brightness model flags these as uncertain
        files = write_series(tmp_path / "in", series, name=lambda d: f"{d.SOPInstanceUID}.dcm")
        with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs, \
                StoreSCP(tmp_path / "console", ae_title="CONSOLE") as console:
            routes = [{"name": "trial", "model": "brightness", "mode": "instance", "match": {"modality": ["MR"]},
                       "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 1.0, "live": False}]
            cfg = write_config(tmp_path / "conf", routes=routes, destinations=_destinations(pacs, console),
                               alert_channels=[{"kind": "log"}, {"kind": "dicom", "destination": "console"}])
            with running_sidecar(cfg) as app:
                assert storescu(files, app.port, called_aet="SIDECAR").returncode == 0
                series_uid = str(series[0].SeriesInstanceUID)
                _wait(lambda: len(app.journal.jobs(series_uid)) == 3)
                _wait(_jobs_done(app, series_uid))
                jobs = app.journal.jobs(series_uid)
                alerts = app.journal.alerts(series_uid)
                outbox = app.journal.outbox(series_uid)
                kept = list((tmp_path / "conf" / "var").rglob("*.dcm"))
                (trial,) = summarise(app.journal.trial_rows(), trial_route_names(app.settings.routes))
            assert pacs.files() == [] and console.files() == []
        assert all(j.state == "done" for j in jobs)
        assert outbox == []
        assert alerts and all(key.startswith("trial:") and text.startswith("TRIAL, NOT SENT") for key, text, _ in alerts)
        assert len(kept) > len(files)  # the spooled inputs and the SRs kept in the results store
        assert trial.model_id == "brightness" and trial.jobs == trial.done == 3
        assert trial.alert_jobs == len({key.split(":")[2] for key, _, _ in alerts})
        assert len(trial.cases) == trial.alert_jobs and trial.latency_percentiles()["p50"] >= 0.0
        report = render([trial])
        assert "would-be alert rate" in report and series_uid not in report  # short UIDs only
