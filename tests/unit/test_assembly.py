"""Series assembly with a fake clock: routing, streaming jobs, completion rules, late instances."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from sidecar.assembly.assembler import PRIORITY_INSTANCE, PRIORITY_SERIES, SeriesAssembler
from sidecar.assembly.timers import FakeTimers
from sidecar.dicom.headers import read_header
from sidecar.journal import InstanceRecord, Journal
from sidecar.handoff import AssociationReleased, InstanceReceived
from sidecar.routing.rules import Route
from tests.helpers.dicom_factory import make_mr_series, make_us


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
        assert h.journal.series(uid).state == "receiving"  # type: ignore[union-attr]
        h.timers.advance(1.1)
        assert h.journal.series(uid).state == "complete"  # type: ignore[union-attr]
        jobs = h.journal.jobs(uid)
        assert [(j.instance_uid, j.priority, j.revision) for j in jobs] == [("", PRIORITY_SERIES, 0)]

    def test_each_instance_restarts_the_quiet_timer(self, tmp_path: Path) -> None:
        """The quiet time counts from the last instance, not the first."""
        h = Harness(tmp_path, [_route(quiet_s=5)])
        series = make_mr_series(4, seed=2)
        for ds in series:
            h.receive(ds)
            h.timers.advance(4.0)
        assert h.journal.series(str(series[0].SeriesInstanceUID)).state == "receiving"  # type: ignore[union-attr]
        h.timers.advance(1.0)
        assert h.journal.series(str(series[0].SeriesInstanceUID)).state == "complete"  # type: ignore[union-attr]

    def test_route_expected_count_completes_immediately(self, tmp_path: Path) -> None:
        """A route's expected_count completes the series at the last instance without waiting."""
        h = Harness(tmp_path, [_route(expected_count=2, quiet_s=100)])
        series = make_mr_series(2, seed=3)
        for ds in series:
            h.receive(ds)
        assert h.journal.series(str(series[0].SeriesInstanceUID)).state == "complete"  # type: ignore[union-attr]

    def test_single_multiframe_object_is_a_whole_series(self, tmp_path: Path) -> None:
        """NumberOfFrames > 1 in one object means the series is complete on arrival."""
        h = Harness(tmp_path, [_route(match={"modality": ["US"]}, quiet_s=100)])
        ds = make_us(seed=4)
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
        h.receive(ds)
        assert h.journal.series(str(ds.SeriesInstanceUID)).state == "complete"  # type: ignore[union-attr]

    def test_release_completes_when_route_says_so(self, tmp_path: Path) -> None:
        """complete_on_release ends the series when the association is released."""
        h = Harness(tmp_path, [_route(complete_on_release=True, quiet_s=100)])
        series = make_mr_series(2, seed=5)
        for ds in series:
            h.receive(ds)
        uid = str(series[0].SeriesInstanceUID)
        h.asm.on_release(AssociationReleased("CONSOLE", frozenset({uid})))
        h.asm.process_pending()
        assert h.journal.series(uid).state == "complete"  # type: ignore[union-attr]

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
        assert h.journal.series(str(ds.SeriesInstanceUID)).state == "unrouted"  # type: ignore[union-attr]
        assert h.journal.jobs(str(ds.SeriesInstanceUID)) == []

    def test_route_of_unavailable_model_is_skipped(self, tmp_path: Path) -> None:
        """A route whose model is not loaded is passed over for the next rule."""
        h = Harness(tmp_path, [_route(name="a", model="missing"), _route(name="b")])
        ds = make_mr_series(1, seed=9)[0]
        h.receive(ds)
        assert h.journal.series(str(ds.SeriesInstanceUID)).route == "b"  # type: ignore[union-attr]

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
        assert h.journal.series(uid).state == "complete"  # type: ignore[union-attr]
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
