"""The journal on both backends: idempotent ingest, job queue, outbox, recovery, claims and leases.

Every test runs against SQLite and against PostgreSQL (a throwaway cluster, a fresh database per
test; skipped with the reason printed where PostgreSQL or psycopg is missing). Tests that need
two sidecars open two `Journal`s on one URL with different node names and one fake clock.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import JournalError, JournalFull
from sidecar.journal import (
    AlertLedger,
    AssemblyJournal,
    InstanceLog,
    InstanceRecord,
    JobQueue,
    Journal,
    ResultOutbox,
    Timeline,
)
from sidecar.journal.ports import PORTS
from sidecar.journal.sqlite import SqliteBackend
from tests.helpers.expect import present
from tests.helpers.journal_fakes import FailingJournal, failing_connect, fill, port_methods, small_disk
from tests.unit.journal.cases import Clock, _job, _rec


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
        assert present(journal.series("1.2.3")).state == "receiving"

    def test_survives_reopen_of_the_journal(self, journal_url: str) -> None:
        """What was recorded is there after the journal is closed and opened again."""
        j = Journal(journal_url)
        j.record_instance(_rec("1.1"))
        j.close()
        again = Journal(journal_url)
        try:
            assert again.has_instance("1.1")
        finally:
            again.close()

    def test_timeline_records_ingest_in_order(self, journal: Journal) -> None:
        """The series timeline starts with its first instance and ends with completion."""
        journal.record_instance(_rec("1.1"))
        journal.set_route("1.2.3", "r", "m", "series")
        journal.mark_complete("1.2.3", "quiet")
        assert [e.kind for e in journal.events("1.2.3")] == ["received_first", "routed", "received_last", "complete"]


class TestUrls:
    def test_unsupported_url_is_a_clear_error(self) -> None:
        """Only sqlite:/// and postgresql:// URLs are served; anything else names both."""
        with pytest.raises(JournalError, match=r"sqlite:///.*postgresql://"):
            Journal("mysql://x")

    def test_version_1_sqlite_file_gains_lease_columns_and_keeps_its_rows(self, tmp_path: Path) -> None:
        """A journal written before leases opens, and its job running at the crash is put back."""
        path = tmp_path / "v1.sqlite"
        con = sqlite3.connect(path)
        con.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, modality TEXT NOT NULL,"
            " calling_ae TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'receiving', route TEXT,"
            " model_id TEXT, mode TEXT, expected_count INTEGER, n_instances INTEGER NOT NULL DEFAULT 0,"
            " revision INTEGER NOT NULL DEFAULT 0, first_received REAL NOT NULL, last_received REAL NOT NULL,"
            " completed_at REAL);"
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL,"
            " instance_uid TEXT NOT NULL DEFAULT '', model_id TEXT NOT NULL, model_version TEXT NOT NULL,"
            " revision INTEGER NOT NULL, route TEXT NOT NULL, priority INTEGER NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0, reason TEXT,"
            " created_at REAL NOT NULL, started_at REAL, finished_at REAL,"
            " UNIQUE (series_uid, instance_uid, model_id, model_version, revision));"
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL,"
            " series_uid TEXT NOT NULL, destination TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,"
            " path TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,"
            " next_attempt_at REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL, sent_at REAL,"
            " UNIQUE (destination, sop_instance_uid));"
            "INSERT INTO series(series_uid, study_uid, modality, first_received, last_received)"
            " VALUES ('1.2.3', '1.2', 'MR', 1, 1);"
            "INSERT INTO jobs(series_uid, model_id, model_version, revision, route, priority, state, attempts,"
            " created_at) VALUES ('1.2.3', 'm', '1', 0, 'r', 10, 'running', 1, 1);"
        )
        con.commit()
        con.close()
        j = Journal(f"sqlite:///{path}", node="after-upgrade")
        try:
            assert j.recover() == 1
            job = j.claim_job()
            assert job is not None and job.attempts == 2
        finally:
            j.close()


class TestJobs:
    def test_streaming_jobs_are_claimed_before_series_jobs(self, journal: Journal) -> None:
        """Lower priority number runs first, then older."""
        journal.record_instance(_rec("1.1"))
        s = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                revision=0, route="r", priority=10)
        i = journal.enqueue_job(series_uid="1.2.3", instance_uid="1.1", model_id="m", model_version="1",
                                revision=0, route="r", priority=0)
        assert present(journal.claim_job()).id == i
        assert present(journal.claim_job()).id == s
        assert journal.claim_job() is None

    def test_enqueue_is_idempotent_on_its_key(self, journal: Journal) -> None:
        """The same (series, instance, model, version, revision) is queued once."""
        journal.record_instance(_rec("1.1"))
        kw: dict[str, Any] = {"series_uid": "1.2.3", "instance_uid": "", "model_id": "m", "model_version": "1", "revision": 0,
              "route": "r", "priority": 10}
        assert journal.enqueue_job(**kw) is not None
        assert journal.enqueue_job(**kw) is None

    def test_recover_requeues_running_jobs(self, journal: Journal) -> None:
        """A job running at a crash goes back to the queue."""
        journal.record_instance(_rec("1.1"))
        journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1", revision=0,
                            route="r", priority=10)
        job = present(journal.claim_job())
        assert journal.recover() == 1
        again = journal.claim_job()
        assert again is not None and again.id == job.id and again.attempts == 2

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
        assert present(journal.job(jid)).state == "done"

    def test_failed_job_keeps_its_reason(self, journal: Journal) -> None:
        """A failed job is visible with why it failed."""
        journal.record_instance(_rec("1.1"))
        jid = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=10)
        journal.fail_job(present(jid), "ModelError: boom")
        assert journal.failed_jobs()[0].reason == "ModelError: boom"


class TestOutbox:
    def _queued(self, journal: Journal) -> int:
        journal.record_instance(_rec("1.1"))
        jid = journal.enqueue_job(series_uid="1.2.3", instance_uid="", model_id="m", model_version="1",
                                  revision=0, route="r", priority=10)
        journal.complete_job(present(jid), [("pacs", "9.9", "/r/9.9.dcm")])
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


class TestFullDisk:
    """A full disk fails the write it hits, never the ones after it (SQLite)."""

    def test_failed_commit_is_rolled_back_and_the_next_write_succeeds(self, tmp_path: Path) -> None:
        """A COMMIT that fails for space leaves no open transaction behind (no A700 for ever after)."""
        url = f"sqlite:///{tmp_path / 'j.sqlite'}"
        connect, opened = failing_connect()
        j = Journal(url, backend=SqliteBackend(url, connect=connect), heartbeat_s=0)
        try:
            opened[0].fail_next["COMMIT"] = 1
            with pytest.raises(JournalFull):
                j.record_instance(_rec("1.1"))
            assert not j.has_instance("1.1")  # nothing of the failed write was kept
            assert j.record_instance(_rec("1.1")).new  # the same write, retried, succeeds
            assert j.record_instance(_rec("1.2")).n_instances == 2
        finally:
            j.close()

    def test_failed_rollback_is_finished_before_the_next_write(self, tmp_path: Path) -> None:
        """When the ROLLBACK after a failed COMMIT fails too, the next write closes it first."""
        url = f"sqlite:///{tmp_path / 'j.sqlite'}"
        connect, opened = failing_connect()
        j = Journal(url, backend=SqliteBackend(url, connect=connect), heartbeat_s=0)
        try:
            opened[0].fail_next.update({"COMMIT": 1, "ROLLBACK": 1})
            with pytest.raises(JournalFull):
                j.record_instance(_rec("1.1"))
            assert j.record_instance(_rec("1.2")).new
            assert not j.has_instance("1.1") and j.has_instance("1.2")
        finally:
            j.close()

    def test_real_full_disk_fails_writes_until_space_returns(self, tmp_path: Path) -> None:
        """On a full tmpfs every write fails as JournalFull; once the filler goes, writes resume."""
        with small_disk(tmp_path / "disk") as disk:
            j = Journal(f"sqlite:///{disk / 'j.sqlite'}", heartbeat_s=0)
            try:
                j.record_instance(_rec("0.1"))
                filler = fill(disk)
                kept = 0
                for i in range(200):
                    try:
                        j.record_instance(InstanceRecord(
                            f"2.{i}", "1.2.840.10008.5.1.4.1.1.4", "1.2.3", "1.2", "MR", "/s/" + "x" * 400, 10))
                        kept += 1
                    except JournalFull:
                        pass
                assert kept < 200  # the disk really filled
                n_before = len(j.instances("1.2.3"))
                assert n_before == 1 + kept  # each acknowledged write is in the journal, no other
                filler.unlink()
                assert j.record_instance(_rec("3.1")).new
                j.probe_write()
                assert len(j.instances("1.2.3")) == n_before + 1
            finally:
                j.close()


LEGACY_DATE_ERROR = "ResultError: SR build failed: ValueError: Unable to convert '1901-12-31' to 'DA' object"


class TestStoredText:
    """What the journal stores and serves carries no patient data (issue 13 case 6)."""

    def test_failed_job_reason_is_scrubbed_where_it_is_stored(self, journal: Journal) -> None:
        """A pydicom message quoting PatientBirthDate is kept without the date, the reason still readable."""
        journal.record_instance(_rec("1.1"))
        jid = _job(journal)
        assert journal.claim_job() is not None
        journal.fail_job(jid, LEGACY_DATE_ERROR)
        stored = journal._query("SELECT reason FROM jobs WHERE id = ?", (jid,))[0][0]
        details = [r[0] for r in journal._query("SELECT detail FROM events WHERE series_uid = '1.2.3'")]
        assert "1901-12-31" not in stored and not any("1901-12-31" in d for d in details)
        assert "Unable to convert" in stored and "DA" in stored
        assert [j.reason for j in journal.failed_jobs()] == [stored]

    def test_delivery_errors_and_timeline_details_are_scrubbed(self, journal: Journal) -> None:
        """Retry and dead-letter errors quoting a person name or a date are stored masked."""
        journal.record_instance(_rec("1.1"))
        jid = _job(journal)
        assert journal.claim_job() is not None
        journal.complete_job(jid, [("pacs", "9.1", "/r/9.1.dcm")])
        [item] = journal.due_outbox("pacs")
        journal.mark_retry(item.id, "peer said: bad PatientName=DOE^JOHN", 0.0)
        journal.mark_dead(item.id, "refused: Invalid value for VR DA: '19011231'")
        [dead] = journal.dead_letters()
        texts = [dead.last_error or "", *(e.detail for e in journal.events("1.2.3"))]
        assert not any("DOE" in t or "JOHN" in t or "19011231" in t for t in texts), texts
        assert "Invalid value for VR DA" in (dead.last_error or "")

    def test_rows_written_unscrubbed_are_scrubbed_when_read(self, journal: Journal) -> None:
        """A reason stored by an older version is served without the date."""
        journal.record_instance(_rec("1.1"))
        jid = _job(journal)
        with journal._tx() as db:
            db.execute("UPDATE jobs SET state = 'failed', reason = ? WHERE id = ?", (LEGACY_DATE_ERROR, jid))
            db.execute("INSERT INTO events(series_uid, kind, at, detail) VALUES ('1.2.3', 'failed', 1, ?)",
                       (LEGACY_DATE_ERROR,))
        assert "1901-12-31" not in (present(journal.job(jid)).reason or "")
        assert not any("1901-12-31" in e.detail for e in journal.events("1.2.3"))


class TestPrune:
    """Rows of long-finished series go after the history time; nothing still owed does."""

    def _delivered(self, journal: Journal, series: str, sop: str) -> None:
        journal.record_instance(_rec(sop, series))
        journal.mark_complete(series, "test")
        jid = _job(journal, series=series)
        assert journal.claim_job() is not None
        journal.complete_job(jid, [("pacs", f"9.{sop}", "/r.dcm")])
        [item] = journal.due_outbox("pacs")
        journal.mark_sent(item.id)
        journal.add_alert(series, "k", "alert")

    def test_finished_series_is_forgotten_after_the_history_time(self, journal: Journal, clock: Clock) -> None:
        """Delivered, spool removed, older than the cutoff: every row of it is gone; a recent one stays."""
        self._delivered(journal, "1.2.3", "1.1")
        journal.mark_deleted("1.1")
        clock.t += 100
        self._delivered(journal, "1.2.4", "2.1")
        journal.mark_deleted("2.1")
        assert journal.prune(older_than=clock.t - 50) == 1
        assert journal.series("1.2.3") is None and journal.jobs("1.2.3") == []
        assert journal.events("1.2.3") == [] and journal.outbox("1.2.3") == [] and journal.alerts("1.2.3") == []
        assert not journal.has_instance("1.1")
        assert journal.series("1.2.4") is not None and journal.has_instance("2.1")
        assert journal.prune(older_than=clock.t - 50) == 0

    def test_series_with_work_or_spooled_files_is_kept(self, journal: Journal, clock: Clock) -> None:
        """A file still in the spool, a pending result or a queued job keeps the series' rows."""
        self._delivered(journal, "1.2.3", "1.1")  # spool file not yet removed by retention
        journal.record_instance(_rec("3.1", "1.2.5"))
        journal.mark_complete("1.2.5", "test")
        jid = _job(journal, series="1.2.5")
        assert journal.claim_job() is not None
        journal.complete_job(jid, [("pacs", "9.3", "/r.dcm")])  # result still pending
        journal.mark_deleted("3.1")
        journal.record_instance(_rec("4.1", "1.2.6"))
        journal.mark_complete("1.2.6", "test")
        _job(journal, series="1.2.6")  # still queued
        journal.mark_deleted("4.1")
        clock.t += 10_000
        assert journal.prune(older_than=clock.t) == 0
        assert all(journal.series(s) is not None for s in ("1.2.3", "1.2.5", "1.2.6"))


class TestSqliteReads:
    """SQLite reads have their own connections and the hot filters an index."""

    def test_read_answers_while_a_write_transaction_is_open(self, tmp_path: Path) -> None:
        """A dashboard read does not wait for the write lock a C-STORE's journal write holds."""
        j = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}", heartbeat_s=0)
        j.record_instance(_rec("1.1"))
        inside, release, read_done = threading.Event(), threading.Event(), threading.Event()

        def writer() -> None:
            with j._backend.transaction() as tx:
                tx.execute("UPDATE series SET last_received = last_received + 1")
                inside.set()
                release.wait(30)

        def reader() -> None:
            assert j.series("1.2.3") is not None and j.summary()["series"] == {"receiving": 1}
            read_done.set()

        w = threading.Thread(target=writer)
        w.start()
        try:
            assert inside.wait(30)
            r = threading.Thread(target=reader)
            r.start()
            assert read_done.wait(20), "the read waited for the writer's transaction"
            r.join()
        finally:
            release.set()
            w.join()
            j.close()

    @pytest.mark.parametrize(("sql", "args"), [
        ("SELECT * FROM series WHERE state = ? ORDER BY first_received", ("receiving",)),
        ("SELECT * FROM series ORDER BY last_received DESC LIMIT ?", (100,)),
        ("SELECT * FROM outbox WHERE state = 'dead' ORDER BY id", ()),
        ("SELECT * FROM outbox WHERE state IN ('pending', 'dead') ORDER BY id LIMIT ?", (500,)),
        ("SELECT * FROM jobs WHERE series_uid = ? ORDER BY id", ("1.2.3",)),
        ("SELECT * FROM events WHERE series_uid = ? ORDER BY id", ("1.2.3",)),
        ("SELECT * FROM alerts WHERE series_uid = ? ORDER BY id", ("1.2.3",)),
    ])
    def test_hot_filter_uses_an_index(self, tmp_path: Path, sql: str, args: tuple[object, ...]) -> None:
        """The dashboard's, status' and recovery's filters are index searches, not table scans."""
        j = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}", heartbeat_s=0)
        try:
            plan = " | ".join(str(r[3]) for r in j._query(f"EXPLAIN QUERY PLAN {sql}", args))
        finally:
            j.close()
        assert "USING" in plan and "INDEX" in plan, plan


def _as_ports(j: Journal) -> tuple[InstanceLog, JobQueue, ResultOutbox, AlertLedger, Timeline, AssemblyJournal]:
    """mypy checks here that `Journal` satisfies every Protocol its consumers take."""
    return j, j, j, j, j, j


class TestPorts:
    """The journal's Protocols, and the failing fake at that seam."""

    def test_journal_is_every_port(self, journal: Journal) -> None:
        """A Journal is an InstanceLog, JobQueue, ResultOutbox, AlertLedger and Timeline."""
        assert all(isinstance(journal, port) for port in PORTS)
        assert len(_as_ports(journal)) == 6
        missing = [m for m in port_methods() if not callable(getattr(journal, m, None))]
        assert missing == []

    def test_failing_journal_fails_the_named_call_then_recovers(self, tmp_path: Path) -> None:
        """fail("record_instance") raises JournalFull once, writes nothing; the retry goes through."""
        fake = FailingJournal(f"sqlite:///{tmp_path / 'j.sqlite'}", heartbeat_s=0)
        try:
            assert all(isinstance(fake, port) for port in PORTS)
            fake.fail("record_instance")
            fake.fail("summary", error=JournalError("journal read failed: fake"))
            with pytest.raises(JournalFull):
                fake.record_instance(_rec("1.1"))
            assert not fake.has_instance("1.1")
            with pytest.raises(JournalError):
                fake.summary()
            assert fake.record_instance(_rec("1.1")).new and fake.summary()["series"] == {"receiving": 1}
            assert fake.calls[:3] == ["record_instance", "has_instance", "summary"]
        finally:
            fake.close()

    def test_failing_journal_refuses_a_name_no_port_has(self, tmp_path: Path) -> None:
        """A typo in the method to fail is an error, not a fake that never fails."""
        fake = FailingJournal(f"sqlite:///{tmp_path / 'j.sqlite'}", heartbeat_s=0)
        try:
            with pytest.raises(ValueError, match="record_instances"):
                fake.fail("record_instances")
        finally:
            fake.close()
