"""Composition root: builds every component from settings, starts and stops them in order.

Start order: journal (recover), spool (sweep partial writes), models (load, verify, warm),
the web side port when enabled (so /healthz answers and /readyz says "not yet" during start),
sender (echo destinations), worker, assembler (recover timers and owed jobs), scheduler,
listener last, so nothing is acknowledged before everything behind it runs. Stop is the reverse.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from models.registry import Factory, Predicate, load_predicates
from sidecar.alerts.fanout import AlertChannel, AlertFanout, DashboardChannel, LogChannel, WebhookChannel
from sidecar.assembly.assembler import SeriesAssembler
from sidecar.assembly.orphans import QuietGuard, adopt_orphans
from sidecar.assembly.timers import SchedulerTimers, Timers
from sidecar.egress.sender import Sender
from sidecar.egress.transport import StoreTransport
from sidecar.handoff import InstanceReceived
from sidecar.ingest.admission import AdmissionLimits
from sidecar.ingest.listener import Listener, ListenerConfig
from sidecar.ingest.reconcile import reconcile_spool, retention_sweep
from sidecar.ingest.spool import Spool
from sidecar.ingest.stow import StowReceiver
from sidecar.journal import Journal
from sidecar.logging import register_phi
from sidecar.pipeline.budgets import DecodeBudget
from sidecar.pipeline.failures import RetryPolicy
from sidecar.pipeline.lanes import LaneStatus
from sidecar.pipeline.model_set import load_models
from sidecar.pipeline.procs import WorkerPool
from sidecar.pipeline.worker import Worker
from sidecar.routing import validate_routes
from sidecar.settings import DicomAlertChannel, LogAlertChannel, Settings, WebhookAlertChannel
from sidecar.web.app import WebContext, create_app
from sidecar.web.events import EventHub, LiveFeed
from sidecar.web.health import CachedCheck, Check, Readiness
from sidecar.web.metrics import Metrics
from sidecar.web.server import WebServer

log = structlog.get_logger("sidecar.app")


@dataclass
class Seams:
    """What a test may swap: extra model factories, predicates, transports, timers, clock."""

    factories: Mapping[str, str | Factory] = field(default_factory=dict)
    predicates: Mapping[str, Predicate] = field(default_factory=dict)
    transports: Mapping[str, StoreTransport] | None = None
    timers: Timers | None = None
    clock: Any = time.time


class Sidecar:
    """The running service."""

    def __init__(self, settings: Settings, seams: Seams | None = None) -> None:
        self.settings = settings
        self.seams = seams or Seams()
        svc = settings.service
        self.journal = Journal(svc.journal, clock=self.seams.clock, node=svc.node, lease_s=svc.journal_lease_s)
        self.metrics = Metrics(self.journal, [d.name for d in svc.destinations], parts=lambda: self.parts())
        self.hub = EventHub()
        self.feed = LiveFeed(self.hub, self.metrics)
        self.journal.observe(self.feed.journal_event)
        self.spool = Spool(svc.spool_dir, svc.limits.min_free_disk_bytes)
        self.models, self.unavailable = load_models(settings, settings.routes, self.seams.factories)
        for model_id, why in self.unavailable.items():
            names = [r.name for r in settings.routes if r.model == model_id]
            log.warning("routes_disabled_model_unavailable", model=model_id, routes=names, reason=why)
        self.predicates = load_predicates(self.seams.predicates)
        for warning in validate_routes(settings.routes, self.predicates.keys()):
            log.warning("route_warning", detail=warning)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.sender = Sender(self.journal, svc.destinations, svc.sender, svc.ae_title,
                             transports=self.seams.transports, clock=self.seams.clock)
        channels: list[AlertChannel] = []
        alert_destinations: list[str] = []
        for ch in svc.alert_channels:
            if isinstance(ch, LogAlertChannel):
                channels.append(LogChannel())
            elif isinstance(ch, WebhookAlertChannel):
                token = ch.token.get_secret_value() if ch.token else None
                channels.append(WebhookChannel(ch.url, token, ch.timeout_s))
            elif isinstance(ch, DicomAlertChannel):
                alert_destinations.append(ch.destination)
        channels.append(DashboardChannel(self.feed.alert))
        self.fanout = AlertFanout(channels)
        self._restarts: dict[str, int] = {}
        self._stopping = False
        self.worker: Worker | WorkerPool
        if svc.worker.isolation == "process":  # inference in supervised worker processes
            self.worker = WorkerPool(settings, self.journal, factories=self.seams.factories, fanout=self.fanout,
                                     observer=self.feed, on_event=self.feed.journal_event,
                                     on_results_queued=self.sender.notify)
        else:
            self.worker = Worker(
                self.journal, self.models, settings.routes, svc.results_dir,
                alert_destinations=alert_destinations, fanout=self.fanout,
                on_results_queued=self.sender.notify, poll_s=svc.worker.poll_s,
                torch_threads=svc.worker.torch_threads, max_batch=svc.worker.max_batch, observer=self.feed,
                retry=RetryPolicy(svc.worker.max_attempts, svc.worker.retry_initial_s, svc.worker.retry_max_s),
                budget=DecodeBudget(svc.worker.max_decoded_instance_bytes, svc.worker.max_decoded_job_bytes),
                clock=self.seams.clock, min_free_bytes=svc.limits.min_free_disk_bytes,
            )
        self.journal.renew_only(self.worker.held_jobs)
        self.timers = self.seams.timers or SchedulerTimers(self.scheduler, self.seams.clock)
        if self.journal.shared:  # another node may have received instances since a timer was armed
            self.timers = QuietGuard(self.timers, self.journal, {r.name: r.quiet_s for r in settings.routes})
        self.assembler = SeriesAssembler(
            self.journal, settings.routes, self.predicates,
            {m: model.card.version for m, model in self.models.items()}, self.timers,
            on_job_queued=self.worker.notify,
        )
        self.listener = Listener(
            ListenerConfig(
                ae_title=svc.ae_title, bind_host=svc.bind_host, port=svc.port,
                max_instance_bytes=svc.limits.max_instance_bytes,
                max_associations=svc.limits.max_associations, max_pdu_bytes=svc.limits.max_pdu_bytes,
                calling_ae_titles=tuple(svc.access.calling_ae_titles),
                require_called_ae_title=svc.access.require_called_ae_title,
                allowed=tuple(svc.access.allowed), tls=svc.tls,
                admission=AdmissionLimits(
                    deadline_s=svc.limits.request_deadline_s, per_address=svc.limits.pending_per_address,
                    total=svc.limits.pending_total, max_request_bytes=svc.limits.max_request_bytes,
                    backlog=svc.limits.listen_backlog),
                idle_timeout_s=svc.limits.association_idle_s,
            ),
            self.spool, self.journal, on_instance=self._instance_received,
            on_release=self.assembler.on_release, on_phi=register_phi, observer=self.metrics,
        )
        self.web: WebServer | None = None
        if svc.web.enabled:
            self.web = WebServer(create_app(WebContext(
                journal=self.journal, hub=self.hub, metrics=self.metrics, readiness=self._readiness(),
                models={m: model.card for m, model in self.models.items()}, unavailable=self.unavailable,
                admin_token=svc.web.admin_token, show_patient_names=svc.web.show_patient_names,
                on_requeue=self.sender.notify,
            )), svc.web.host, svc.web.port, self.hub, allowed_hosts=svc.web.allowed_hosts,
                stow=StowReceiver(self.listener.service, self.spool, svc.web.admin_token,
                                  max_body_bytes=svc.limits.max_stow_bytes).handle)
        self._started = False
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self.listener.port

    def start(self) -> None:
        requeued = self.journal.recover()
        # A shared spool holds other nodes' writes in flight: their partial files are not ours to sweep.
        swept = 0 if self.journal.shared else self.spool.sweep_partials()
        reconciled = reconcile_spool(self.spool, self.journal)
        log.info("sidecar_starting", requeued_jobs=requeued, partial_files_removed=swept,
                 spool_files_rerecorded=reconciled,
                 models=sorted(self.models), unavailable=sorted(self.unavailable))
        if self.web is not None:
            self.web.start()  # first: /healthz answers, /readyz says "not yet" until the listener binds
        self.sender.start()
        self.worker.start()
        if isinstance(self.worker, WorkerPool) and not self.worker.ready.wait(self.settings.service.worker.start_timeout_s):
            log.warning("worker_processes_not_ready", waited_s=self.settings.service.worker.start_timeout_s)
        self.journal.on_remote_work(jobs=self.worker.notify, results=self.sender.notify)
        self.assembler.start()
        self.scheduler.start()
        self.scheduler.add_job(self._retention_sweep, "interval", seconds=60, id="retention",
                               replace_existing=True)
        self.scheduler.add_job(self._check_parts, "interval", seconds=1, id="parts", replace_existing=True)
        if self.journal.shared:
            self.scheduler.add_job(self._adopt_orphans, "interval", id="orphans", replace_existing=True,
                                   seconds=max(1.0, self.settings.service.journal_lease_s / 2))
        self.assembler.recover()
        self.listener.start()
        self._started, self._stopping = True, False
        log.info("sidecar_ready", port=self.port, ae_title=self.settings.service.ae_title)

    def stop(self) -> None:
        if not self._started:
            return
        self._stopping = True  # from here on a stopped part is not restarted
        self.listener.stop()
        self.assembler.stop()
        self.worker.stop()
        self.sender.stop()
        if self.web is not None:
            self.web.stop()
        self.scheduler.shutdown(wait=False)
        self.journal.close()
        self._started = False
        self._stopped.set()
        log.info("sidecar_stopped")

    def wait(self) -> None:
        self._stopped.wait()

    def _instance_received(self, item: InstanceReceived) -> None:
        self.assembler.on_instance(item)
        try:
            self.feed.instance(item)
        except Exception as exc:  # boundary: the dashboard never fails a store already journalled
            log.error("live_feed_failed", error_type=type(exc).__name__)

    def _readiness(self) -> Readiness:
        """Listener bound, models warm, journal writable, destinations answering C-ECHO."""

        def listener() -> Check:
            return Check(self.listener.bound, f"port {self.port}" if self.listener.bound else "not bound")

        def models() -> Check:
            wanted = {r.model for r in self.settings.routes if r.enabled}
            ok = not wanted or bool(self.models)
            detail = f"loaded {sorted(self.models)}"
            if self.unavailable:
                detail += f"; unavailable {sorted(self.unavailable)}"
            return Check(ok and self._started, detail if self._started else "starting")

        def journal() -> Check:
            self.journal.probe_write()
            return Check(True, "writable")

        def lanes() -> Check:
            down = [p for p in self.parts() if not p.up]
            if down:
                return Check(False, "; ".join(
                    f"{p.name} down (restarts {p.restarts}{': ' + p.last_error if p.last_error else ''})"
                    for p in down)[:300])
            return Check(True, f"{len(self.parts())} up")

        def disk() -> Check:
            free, need = self.data_disk_free(), self.settings.service.limits.min_free_disk_bytes
            if free < need:
                return Check(False, f"data disk {free // 2**20} MiB free, under its {need // 2**20} MiB watermark")
            return Check(True, f"{free // 2**20} MiB free")

        def destinations() -> Check:
            failed = {name: why for name, why in self.sender.echo_all().items() if why is not None}
            if failed:
                return Check(False, "; ".join(f"{n}: {w}" for n, w in sorted(failed.items()))[:300])
            return Check(True, f"{len(self.sender.destinations)} answered")

        return Readiness({"listener": listener, "models": models, "journal": journal, "lanes": lanes,
                          "disk": disk, "destinations": CachedCheck(destinations)})

    def data_disk_free(self) -> int:
        """Free bytes on the data disk (spool, results, SQLite journal)."""
        folder = self.settings.service.data_dir
        folder.mkdir(parents=True, exist_ok=True)
        return int(shutil.disk_usage(folder).free)

    def parts(self) -> list[LaneStatus]:
        """Every supervised long-lived part: worker lanes, sender, assembler, alert fan-out."""
        out = list(self.worker.lanes())
        if self._started:
            senders = list(getattr(self.sender, "_threads", []))
            out.append(LaneStatus("sender", all(t.is_alive() for t in senders), self._restarts.get("sender", 0)))
            out.append(LaneStatus("assembler", self._assembler_alive(), self._restarts.get("assembler", 0)))
            out.append(LaneStatus("alert-fanout", self.fanout.alive(), self.fanout.restarts))
        return out

    def _assembler_alive(self) -> bool:
        thread = getattr(self.assembler, "_thread", None)
        return thread is not None and thread.is_alive()

    def _check_parts(self) -> None:
        """Every second: start again a sender or assembler whose thread died (counted)."""
        if not self._started or self._stopping:
            return
        if not self._assembler_alive():
            self._restarts["assembler"] = self._restarts.get("assembler", 0) + 1
            log.error("part_restarted", part="assembler", restarts=self._restarts["assembler"])
            self.assembler.start()
        senders = list(getattr(self.sender, "_threads", []))
        if senders and not all(t.is_alive() for t in senders):
            self._restarts["sender"] = self._restarts.get("sender", 0) + 1
            log.error("part_restarted", part="sender", restarts=self._restarts["sender"])
            self.sender.stop(1.0)
            self.sender.start()

    def _retention_sweep(self) -> int:
        now = self.seams.clock()
        removed = retention_sweep(self.spool, self.journal, now - self.settings.service.sender.retention_s)
        self.journal.prune(now - self.settings.service.sender.history_s)  # rows of long-finished series
        return removed

    def _adopt_orphans(self) -> int:
        return adopt_orphans(self.journal, self.assembler, {r.name: r.quiet_s for r in self.settings.routes},
                             self.settings.service.journal_lease_s, self.seams.clock())


def serve_until_signalled(app: Sidecar) -> None:
    """Start `app`, stop it cleanly on SIGTERM or SIGINT, and return once it has stopped.

    For a process's main thread (`sidecar serve` and the test and bench entry points): the
    handlers only call `app.stop()`, which sets the event `app.wait()` is blocked on.
    """

    def _stop(signum: int, frame: FrameType | None) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app.start()
    app.wait()
