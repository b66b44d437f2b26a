"""The journal's reads: series, instances, jobs and outbox rows, status, dashboard and metrics.

Plain SELECTs in SQL both backends speak; `Journal` supplies `_query`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sidecar.journal.records import Event, Job, OutboxItem, SeriesRow, StoredInstance
from sidecar.journal.scrub import scrub_stored

_JOB_COLS = ", ".join(Job.__dataclass_fields__)
_OUTBOX_COLS = ", ".join(OutboxItem.__dataclass_fields__)
_SERIES_COLS = ", ".join(SeriesRow.__dataclass_fields__)
_INSTANCE_COLS = "sop_instance_uid, sop_class_uid, series_uid, path, size, received_at"


def _job(row: tuple[Any, ...]) -> Job:
    """A job row; its reason scrubbed again (rows written before reasons were scrubbed on write)."""
    job = Job(*row)
    return job if not job.reason else replace(job, reason=scrub_stored(job.reason))


class JournalQueries:
    """Read-only queries; mixed into `Journal`."""

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    # -- series and instances ---------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        return bool(self._query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)))

    def series(self, series_uid: str) -> SeriesRow | None:
        rows = self._query(f"SELECT {_SERIES_COLS} FROM series WHERE series_uid = ?", (series_uid,))
        return SeriesRow(*rows[0]) if rows else None

    def series_in_state(self, state: str) -> list[SeriesRow]:
        rows = self._query(
            f"SELECT {_SERIES_COLS} FROM series WHERE state = ? ORDER BY first_received", (state,)
        )
        return [SeriesRow(*r) for r in rows]

    def instances(self, series_uid: str) -> list[StoredInstance]:
        rows = self._query(
            f"SELECT {_INSTANCE_COLS} FROM instances WHERE series_uid = ? ORDER BY received_at, sop_instance_uid",
            (series_uid,),
        )
        return [StoredInstance(*r) for r in rows]

    def known_instance_uids(self) -> set[str]:
        """Every SOP Instance UID the journal holds (for reconciling the spool at start)."""
        return {r[0] for r in self._query("SELECT sop_instance_uid FROM instances")}

    def instance(self, sop_instance_uid: str) -> StoredInstance | None:
        rows = self._query(f"SELECT {_INSTANCE_COLS} FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return StoredInstance(*rows[0]) if rows else None

    def slices_without_job(self) -> list[tuple[str, str]]:
        """(series UID, SOP Instance UID) of each kept instance of an instance-mode series that has
        no job at any revision: the slices a crash left unqueued (`SeriesAssembler.recover`)."""
        rows = self._query(
            "SELECT i.series_uid, i.sop_instance_uid FROM instances i JOIN series s ON s.series_uid = i.series_uid"
            " WHERE s.mode = 'instance' AND i.deleted = 0 AND NOT EXISTS (SELECT 1 FROM jobs j"
            " WHERE j.series_uid = i.series_uid AND j.instance_uid = i.sop_instance_uid)"
            " ORDER BY i.received_at, i.sop_instance_uid"
        )
        return [(str(a), str(b)) for a, b in rows]

    # -- jobs and outbox ----------------------------------------------------------------------

    def job(self, job_id: int) -> Job | None:
        rows = self._query(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, series_uid: str) -> list[Job]:
        rows = self._query(f"SELECT {_JOB_COLS} FROM jobs WHERE series_uid = ? ORDER BY id", (series_uid,))
        return [_job(r) for r in rows]

    def outbox(self, series_uid: str | None = None) -> list[OutboxItem]:
        if series_uid is None:
            rows = self._query(f"SELECT {_OUTBOX_COLS} FROM outbox ORDER BY id")
        else:
            rows = self._query(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE series_uid = ? ORDER BY id", (series_uid,))
        return [OutboxItem(*r) for r in rows]

    def series_delivered(self, series_uid: str) -> bool:
        """True when the series has results and none is still pending for any destination."""
        rows = self._query(
            "SELECT SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), COUNT(*) FROM outbox WHERE series_uid = ?",
            (series_uid,),
        )
        pending, total = rows[0]
        return bool(total) and not pending

    def deletable_instances(self, older_than: float) -> list[StoredInstance]:
        """Instances of delivered series (every result sent, none pending) delivered before `older_than`."""
        rows = self._query(
            "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_uid, i.path, i.size, i.received_at"
            " FROM instances i JOIN series s ON s.series_uid = i.series_uid"
            " WHERE i.deleted = 0 AND s.state IN ('complete', 'unrouted')"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid AND j.state IN ('queued', 'running'))"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.series_uid = s.series_uid AND o.state = 'pending')"
            " AND COALESCE((SELECT MAX(o.sent_at) FROM outbox o WHERE o.series_uid = s.series_uid),"
            " s.completed_at, s.last_received) < ?",
            (older_than,),
        )
        return [StoredInstance(*r) for r in rows]

    # -- timeline and status ------------------------------------------------------------------

    def events(self, series_uid: str) -> list[Event]:
        rows = self._query(
            "SELECT series_uid, kind, at, detail FROM events WHERE series_uid = ? ORDER BY id", (series_uid,)
        )
        return [Event(s, k, at, scrub_stored(d)) for s, k, at, d in rows]

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts for `sidecar status`: series by state, jobs by state, outbox by destination/state."""
        out: dict[str, dict[str, int]] = {"series": {}, "jobs": {}, "outbox": {}}
        for state, n in self._query("SELECT state, COUNT(*) FROM series GROUP BY state"):
            out["series"][state] = int(n)
        for state, n in self._query("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out["jobs"][state] = int(n)
        for dest, state, n in self._query("SELECT destination, state, COUNT(*) FROM outbox GROUP BY 1, 2"):
            out["outbox"][f"{dest}/{state}"] = int(n)
        return out

    def dead_letters(self) -> list[OutboxItem]:
        return [OutboxItem(*r) for r in self._query(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE state = 'dead' ORDER BY id")]

    def failed_jobs(self) -> list[Job]:
        return [_job(r) for r in self._query(f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'failed' ORDER BY id")]

    # -- dashboard and metrics ----------------------------------------------------------------

    def recent_series(self, limit: int = 100) -> list[SeriesRow]:
        """The series most recently received, newest first."""
        rows = self._query(f"SELECT {_SERIES_COLS} FROM series ORDER BY last_received DESC LIMIT ?", (limit,))
        return [SeriesRow(*r) for r in rows]

    def undelivered(self, limit: int = 500) -> list[OutboxItem]:
        """Outbox entries not yet sent (pending and dead), oldest first."""
        rows = self._query(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE state IN ('pending', 'dead') ORDER BY id LIMIT ?", (limit,))
        return [OutboxItem(*r) for r in rows]

    def alerts(self, series_uid: str) -> list[tuple[str, str, float]]:
        """(key, text, created_at) of the alerts raised for a series, oldest first."""
        return [
            (str(k), str(t), float(at))
            for k, t, at in self._query(
                "SELECT key, text, created_at FROM alerts WHERE series_uid = ? ORDER BY id", (series_uid,)
            )
        ]

    def trial_rows(self, since: float = 0.0) -> list[tuple[Any, ...]]:
        """Per job created since `since`: (id, series_uid, instance_uid, model_id, route, state,
        created_at, finished_at, its "inferred" event detail or None, alerts recorded by it), for
        `sidecar trial report`."""
        return self._query(
            "SELECT j.id, j.series_uid, j.instance_uid, j.model_id, j.route, j.state, j.created_at, j.finished_at,"
            " (SELECT e.detail FROM events e WHERE e.series_uid = j.series_uid AND e.kind = 'inferred'"
            "  AND e.detail LIKE ('%job=' || j.id || ' %') ORDER BY e.id DESC LIMIT 1),"
            " (SELECT COUNT(*) FROM alerts a WHERE a.job_id = j.id)"
            " FROM jobs j WHERE j.created_at >= ? ORDER BY j.id", (since,))

    def queued_jobs_by_priority(self) -> dict[int, int]:
        return {int(p): int(n) for p, n in self._query(
            "SELECT priority, COUNT(*) FROM jobs WHERE state = 'queued' GROUP BY priority"
        )}
