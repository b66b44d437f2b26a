"""Priority from the socket to the console (issue 15): a streaming slice overtakes series work.

A real sidecar (in process, worker lanes) receives a 200-image series for a series route whose
model is held inside its forward pass, then one slice for a streaming route with alerts. The
slice's alert must be raised while the series job is still running, and the slice's results
must be delivered before the series SR. Ordering is asserted, not timing: the series model
waits for the slice's alert (with a generous bound), so the test fails only if the slice
really queued behind the series work.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from sidecar.alerts.fanout import Alert
from sidecar.app import Seams
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.models import BrightnessModel
from tests.helpers.processes import wait_for
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N_SERIES_IMAGES = 200


class HeldSeriesModel(BrightnessModel):
    """The series model: inside predict until the slice's alert has been raised (or 120 s)."""

    alert_seen = threading.Event()
    running = threading.Event()

    def predict(self, batch):
        HeldSeriesModel.running.set()
        HeldSeriesModel.alert_seen.wait(120.0)
        return super().predict(batch)


class AlwaysAlert(BrightnessModel):
    def __init__(self) -> None:
        super().__init__(uncertain_band=(0.0, 1.0))  # every slice is uncertain: every slice alerts


def _held(weights: Path | None = None, options: dict[str, Any] | None = None) -> HeldSeriesModel:
    return HeldSeriesModel()


def _alerting(weights: Path | None = None, options: dict[str, Any] | None = None) -> AlwaysAlert:
    return AlwaysAlert()


def _send(port: int, datasets: list[Any]) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


def test_streaming_slice_behind_a_200_image_series_job_is_alerted_and_sent_first(tmp_path: Path) -> None:
    """Series job of 200 images running; the slice's alert is raised meanwhile and its results go out first."""
    HeldSeriesModel.alert_seen.clear()
    HeldSeriesModel.running.clear()
    big = make_mr_series(N_SERIES_IMAGES, seed=501, images_in_acquisition=N_SERIES_IMAGES)
    for ds in big:
        ds.SeriesDescription = "T1 VOLUME"
    [slice_ds] = make_mr_series(1, seed=502)
    out = tmp_path / "pacs"
    cfg = write_config(
        tmp_path / "cfg",
        destinations=[{"kind": "folder", "name": "pacs", "path": str(out)}],
        routes=[
            {"name": "lge", "model": "alerting", "mode": "instance",
             "match": {"modality": ["MR"], "description_regex": "LGE"}, "outputs": ["sr", "alert"],
             "destinations": ["pacs"], "quiet_s": 30},
            {"name": "volume", "model": "held", "mode": "series", "match": {"modality": ["MR"]},
             "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 30},
        ],
        models={"alerting": {}, "held": {}},
        alert_channels=[{"kind": "log"}],
    )
    raised: list[Alert] = []
    with running_sidecar(cfg, Seams(factories={"held": _held, "alerting": _alerting})) as app:
        class Watch:
            def send(self, alert: Alert) -> None:
                raised.append(alert)
                series_job = app.journal.jobs(str(big[0].SeriesInstanceUID))
                alert_states.append([j.state for j in series_job])
                HeldSeriesModel.alert_seen.set()

        alert_states: list[list[str]] = []
        app.fanout.add_channel(Watch())
        _send(app.port, big)
        assert HeldSeriesModel.running.wait(120.0), "the series job never started"
        _send(app.port, [slice_ds])
        assert HeldSeriesModel.alert_seen.wait(120.0), "the slice's alert waited behind the series job"
        assert alert_states[0] == ["running"], alert_states
        wait_for(lambda: app.journal.series_delivered(str(big[0].SeriesInstanceUID))
                 and app.journal.series_delivered(str(slice_ds.SeriesInstanceUID)), 120, "everything delivered")
        sent_at = {uid: min(e.at for e in app.journal.events(uid) if e.kind == "sent")
                   for uid in (str(slice_ds.SeriesInstanceUID), str(big[0].SeriesInstanceUID))}
    assert raised[0].instance_uid == str(slice_ds.SOPInstanceUID)
    assert sent_at[str(slice_ds.SeriesInstanceUID)] < sent_at[str(big[0].SeriesInstanceUID)]
