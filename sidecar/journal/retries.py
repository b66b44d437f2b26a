"""Job retries and quarantine: what the worker's failure taxonomy writes (mixed into `Journal`).

A job that failed *transiently* (backend down, disk full, journal error, time budget) goes back
to the queue with a `not_before` time (backoff); one that keeps failing, or whose worker process
keeps dying under it, is *quarantined*: never claimed and never put back by `recover()`, listed by
`sidecar quarantine`, and replayed only by hand (`release_quarantined`). Reasons stored here are
written by the worker from exception types and the sidecar's own messages, never tag values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sidecar.journal.records import Job
from sidecar.journal.scrub import scrub_stored
from sidecar.journal.tx import Tx

_JOB_COLS = ", ".join(Job.__dataclass_fields__)


class JobRetries:
    """Retry, quarantine and per-job lease renewal; `Journal` supplies the plumbing."""

    node: str
    lease_s: float
    _clock: Callable[[], float]

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _event(self, db: Tx, series_uid: str, kind: str, detail: str = "") -> None:
        raise NotImplementedError

    def retry_job(self, job_id: int, reason: str, not_before: float) -> bool:
        """Put a running job back in the queue, not to be claimed before `not_before`; False if not running."""
        reason = scrub_stored(reason)
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, owner = NULL, lease_until = NULL,"
                " reason = ?, not_before = ? WHERE id = ? AND state = 'running' RETURNING series_uid, attempts",
                (reason[:2000], not_before, job_id),
            ).fetchone()
            if row is None:
                return False
            self._event(db, row[0], "retry_scheduled", f"attempt {row[1]}: {reason[:300]}")
            db.notify("sidecar_jobs")
            return True

    def quarantine_job(self, job_id: int, reason: str) -> bool:
        """Take a job out of circulation for good (until released by hand); False if it is done."""
        reason = scrub_stored(reason)
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'quarantined', finished_at = ?, reason = ?, owner = NULL,"
                " lease_until = NULL WHERE id = ? AND state IN ('queued', 'running', 'failed') RETURNING series_uid",
                (self._clock(), reason[:2000], job_id),
            ).fetchone()
            if row is None:
                return False
            self._event(db, row[0], "quarantined", reason[:500])
            return True

    def quarantined_jobs(self) -> list[Job]:
        return [Job(*r) for r in self._query(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'quarantined' ORDER BY id")]

    def release_quarantined(self, job_id: int) -> bool:
        """Replay a quarantined (or failed) job by hand: queued now, attempts from zero."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, not_before = NULL, started_at = NULL,"
                " finished_at = NULL WHERE id = ? AND state IN ('quarantined', 'failed') RETURNING series_uid",
                (job_id,),
            ).fetchone()
            if row is None:
                return False
            self._event(db, row[0], "requeued", f"job {job_id} released by hand")
            db.notify("sidecar_jobs")
            return True

    def running_jobs(self, owner: str) -> list[Job]:
        """The jobs `owner` holds now (a worker process's node name)."""
        return [Job(*r) for r in self._query(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state = 'running' AND owner = ? ORDER BY id", (owner,))]

    def renew_jobs(self, job_ids: Sequence[int]) -> int:
        """Extend the leases of these jobs only (those a live lane holds); returns rows renewed."""
        if not job_ids:
            return 0
        marks = ", ".join("?" for _ in job_ids)
        with self._tx() as db:
            return int(db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE state = 'running' AND owner = ? AND id IN ({marks})",
                (self._clock() + self.lease_s, self.node, *job_ids),
            ).rowcount)


