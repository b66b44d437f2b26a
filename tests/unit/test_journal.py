"""The SQLite journal: idempotent ingest, job queue, outbox, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import JournalError
from sidecar.journal import InstanceRecord, Journal


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _rec(sop: str, series: str = "1.2.3", expected: int | None = None) -> InstanceRecord:
    return InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.4", series, "1.2", "MR", f"/spool/{sop}.dcm", 10,
                          "CONSOLE", expected)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(f"sqlite:///{tmp_path / 'j.sqlite'}", clock=Clock())


class TestIngest:
    def test_duplicate_instance_is_recorded_once(self, journal: Journal) -> None:
        """A resent SOP Instance UID is not counted twice."""
        assert journal.record_instance(_rec("1.1")).new
        again = journal.record_instance(_rec("1.1"))
        assert not again.new and again.n_instances == 1

    def test_first_instance_creates_series_with_expected_count(self, journal: Journal) -> None:
        """The series row carries the header's expected count."""
        r = journal.record_instance(_rec("1.1", expected=3))
        assert r.first_of_series
        s = journal.series("1.2.3")
        assert s is not None and s.expected_count == 3 and s.state == "receiving"

    def test_late_instance_reopens_with_new_revision(self, journal: Journal) -> None:
        """An instance after completion re-opens the series at revision + 1."""
        journal.record_instance(_rec("1.1"))
        assert journal.mark_complete("1.2.3", "quiet")
        r = journal.record_instance(_rec("1.2"))
        assert r.reopened and r.revision == 1
        assert journal.series("1.2.3").state == "receiving"  # type: ignore[union-attr]

    def test_survives_reopen_of_the_file(self, tmp_path: Path) -> None:
        """What was recorded is there after the journal is closed and opened again."""
        url = f"sqlite:///{tmp_path / 'j.sqlite'}"
        j = Journal(url)
        j.record_instance(_rec("1.1"))
        j.close()
        assert Journal(url).has_instance("1.1")

    def test_unsupported_url_is_a_clear_error(self) -> None:
        """Only sqlite:/// URLs are served today."""
        with pytest.raises(JournalError, match="sqlite:///"):
            Journal("mysql://x")


class TestJobs:
    def test_streaming_jobs_are_claimed_before_series_jobs(self, journal: Journal) -> None:
        """Lower priority number runs first, then older."""
        journal.record_instance(_rec("1.1"))
        s = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                revision=0, route="r", priority=10)
        i = journal.enqueue_job(series_uid="1.2.3", instance_uid="1.1", model_id="m", model_version="1",
                                revision=0, route="r", priority=0)
        assert journal.claim_job().id == i  # type: ignore[union-attr]
        assert journal.claim_job().id == s  # type: ignore[union-attr]
        assert journal.claim_job() is None

    def test_enqueue_is_idempotent_on_its_key(self, journal: Journal) -> None:
        """The same (series, instance, model, version, revision) is queued once."""
        journal.record_instance(_rec("1.1"))
        kw = dict(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1", revision=0, route="r",
                  priority=10)
        assert journal.enqueue_job(**kw) is not None  # type: ignore[arg-type]
        assert journal.enqueue_job(**kw) is None  # type: ignore[arg-type]

    def test_recover_requeues_running_jobs(self, journal: Journal) -> None:
        """A job running at a crash goes back to the queue."""
        journal.record_instance(_rec("1.1"))
        journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1", revision=0,
                            route="r", priority=10)
        job = journal.claim_job()
        assert journal.recover() == 1
        again = journal.claim_job()
        assert again is not None and again.id == job.id and again.attempts == 2  # type: ignore[union-attr]

    def test_complete_job_queues_each_result_once_per_destination(self, journal: Journal) -> None:
        """A rerun's identical result UIDs do not queue a second delivery."""
        journal.record_instance(_rec("1.1"))
        jid = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=10)
        assert jid is not None
        results = [("pacs", "9.9", "/r/9.9.dcm"), ("archive", "9.9", "/r/9.9.dcm")]
        journal.complete_job(jid, results)
        journal.complete_job(jid, results)
        assert len(journal.outbox("1.2.3")) == 2
        assert journal.job(jid).state == "done"  # type: ignore[union-attr]

    def test_failed_job_keeps_its_reason(self, journal: Journal) -> None:
        """A failed job is visible with why it failed."""
        journal.record_instance(_rec("1.1"))
        jid = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=10)
        journal.fail_job(jid, "ModelError: boom")  # type: ignore[arg-type]
        assert journal.failed_jobs()[0].reason == "ModelError: boom"


class TestOutbox:
    def _queued(self, journal: Journal) -> int:
        journal.record_instance(_rec("1.1"))
        jid = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=10)
        journal.complete_job(jid, [("pacs", "9.9", "/r/9.9.dcm")])  # type: ignore[arg-type]
        return journal.outbox()[0].id

    def test_retry_hides_item_until_due(self, journal: Journal) -> None:
        """A retried item is not due before its next attempt time."""
        item = self._queued(journal)
        journal.mark_retry(item, "refused", next_attempt_at=2000.0)
        assert journal.due_outbox("pacs", now=1500.0) == []
        assert [i.id for i in journal.due_outbox("pacs", now=2000.0)] == [item]

    def test_dead_letter_is_listed_with_reason(self, journal: Journal) -> None:
        """A dead letter keeps its destination and reason for `sidecar status`."""
        item = self._queued(journal)
        journal.mark_dead(item, "0xA900 dataset does not match SOP class")
        dead = journal.dead_letters()
        assert dead[0].destination == "pacs" and "0xA900" in (dead[0].last_error or "")

    def test_spool_is_deletable_only_after_delivery_and_retention(self, journal: Journal) -> None:
        """Instances stay until every result is sent and the retention time passed."""
        item = self._queued(journal)
        journal.mark_complete("1.2.3", "quiet")
        assert journal.deletable_instances(older_than=10_000.0) == []
        journal.mark_sent(item)
        assert journal.series_delivered("1.2.3")
        assert journal.deletable_instances(older_than=1000.0) == []
        assert [i.sop_instance_uid for i in journal.deletable_instances(older_than=1000.1)] == ["1.1"]

    def test_status_summary_counts(self, journal: Journal) -> None:
        """The summary groups series, jobs and outbox by state."""
        self._queued(journal)
        s = journal.summary()
        assert s["series"] == {"receiving": 1}
        assert s["jobs"] == {"done": 1}
        assert s["outbox"] == {"pacs/pending": 1}
