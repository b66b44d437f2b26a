"""The worker: a job in, durable results and outbox entries out; failures stay inside their job."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import pydicom
import pytest

from models.backends import BackendUnavailable
from models.findings import Classification, Findings
from sidecar.alerts.fanout import Alert, AlertFanout
from sidecar.journal import InstanceRecord, Job, Journal
from sidecar.pipeline.budgets import DecodeBudget
from sidecar.pipeline.failures import RetryPolicy
from sidecar.pipeline.lanes import Lane, Supervisor
from sidecar.pipeline.worker import Worker
from sidecar.routing.rules import Route
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.expect import present
from tests.helpers.models import BrightnessModel, FailingModel


class RecordingChannel:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class AlwaysUncertain(BrightnessModel):
    def predict(self, batch):
        f = super().predict(batch)
        items = tuple(Classification(c.label, c.probabilities, c.source, uncertain=True) for c in f.classifications)
        return Findings(f.model_id, f.model_version, classifications=items)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FlakyBackendModel(BrightnessModel):
    """Its backend is down for the first `down` calls (as Triton restarting), then answers."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def predict(self, batch):
        if self.down > 0:
            self.down -= 1
            raise BackendUnavailable("every endpoint refused the connection (test)")
        return super().predict(batch)


class LeakyModel(BrightnessModel):
    """Fails with a message quoting a patient attribute, as pydicom's value errors do."""

    def predict(self, batch):
        raise ValueError("Invalid value for DA: '1901-12-31' of Phantom^Patient")


class DoneEvents:
    """A JobObserver that lets a test wait for finished jobs without polling."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0
        self.all_done = threading.Event()

    def inferred(self, model_id: str, seconds: float) -> None:
        pass

    def finished(self, job: Job, findings: Findings, instance_numbers: Mapping[str, int | None]) -> None:
        self.done += 1
        if self.done >= self.n:
            self.all_done.set()


def _setup(tmp: Path, model_id: str, mode: str, outputs: list[str],
           clock: FakeClock | None = None) -> tuple[Journal, Route, list[pydicom.Dataset]]:
    j = Journal(f"sqlite:///{tmp / 'j.sqlite'}", clock=clock or FakeClock())
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
        assert j.failed_jobs()[0].reason == "RuntimeError in predict"  # a permanent failure, named by stage

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
        assert w.fanout.flush(10.0)
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
        assert present(j.job(present(series_job))).state == "queued"
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
        done = DoneEvents(2)
        w = Worker(j, {"brightness": BrightnessModel()}, [route, sr_route], tmp_path / "results", poll_s=0.05,
                   observer=done)
        w.start()
        try:
            assert done.all_done.wait(30.0)
        finally:
            w.stop()
        assert j.summary()["jobs"] == {"done": 2}
        assert [lane.name for lane in w.lanes()] == ["worker", "worker-streaming"]

    def test_lane_error_is_counted_backed_off_and_run_again(self) -> None:
        """An error escaping a lane's body (a journal that cannot write) is caught, counted and
        marks the lane down until the body runs again."""
        calls: list[int] = []

        def body(stop: threading.Event) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")

        lane = Lane("worker", body, backoff_initial_s=0.5, backoff_max_s=4.0)
        assert lane.run_boundary_once() is False
        assert lane.restarts == 1 and lane.failing and "ENOSPC" in lane.last_error
        assert lane.backoff_s() == 0.5
        assert lane.run_boundary_once() is True and not lane.failing

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_supervisor_restarts_a_lane_whose_thread_died(self) -> None:
        """A lane thread killed by a BaseException is started again and counted."""
        ran = threading.Event()
        runs: list[int] = []

        def body(stop: threading.Event) -> None:
            runs.append(1)
            if len(runs) == 1:
                raise SystemExit("the lane's thread dies")
            ran.set()
            stop.wait()

        lane = Lane("sender", body)
        sup = Supervisor([lane], check_s=3600.0)  # checked by hand below, not by its timer
        sup.start()
        try:
            lane.join(10.0)
            assert not lane.alive and not lane.status().up
            assert sup.check() == 1
            assert ran.wait(10.0)
            assert lane.status().up and lane.restarts == 1
        finally:
            sup.stop(10.0)

    def test_only_leases_of_held_jobs_are_renewed(self, tmp_path: Path) -> None:
        """A job no live lane holds keeps its old lease, so another claim can take it back."""
        clock = FakeClock()
        j, _, series = _setup(tmp_path, "brightness", "instance", ["sr"], clock)
        uid = str(series[0].SeriesInstanceUID)
        for ds in series:
            j.enqueue_job(series_uid=uid, instance_uid=str(ds.SOPInstanceUID), model_id="brightness",
                          model_version="1.0.0", revision=0, route="r", priority=0)
        a, b = j.claim_job(), j.claim_job()
        assert a is not None and b is not None
        j.renew_only(lambda: [a.id])
        clock.t += 20.0
        j.renew_leases()
        clock.t += 15.0  # past the 30 s lease of the job nobody holds, inside the renewed one
        again = j.claim_job()
        assert again is not None and again.id == b.id and again.attempts == 2


class TestFailures:
    def _job(self, j: Journal, series: list[pydicom.Dataset], mode: str = "series") -> int:
        uid = str(series[0].SeriesInstanceUID)
        inst = str(series[0].SOPInstanceUID) if mode == "instance" else ""
        jid = j.enqueue_job(series_uid=uid, instance_uid=inst, model_id="brightness", model_version="1.0.0",
                            revision=0, route="r", priority=0 if inst else 10)
        assert jid is not None
        return jid

    def test_backend_outage_delays_the_result_instead_of_failing_it(self, tmp_path: Path) -> None:
        """Backend down twice: the job is put back with growing backoff, then delivered."""
        clock = FakeClock()
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"], clock)
        jid = self._job(j, series)
        w = Worker(j, {"brightness": FlakyBackendModel(down=2)}, [route], tmp_path / "results",
                   retry=RetryPolicy(max_attempts=4, initial_s=2.0, max_s=60.0), clock=clock)
        [first] = w.run_once() or []
        assert first.outcome == "retry" and "BackendUnavailable" in first.reason
        job = j.job(jid)
        assert job is not None and job.state == "queued" and job.not_before == clock.t + 2.0
        assert w.run_once() is None  # not due yet
        clock.t += 2.0
        [second] = w.run_once() or []
        assert second.outcome == "retry" and present(j.job(jid)).not_before == clock.t + 4.0
        clock.t += 4.0
        [third] = w.run_once() or []
        assert third.ok and present(j.job(jid)).state == "done"
        assert len(j.outbox(str(series[0].SeriesInstanceUID))) == 1

    def test_transient_failures_end_in_quarantine_which_recover_leaves_alone(self, tmp_path: Path) -> None:
        """After max_attempts transient failures the job is quarantined, stays so through
        recover(), is listed with its reason, and runs again only when released by hand."""
        clock = FakeClock()
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"], clock)
        jid = self._job(j, series)
        model = FlakyBackendModel(down=3)
        w = Worker(j, {"brightness": model}, [route], tmp_path / "results",
                   retry=RetryPolicy(max_attempts=3, initial_s=1.0, max_s=1.0), clock=clock)
        outcomes = []
        for _ in range(3):
            outcomes.extend(w.run_once() or [])
            clock.t += 1.0
        assert [o.outcome for o in outcomes] == ["retry", "retry", "quarantined"]
        assert j.recover() == 0 and w.run_once() is None
        [q] = j.quarantined_jobs()
        assert q.id == jid and "quarantined after 3 attempts" in (q.reason or "")
        assert "BackendUnavailable" in (q.reason or "")
        assert j.release_quarantined(jid)
        [again] = w.run_once() or []
        assert again.ok

    def test_a_job_whose_worker_keeps_dying_is_quarantined_unrun(self, tmp_path: Path) -> None:
        """Claimed once more than max_attempts (each run ended by a crash, then recover()):
        quarantined without calling the model again."""
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"])
        jid = self._job(j, series)
        for _ in range(2):
            assert j.claim_job() is not None
            j.recover()  # as at start after the process died mid-job
        model = BrightnessModel()
        w = Worker(j, {"brightness": model}, [route], tmp_path / "results", retry=RetryPolicy(max_attempts=2))
        [o] = w.run_once() or []
        assert o.outcome == "quarantined" and model.calls == 0
        assert present(j.job(jid)).state == "quarantined"

    def test_permanent_failure_reason_quotes_no_patient_data(self, tmp_path: Path) -> None:
        """An exception quoting tag values is stored by type and stage only."""
        j, route, series = _setup(tmp_path, "brightness", "series", ["sr"])
        jid = self._job(j, series)
        [o] = Worker(j, {"brightness": LeakyModel()}, [route], tmp_path / "results").drain()
        job = j.job(jid)
        assert o.outcome == "failed" and job is not None and job.state == "failed"
        assert job.reason == "ValueError in predict"
        assert all("1901" not in e.detail and "Phantom" not in e.detail for e in j.events(job.series_uid))

    @pytest.mark.parametrize("frames", [1_000_000_000, 40_000])
    def test_decode_budget_is_checked_from_the_header_before_any_decode(self, tmp_path: Path, frames: int) -> None:
        """A slice whose header claims a huge decoded size fails permanently, unread by the model."""
        j, route, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        stored = j.instance(str(series[0].SOPInstanceUID))
        assert stored is not None
        ds = pydicom.dcmread(stored.path)
        ds.NumberOfFrames = frames
        ds.save_as(stored.path, enforce_file_format=True)
        jid = self._job(j, series, "instance")
        model = BrightnessModel()
        budget = DecodeBudget(max_instance_bytes=64 << 20, max_job_bytes=128 << 20)
        [o] = Worker(j, {"brightness": model}, [route], tmp_path / "results", budget=budget).drain()
        assert o.outcome == "failed" and "BudgetExceeded" in o.reason and "MiB" in o.reason
        assert model.calls == 0 and present(j.job(jid)).state == "failed"


class TestQuarantineCommand:
    def test_lists_and_releases_quarantined_jobs(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`sidecar quarantine` lists a quarantined job with its reason; --release queues it again."""
        from sidecar.__main__ import main
        from tests.helpers.sidecar import write_config

        cfg = write_config(tmp_path / "cfg")
        j = Journal(f"sqlite:///{tmp_path / 'cfg' / 'var' / 'journal.sqlite'}")
        ds = make_mr_series(1, seed=3)[0]
        j.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                         str(ds.StudyInstanceUID), "MR", str(tmp_path / "x.dcm"), 1))
        jid = j.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid="", model_id="brightness",
                            model_version="1.0.0", revision=0, route="brightness-mr", priority=10)
        assert jid is not None and j.quarantine_job(jid, "quarantined after 4 attempts; last: WorkerDied")
        j.close()
        assert main(["quarantine", "--config", str(cfg)]) == 0
        assert f"job {jid} brightness" in capsys.readouterr().out
        assert main(["status", "--config", str(cfg)]) == 0
        assert "quarantined jobs: 1" in capsys.readouterr().out
        assert main(["quarantine", "--config", str(cfg), "--release", str(jid)]) == 0
        assert main(["quarantine", "--config", str(cfg), "--release", str(jid)]) == 1  # no longer quarantined
        j = Journal(f"sqlite:///{tmp_path / 'cfg' / 'var' / 'journal.sqlite'}")
        job = j.job(jid)
        assert job is not None and job.state == "queued" and job.attempts == 0


class TestAlertsAhead:
    def test_slice_arriving_during_an_sr_build_is_alerted_before_the_builds_queued_ahead_of_it(
        self, tmp_path: Path,
    ) -> None:
        """The streaming lane: slices 1 and 2 are inferred and alerted together; slice 3, queued
        while slice 1's results are being built, is alerted right after that build, before
        slice 2's results are built. Every job ends done with its own SR and alert image."""
        j, route, _ = _setup(tmp_path, "brightness", "instance", ["sr", "alert"])
        series = make_mr_series(3, seed=7)
        uid = str(series[0].SeriesInstanceUID)
        for ds in series:
            p = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(p, enforce_file_format=True)
            j.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID), uid,
                                             str(ds.StudyInstanceUID), "MR", str(p), 1))
        order: list[str] = []
        names = {str(ds.SOPInstanceUID): f"slice {i + 1}" for i, ds in enumerate(series)}

        class Channel:
            def send(self, alert: Alert) -> None:
                order.append(f"alert {names[alert.instance_uid]}")

        fanout = AlertFanout([Channel()])
        w = Worker(j, {"brightness": AlwaysUncertain()}, [route], tmp_path / "results", fanout=fanout,
                   alert_destinations=["pacs"], max_batch=8)
        sops = list(names)

        def enqueue(sop: str) -> None:
            j.enqueue_job(series_uid=uid, instance_uid=sop, model_id="brightness", model_version="1.0.0",
                          revision=0, route="r", priority=0)

        enqueue(sops[0])
        enqueue(sops[1])
        real_finish = w._finish

        queued_before: dict[str, int] = {}

        def finish(job, model, rule, findings, datasets):  # the seam: slice 3 arrives mid-build
            assert fanout.flush(10.0)
            queued_before[names[job.instance_uid]] = len(j.outbox(uid))
            if job.instance_uid == sops[0]:
                enqueue(sops[2])
            n = real_finish(job, model, rule, findings, datasets)
            order.append(f"results {names[job.instance_uid]}")
            return n

        w._finish = finish  # type: ignore[method-assign]  # the seam under test
        outcomes = w.run_once(streaming_only=True) or []
        assert fanout.flush(10.0)
        assert sorted(o.ok for o in outcomes) == [True, True, True]
        assert order == ["alert slice 1", "alert slice 2", "results slice 1", "alert slice 3",
                         "results slice 2", "results slice 3"]
        assert len(j.outbox(uid)) == 6  # an SR and an alert image per slice
        # alert images are queued with their alerts, ahead of the SRs: before slice 2's SR is
        # built, the outbox holds the alert images of slices 1-3 and slice 1's SR
        assert queued_before == {"slice 1": 2, "slice 2": 4, "slice 3": 5}
        assert {present(j.job(o.job_id)).state for o in outcomes} == {"done"}
        assert w.run_once(streaming_only=True) is None
        assert w.held_jobs() == []


class TestPriority:
    def test_streaming_job_is_claimed_before_an_older_series_job(self, tmp_path: Path) -> None:
        """The queue is not FIFO across priorities: the slice queued last is claimed first."""
        j, _, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0",
                      revision=0, route="s", priority=10)
        slice_job = j.enqueue_job(series_uid=uid, instance_uid=str(series[0].SOPInstanceUID),
                                  model_id="brightness", model_version="1.0.0", revision=0, route="r", priority=0)
        claimed = j.claim_job()
        assert claimed is not None and claimed.id == slice_job

    def test_outbox_hands_out_streaming_results_before_older_series_results(self, tmp_path: Path) -> None:
        """A slice's result queued after a series SR is sent first."""
        j, _, series = _setup(tmp_path, "brightness", "instance", ["sr"])
        uid = str(series[0].SeriesInstanceUID)
        series_job = j.enqueue_job(series_uid=uid, instance_uid="", model_id="brightness", model_version="1.0.0",
                                   revision=0, route="s", priority=10)
        slice_job = j.enqueue_job(series_uid=uid, instance_uid=str(series[0].SOPInstanceUID),
                                  model_id="brightness", model_version="1.0.0", revision=0, route="r", priority=0)
        assert series_job is not None and slice_job is not None
        for _ in range(2):
            assert j.claim_job() is not None
        j.complete_job(series_job, [("pacs", "1.2.3.1", "/x/series.dcm")])
        j.complete_job(slice_job, [("pacs", "1.2.3.2", "/x/slice.dcm")])
        assert [o.sop_instance_uid for o in j.due_outbox("pacs")] == ["1.2.3.2", "1.2.3.1"]

    def test_fanout_sends_a_streaming_alert_before_series_alerts_waiting(self) -> None:
        """A channel busy with a series alert takes the slice's alert next, ahead of older series alerts."""
        release, busy = threading.Event(), threading.Event()
        got: list[str] = []

        class Slow:
            def send(self, alert: Alert) -> None:
                if not got:
                    busy.set()
                    assert release.wait(10.0)
                got.append(alert.key)

        def alert(key: str, instance_uid: str = "") -> Alert:
            return Alert("1.2.3", key, "m", "label", 0.5, ("x",), instance_uid=instance_uid)

        fanout = AlertFanout([Slow()])
        fanout.publish(alert("series-1"))
        assert busy.wait(10.0)  # the channel is sending series-1
        fanout.publish(alert("series-2"))
        fanout.publish(alert("slice", instance_uid="1.2.3.4"))
        release.set()
        assert fanout.flush(10.0)
        assert got == ["series-1", "slice", "series-2"]
