"""The journal: what was received, what is owed, what was delivered — one class, two backends.

The SQL is written once here; `SqliteBackend` and `PostgresBackend` supply connections,
transactions and the few words that differ (`Dialect`). See `sidecar.journal` for durability.

Claims and leases (the same on both backends). A claimed job or outbox item names its `owner`
(this node) and a `lease_until`; while the node lives a heartbeat thread renews its leases, so a
long job is never taken from a live node. A node that dies stops renewing: once its lease runs out
another node's `claim_job` or `due_outbox` takes the row over (a job is counted as a new attempt).
`recover()` at start frees this node's own claims at once. Exactly-once at the PACS does not rest
on the leases alone: a job re-run elsewhere derives the same result UIDs, and the outbox is unique
on (destination, SOP Instance UID), so a rerun queues nothing twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import structlog

from sidecar.errors import JournalError
from sidecar.journal.postgres import PREFIXES as _PG_PREFIXES
from sidecar.journal.queries import JournalQueries
from sidecar.journal.records import Event, InstanceRecord, Job, OutboxItem, Recorded
from sidecar.journal.retries import JobRetries
from sidecar.journal.schema import Dialect
from sidecar.journal.scrub import scrub_stored
from sidecar.journal.sqlite import SqliteBackend
from sidecar.journal.tx import Tx

_log = structlog.get_logger("sidecar.journal")

EventObserver = Callable[[Event], None]

JOBS_CHANNEL = "sidecar_jobs"  # NOTIFY: a job was queued or put back
OUTBOX_CHANNEL = "sidecar_outbox"  # NOTIFY: results were queued or a dead letter requeued
DEFAULT_LEASE_S = 30.0

_JOB_COLS = ", ".join(Job.__dataclass_fields__)
_DUE = "(not_before IS NULL OR not_before <= ?)"  # a retried job waits out its backoff
_OUTBOX_COLS = ", ".join(OutboxItem.__dataclass_fields__)


class Backend(Protocol):
    """What `Journal` needs from a database."""

    dialect: Dialect
    shared: bool

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def listen(self, callbacks: dict[str, Callable[[], None]]) -> None: ...

    def close(self) -> None: ...


class _Duplicate(Exception):
    """Raised inside `record_instance` to roll back when another node recorded the instance first."""


def default_node() -> str:
    """This process's claim owner name when the caller names none: host and PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_backend(url: str, synchronous: str = "NORMAL") -> Backend:
    """The backend for a journal URL: `sqlite:///PATH` or `postgresql://USER@HOST/DB`."""
    if url.startswith(_PG_PREFIXES):
        from sidecar.journal.postgres import PostgresBackend

        return PostgresBackend(url)
    return SqliteBackend(url, synchronous)


class Journal(JournalQueries, JobRetries):
    """The journal, chosen by URL. Thread-safe; several sidecars may share a PostgreSQL one.

    `node` names this sidecar in claims (default host:PID; the service passes host:port so a
    restarted sidecar recognises its own claims); `lease_s` is how long a claim outlives a node
    that stopped renewing it; `heartbeat_s` how often leases are renewed (default lease/3, 0: never);
    `backend` an already opened backend for `url` (tests pass one that fails on cue).
    """

    def __init__(
        self, url: str, clock: Callable[[], float] = time.time, synchronous: str = "NORMAL", *,
        node: str | None = None, lease_s: float = DEFAULT_LEASE_S, heartbeat_s: float | None = None,
        backend: Backend | None = None,
    ) -> None:
        if lease_s <= 0:
            raise JournalError("lease_s must be positive")
        self.url = url
        self._clock = clock
        self._backend: Backend = backend if backend is not None else open_backend(url, synchronous)
        self.node = node or default_node()
        self.lease_s = float(lease_s)
        self._heartbeat_s = lease_s / 3.0 if heartbeat_s is None else heartbeat_s
        self._heartbeat: threading.Thread | None = None
        self._hb_lock = threading.Lock()
        self._closing = threading.Event()
        self._observers: list[EventObserver] = []
        self._skip = self._backend.dialect.skip_locked
        self._held_jobs: Callable[[], Sequence[int]] | None = None

    def renew_only(self, held_jobs: Callable[[], Sequence[int]]) -> None:
        """Renew job leases only for the ids `held_jobs()` names (the jobs a live worker lane holds),
        so a lane that died does not keep its job "running" for ever."""
        self._held_jobs = held_jobs

    @property
    def shared(self) -> bool:
        """True when other sidecars may use this journal too (PostgreSQL)."""
        return self._backend.shared

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._backend.transaction() as tx:
            yield tx
        if tx.events:
            self._announce(tx.events)

    def observe(self, observer: EventObserver) -> None:
        """Call `observer` with each timeline event after its transaction commits (any thread).

        Observers must be quick and must not write to the journal; an observer that raises is
        logged and skipped (the dashboard and metrics never block ingest or delivery).
        """
        self._observers.append(observer)

    def on_remote_work(self, *, jobs: Callable[[], None], results: Callable[[], None]) -> None:
        """Call `jobs()` when any node queues a job and `results()` when any node queues results.

        PostgreSQL delivers these by LISTEN/NOTIFY; on SQLite it is a no-op (one process, which
        wakes its own threads). Callbacks run on the listening thread and must only set events.
        """
        self._backend.listen({JOBS_CHANNEL: jobs, OUTBOX_CHANNEL: results})

    def _announce(self, events: list[Event]) -> None:
        for observer in self._observers:
            for ev in events:
                try:
                    observer(ev)
                except Exception as exc:  # boundary: an observer never breaks a journal write
                    _log.error("journal_observer_failed", error_type=type(exc).__name__, error=str(exc)[:200])

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._backend.query(sql, args)

    def close(self) -> None:
        self._closing.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5.0)
            self._heartbeat = None
        self._backend.close()

    def _event(self, db: Tx, series_uid: str, kind: str, detail: str = "") -> None:
        at = self._clock()
        detail = scrub_stored(detail)
        db.execute(
            "INSERT INTO events(series_uid, kind, at, detail) VALUES (?, ?, ?, ?)",
            (series_uid, kind, at, detail),
        )
        if self._observers:
            db.events.append(Event(series_uid, kind, at, detail))

    # -- ingest ---------------------------------------------------------------------------

    def record_instance(self, rec: InstanceRecord) -> Recorded:
        """Record a durable instance. Idempotent on SOP Instance UID (across nodes too).

        A new instance for a series already complete re-opens it with revision + 1, so its
        result supersedes the old one. The series row is locked for the rest of the transaction,
        so nodes recording instances of one series at once count them one after another.
        """
        now = self._clock()
        try:
            with self._tx() as db:
                if db.execute(
                    "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
                ).fetchone():
                    raise _Duplicate
                first = db.execute(
                    "INSERT INTO series(series_uid, study_uid, modality, calling_ae, expected_count,"
                    " first_received, last_received) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (series_uid) DO NOTHING",
                    (rec.series_uid, rec.study_uid, rec.modality, rec.calling_ae, rec.expected_count, now, now),
                ).rowcount == 1
                lock = " FOR UPDATE" if self._skip else ""
                state, revision = db.execute(
                    f"SELECT state, revision FROM series WHERE series_uid = ?{lock}", (rec.series_uid,)
                ).fetchone()
                if db.execute(
                    "INSERT INTO instances(sop_instance_uid, series_uid, sop_class_uid, path, size, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO NOTHING",
                    (rec.sop_instance_uid, rec.series_uid, rec.sop_class_uid, rec.path, rec.size, now),
                ).rowcount != 1:
                    raise _Duplicate  # another node recorded it since our first look: undo the series row
                reopened = False
                if first:
                    self._event(db, rec.series_uid, "received_first")
                else:
                    if state == "complete":
                        reopened = True
                        db.execute(
                            "UPDATE series SET state = 'receiving', revision = revision + 1, completed_at = NULL"
                            " WHERE series_uid = ?",
                            (rec.series_uid,),
                        )
                        self._event(db, rec.series_uid, "reopened", f"revision {revision + 1}")
                    db.execute(
                        "UPDATE series SET last_received = ?,"
                        " expected_count = COALESCE(expected_count, ?) WHERE series_uid = ?",
                        (now, rec.expected_count, rec.series_uid),
                    )
                n, rev = db.execute(
                    "UPDATE series SET n_instances = n_instances + 1 WHERE series_uid = ?"
                    " RETURNING n_instances, revision",
                    (rec.series_uid,),
                ).fetchone()
        except _Duplicate:
            rows = self._query("SELECT n_instances, revision FROM series WHERE series_uid = ?", (rec.series_uid,))
            n, rev = rows[0] if rows else (0, 0)
            return Recorded(new=False, first_of_series=False, reopened=False, n_instances=n, revision=rev)
        return Recorded(new=True, first_of_series=first, reopened=reopened, n_instances=n, revision=rev)

    def set_route(
        self, series_uid: str, route: str | None, model_id: str | None, mode: str | None,
        expected_count: int | None = None,
    ) -> None:
        """Remember the routing decision (None route: the series is unrouted)."""
        with self._tx() as db:
            if route is None:
                db.execute(
                    "UPDATE series SET state = 'unrouted', route = NULL WHERE series_uid = ?", (series_uid,)
                )
                self._event(db, series_uid, "unrouted")
            else:
                db.execute(
                    "UPDATE series SET route = ?, model_id = ?, mode = ?,"
                    " expected_count = COALESCE(?, expected_count) WHERE series_uid = ?",
                    (route, model_id, mode, expected_count, series_uid),
                )
                self._event(db, series_uid, "routed", f"route={route} model={model_id} mode={mode}")

    def mark_complete(self, series_uid: str, reason: str) -> bool:
        """Mark a receiving series complete; False if it was not receiving.

        One conditional UPDATE: when two nodes decide at once, exactly one gets True.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ? AND state = 'receiving'",
                (self._clock(), series_uid),
            )
            if cur.rowcount:
                self._event(db, series_uid, "received_last")
                self._event(db, series_uid, "complete", reason)
            return bool(cur.rowcount)

    # -- jobs -----------------------------------------------------------------------------

    def enqueue_job(
        self, *, series_uid: str, instance_uid: str, model_id: str, model_version: str,
        revision: int, route: str, priority: int,
    ) -> int | None:
        """Queue a job; idempotent on (series, instance, model, version, revision). None if it existed."""
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO jobs(series_uid, instance_uid, model_id, model_version, revision, route,"
                " priority, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                (series_uid, instance_uid, model_id, model_version, revision, route, priority, self._clock()),
            ).fetchone()
            if row is not None:
                db.notify(JOBS_CHANNEL)
            return int(row[0]) if row is not None else None

    def claim_job(self, streaming_only: bool = False) -> Job | None:
        """Take the most urgent queued job (lowest priority number, then oldest) and mark it running.

        `streaming_only` takes only per-instance jobs (the worker's streaming lane). Jobs whose
        owner's lease ran out are put back in the queue first (`reclaimed` event).
        """
        now = self._clock()
        if not self._query(
            f"SELECT 1 FROM jobs WHERE (state = 'queued' AND {_DUE}) OR (state = 'running' AND lease_until < ?)"
            " LIMIT 1", (now, now),
        ):
            return None  # the common idle poll stays a read
        only = " AND instance_uid != ''" if streaming_only else ""
        jobs = self._claim(
            f"SELECT id FROM jobs WHERE state = 'queued' AND {_DUE}{only} ORDER BY priority, id LIMIT 1", (now,)
        )
        return jobs[0] if jobs else None

    def claim_batch(self, like: Job, limit: int) -> list[Job]:
        """Also claim up to `limit` more queued streaming jobs of the same model, version and route.

        Used to batch slices that queued up behind a running one into one forward pass.
        """
        if not like.instance_uid or limit <= 0:
            return []
        return self._claim(
            f"SELECT id FROM jobs WHERE state = 'queued' AND {_DUE} AND instance_uid != '' AND model_id = ?"
            " AND model_version = ? AND route = ? ORDER BY priority, id LIMIT ?",
            (self._clock(), like.model_id, like.model_version, like.route, limit),
        )

    def _claim(self, pick: str, args: Sequence[object]) -> list[Job]:
        now = self._clock()
        with self._tx() as db:
            self._reap_jobs(db, now)
            rows = db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, owner = ?,"
                f" lease_until = ? WHERE id IN ({pick}{self._skip}) RETURNING {_JOB_COLS}",
                (now, self.node, now + self.lease_s, *args),
            ).fetchall()
        if rows:
            self._start_heartbeat()
        jobs = [Job(*r) for r in rows]
        return sorted(jobs, key=lambda j: (j.priority, j.id))

    def _reap_jobs(self, db: Tx, now: float) -> None:
        """Put back running jobs whose owner stopped renewing its lease (a node died)."""
        rows = db.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, owner = NULL, lease_until = NULL"
            f" WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_until < ?{self._skip})"
            " RETURNING series_uid",
            (now,),
        ).fetchall()
        for (series_uid,) in rows:
            self._event(db, series_uid, "reclaimed", "lease expired")
        if rows:
            db.notify(JOBS_CHANNEL)

    def queue_results(self, job_id: int, results: Sequence[tuple[str, str, str]]) -> None:
        """Queue results of a job that is still running (a streaming slice's alert images, ahead of
        its SR); the job completes later with `complete_job`. Idempotent like it: a result already
        queued for a destination is not queued twice."""
        if not results:
            return
        now = self._clock()
        with self._tx() as db:
            _queue_outbox(db, job_id, results, now)
            db.notify(OUTBOX_CHANNEL)

    def complete_job(
        self, job_id: int, results: Sequence[tuple[str, str, str]], *, detail: str = ""
    ) -> None:
        """Mark a job done and queue its results in one transaction.

        `results` holds (destination, sop_instance_uid, path) triples; a result already queued
        for a destination (same SOP Instance UID, e.g. after a crash and rerun) is not queued twice.
        """
        now = self._clock()
        with self._tx() as db:
            series_uid = _queue_outbox(db, job_id, results, now)
            db.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, reason = NULL, owner = NULL, lease_until = NULL"
                " WHERE id = ?", (now, job_id)
            )
            self._event(db, series_uid, "inferred", detail)
            self._event(db, series_uid, "written", f"{len(results)} outbox entries")
            if results:
                db.notify(OUTBOX_CHANNEL)

    def fail_job(self, job_id: int, reason: str) -> None:
        """Mark a job failed; `reason` is stored and served without patient data (`scrub_stored`)."""
        reason = scrub_stored(reason)
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, reason = ?, owner = NULL, lease_until = NULL"
                " WHERE id = ? RETURNING series_uid",
                (self._clock(), reason[:2000], job_id),
            ).fetchone()
            if row:
                self._event(db, row[0], "failed", reason[:500])

    def requeue_job(self, job_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, owner = NULL, lease_until = NULL WHERE id = ?",
                (job_id,),
            )
            db.notify(JOBS_CHANNEL)

    # -- outbox ---------------------------------------------------------------------------

    def due_outbox(self, destination: str, now: float | None = None, limit: int = 64) -> list[OutboxItem]:
        """The pending items due for `destination` that this node may send now: the results of the
        most urgent jobs first (a streaming slice's SR and alert image before series SRs), then oldest.

        Each returned item is leased to this node: other nodes skip it until it is marked sent,
        retried or dead, or until the lease runs out (a node that died mid-send).
        """
        now = self._clock() if now is None else now
        free = ("destination = ? AND state = 'pending' AND next_attempt_at <= ?"
                " AND (owner IS NULL OR owner = ? OR lease_until < ?)")
        args = (destination, now, self.node, self._clock())
        if not self._query(f"SELECT 1 FROM outbox WHERE {free} LIMIT 1", args):
            return []  # the common idle poll stays a read
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE outbox SET owner = ?, lease_until = ? WHERE id IN (SELECT id FROM outbox WHERE {free}"
                " ORDER BY (SELECT j.priority FROM jobs j WHERE j.id = outbox.job_id), id"
                f" LIMIT ?{self._skip}) RETURNING {_OUTBOX_COLS}",
                (self.node, self._clock() + self.lease_s, *args, limit),
            ).fetchall()
            items = [OutboxItem(*r) for r in rows]
            job_ids = sorted({o.job_id for o in items})
            marks = ", ".join("?" for _ in job_ids)
            priority = dict(db.execute(f"SELECT id, priority FROM jobs WHERE id IN ({marks})", job_ids).fetchall()
                            ) if job_ids else {}
        if rows:
            self._start_heartbeat()
        return sorted(items, key=lambda o: (priority.get(o.job_id, 0), o.id))

    def next_due_at(self, destination: str) -> float | None:
        """When the next pending item for `destination` falls due here (another node's lease counts)."""
        rows = self._query(
            "SELECT MIN(CASE WHEN owner IS NOT NULL AND owner != ? AND lease_until > next_attempt_at"
            " THEN lease_until ELSE next_attempt_at END) FROM outbox WHERE destination = ? AND state = 'pending'",
            (self.node, destination),
        )
        due = rows[0][0]
        return float(due) if due is not None else None

    def _mark(self, db: Tx, item_id: int, sql: str, args: Sequence[object]) -> tuple[str, str] | None:
        row = db.execute(
            f"UPDATE outbox SET {sql}, owner = NULL, lease_until = NULL WHERE id = ?"
            " RETURNING series_uid, destination",
            (*args, item_id),
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def mark_sent(self, item_id: int) -> None:
        with self._tx() as db:
            row = self._mark(db, item_id, "state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL",
                             (self._clock(),))
            if row:
                self._event(db, row[0], "sent", row[1])

    def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        error = scrub_stored(error)
        with self._tx() as db:
            row = self._mark(db, item_id, "attempts = attempts + 1, last_error = ?, next_attempt_at = ?",
                             (error[:1000], next_attempt_at))
            if row:
                self._event(db, row[0], "retry", f"{row[1]}: {error[:300]}")

    def mark_dead(self, item_id: int, error: str) -> None:
        error = scrub_stored(error)
        with self._tx() as db:
            row = self._mark(db, item_id, "state = 'dead', attempts = attempts + 1, last_error = ?", (error[:1000],))
            if row:
                self._event(db, row[0], "dead", f"{row[1]}: {error[:300]}")

    def requeue_dead_letter(self, item_id: int) -> OutboxItem | None:
        """Give a dead letter a fresh start (pending, attempts reset, due now); None if not dead."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, last_error = NULL,"
                f" owner = NULL, lease_until = NULL WHERE id = ? AND state = 'dead' RETURNING {_OUTBOX_COLS}",
                (self._clock(), item_id),
            ).fetchone()
            if row is None:
                return None
            item = OutboxItem(*row)
            self._event(db, item.series_uid, "requeued", item.destination)
            db.notify(OUTBOX_CHANNEL)
        return item

    # -- alerts and retention ---------------------------------------------------------------

    def add_alert(self, series_uid: str, key: str, text: str, job_id: int | None = None) -> bool:
        """Record an alert once per (series, key); False when it was already raised."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO alerts(series_uid, key, job_id, text, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (series_uid, key, job_id, text, self._clock()),
            )
            return bool(cur.rowcount)

    def mark_deleted(self, sop_instance_uid: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE instances SET deleted = 1 WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def prune(self, older_than: float, limit: int = 200) -> int:
        """Forget series finished before `older_than`: their rows in every table. Returns how many.

        Only a series with nothing left to do goes: complete or unrouted, every spool file already
        removed by retention (a file still spooled would be re-recorded at start as new), no job
        queued, running or held back (only done or failed ones), no result pending, and nothing
        received, completed or sent since `older_than`. At most `limit` series per call, in one
        short transaction, so a first prune of a large journal never stalls ingest.
        """
        with self._tx() as db:
            uids = [str(r[0]) for r in db.execute(
                "SELECT s.series_uid FROM series s WHERE s.last_received < ?"
                " AND s.state IN ('complete', 'unrouted') AND COALESCE(s.completed_at, s.last_received) < ?"
                " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid AND i.deleted = 0)"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid"
                " AND j.state NOT IN ('done', 'failed'))"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.series_uid = s.series_uid"
                " AND (o.state = 'pending' OR COALESCE(o.sent_at, o.created_at) >= ?))"
                " ORDER BY s.last_received LIMIT ?",
                (older_than, older_than, older_than, limit),
            ).fetchall()]
            if not uids:
                return 0
            marks = ", ".join("?" * len(uids))
            for table in ("events", "alerts", "outbox", "jobs", "instances", "series"):
                db.execute(f"DELETE FROM {table} WHERE series_uid IN ({marks})", uids)  # table names are constants
        _log.info("journal_pruned", n_series=len(uids))
        return len(uids)

    # -- recovery, leases, replay ------------------------------------------------------------

    def probe_write(self) -> None:
        """A small durable write, for the readiness check; raises JournalError when it fails."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('ready_probe', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(self._clock()),)
            )

    def recover(self) -> int:
        """At start: this node's running jobs (and any whose lease ran out) go back to the queue,
        and this node's outbox claims are freed. Other live nodes' claims are left alone.
        Returns how many jobs were put back."""
        now = self._clock()
        mine = "(owner = ? OR owner IS NULL OR lease_until < ?)"
        with self._tx() as db:
            n = db.execute(  # this node's worker processes claim as NODE/wN (`sidecar.pipeline.procs`)
                "UPDATE jobs SET state = 'queued', started_at = NULL, owner = NULL, lease_until = NULL"
                f" WHERE state = 'running' AND (owner LIKE ? OR {mine})", (f"{self.node}/w%", self.node, now),
            ).rowcount
            db.execute(f"UPDATE outbox SET owner = NULL, lease_until = NULL WHERE state = 'pending' AND {mine}",
                       (self.node, now))
            if n:
                db.notify(JOBS_CHANNEL)
            return int(n)

    def renew_leases(self) -> int:
        """Extend this node's claims by one lease (the heartbeat calls this). Returns rows renewed."""
        until = self._clock() + self.lease_s
        if self._held_jobs is not None:
            n = self.renew_jobs(self._held_jobs())
            with self._tx() as db:
                n += db.execute("UPDATE outbox SET lease_until = ? WHERE state = 'pending' AND owner = ?",
                                (until, self.node)).rowcount
            return int(n)
        with self._tx() as db:
            n = db.execute("UPDATE jobs SET lease_until = ? WHERE state = 'running' AND owner = ?",
                           (until, self.node)).rowcount
            n += db.execute("UPDATE outbox SET lease_until = ? WHERE state = 'pending' AND owner = ?",
                            (until, self.node)).rowcount
        return int(n)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None or self._heartbeat_s <= 0 or self._closing.is_set():
            return
        with self._hb_lock:
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="journal-heartbeat", daemon=True)
                self._heartbeat.start()

    def _beat(self) -> None:
        while not self._closing.wait(self._heartbeat_s):
            try:
                self.renew_leases()
            except JournalError as exc:  # boundary: the database may come back before the lease ends
                _log.error("journal_heartbeat_failed", error=str(exc)[:300])

    def bump_revision(self, series_uid: str) -> int:
        """Start a new revision of a series (replay); returns the new revision."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE series SET revision = revision + 1 WHERE series_uid = ? RETURNING revision", (series_uid,)
            ).fetchone()
            if row is None:
                raise JournalError("no such series in the journal")
            self._event(db, series_uid, "replayed", f"revision {row[0]}")
            return int(row[0])


def _queue_outbox(db: Any, job_id: int, results: Sequence[tuple[str, str, str]], now: float) -> str:
    """Insert a job's (destination, SOP Instance UID, path) results into the outbox, once each;
    returns the job's series UID."""
    series_uid = str(db.execute("SELECT series_uid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])
    for destination, sop_uid, path in results:
        db.execute(
            "INSERT INTO outbox(job_id, series_uid, destination, sop_instance_uid, path,"
            " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (job_id, series_uid, destination, sop_uid, path, now, now),
        )
    return series_uid
