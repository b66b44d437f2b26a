"""Series assembly with a fake clock: routing, streaming jobs, completion rules, late instances."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from sidecar.assembly.assembler import PRIORITY_INSTANCE, PRIORITY_SERIES, SeriesAssembler
from sidecar.assembly.timers import FakeTimers
from sidecar.dicom.headers import read_header
from sidecar.handoff import AssociationReleased, InstanceReceived
from sidecar.journal import InstanceRecord, Journal
from sidecar.journal.sqlite import SqliteBackend
from sidecar.routing.rules import Route
from tests.helpers.dicom_factory import make_mr_series, make_us
from tests.helpers.expect import present
from tests.helpers.journal_fakes import FailingConnection, FailingJournal, failing_connect


class Harness:
    def __init__(self, tmp: Path, routes: list[Route], versions: dict[str, str] | None = None) -> None:
        self.timers = FakeTimers()
        self.journal = Journal(f"sqlite:///{tmp / 'j.sqlite'}", clock=self.timers.now)
        self.tmp = tmp
        self.queued = 0
        self.asm = SeriesAssembler(self.journal, routes, {}, versions or {"brightness": "1"}, self.timers,
                                   on_job_queued=self._q)

    def _q(self) -> None:
        self.queued += 1

    def receive(self, ds: Dataset, calling_ae: str = "CONSOLE") -> None:
        path = self.tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        h = read_header(ds)
        rec = self.journal.record_instance(InstanceRecord(
            h.sop_instance_uid, h.sop_class_uid, h.series_uid, h.study_uid, h.modality, str(path), 1,
            calling_ae, h.expected_count))
        if rec.new:
            self.asm.on_instance(InstanceReceived(h, str(path), rec, calling_ae))
        self.asm.process_pending()
        self.timers.advance(0.5)


def _route(**kw: object) -> Route:
    base: dict[str, object] = {"name": "r", "model": "brightness", "mode": "series",
                               "match": {"modality": ["MR"]}, "quiet_s": 10}
    base.update(kw)
    return Route.model_validate(base)


class TestCompletion:
    def test_quiet_time_completes_series_once(self, tmp_path: Path) -> None:
        """No new instance for quiet_s: complete, and one series job queued."""
        h = Harness(tmp_path, [_route()])
        series = make_mr_series(3, seed=1)
        for ds in series:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.timers.advance(9.0)
        assert present(h.journal.series(uid)).state == "receiving"
        h.timers.advance(1.1)
        assert present(h.journal.series(uid)).state == "complete"
        jobs = h.journal.jobs(uid)
        assert [(j.instance_uid, j.priority, j.revision) for j in jobs] == [("", PRIORITY_SERIES, 0)]

    def test_each_instance_restarts_the_quiet_timer(self, tmp_path: Path) -> None:
        """The quiet time counts from the last instance, not the first."""
        h = Harness(tmp_path, [_route(quiet_s=5)])
        series = make_mr_series(4, seed=2)
        for ds in series:
            h.receive(ds)
            h.timers.advance(4.0)
        assert present(h.journal.series(str(series[0].SeriesInstanceUID))).state == "receiving"
        h.timers.advance(1.0)
        assert present(h.journal.series(str(series[0].SeriesInstanceUID))).state == "complete"

    def test_route_expected_count_completes_immediately(self, tmp_path: Path) -> None:
        """A route's expected_count completes the series at the last instance without waiting."""
        h = Harness(tmp_path, [_route(expected_count=2, quiet_s=100)])
        series = make_mr_series(2, seed=3)
        for ds in series:
            h.receive(ds)
        assert present(h.journal.series(str(series[0].SeriesInstanceUID))).state == "complete"

    def test_single_multiframe_object_is_a_whole_series(self, tmp_path: Path) -> None:
        """NumberOfFrames > 1 in one object means the series is complete on arrival."""
        h = Harness(tmp_path, [_route(match={"modality": ["US"]}, quiet_s=100)])
        ds = make_us(seed=4)
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
        h.receive(ds)
        assert present(h.journal.series(str(ds.SeriesInstanceUID))).state == "complete"

    def test_release_completes_when_route_says_so(self, tmp_path: Path) -> None:
        """complete_on_release ends the series when the association is released."""
        h = Harness(tmp_path, [_route(complete_on_release=True, quiet_s=100)])
        series = make_mr_series(2, seed=5)
        for ds in series:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.asm.on_release(AssociationReleased("CONSOLE", frozenset({uid})))
        h.asm.process_pending()
        assert present(h.journal.series(uid)).state == "complete"

    def test_late_instance_gives_a_superseding_revision(self, tmp_path: Path) -> None:
        """An instance after completion re-opens the series and queues revision 1."""
        h = Harness(tmp_path, [_route(quiet_s=2)])
        series = make_mr_series(3, seed=6)
        for ds in series[:2]:
            h.receive(ds)
        h.timers.advance(3)
        h.receive(series[2])
        h.timers.advance(3)
        uid = str(series[0].SeriesInstanceUID)
        assert [j.revision for j in h.journal.jobs(uid)] == [0, 1]


class TestRouting:
    def test_instance_mode_queues_a_streaming_job_per_instance(self, tmp_path: Path) -> None:
        """Streaming routes queue one high-priority job per instance as it arrives."""
        h = Harness(tmp_path, [_route(mode="instance")])
        series = make_mr_series(3, seed=7)
        for ds in series:
            h.receive(ds)
        jobs = h.journal.jobs(str(series[0].SeriesInstanceUID))
        assert len(jobs) == 3 and all(j.priority == PRIORITY_INSTANCE and j.instance_uid for j in jobs)
        assert h.queued == 3

    def test_unmatched_series_is_kept_unrouted(self, tmp_path: Path) -> None:
        """No rule matches: the series is marked unrouted and nothing is queued."""
        h = Harness(tmp_path, [_route(match={"modality": ["CT"]})])
        ds = make_mr_series(1, seed=8)[0]
        h.receive(ds)
        h.timers.advance(100)
        assert present(h.journal.series(str(ds.SeriesInstanceUID))).state == "unrouted"
        assert h.journal.jobs(str(ds.SeriesInstanceUID)) == []

    def test_route_of_unavailable_model_is_skipped(self, tmp_path: Path) -> None:
        """A route whose model is not loaded is passed over for the next rule."""
        h = Harness(tmp_path, [_route(name="a", model="missing"), _route(name="b")])
        ds = make_mr_series(1, seed=9)[0]
        h.receive(ds)
        assert present(h.journal.series(str(ds.SeriesInstanceUID))).route == "b"

    def test_recover_rearms_timers_and_requeues(self, tmp_path: Path) -> None:
        """After a restart, a receiving series still completes and its job is queued once."""
        h = Harness(tmp_path, [_route(quiet_s=5)])
        series = make_mr_series(2, seed=10)
        for ds in series:
            h.receive(ds)
        fresh = SeriesAssembler(h.journal, [_route(quiet_s=5)], {}, {"brightness": "1"}, h.timers)
        h.timers.cancel(str(series[0].SeriesInstanceUID))  # the old process's timer died with it
        fresh.recover()
        h.timers.advance(6)
        uid = str(series[0].SeriesInstanceUID)
        assert present(h.journal.series(uid)).state == "complete"
        fresh.recover()
        assert len(h.journal.jobs(uid)) == 1

    def test_replay_queues_a_new_revision(self, tmp_path: Path) -> None:
        """Replay bumps the revision and queues the series job again."""
        h = Harness(tmp_path, [_route(quiet_s=1)])
        ds = make_mr_series(1, seed=11)[0]
        h.receive(ds)
        h.timers.advance(2)
        uid = str(ds.SeriesInstanceUID)
        assert h.asm.replay(uid) == 1
        assert [j.revision for j in h.journal.jobs(uid)] == [0, 1]
        with pytest.raises(KeyError):
            h.asm.replay("9.9.9")


class TestShortSeries:
    """A series short of its known expected count gets one result (issue 13 case 7)."""

    def test_quiet_time_alone_does_not_complete_a_short_series(self, tmp_path: Path) -> None:
        """7 of 10 (ImagesInAcquisition): still receiving after quiet_s; the rest completes it once."""
        h = Harness(tmp_path, [_route(quiet_s=10)])
        series = make_mr_series(10, seed=20, images_in_acquisition=10)
        for ds in series[:7]:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.timers.advance(50)
        assert present(h.journal.series(uid)).state == "receiving"
        for ds in series[:7]:  # the sender resends what it sent before its crash: nothing changes
            h.receive(ds)
        for ds in series[7:]:
            h.receive(ds)
        h.timers.advance(200)
        row = h.journal.series(uid)
        assert row is not None and row.state == "complete" and row.revision == 0
        assert [(j.instance_uid, j.revision) for j in h.journal.jobs(uid)] == [("", 0)]

    def test_short_series_is_completed_after_the_grace(self, tmp_path: Path) -> None:
        """Default grace 10 x quiet_s: complete after it, not before; one job."""
        h = Harness(tmp_path, [_route(quiet_s=5)])
        series = make_mr_series(3, seed=21, images_in_acquisition=10)
        for ds in series:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.timers.advance(48)
        assert present(h.journal.series(uid)).state == "receiving"
        h.timers.advance(2)
        assert present(h.journal.series(uid)).state == "complete"
        assert len(h.journal.jobs(uid)) == 1
        assert any("short of the expected count" in e.detail for e in h.journal.events(uid))

    def test_route_short_grace_s_sets_the_wait(self, tmp_path: Path) -> None:
        """short_grace_s on the route replaces the 10 x quiet_s default."""
        h = Harness(tmp_path, [_route(quiet_s=5, expected_count=4, short_grace_s=20)])
        series = make_mr_series(2, seed=22)
        for ds in series:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.timers.advance(18)
        assert present(h.journal.series(uid)).state == "receiving"
        h.timers.advance(2)
        assert present(h.journal.series(uid)).state == "complete"

    def test_series_without_expected_count_keeps_the_quiet_time(self, tmp_path: Path) -> None:
        """No expected count known: the quiet time alone completes it, as before."""
        h = Harness(tmp_path, [_route(quiet_s=5)])
        series = make_mr_series(2, seed=23)
        for ds in series:
            h.receive(ds)
        h.timers.advance(5)
        assert present(h.journal.series(str(series[0].SeriesInstanceUID))).state == "complete"


class TestStreamingRecovery:
    """Every journalled slice of an instance-mode route gets exactly one job (issue 13 case 4)."""

    def _two_slices_one_handled(self, tmp_path: Path) -> tuple[Harness, str]:
        h = Harness(tmp_path, [_route(mode="instance", expected_count=2)])
        series = make_mr_series(2, seed=30)
        items = []
        for ds in series:  # both acknowledged (journalled) before the assembler ran
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            hd = read_header(ds)
            rec = h.journal.record_instance(InstanceRecord(
                hd.sop_instance_uid, hd.sop_class_uid, hd.series_uid, hd.study_uid, hd.modality, str(path), 1,
                "CONSOLE", hd.expected_count))
            items.append(InstanceReceived(hd, str(path), rec, "CONSOLE"))
        h.asm.on_instance(items[0])  # the assembler handled one, then the process was killed
        h.asm.process_pending()
        uid = str(series[0].SeriesInstanceUID)
        assert present(h.journal.series(uid)).state == "complete"
        return h, uid

    def test_recover_queues_the_slice_the_crash_left_unqueued(self, tmp_path: Path) -> None:
        """Expected count reached, one slice handled: a fresh recover() queues the other."""
        h, uid = self._two_slices_one_handled(tmp_path)
        assert len(h.journal.jobs(uid)) == 1
        fresh = SeriesAssembler(h.journal, list(h.asm.routes.values()), {}, {"brightness": "1"}, h.timers)
        fresh.recover()
        jobs = h.journal.jobs(uid)
        assert sorted(j.instance_uid for j in jobs) == sorted(i.sop_instance_uid for i in h.journal.instances(uid))
        assert all(j.priority == PRIORITY_INSTANCE for j in jobs)

    def test_recover_is_idempotent(self, tmp_path: Path) -> None:
        """Recovering twice, or after the slice was handled, queues nothing more."""
        h, uid = self._two_slices_one_handled(tmp_path)
        for _ in range(2):
            SeriesAssembler(h.journal, list(h.asm.routes.values()), {}, {"brightness": "1"}, h.timers).recover()
        assert len(h.journal.jobs(uid)) == 2


class TestPriority:
    """A streaming slice is handled ahead of queued series-mode instances (issue 15)."""

    def test_streaming_slice_is_queued_before_the_series_backlog(self, tmp_path: Path) -> None:
        """Behind 40 queued instances of a series-mode series, the slice's job is queued first."""
        routes = [_route(name="stream", mode="instance", match={"modality": ["MR"], "series_description_regex": "^STREAMED$"}),
                  _route(name="bulk", mode="series")]
        h = Harness(tmp_path, routes)
        seen: list[int] = []
        h.asm = SeriesAssembler(h.journal, routes, {}, {"brightness": "1"}, h.timers,
                                on_job_queued=lambda: seen.append(h.asm.pending()))
        bulk = make_mr_series(41, seed=40)
        h.receive(bulk[0])  # the bulk series is routed (series mode)
        slice_ = make_mr_series(1, seed=41)[0]
        slice_.SeriesDescription = "STREAMED"
        for ds in [*bulk[1:], slice_]:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            hd = read_header(ds)
            rec = h.journal.record_instance(InstanceRecord(
                hd.sop_instance_uid, hd.sop_class_uid, hd.series_uid, hd.study_uid, hd.modality, str(path), 1,
                "CONSOLE", hd.expected_count))
            h.asm.on_instance(InstanceReceived(hd, str(path), rec, "CONSOLE"))
        assert h.asm.pending() == 41
        assert h.asm.process_pending() == 41
        assert seen == [41]  # when its job was queued: the slice itself (in hand) and all 40 still waiting
        assert present(h.journal.series(str(slice_.SeriesInstanceUID))).route == "stream"


class TestJournalFailures:
    """A journal write that fails is retried, never dropped."""

    def _harness(self, tmp_path: Path, routes: list[Route]) -> tuple[Harness, FailingConnection]:
        h = Harness(tmp_path, routes)
        url = f"sqlite:///{tmp_path / 'f.sqlite'}"
        connect, opened = failing_connect()
        h.journal = Journal(url, clock=h.timers.now, backend=SqliteBackend(url, connect=connect), heartbeat_s=0)
        h.asm = SeriesAssembler(h.journal, routes, {}, {"brightness": "1"}, h.timers, on_job_queued=h._q)
        return h, opened[0]

    def test_instance_is_handled_once_the_journal_takes_writes_again(self, tmp_path: Path) -> None:
        """Routing fails for space: the slice stays queued, and is routed and queued on the next try."""
        h, conn = self._harness(tmp_path, [_route(mode="instance")])
        ds = make_mr_series(1, seed=50)[0]
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        hd = read_header(ds)
        rec = h.journal.record_instance(InstanceRecord(
            hd.sop_instance_uid, hd.sop_class_uid, hd.series_uid, hd.study_uid, hd.modality, str(path), 1,
            "CONSOLE", hd.expected_count))
        conn.fail_next["COMMIT"] = 3
        h.asm.on_instance(InstanceReceived(hd, str(path), rec, "CONSOLE"))
        for _ in range(3):
            assert h.asm.process_pending() == 0 and h.asm.pending() == 1
        assert h.asm.process_pending() == 1
        assert len(h.journal.jobs(hd.series_uid)) == 1

    def test_quiet_timer_that_cannot_complete_is_rearmed(self, tmp_path: Path) -> None:
        """mark_complete fails at quiet time: the series completes at the next try."""
        h, conn = self._harness(tmp_path, [_route(quiet_s=5)])
        ds = make_mr_series(1, seed=51)[0]
        h.receive(ds)
        conn.fail_next["COMMIT"] = 1
        h.timers.advance(5)
        uid = str(ds.SeriesInstanceUID)
        assert present(h.journal.series(uid)).state == "receiving"
        h.timers.advance(1.0)
        assert present(h.journal.series(uid)).state == "complete"
        assert len(h.journal.jobs(uid)) == 1

    def test_failed_enqueue_keeps_the_slice_until_the_journal_takes_it(self, tmp_path: Path) -> None:
        """FailingJournal: enqueue_job fails twice; the slice is routed once and its job queued once."""
        routes = [_route(mode="instance")]
        h = Harness(tmp_path, routes)
        fake = FailingJournal(f"sqlite:///{tmp_path / 'fake.sqlite'}", clock=h.timers.now, heartbeat_s=0)
        h.journal = fake
        h.asm = SeriesAssembler(fake, routes, {}, {"brightness": "1"}, h.timers, on_job_queued=h._q)
        fake.fail("enqueue_job", times=2)
        ds = make_mr_series(1, seed=52)[0]
        h.receive(ds)  # handled once: routed, then the enqueue failed
        assert h.asm.pending() == 1 and h.journal.jobs(str(ds.SeriesInstanceUID)) == []
        assert h.asm.process_pending() == 0
        assert h.asm.process_pending() == 1 and h.queued == 1
        assert len(h.journal.jobs(str(ds.SeriesInstanceUID))) == 1
        assert fake.calls.count("set_route") == 1
        fake.close()


class TestOnArrival:
    """A slice of a series already routed to instance mode is handled on the association thread."""

    def _stream(self, tmp_path: Path) -> tuple[Harness, list[Dataset]]:
        h = Harness(tmp_path, [_route(mode="instance")])
        series = make_mr_series(3, seed=60)
        h.receive(series[0])  # the first slice is routed on the assembler's thread
        assert h.asm.pending() == 0 and len(h.journal.jobs(str(series[0].SeriesInstanceUID))) == 1
        return h, series

    def _arrive(self, h: Harness, ds: Dataset) -> None:
        path = h.tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        hd = read_header(ds)
        rec = h.journal.record_instance(InstanceRecord(
            hd.sop_instance_uid, hd.sop_class_uid, hd.series_uid, hd.study_uid, hd.modality, str(path), 1,
            "CONSOLE", hd.expected_count))
        h.asm.on_instance(InstanceReceived(hd, str(path), rec, "CONSOLE"))

    def test_next_slice_is_queued_before_on_instance_returns(self, tmp_path: Path) -> None:
        h, series = self._stream(tmp_path)
        self._arrive(h, series[1])  # no process_pending: the job must not wait for the assembler's thread
        uid = str(series[1].SeriesInstanceUID)
        assert [j.instance_uid for j in h.journal.jobs(uid)] == [str(series[0].SOPInstanceUID),
                                                                 str(series[1].SOPInstanceUID)]
        assert h.queued == 2
        assert h.asm.process_pending() == 1  # its completion check; queueing again adds nothing
        assert len(h.journal.jobs(uid)) == 2 and h.queued == 2

    def test_a_busy_assembler_does_not_hold_the_slice_back(self, tmp_path: Path) -> None:
        import threading

        h, series = self._stream(tmp_path)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with h.asm._lock:  # the assembler's thread in a long step (a header read, a completion)
                held.set()
                release.wait(5)

        t = threading.Thread(target=hold)
        t.start()
        held.wait(5)
        try:
            self._arrive(h, series[1])
            assert len(h.journal.jobs(str(series[1].SeriesInstanceUID))) == 2
        finally:
            release.set()
            t.join(5)

    def test_a_failed_journal_write_leaves_the_slice_for_the_lane(self, tmp_path: Path) -> None:
        routes = [_route(mode="instance")]
        h = Harness(tmp_path, routes)
        fake = FailingJournal(f"sqlite:///{tmp_path / 'fake.sqlite'}", clock=h.timers.now, heartbeat_s=0)
        h.journal = fake
        h.asm = SeriesAssembler(fake, routes, {}, {"brightness": "1"}, h.timers, on_job_queued=h._q)
        series = make_mr_series(2, seed=61)
        h.receive(series[0])
        fake.fail("enqueue_job", times=1)
        self._arrive(h, series[1])  # the write on arrival fails: the slice is queued, not lost
        assert h.asm.pending() == 1 and len(h.journal.jobs(str(series[0].SeriesInstanceUID))) == 1
        assert h.asm.process_pending() == 1
        assert [j.instance_uid for j in h.journal.jobs(str(series[0].SeriesInstanceUID))] == [
            str(series[0].SOPInstanceUID), str(series[1].SOPInstanceUID)]
        fake.close()
