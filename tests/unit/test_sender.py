"""The sender: outbox delivery, backoff, dead letters and isolation, with FakeTransport."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar.dicom.status import StoreStatus
from sidecar.egress.outcome import SendOutcome, classify_store_status
from sidecar.egress.sender import Sender
from sidecar.egress.transport import FakeTransport, FolderTransport
from sidecar.journal import InstanceRecord, Journal, OutboxItem
from sidecar.settings import DicomDestination, FolderDestination, Sender as SenderSettings

SERIES = "1.2.826.0.1.3680043.8.498.1"


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, t: float) -> None:
        self.now = max(self.now, t)


def dicom_dest(name: str) -> DicomDestination:
    return DicomDestination(name=name, host="127.0.0.1", port=11112, ae_title=name.upper()[:16])


def queue_results(journal: Journal, tmp_path: Path, destinations: list[str], n: int, batch: int = 1) -> list[str]:
    """Record one source instance, run a job and queue `n` result files for each destination."""
    if not journal.has_instance(f"{SERIES}.0"):
        journal.record_instance(
            InstanceRecord(
                sop_instance_uid=f"{SERIES}.0", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", series_uid=SERIES,
                study_uid="1.2.3", modality="MR", path=str(tmp_path / "src.dcm"), size=1,
            )
        )
    job_id = journal.enqueue_job(
        series_uid=SERIES, instance_uid="", model_id="m", model_version=str(batch), revision=0, route="r", priority=5
    )
    assert job_id is not None
    paths = []
    results = []
    for i in range(n):
        p = tmp_path / f"result-{batch}-{i}.dcm"
        p.write_bytes(b"result %d" % i)
        paths.append(str(p))
        for d in destinations:
            results.append((d, f"{SERIES}.{batch}.{i + 1}", str(p)))
    journal.complete_job(job_id, results)
    return paths


def items_for(journal: Journal, destination: str) -> list[OutboxItem]:
    return [it for it in journal.outbox() if it.destination == destination]


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def journal(tmp_path: Path, clock: FakeClock) -> Iterator[Journal]:
    j = Journal(f"sqlite:///{tmp_path / 'journal.sqlite'}", clock=clock)
    yield j
    j.close()


@pytest.fixture()
def live_journal(tmp_path: Path) -> Iterator[Journal]:
    """A journal on real time, for tests with running worker threads."""
    j = Journal(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    yield j
    j.close()


def make_sender(
    journal: Journal, transports: dict[str, FakeTransport], clock: FakeClock | None = None, **settings: Any
) -> Sender:
    cfg = SenderSettings.model_validate({"backoff_initial_s": 2.0, "backoff_max_s": 300.0, "max_attempts": 8,
                                         **settings})
    dests = [dicom_dest(name) for name in transports]
    if clock is None:
        return Sender(journal, dests, cfg, calling_ae="SIDECAR", transports=transports)
    return Sender(journal, dests, cfg, calling_ae="SIDECAR", transports=transports, clock=clock)


class TestDelivery:
    def test_due_items_go_out_over_one_call_and_are_marked_sent(
        self, journal: Journal, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Every due item of a destination is sent in one batch and marked sent."""
        pacs = FakeTransport()
        paths = queue_results(journal, tmp_path, ["pacs"], 3)
        sender = make_sender(journal, {"pacs": pacs}, clock)
        assert sender.deliver_due("pacs") == 3
        assert pacs.send_calls == [paths]
        assert [it.state for it in items_for(journal, "pacs")] == ["sent"] * 3
        assert journal.series_delivered(SERIES)

    def test_sent_items_are_logged_with_destination_and_count_only(
        self, journal: Journal, tmp_path: Path, clock: FakeClock
    ) -> None:
        """result_sent carries the destination and a count, never paths or UIDs."""
        queue_results(journal, tmp_path, ["pacs"], 2)
        sender = make_sender(journal, {"pacs": FakeTransport()}, clock)
        with capture_logs() as logs:
            sender.deliver_due("pacs")
        sent = [e for e in logs if e["event"] == "result_sent"]
        assert len(sent) == 1 and sent[0]["destination"] == "pacs" and sent[0]["n"] == 2
        assert SERIES not in repr(logs) and str(tmp_path) not in repr(logs)

    def test_nothing_due_sends_nothing(self, journal: Journal, clock: FakeClock) -> None:
        """An empty outbox opens no association."""
        pacs = FakeTransport()
        assert make_sender(journal, {"pacs": pacs}, clock).deliver_due("pacs") == 0
        assert pacs.send_calls == []


class TestBackoff:
    def test_down_destination_backs_off_exponentially_then_delivers(
        self, journal: Journal, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Each failure doubles the delay (initial * 2**attempts, less jitter); delivery follows recovery."""
        pacs = FakeTransport()
        pacs.go_down()
        queue_results(journal, tmp_path, ["pacs"], 1)
        sender = make_sender(journal, {"pacs": pacs}, clock, backoff_initial_s=2.0)
        delays = []
        for attempt in range(5):
            assert sender.deliver_due("pacs") == 1
            (item,) = items_for(journal, "pacs")
            assert item.state == "pending" and item.attempts == attempt + 1
            assert item.last_error == FakeTransport.UNREACHABLE
            delay = item.next_attempt_at - clock.now
            expected = 2.0 * 2**attempt
            assert expected * 0.9 <= delay <= expected, (attempt, delay)
            delays.append(delay)
            clock.advance_to(item.next_attempt_at - 0.001)
            assert sender.deliver_due("pacs") == 0, "not due yet: no new association"
            clock.advance_to(item.next_attempt_at)
        assert all(b > a * 1.5 for a, b in itertools.pairwise(delays))
        pacs.come_up()
        assert sender.deliver_due("pacs") == 1
        (item,) = items_for(journal, "pacs")
        assert item.state == "sent" and item.attempts == 6

    def test_backoff_is_capped_at_the_maximum(self, journal: Journal, clock: FakeClock) -> None:
        """However many attempts, the delay never exceeds backoff_max_s."""
        sender = make_sender(journal, {"pacs": FakeTransport()}, clock, backoff_initial_s=2.0, backoff_max_s=10.0)
        assert all(sender.backoff_s(n) <= 10.0 for n in range(100))
        assert sender.backoff_s(50) >= 9.0

    def test_jitter_is_seeded(self, journal: Journal, clock: FakeClock) -> None:
        """Two senders with the same seed pick the same delays."""
        a = make_sender(journal, {"pacs": FakeTransport()}, clock)
        b = make_sender(journal, {"pacs": FakeTransport()}, clock)
        assert [a.backoff_s(n) for n in range(5)] == [b.backoff_s(n) for n in range(5)]


class TestDeadLetter:
    def test_item_dies_after_max_attempts_with_the_reason(
        self, journal: Journal, tmp_path: Path, clock: FakeClock
    ) -> None:
        """The max_attempts-th retryable failure makes a dead letter that says why."""
        pacs = FakeTransport()
        pacs.go_down()
        queue_results(journal, tmp_path, ["pacs"], 1)
        sender = make_sender(journal, {"pacs": pacs}, clock, max_attempts=3)
        with capture_logs() as logs:
            for _ in range(3):
                assert sender.deliver_due("pacs") == 1
                clock.advance_to(items_for(journal, "pacs")[0].next_attempt_at)
        (dead,) = journal.dead_letters()
        assert dead.attempts == 3
        assert dead.last_error is not None
        assert "gave up after 3 attempts" in dead.last_error and FakeTransport.UNREACHABLE in dead.last_error
        assert sender.deliver_due("pacs") == 0
        assert [e["destination"] for e in logs if e["event"] == "result_dead"] == ["pacs"]
        assert [e.kind for e in journal.events(SERIES)][-1] == "dead"

    def test_non_retryable_status_dies_at_once(self, journal: Journal, tmp_path: Path, clock: FakeClock) -> None:
        """A 'cannot understand' answer is not retried; the others in the batch still go out."""
        pacs = FakeTransport()
        paths = queue_results(journal, tmp_path, ["pacs"], 2)
        pacs.script(Path(paths[0]).name, classify_store_status(StoreStatus.CANNOT_UNDERSTAND, "bad SR"))
        sender = make_sender(journal, {"pacs": pacs}, clock)
        assert sender.deliver_due("pacs") == 2
        first, second = items_for(journal, "pacs")
        assert first.state == "dead" and first.attempts == 1
        assert first.last_error is not None
        assert "not retryable" in first.last_error and "0xC000" in first.last_error and "bad SR" in first.last_error
        assert second.state == "sent"

    def test_transport_exception_becomes_a_retry(self, journal: Journal, tmp_path: Path, clock: FakeClock) -> None:
        """A transport that raises does not kill the worker; its items are retried."""

        def boom(path: str) -> SendOutcome:
            raise OSError("socket exploded")

        queue_results(journal, tmp_path, ["pacs"], 1)
        sender = make_sender(journal, {"pacs": FakeTransport(outcome_for=boom)}, clock)
        assert sender.deliver_due("pacs") == 1
        (item,) = items_for(journal, "pacs")
        assert item.state == "pending" and item.last_error is not None and "socket exploded" in item.last_error


class TestStatusClassification:
    @pytest.mark.parametrize(
        ("status", "ok", "retryable"),
        [
            (StoreStatus.SUCCESS, True, False),
            (StoreStatus.COERCION_OF_DATA_ELEMENTS, True, False),
            (StoreStatus.DUPLICATE_SOP_INSTANCE, True, False),
            (StoreStatus.REFUSED_OUT_OF_RESOURCES, False, True),
            (0xA7FF, False, True),
            (StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, False, False),
            (0xA9FF, False, False),
            (StoreStatus.CANNOT_UNDERSTAND, False, False),
            (0xCFFF, False, False),
            (StoreStatus.REFUSED_SOP_CLASS_NOT_SUPPORTED, False, False),
            (StoreStatus.REFUSED_NOT_AUTHORIZED, False, False),
        ],
    )
    def test_store_status_maps_to_outcome(self, status: int, ok: bool, retryable: bool) -> None:
        """Only out-of-resources failures are retried; warnings and duplicates count as delivered."""
        out = classify_store_status(status)
        assert (out.ok, out.retryable, out.status) == (ok, retryable, status)


# Worker-thread tests wait on events, never on the wall clock: GUARD_S only bounds a hang (a
# broken sender fails the test after it), it is never the thing asserted.
GUARD_S = 30.0


class ObservedTransport(FakeTransport):
    """FakeTransport whose sends can be awaited, and held at a gate (a peer hung mid-association)."""

    def __init__(self, *, gate: threading.Event | None = None, down_for: int = 0) -> None:
        super().__init__(down_for=down_for)
        self.entered = threading.Event()  # a send has begun
        self.returned = threading.Event()  # a send has come back
        self._gate = gate
        self._changed = threading.Condition()

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        self.entered.set()
        if self._gate is not None:
            self._gate.wait(GUARD_S)
        outcomes = super().send(paths)
        with self._changed:
            self.returned.set()
            self._changed.notify_all()
        return outcomes

    def wait_delivered(self, n: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.delivered) >= n, GUARD_S)


class PollingJournal(Journal):
    """A journal that says when a sender worker has found its outbox empty (it then sleeps)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.found_empty = threading.Event()

    def due_outbox(self, destination: str, now: float | None = None, limit: int = 64) -> list[OutboxItem]:
        items = super().due_outbox(destination, now=now, limit=limit)
        if not items:
            self.found_empty.set()
        return items


class TestWorkers:
    def test_notify_wakes_the_worker_before_the_poll_interval(self, tmp_path: Path) -> None:
        """A worker asleep on an empty outbox with an hour's poll_s delivers queued work on notify()."""
        journal = PollingJournal(f"sqlite:///{tmp_path / 'journal.sqlite'}")
        pacs = ObservedTransport()
        sender = make_sender(journal, {"pacs": pacs}, poll_s=3600.0, echo_on_start=False)
        sender.start()
        try:
            assert journal.found_empty.wait(GUARD_S)  # the worker polled once and found nothing
            queue_results(journal, tmp_path, ["pacs"], 2)
            sender.notify("pacs")
            assert pacs.wait_delivered(2)  # only notify() can have woken it within the guard
        finally:
            sender.stop()
        assert all(it.state == "sent" for it in items_for(journal, "pacs"))
        journal.close()

    def test_a_dead_destination_does_not_delay_another(self, live_journal: Journal, tmp_path: Path) -> None:
        """One destination hung mid-send: the other delivers all its items while that send is still stuck."""
        gate = threading.Event()
        dead, live = ObservedTransport(gate=gate), ObservedTransport()
        sender = make_sender(live_journal, {"dead": dead, "live": live}, poll_s=0.05, echo_on_start=False)
        sender.start()
        try:
            queue_results(live_journal, tmp_path, ["dead", "live"], 3)
            sender.notify()
            assert dead.entered.wait(GUARD_S)
            assert live.wait_delivered(3)
            assert not dead.returned.is_set()  # delivered while the dead destination's send hung
            assert all(it.state == "pending" for it in items_for(live_journal, "dead"))
        finally:
            gate.set()
            sender.stop(timeout_s=5.0)
        assert all(it.state == "sent" for it in items_for(live_journal, "live"))

    def test_down_destination_delivers_once_it_comes_back(self, live_journal: Journal, tmp_path: Path) -> None:
        """With real threads, items retried during an outage are delivered after recovery."""
        pacs = ObservedTransport(down_for=3)
        sender = make_sender(live_journal, {"pacs": pacs}, poll_s=0.05, backoff_initial_s=0.02, backoff_max_s=0.1,
                             echo_on_start=False)
        queue_results(live_journal, tmp_path, ["pacs"], 2)
        sender.start()
        try:
            assert pacs.wait_delivered(2)
        finally:
            sender.stop()
        assert len(pacs.delivered) == 2
        assert len(pacs.send_calls) >= 4
        assert all(it.state == "sent" and it.attempts == 4 for it in items_for(live_journal, "pacs"))

    def test_echo_all_reports_each_destination_and_never_raises(self, live_journal: Journal) -> None:
        """An unreachable destination is reported, not raised."""
        down = FakeTransport()
        down.go_down()
        sender = make_sender(live_journal, {"up": FakeTransport(), "down": down})
        with capture_logs() as logs:
            result = sender.echo_all()
        assert result == {"up": None, "down": FakeTransport.UNREACHABLE}
        assert {e["event"] for e in logs} == {"destination_echo_ok", "destination_echo_failed"}

    def test_stop_is_bounded_while_a_send_hangs(self, live_journal: Journal, tmp_path: Path) -> None:
        """stop() returns while a send is still stuck: it does not wait for the hung association."""
        gate = threading.Event()
        stuck = ObservedTransport(gate=gate)
        sender = make_sender(live_journal, {"stuck": stuck}, echo_on_start=False)
        queue_results(live_journal, tmp_path, ["stuck"], 1)
        sender.start()
        try:
            assert stuck.entered.wait(GUARD_S)
            sender.stop(timeout_s=0.3)
            assert not stuck.returned.is_set()  # stop() came back with the send still in flight
        finally:
            gate.set()


class TestFolderTransport:
    def test_copies_files_atomically_into_the_folder(self, tmp_path: Path) -> None:
        """Every file lands whole under its own name; no temp files are left."""
        src = tmp_path / "a.dcm"
        src.write_bytes(b"x" * 1000)
        out = tmp_path / "out"
        t = FolderTransport(FolderDestination(name="folder", path=out))
        t.echo()
        assert t.send([str(src)]) == [SendOutcome.delivered()]
        assert [p.name for p in out.iterdir()] == ["a.dcm"]
        assert (out / "a.dcm").read_bytes() == src.read_bytes()

    def test_missing_source_is_not_retryable(self, tmp_path: Path) -> None:
        """A file that cannot be read fails for good."""
        t = FolderTransport(FolderDestination(name="folder", path=tmp_path / "out"))
        (out,) = t.send([str(tmp_path / "missing.dcm")])
        assert not out.ok and not out.retryable and "missing.dcm" in out.error
