"""Series assembly: route each new series, stream instance jobs, decide when a series is complete.

A series is complete when its expected count is known and reached (the route's own count, a
single multi-frame object, ImagesInAcquisition, CardiacNumberOfImages), on association release
if the route says so, or after the route's quiet time with no new instance. A late instance
re-opens a complete series (the journal bumps its revision) so its new result supersedes the
old one.

The listener only enqueues here; routing reads the spooled header on this component's own
thread, never on the association thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import pydicom
import structlog

from sidecar.assembly.timers import Timers
from sidecar.journal import Journal, SeriesRow
from sidecar.handoff import AssociationReleased, InstanceReceived
from sidecar.routing import Predicate, route
from sidecar.routing.rules import Route

log = structlog.get_logger("sidecar.assembly")

PRIORITY_INSTANCE = 0  # streaming jobs (LGE per slice) run first
PRIORITY_SERIES = 10


@dataclass(frozen=True)
class _Stop:
    pass


class SeriesAssembler:
    """Owns series state transitions after ingest and queues jobs for the worker."""

    def __init__(
        self,
        journal: Journal,
        routes: Sequence[Route],
        predicates: Mapping[str, Predicate],
        model_versions: Mapping[str, str],
        timers: Timers,
        on_job_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.routes = {r.name: r for r in routes}
        self._ordered = list(routes)
        self.predicates = predicates
        self.model_versions = dict(model_versions)
        self.timers = timers
        self._on_job_queued = on_job_queued
        self._queue: queue.Queue[InstanceReceived | AssociationReleased | _Stop] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()

    @property
    def available_models(self) -> Collection[str]:
        return self.model_versions.keys()

    # -- inputs (called from association threads: enqueue only) ----------------------------

    def on_instance(self, item: InstanceReceived) -> None:
        self._queue.put(item)

    def on_release(self, item: AssociationReleased) -> None:
        self._queue.put(item)

    # -- thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(_Stop())
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                return
            self._handle(item)

    def process_pending(self) -> int:
        """Handle everything queued, on the caller's thread (tests, replay). Returns count."""
        n = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return n
            if not isinstance(item, _Stop):
                self._handle(item)
                n += 1

    def _handle(self, item: InstanceReceived | AssociationReleased) -> None:
        try:
            if isinstance(item, InstanceReceived):
                self._instance(item)
            else:
                self._released(item)
        except Exception as exc:  # boundary: one bad series must not stop assembly
            log.exception("assembly_failed", error_type=type(exc).__name__)

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
        return self.journal.series(series.series_uid) or series

    def _instance(self, item: InstanceReceived) -> None:
        uid = item.header.series_uid
        with self._lock:
            series = self.journal.series(uid)
            if series is None:
                return
            if series.route is None and series.state != "unrouted":
                series = self._route_series(series, item.path, item.calling_ae)
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

    def _arm_quiet(self, series: SeriesRow, rule: Route) -> None:
        quiet = rule.quiet_s
        elapsed = max(0.0, self.timers.now() - series.last_received)
        uid = series.series_uid
        self.timers.arm(uid, max(0.0, quiet - elapsed), lambda: self._quiet_expired(uid))

    def _quiet_expired(self, series_uid: str) -> None:
        try:
            self.complete(series_uid, "quiet time elapsed")
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
        """After a restart: re-arm quiet timers, re-queue streaming jobs and owed series jobs."""
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
                if rule.mode == "instance":
                    for inst in self.journal.instances(series.series_uid):
                        self._enqueue(series, rule, inst.sop_instance_uid, series.revision)
                self._check_complete(series, rule)
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
