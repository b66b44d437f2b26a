"""Series assembly: route each new series, stream instance jobs, decide when a series is complete.

A series is complete when its expected count is known and reached (the route's own count, a
single multi-frame object, ImagesInAcquisition, CardiacNumberOfImages), on association release
if the route says so, or after the route's quiet time with no new instance. A series still short
of a known expected count waits longer, `short_grace_s` (default 10 x quiet_s), before the quiet
timer alone completes it: a send cut short by a crash or a dropped association resumes into the
same revision and gets one result, not a short one and then a superseding one. A late instance
re-opens a complete series (the journal bumps its revision) so its new result supersedes the
old one; a resent instance the journal already holds changes nothing.

Priority: instances are handled in two lanes. A slice of an instance-mode (streaming) series, or
of a series not yet routed (routing is one header read), is handled before every queued instance
of a known series-mode series, so a streaming slice is routed and its job queued at once even
behind a burst of thousands of series images. Within a lane the order is arrival order.

A journal write that fails (a full disk, a database blip) does not lose the instance: the item
stays at the head of its lane and is retried every `retry_s` until the journal takes it, and a
quiet timer that could not complete its series is re-armed. `recover()` after a crash queues a
job for every journalled slice of an instance-mode series that has none, whatever the state of
its series, so every acknowledged slice gets exactly one job.

Routing reads the spooled header on this component's own thread, never on the association
thread. A slice of a series already routed to instance mode needs no header read: its job is
queued on the association thread itself, before the C-STORE response (one journal read, one
write, without this component's lock), because handing it to this component's thread cost a
wait for the GIL among the association threads: ~100 ms per slice under a burst of eight
consoles (bench.load's alert stages). The slice still takes the urgent lane for its completion
check; queueing its job again there is a no-op (the journal's key), and if the write on arrival
failed, the lane queues it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence

import pydicom
import structlog

from sidecar.assembly.timers import Timers
from sidecar.errors import JournalError
from sidecar.handoff import AssociationReleased, InstanceReceived
from sidecar.journal import SeriesRow
from sidecar.journal.ports import AssemblyJournal
from sidecar.routing import Predicate, route
from sidecar.routing.rules import Route

log = structlog.get_logger("sidecar.assembly")

PRIORITY_INSTANCE = 0  # streaming jobs (LGE per slice) run first
PRIORITY_SERIES = 10
SHORT_GRACE_FACTOR = 10.0  # a series short of its expected count waits this many quiet times
RETRY_S = 1.0  # how often a journal write that failed is tried again
_MODE_CACHE = 50_000  # series whose lane is remembered (unrouted ones are never forgotten otherwise)

_Item = InstanceReceived | AssociationReleased


class SeriesAssembler:
    """Owns series state transitions after ingest and queues jobs for the worker."""

    def __init__(
        self,
        journal: AssemblyJournal,
        routes: Sequence[Route],
        predicates: Mapping[str, Predicate],
        model_versions: Mapping[str, str],
        timers: Timers,
        on_job_queued: Callable[[], None] = lambda: None,
        *,
        retry_s: float = RETRY_S,
    ) -> None:
        self.journal = journal
        self.routes = {r.name: r for r in routes}
        self._ordered = list(routes)
        self.predicates = predicates
        self.model_versions = dict(model_versions)
        self.timers = timers
        self._on_job_queued = on_job_queued
        self._retry_s = retry_s
        self._urgent: deque[_Item] = deque()  # streaming slices and series not yet routed
        self._bulk: deque[_Item] = deque()  # instances of series-mode series, releases
        self._mode: dict[str, str] = {}  # series UID -> route mode, once routed (or "unrouted")
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()

    @property
    def available_models(self) -> Collection[str]:
        return self.model_versions.keys()

    # -- inputs (called from association threads: enqueue, or a known streaming slice) -----

    def on_instance(self, item: InstanceReceived) -> None:
        mode = self._mode.get(item.header.series_uid)
        if mode == "instance":
            self._queue_now(item)
        urgent = (mode or "instance") == "instance"
        with self._wake:
            (self._urgent if urgent else self._bulk).append(item)
            self._wake.notify()

    def _queue_now(self, item: InstanceReceived) -> None:
        """The job of a slice of a known streaming series, queued on the caller's (association)
        thread without the assembler's lock (its thread may hold it for a whole bulk item); the
        item still takes the urgent lane for its completion check, where queueing it again is a
        no-op (the journal's key). A failure here leaves the job to the lane."""
        try:
            series = self.journal.series(item.header.series_uid)
            rule = self.routes.get(series.route or "") if series is not None else None
            if series is None or rule is None or rule.mode != "instance" or series.state == "unrouted":
                return
            self._enqueue(series, rule, item.header.sop_instance_uid, series.revision)
        except Exception as exc:  # boundary: the ingest must still answer; the lane queues it
            log.warning("assembly_on_arrival_failed", error_type=type(exc).__name__, error=str(exc)[:200])

    def on_release(self, item: AssociationReleased) -> None:
        with self._wake:
            self._bulk.append(item)  # behind that association's own instances in either lane
            self._wake.notify()

    @property
    def alive(self) -> bool:
        """True while the assembler's thread runs (the service's supervisor restarts it otherwise)."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        """Instances and releases queued and not yet handled."""
        with self._wake:
            return len(self._urgent) + len(self._bulk)

    # -- thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._stopping.set()
            with self._wake:
                self._wake.notify_all()
            self._thread.join(timeout_s)
            self._thread = None

    def _next(self, block: bool) -> _Item | None:
        """The head of the urgent lane, else of the bulk lane (left in place until handled)."""
        with self._wake:
            while not self._urgent and not self._bulk:
                if not block or self._stopping.is_set():
                    return None
                self._wake.wait()
            return self._urgent[0] if self._urgent else self._bulk[0]

    def _done(self, item: _Item) -> None:
        with self._wake:
            for lane in (self._urgent, self._bulk):
                if lane and lane[0] is item:
                    lane.popleft()
                    return

    def _run(self) -> None:
        while True:  # on stop, what is queued is still handled (until stop's timeout)
            item = self._next(block=True)
            if item is None:
                return
            if self._handle(item):
                self._done(item)
            elif self._stopping.wait(self._retry_s):
                return  # the instance is journalled: recover() at the next start picks it up

    def process_pending(self) -> int:
        """Handle everything queued, on the caller's thread (tests, replay). Returns count.

        Stops at an item the journal could not take (it stays queued for the next call).
        """
        n = 0
        while (item := self._next(block=False)) is not None:
            if not self._handle(item):
                return n
            self._done(item)
            n += 1
        return n

    def _handle(self, item: _Item) -> bool:
        """Handle one item; False when a journal write failed and it should be tried again."""
        try:
            if isinstance(item, InstanceReceived):
                self._instance(item)
            else:
                self._released(item)
        except JournalError as exc:  # transient: retried, never dropped
            log.warning("assembly_journal_failed", error_type=type(exc).__name__, error=str(exc)[:200])
            return False
        except Exception as exc:  # boundary: one bad series must not stop assembly
            log.exception("assembly_failed", error_type=type(exc).__name__)
        return True

    # -- logic -----------------------------------------------------------------------------

    def _route_series(self, series: SeriesRow, path: str, calling_ae: str) -> SeriesRow:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            log.error("route_header_unreadable", series_uid=series.series_uid, error_type=type(exc).__name__)
            self.journal.set_route(series.series_uid, None, None, None)
            return self.journal.series(series.series_uid) or series
        decision = route(
            self._ordered, ds, calling_ae=calling_ae, predicates=self.predicates,
            available_models=self.available_models,
        )
        chosen = decision.route
        if chosen is None:
            log.info("series_unrouted", series_uid=series.series_uid, modality=series.modality)
            self.journal.set_route(series.series_uid, None, None, None)
        else:
            log.info("series_routed", series_uid=series.series_uid, rule=chosen.name, model=chosen.model,
                     mode=chosen.mode)
            self.journal.set_route(series.series_uid, chosen.name, chosen.model, chosen.mode, chosen.expected_count)
        routed = self.journal.series(series.series_uid) or series
        self._remember(routed)
        return routed

    def _remember(self, series: SeriesRow) -> None:
        """Which lane the series' later instances take (kept for the series being received)."""
        if len(self._mode) >= _MODE_CACHE:
            self._mode.clear()  # bounded: an unknown series only takes the urgent lane once more
        if series.route is None:
            self._mode[series.series_uid] = "unrouted"
        else:
            rule = self.routes.get(series.route)
            self._mode[series.series_uid] = rule.mode if rule is not None else "unrouted"

    def _instance(self, item: InstanceReceived) -> None:
        uid = item.header.series_uid
        with self._lock:
            series = self.journal.series(uid)
            if series is None:
                return
            if series.route is None and series.state != "unrouted":
                series = self._route_series(series, item.path, item.calling_ae)
            elif uid not in self._mode:
                self._remember(series)
            if series.state == "unrouted" or series.route is None:
                return
            rule = self.routes.get(series.route)
            if rule is None:
                return
            if rule.mode == "instance":
                self._enqueue(series, rule, item.header.sop_instance_uid, series.revision)
            self._check_complete(series, rule)

    def _released(self, item: AssociationReleased) -> None:
        with self._lock:
            for uid in item.series_uids:
                series = self.journal.series(uid)
                if series is None or series.route is None:
                    continue
                rule = self.routes.get(series.route)
                if rule is not None and rule.complete_on_release and series.state == "receiving":
                    self.complete(uid, "association released")

    def _check_complete(self, series: SeriesRow, rule: Route) -> None:
        expected = rule.expected_count or series.expected_count
        if expected is not None and series.n_instances >= expected:
            self.complete(series.series_uid, f"expected count {expected} reached")
        else:
            self._arm_quiet(series, rule)

    def completion_wait_s(self, series: SeriesRow, rule: Route | None = None) -> float | None:
        """How long after its last instance the quiet timer completes `series` (None: no route).

        The route's quiet time, or its `short_grace_s` (default 10 x quiet_s) while the series is
        short of an expected count it knows.
        """
        rule = rule or self.routes.get(series.route or "")
        if rule is None:
            return None
        expected = rule.expected_count or series.expected_count
        if expected is not None and series.n_instances < expected:
            return rule.short_grace_s or SHORT_GRACE_FACTOR * rule.quiet_s
        return rule.quiet_s

    def _arm_quiet(self, series: SeriesRow, rule: Route) -> None:
        quiet = self.completion_wait_s(series, rule) or rule.quiet_s
        elapsed = max(0.0, self.timers.now() - series.last_received)
        uid = series.series_uid
        self.timers.arm(uid, max(0.0, quiet - elapsed), lambda: self._quiet_expired(uid))

    def _quiet_expired(self, series_uid: str) -> None:
        try:
            with self._lock:
                series = self.journal.series(series_uid)
                rule = self.routes.get(series.route or "") if series is not None else None
                if series is None or rule is None or series.state != "receiving":
                    return
                wait = self.completion_wait_s(series, rule) or rule.quiet_s
                if self.timers.now() - series.last_received < wait - 0.01:
                    self._arm_quiet(series, rule)  # an instance came since (here or on another node)
                    return
                short = wait != rule.quiet_s
                self.complete(series_uid, "quiet time elapsed short of the expected count" if short
                              else "quiet time elapsed")
        except JournalError as exc:  # transient: try again, the series stays receiving
            log.warning("quiet_timer_journal_failed", series_uid=series_uid, error=str(exc)[:200])
            self.timers.arm(series_uid, self._retry_s, lambda: self._quiet_expired(series_uid))
        except Exception as exc:  # boundary: a timer callback must not kill the scheduler
            log.exception("quiet_timer_failed", error_type=type(exc).__name__)

    def complete(self, series_uid: str, reason: str) -> None:
        """Mark the series complete and queue its series job when its route wants one."""
        with self._lock:
            self.timers.cancel(series_uid)
            series = self.journal.series(series_uid)
            if series is None:
                return
            if series.state == "unrouted":
                return
            if not self.journal.mark_complete(series_uid, reason):
                return
            log.info("series_complete", series_uid=series_uid, reason=reason, n_instances=series.n_instances)
            self._mode.pop(series_uid, None)  # a late instance goes by the urgent lane and is re-routed
            rule = self.routes.get(series.route or "")
            if rule is not None and rule.mode == "series":
                self._enqueue(series, rule, "", series.revision)

    def _enqueue(self, series: SeriesRow, rule: Route, instance_uid: str, revision: int) -> None:
        version = self.model_versions.get(rule.model)
        if version is None:
            log.warning("model_unavailable_for_series", series_uid=series.series_uid, model=rule.model)
            return
        job_id = self.journal.enqueue_job(
            series_uid=series.series_uid, instance_uid=instance_uid, model_id=rule.model,
            model_version=version, revision=revision, route=rule.name,
            priority=PRIORITY_INSTANCE if instance_uid else PRIORITY_SERIES,
        )
        if job_id is not None:
            self._on_job_queued()

    # -- recovery and replay ---------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: re-arm quiet timers, queue a job for every journalled streaming slice
        that has none (whatever its series' state), and the owed series jobs. Idempotent."""
        with self._lock:
            for series in self.journal.series_in_state("receiving"):
                rule = self.routes.get(series.route or "")
                if series.route is None:
                    instances = self.journal.instances(series.series_uid)
                    if not instances:
                        continue
                    series = self._route_series(series, instances[0].path, series.calling_ae)
                    rule = self.routes.get(series.route or "")
                if rule is None:
                    continue
                self._remember(series)
                self._check_complete(series, rule)
            for series_uid, instance_uid in self.journal.slices_without_job():
                row = self.journal.series(series_uid)
                rule = self.routes.get(row.route or "") if row is not None else None
                if row is not None and rule is not None and rule.mode == "instance":
                    self._enqueue(row, rule, instance_uid, row.revision)
            for series in self.journal.series_in_state("complete"):
                rule = self.routes.get(series.route or "")
                if rule is not None and rule.mode == "series":
                    self._enqueue(series, rule, "", series.revision)  # idempotent on its key

    def replay(self, series_uid: str) -> int:
        """Re-run a stored series under a new revision; its results supersede the old ones."""
        with self._lock:
            series = self.journal.series(series_uid)
            if series is None:
                raise KeyError(series_uid)
            revision = self.journal.bump_revision(series_uid)
            series = self.journal.series(series_uid)
            assert series is not None
            if series.route is None:
                instances = self.journal.instances(series_uid)
                if instances:
                    series = self._route_series(series, instances[0].path, series.calling_ae)
            rule = self.routes.get(series.route or "")
            if rule is None:
                return revision
            if rule.mode == "instance":
                for inst in self.journal.instances(series_uid):
                    self._enqueue(series, rule, inst.sop_instance_uid, revision)
            else:
                self._enqueue(series, rule, "", revision)
            return revision
