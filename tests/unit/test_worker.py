"""The worker: a job in, durable results and outbox entries out; failures stay inside their job."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from models.findings import Classification, Findings
from sidecar.alerts.fanout import Alert, AlertFanout
from sidecar.journal import InstanceRecord, Journal
from sidecar.pipeline.worker import Worker
from sidecar.routing.rules import Route
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.models import BrightnessModel, FailingModel


class RecordingChannel:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class AlwaysUncertain(BrightnessModel):
    def predict(self, batch):  # type: ignore[no-untyped-def]
        f = super().predict(batch)
        items = tuple(Classification(c.label, c.probabilities, c.source, uncertain=True) for c in f.classifications)
        return Findings(f.model_id, f.model_version, classifications=items)


def _setup(tmp: Path, model_id: str, mode: str, outputs: list[str]) -> tuple[Journal, Route, list[pydicom.Dataset]]:
    j = Journal(f"sqlite:///{tmp / 'j.sqlite'}")
    route = Route.model_validate({"name": "r", "model": model_id, "mode": mode, "outputs": outputs,
                                  "destinations": ["pacs"]})
    series = make_mr_series(2, seed=1)
    for ds in series:
        p = tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        j.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                         str(ds.StudyInstanceUID), "MR", str(p), 1))
    return j, route, series


class TestWorker:
    def test_series_job_writes_sr_and_queues_it(self, tmp_path: Path) -> None:
        """A series job leaves one durable SR file and one outbox entry per destination."""
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0", revision=0,
                      route="r", priority=10)
        w = Worker(j, {"brightness": BrightnessModel()}, [route], tmp_path / "results")
        [outcome] = w.drain()
        assert outcome.ok and outcome.n_results == 1
        [item] = j.outbox(uid)
        sr = pydicom.dcmread(item.path)
        assert sr.Modality == "SR" and str(sr.SOPInstanceUID) == item.sop_instance_uid

    def test_failing_model_fails_its_job_and_worker_goes_on(self, tmp_path: Path) -> None:
        """One job's exception is recorded with its reason; the next job still runs."""
        j, route, series = _setup(tmp_path, "failing", "series", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        good = Route.model_validate({"name": "g", "model": "brightness", "destinations": ["pacs"]})
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="failing", model_version="1.0.0", revision=0,
                      route="r", priority=10)
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0", revision=0,
                      route="g", priority=10)
        w = Worker(j, {"failing": FailingModel(), "brightness": BrightnessModel()}, [route, good],
                   tmp_path / "results")
        outcomes = w.drain()
        assert [o.ok for o in outcomes] == [False, True]
        assert "exploded on purpose" in (j.failed_jobs()[0].reason or "")

    def test_version_mismatch_fails_clearly(self, tmp_path: Path) -> None:
        """A job queued for another model version is failed, not run with the wrong weights."""
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="0.9", revision=0,
                      route="r", priority=10)
        [o] = Worker(j, {"brightness": BrightnessModel()}, [route], tmp_path / "results").drain()
        assert not o.ok and "0.9" in o.reason

    def test_rerun_of_a_job_does_not_duplicate_results_or_alerts(self, tmp_path: Path) -> None:
        """Running the same instance job twice (crash before done) queues one SR and one alert."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr", "alert"])
        uid = str(series[0].SeriesInstanceUID)
        sop = str(series[0].SOPInstanceUID)
        channel = RecordingChannel()
        w = Worker(j, {"brightness": AlwaysUncertain()}, [route], tmp_path / "results",
                   alert_destinations=["pacs"], fanout=AlertFanout([channel]))
        jid = j.enqueue_job(series_uid=uid, instance_uid=sop, model_id="brightness", model_version="1.0.0",
                            revision=0, route="r", priority=0)
        job = j.claim_job()
        assert job is not None and job.id == jid
        w.run_job(job)
        w.run_job(job)  # as if the first run's completion had been lost
        sops = [i.sop_instance_uid for i in j.outbox(uid)]
        assert len(sops) == len(set(sops)) == 2  # the SR and the alert image
        time.sleep(0.2)
        assert len(channel.alerts) == 1
        alert = channel.alerts[0]
        assert "Phantom" not in " ".join(alert.lines)
        assert isinstance(alert.lines, tuple) and alert.label in ("bright", "dark")
        assert alert.instance_number == int(series[0].InstanceNumber)


class TestBatching:
    def test_queued_streaming_jobs_run_in_one_forward(self, tmp_path: Path) -> None:
        """Slices queued behind each other share one predict call and keep their own SRs."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        for ds in series:
            j.enqueue_job(series_uid=uid, instance_uid=str(ds.SOPInstanceUID), model_id="brightness",
                          model_version="1.0.0", revision=0, route="r", priority=0)
        model = BrightnessModel()
        outcomes = Worker(j, {"brightness": model}, [route], tmp_path / "results", max_batch=8).drain()
        assert [o.ok for o in outcomes] == [True, True] and model.calls == 1
        for item, ds in zip(j.outbox(uid), series, strict=True):
            sr = pydicom.dcmread(item.path)
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            refs = {str(x.ReferencedSOPInstanceUID) for x in evidence.ReferencedSOPSequence}
            assert refs == {str(ds.SOPInstanceUID)}

    def test_batch_error_falls_back_to_single_jobs(self, tmp_path: Path) -> None:
        """A slice that breaks the batch fails alone; the other slice still gets its result."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        broken = j.instance(str(series[1].SOPInstanceUID))
        assert broken is not None
        Path(broken.path).write_bytes(b"garbage, not DICOM")
        for ds in series:
            j.enqueue_job(series_uid=uid, instance_uid=str(ds.SOPInstanceUID), model_id="brightness",
                          model_version="1.0.0", revision=0, route="r", priority=0)
        outcomes = Worker(j, {"brightness": BrightnessModel()}, [route], tmp_path / "results").drain()
        assert sorted(o.ok for o in outcomes) == [False, True]
        assert len(j.outbox(uid)) == 1


class TestLanes:
    def test_streaming_lane_takes_only_instance_jobs(self, tmp_path: Path) -> None:
        """The streaming lane leaves a queued series job alone and runs the slice behind it."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        sr_route = Route.model_validate({"name": "s", "model": "brightness", "destinations": ["pacs"]})
        series_job = j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0",
                                   revision=0, route="s", priority=-1)  # even if it were more urgent
        slice_job = j.enqueue_job(series_uid=uid, instance_uid=str(series[0].SOPInstanceUID),
                                  model_id="brightness", model_version="1.0.0", revision=0, route="r", priority=0)
        w = Worker(j, {"brightness": BrightnessModel()}, [route, sr_route], tmp_path / "results")
        [outcome] = w.run_once(streaming_only=True) or []
        assert outcome.job_id == slice_job
        assert j.job(series_job).state == "queued"  # type: ignore[arg-type,union-attr]
        assert w.run_once(streaming_only=True) is None

    def test_started_worker_runs_both_kinds_and_stops(self, tmp_path: Path) -> None:
        """Started, the two lanes finish a series job and a slice job; stop joins them."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        sr_route = Route.model_validate({"name": "s", "model": "brightness", "destinations": ["pacs"]})
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0",
                      revision=0, route="s", priority=10)
        j.enqueue_job(series_uid=uid, instance_uid=str(series[0].SOPInstanceUID), model_id="brightness",
                      model_version="1.0.0", revision=0, route="r", priority=0)
        w = Worker(j, {"brightness": BrightnessModel()}, [route, sr_route], tmp_path / "results", poll_s=0.05)
        w.start()
        try:
            deadline = time.monotonic() + 20
            while j.summary()["jobs"].get("done", 0) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            w.stop()
        assert j.summary()["jobs"] == {"done": 2}
