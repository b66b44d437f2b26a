"""Worker processes: inference out of the listener's process, supervised, with job budgets.

`WorkerPool` (in the service process) starts one dedicated streaming worker process (lane
`streaming`: instance jobs only, so a slice never waits behind series work) and
`processes` general ones (lane `any`: streaming first, then series), each a `spawn`ed Python
with torch pinned to `torch_threads`. They meet the listener only through the journal (SQLite
WAL serves several processes; claims carry leases, and each process claims as `NODE/wN`, so
`Journal.recover()` at start frees their claims too) and a one-way message queue back to the
service process: alerts for the fan-out, timeline events and inference times for the dashboard
and metrics, and "results queued" for the sender. A wake event per process carries "a job was
queued" the other way.

Supervision (`check()`, every `check_s` on the pool's own thread):
- a process that exited (killed, OOM, crashed) has its running jobs put back with the reason
  (`WorkerDied`; counted as an attempt, so a job that keeps killing its worker is quarantined
  by the next claim) and is replaced; restarts are counted;
- a process whose resident memory exceeds `rss_budget_bytes`, or that has held one job longer
  than `job_timeout_s`, is killed (SIGKILL) and handled the same way, with that reason. The
  service keeps running throughout.
`stop()` sets each process's stop event, sends SIGTERM, and SIGKILLs what is still alive when
`stop_grace_s` has passed: the service stops within its grace whatever a job is doing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from typing import Any, Literal

import structlog

from sidecar.alerts.fanout import Alert, AlertFanout
from sidecar.journal import Event, Journal
from sidecar.pipeline.failures import RetryPolicy, describe
from sidecar.pipeline.lanes import LaneStatus

log = structlog.get_logger("sidecar.procs")

Message = tuple[Any, ...]


@dataclass(frozen=True)
class ProcessBudget:
    rss_budget_bytes: int = 2 << 30
    job_timeout_s: float = 300.0


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process needs; pickled to the spawned child."""

    index: int
    lane: str  # "streaming" or "any"
    node: str
    settings: Any  # sidecar.settings.Settings (pydantic, picklable)
    factories: Mapping[str, Any] = field(default_factory=dict)
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "json"


class _ForwardingFanout(AlertFanout):
    """In a worker process: alerts go to the service process's fan-out over the queue."""

    def __init__(self, out: MpQueue[Message]) -> None:
        super().__init__([])
        self._out = out

    def publish(self, alert: Alert) -> None:
        self._out.put(("alert", alert))


class _ForwardingObserver:
    def __init__(self, out: MpQueue[Message]) -> None:
        self._out = out

    def inferred(self, model_id: str, seconds: float) -> None:
        self._out.put(("inferred", model_id, seconds))

    def finished(self, job: Any, findings: Any, instance_numbers: Mapping[str, int | None]) -> None:
        self._out.put(("finished", job, findings, dict(instance_numbers)))


def worker_main(spec: WorkerSpec, out: MpQueue[Message], wake: MpEvent, stop: MpEvent) -> None:
    """The body of a worker process (spawned: imports models and torch here, not in the listener)."""
    from sidecar.logging import configure_logging
    from sidecar.pipeline.budgets import DecodeBudget
    from sidecar.pipeline.model_set import load_models
    from sidecar.pipeline.worker import Worker
    from sidecar.settings import DicomAlertChannel

    _die_with_parent()
    if spec.lane == "streaming":
        set_niceness(spec.settings.service.worker.streaming_nice)
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service process decides when we stop
    settings = spec.settings
    svc = settings.service
    configure_logging(spec.log_level, spec.log_format)
    threads = svc.worker.torch_threads
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a service whose models need no torch
        pass
    journal = Journal(svc.journal, node=spec.node, lease_s=svc.journal_lease_s)
    models, unavailable = load_models(settings, settings.routes, spec.factories)
    w = svc.worker
    worker = Worker(
        journal, models, settings.routes, svc.results_dir,
        alert_destinations=[c.destination for c in svc.alert_channels if isinstance(c, DicomAlertChannel)],
        fanout=_ForwardingFanout(out), on_results_queued=lambda: out.put(("results",)),
        poll_s=w.poll_s, torch_threads=threads, max_batch=w.max_batch, observer=_ForwardingObserver(out),
        retry=RetryPolicy(w.max_attempts, w.retry_initial_s, w.retry_max_s),
        budget=DecodeBudget(w.max_decoded_instance_bytes, w.max_decoded_job_bytes),
        lanes=(spec.lane,), min_free_bytes=svc.limits.min_free_disk_bytes,
    )
    journal.renew_only(worker.held_jobs)
    journal.observe(lambda ev: out.put(("event", ev)))
    worker.start()
    out.put(("ready", spec.index, os.getpid(), sorted(models), sorted(unavailable)))
    while not stop.is_set():
        if wake.wait(0.5):
            wake.clear()
            worker.notify()
        if os.getppid() != parent:  # the service process died (SIGKILL): nobody supervises us
            os._exit(1)
    worker.stop(max(1.0, w.stop_grace_s - 1.0))
    journal.close()


class _Child:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.proc: SpawnProcess | None = None
        self.wake: MpEvent | None = None
        self.stop: MpEvent | None = None
        self.restarts = 0
        self.last_error = ""
        self.kill_reason = ""
        self.job_seen: dict[int, float] = {}

    @property
    def name(self) -> str:
        return f"worker-process-{self.spec.index}-{self.spec.lane}"


class WorkerPool:
    """Starts, supervises and stops the worker processes (see the module docstring)."""

    def __init__(
        self, settings: Any, journal: Journal, *, factories: Mapping[str, Any] | None = None,
        fanout: AlertFanout, observer: Any = None, on_event: Callable[[Event], None] = lambda ev: None,
        on_results_queued: Callable[[], None] = lambda: None, check_s: float = 0.25,
        rss_of: Callable[[int], int | None] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        svc = settings.service
        self.settings, self.journal, self.fanout, self.observer = settings, journal, fanout, observer
        self.on_event, self.on_results_queued = on_event, on_results_queued
        self.budget = ProcessBudget(svc.worker.rss_budget_bytes, svc.worker.job_timeout_s)
        self.retry = RetryPolicy(svc.worker.max_attempts, svc.worker.retry_initial_s, svc.worker.retry_max_s)
        self.stop_grace_s = svc.worker.stop_grace_s
        self.check_s = check_s
        self._rss_of = rss_of or rss_bytes
        self._clock = clock
        self._ctx = mp.get_context("spawn")
        self._out: MpQueue[Message] = self._ctx.Queue()
        lanes = ["streaming"] + ["any"] * svc.worker.processes
        self.children = [
            _Child(WorkerSpec(i, lane, f"{journal.node}/w{i}", settings, dict(factories or {}),
                              svc.log_level, "json" if svc.log_format == "auto" else svc.log_format))
            for i, lane in enumerate(lanes)
        ]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()
        self._ready_count = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        for child in self.children:
            self._spawn(child)
        self._threads = [
            threading.Thread(target=self._pump, name="worker-pool-messages", daemon=True),
            threading.Thread(target=self._supervise, name="worker-pool-supervisor", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _spawn(self, child: _Child) -> None:
        child.wake, child.stop = self._ctx.Event(), self._ctx.Event()
        child.proc = self._ctx.Process(target=worker_main, args=(child.spec, self._out, child.wake, child.stop),
                                       name=child.name, daemon=True)
        child.proc.start()
        child.job_seen = {}
        child.kill_reason = ""
        log.info("worker_process_started", worker=child.name, pid=child.proc.pid)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every worker process within the grace period (SIGKILL after it), whatever it runs."""
        grace = self.stop_grace_s if timeout_s is None else timeout_s
        self._stopping.set()
        for child in self.children:
            if child.stop is not None:
                child.stop.set()
            if child.proc is not None and child.proc.is_alive() and child.proc.pid:
                os.kill(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.proc is None:
                continue
            child.proc.join(max(0.0, deadline - time.monotonic()))
            if child.proc.is_alive() and child.proc.pid:
                log.warning("worker_process_killed_at_stop", worker=child.name, grace_s=grace)
                os.kill(child.proc.pid, signal.SIGKILL)
                child.proc.join(5.0)
        self._out.put(("stop",))
        for t in self._threads:
            t.join(5.0)
        self._threads = []

    def notify(self) -> None:
        for child in self.children:
            if child.wake is not None:
                child.wake.set()

    def held_jobs(self) -> list[int]:
        return []  # this process holds no jobs; each worker process renews its own

    def lanes(self) -> list[LaneStatus]:
        return [LaneStatus(c.name, c.proc is not None and c.proc.is_alive(), c.restarts, c.last_error)
                for c in self.children]

    def pids(self) -> dict[str, int | None]:
        return {c.name: (c.proc.pid if c.proc is not None else None) for c in self.children}

    # -- supervision ----------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.wait(self.check_s):
            try:
                self.check()
            except Exception as exc:  # boundary: the supervisor keeps watching through a journal error
                log.error("worker_pool_check_failed", error=describe(exc)[:300])

    def check(self) -> None:
        """Replace dead processes (their jobs put back), and kill those over a budget."""
        for child in self.children:
            if self._stopping.is_set() or child.proc is None:
                return
            if not child.proc.is_alive():
                self._replace(child)
                continue
            pid = child.proc.pid
            rss = self._rss_of(pid) if pid else None
            if rss is not None and rss > self.budget.rss_budget_bytes:
                self._kill(child, f"JobOverBudget: worker memory {rss // 2**20} MiB over its"
                                  f" {self.budget.rss_budget_bytes // 2**20} MiB budget")
                continue
            now = self._clock()
            running = {j.id for j in self.journal.running_jobs(child.spec.node)}
            child.job_seen = {jid: child.job_seen.get(jid, now) for jid in running}
            late = [jid for jid, since in child.job_seen.items() if now - since > self.budget.job_timeout_s]
            if late:
                self._kill(child, f"JobTimedOut: a job ran past its {self.budget.job_timeout_s:.0f} s budget")

    def _kill(self, child: _Child, reason: str) -> None:
        log.error("worker_process_over_budget", worker=child.name, reason=reason)
        child.kill_reason = reason
        if child.proc is not None and child.proc.pid:
            os.kill(child.proc.pid, signal.SIGKILL)
            child.proc.join(10.0)
        self._replace(child)

    def _replace(self, child: _Child) -> None:
        code = child.proc.exitcode if child.proc is not None else None
        reason = child.kill_reason or f"WorkerDied: worker process exited with code {code}"
        now = time.time()
        for job in self.journal.running_jobs(child.spec.node):
            self.journal.retry_job(job.id, reason, now + self.retry.backoff_s(job.attempts))
        child.restarts += 1
        child.last_error = reason
        log.error("worker_process_replaced", worker=child.name, reason=reason, restarts=child.restarts)
        self._spawn(child)

    # -- messages from the worker processes ---------------------------------------------------

    def _pump(self) -> None:
        while True:
            try:
                msg = self._out.get(timeout=1.0)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            except (EOFError, OSError):
                return
            if msg[0] == "stop":
                return
            try:
                self._handle(msg)
            except Exception as exc:  # boundary: a message the dashboard cannot take never stops the pump
                log.error("worker_message_failed", kind=str(msg[0]), error=describe(exc)[:300])

    def _handle(self, msg: Message) -> None:
        kind = msg[0]
        if kind == "alert":
            self.fanout.publish(msg[1])
        elif kind == "results":
            self.on_results_queued()
        elif kind == "event":
            self.on_event(msg[1])
        elif kind == "inferred" and self.observer is not None:
            self.observer.inferred(msg[1], msg[2])
        elif kind == "finished" and self.observer is not None:
            self.observer.finished(msg[1], msg[2], msg[3])
        elif kind == "ready":
            self._ready_count += 1
            log.info("worker_process_ready", index=msg[1], pid=msg[2], models=msg[3])
            if self._ready_count >= len(self.children):
                self.ready.set()


def set_niceness(nice: int) -> bool:
    """This process's niceness (the streaming worker: -5 by default, so under a burst it gets the
    CPU ahead of the listener's association threads; bench.load's claim stage p95 ~250 -> ~60 ms).
    A lower value needs root or CAP_SYS_NICE: refused, it is logged and the process runs as it was."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("worker_priority_refused", nice=nice, reason=exc.strerror or str(exc))
        return False
    return True


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the service process dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent-PID check in the loop covers it
        pass


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


