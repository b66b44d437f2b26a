"""The inference worker: takes journal jobs by priority, runs the model, writes and queues results.

Streaming (`instance`) jobs have the lowest priority number and run first. Each job has one
error boundary: a failure marks the job failed with its reason and the worker goes on. Results
are written durably under the results folder before the job is marked done, and the job's
completion and its outbox entries are one journal transaction; result UIDs are derived, so a
job re-run after a crash produces the same objects and the outbox does not queue them twice.

A failed job of an alert route is never a silent "no alert": besides the failed job and its
reason, an "ai_unavailable" alert goes through the fan-out (log, webhook, dashboard), once per
job key, saying the image was not assessed and why (e.g. every Triton endpoint down).

Failures follow the taxonomy in `failures.py`: a transient one (backend, journal, disk, time)
puts the job back with backoff, a permanent one (the input cannot be analysed) fails it, and a
job claimed more than `RetryPolicy.max_attempts` times is quarantined instead of run again.
Before any decode the job's instances are checked against the decoded-size budget (`budgets.py`).
The lanes run under a `Supervisor` (`lanes.py`); `held_jobs()` names the jobs a live lane holds,
and only their leases are renewed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
import structlog
from pydicom import Dataset

from models.backends import BackendError
from models.base import ClinicalModel
from models.findings import Findings
from sidecar.alerts.fanout import Alert, AlertFanout
from sidecar.errors import JournalError, ModelError
from sidecar.journal import Job, Journal
from sidecar.pipeline.budgets import DecodeBudget, check_budget
from sidecar.pipeline.failures import RetryPolicy, describe, is_transient
from sidecar.pipeline.lanes import Lane, LaneStatus, Supervisor
from sidecar.pipeline.warmup import warm_up
from sidecar.results import build_results
from sidecar.results.alert_image import build_alert_image
from sidecar.results.store import ResultStore
from sidecar.routing.rules import Route

log = structlog.get_logger("sidecar.worker")

_DEFER_BYTES = 64 * 1024  # elements larger than this (pixel data) are read only when used


@dataclass(frozen=True)
class _Inferred:
    """A streaming job inferred and alerted, its results still to be built."""

    job: Job
    model: ClinicalModel
    rule: Route
    datasets: list[Dataset]
    findings: Findings


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    ok: bool
    n_results: int
    reason: str = ""
    outcome: str = "done"  # done | retry | failed | quarantined


class JobObserver(Protocol):
    """Told what the worker did, for metrics and the dashboard; must be quick and never block."""

    def inferred(self, model_id: str, seconds: float) -> None:
        """One forward pass (prepare + predict) of `model_id` took `seconds`."""
        ...

    def finished(self, job: Job, findings: Findings, instance_numbers: Mapping[str, int | None]) -> None:
        """A job is done; `instance_numbers` maps its source SOP Instance UIDs to InstanceNumber."""
        ...


class Worker:
    """One thread running jobs one at a time (models keep their weights warm between jobs)."""

    def __init__(
        self,
        journal: Journal,
        models: Mapping[str, ClinicalModel],
        routes: Sequence[Route],
        results_dir: Path,
        *,
        alert_destinations: Sequence[str] = (),
        fanout: AlertFanout | None = None,
        on_results_queued: Callable[[], None] = lambda: None,
        poll_s: float = 0.2,
        torch_threads: int | None = None,
        max_batch: int = 16,
        observer: JobObserver | None = None,
        retry: RetryPolicy | None = None,
        budget: DecodeBudget | None = None,
        clock: Callable[[], float] = time.time,
        lanes: Sequence[str] = ("any", "streaming"),
        min_free_bytes: int = 0,
        warm: bool = True,
    ) -> None:
        self.warm = warm  # warm the models and result writers up in start(), before the first job
        self._images_queued: set[int] = set()  # jobs whose alert images are queued ahead of their SR
        self.journal = journal
        self.observer = observer
        self.models = dict(models)
        self.routes = {r.name: r for r in routes}
        self.store = ResultStore(results_dir, min_free_bytes)  # result writes keep the spool's watermark
        self.alert_destinations = list(alert_destinations)
        self.fanout = fanout or AlertFanout([])
        self._on_results_queued = on_results_queued
        self.poll_s = poll_s
        self.torch_threads = torch_threads
        self.max_batch = max(1, max_batch)
        self.retry = retry or RetryPolicy()
        self.budget = budget or DecodeBudget()
        self._clock = clock
        self._lane_kinds = tuple(lanes)
        self._wakes = {kind: threading.Event() for kind in self._lane_kinds}
        self._stop = threading.Event()
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self.supervisor = Supervisor()

    def notify(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    def start(self) -> None:
        """Lanes `any` (streaming first, then series) and `streaming` (instance jobs only), so a
        slice never waits behind a long series job; each under the supervisor's error boundary.
        The models and the result writers are warmed up first (sidecar/pipeline/warmup.py)."""
        if self.warm:
            warm_up(self.models)
        self._stop.clear()
        self.supervisor = Supervisor([
            Lane("worker" if kind == "any" else f"worker-{kind}", self._lane_body(kind))
            for kind in self._lane_kinds
        ])
        self.supervisor.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self.notify()
        self.supervisor.stop(timeout_s)

    def lanes(self) -> list[LaneStatus]:
        return self.supervisor.status()

    def held_jobs(self) -> list[int]:
        """The jobs a lane of this worker is running now: the only ones whose leases are renewed."""
        with self._held_lock:
            return sorted(self._held)

    def _lane_body(self, kind: str) -> Callable[[threading.Event], None]:
        wake = self._wakes[kind]

        def body(stop: threading.Event) -> None:
            if self.torch_threads:
                import torch

                torch.set_num_threads(self.torch_threads)
            while not (stop.is_set() or self._stop.is_set()):
                if self.run_once(streaming_only=kind == "streaming") is None:
                    wake.wait(self.poll_s)
                    wake.clear()

        return body

    @contextmanager
    def _holding(self, jobs: Sequence[Job]) -> Iterator[None]:
        with self._held_lock:
            self._held.update(j.id for j in jobs)
        try:
            yield
        finally:
            with self._held_lock:
                self._held.difference_update(j.id for j in jobs)

    def run_once(self, streaming_only: bool = False) -> list[JobOutcome] | None:
        """Claim and run one job, or a batch of streaming jobs of one model; None when idle."""
        job = self.journal.claim_job(streaming_only=streaming_only)
        if job is None:
            return None
        with self._holding([job]):
            more = self.journal.claim_batch(job, self.max_batch - 1) if job.instance_uid else []
            with self._holding(more):
                given_up = [j for j in (job, *more) if j.attempts > self.retry.max_attempts]
                out = [self._quarantine(j) for j in given_up]
                runnable = [j for j in (job, *more) if j not in given_up]
                if runnable and runnable[0].instance_uid:  # slices, on either lane: alerts ahead of SRs
                    return out + self.run_streaming(runnable)
                return out + [self.run_job(j) for j in runnable]

    def _quarantine(self, job: Job) -> JobOutcome:
        """A job claimed once too often (its runs kept failing, or kept killing their worker)."""
        last = job.reason or "its worker stopped while running it"
        reason = f"quarantined after {job.attempts - 1} attempts; last: {last}"[:500]
        log.error("job_quarantined", job_id=job.id, model=job.model_id, attempts=job.attempts - 1)
        self.journal.quarantine_job(job.id, reason)
        self._tell_unavailable(job, reason)
        return JobOutcome(job.id, False, 0, reason, "quarantined")

    def drain(self) -> list[JobOutcome]:
        """Run jobs until none is queued (tests, replay)."""
        out: list[JobOutcome] = []
        while (o := self.run_once()) is not None:
            out.extend(o)
        return out

    # -- one job ---------------------------------------------------------------------------

    def run_job(self, job: Job) -> JobOutcome:
        started = time.perf_counter()
        stage = ["load"]
        try:
            model, rule, datasets = self._load(job)
            t0 = time.perf_counter()
            stage[0] = "prepare"
            batch = model.prepare(datasets)
            stage[0] = "predict"
            findings = model.predict(batch)
            stage[0] = "results"
            self._observe("inferred", job.model_id, time.perf_counter() - t0)
            if job.instance_uid:  # a streaming job reports on its own instance, without a summary
                findings = findings.for_instance(job.instance_uid)
            findings = _domain_policy(rule, findings)
            if "alert" in rule.outputs:  # the technologist hears first; the SR is built after
                self._publish_alerts(job, findings, datasets[0], live=rule.live)
            n = self._finish(job, model, rule, findings, datasets)
        except Exception as exc:  # boundary: a failing job never stops the worker
            return self._failed(job, exc, stage[0])
        log.info("job_done", job_id=job.id, model=job.model_id, n_results=n,
                 ms=round((time.perf_counter() - started) * 1000, 1), streaming=bool(job.instance_uid))
        self._on_results_queued()
        return JobOutcome(job.id, True, n)

    def run_streaming(self, jobs: list[Job]) -> list[JobOutcome]:
        """Streaming jobs (slices): alerts ahead of SR builds, across slices as they arrive.

        The claimed slices are inferred in one forward pass and their alerts published; then their
        results are built one job at a time, and before each build any slice queued meanwhile is
        claimed, inferred and alerted first. A slice's alert so waits for at most one result
        build, not for every SR of the slices before it. Each job is completed only once its
        results are queued, so a stop or a kill in between re-runs it (its alert key is already
        journalled: the technologist is not told twice).
        """
        started = time.perf_counter()
        pending: list[_Inferred] = []
        outcomes = self._infer_and_alert(jobs, pending)
        held = list(jobs)
        with self._held_lock:
            self._held.update(j.id for j in jobs)
        try:
            while pending:
                item = pending.pop(0)
                try:
                    n = self._finish(item.job, item.model, item.rule, item.findings, item.datasets)
                    outcomes.append(JobOutcome(item.job.id, True, n))
                except Exception as exc:  # boundary: one slice's results failing never fails the rest
                    outcomes.append(self._failed(item.job, exc, "results"))
                self._on_results_queued()
                if len(pending) < self.max_batch and not self._stop.is_set():
                    newer = self._claim_streaming(self.max_batch - len(pending))
                    if newer:
                        with self._held_lock:
                            self._held.update(j.id for j in newer)
                        held.extend(newer)
                        outcomes.extend(self._infer_and_alert(newer, pending))
        finally:
            with self._held_lock:
                self._held.difference_update(j.id for j in held)
        log.info("streaming_done", n_jobs=len(outcomes), ms=round((time.perf_counter() - started) * 1000, 1))
        return outcomes

    def _claim_streaming(self, limit: int) -> list[Job]:
        """Streaming jobs queued while the lane was busy (one model's, up to `limit`)."""
        first = self.journal.claim_job(streaming_only=True)
        if first is None:
            return []
        more = self.journal.claim_batch(first, limit - 1) if limit > 1 else []
        return [first, *more]

    def _infer_and_alert(self, jobs: list[Job], pending: list[_Inferred]) -> list[JobOutcome]:
        """Infer `jobs` (one forward pass when they share a model) and publish their alerts; the
        jobs whose results are still to be built go to `pending`. Returns the outcomes of jobs
        already ended here (quarantined, or run alone after the shared pass failed)."""
        given_up = [j for j in jobs if j.attempts > self.retry.max_attempts]
        out = [self._quarantine(j) for j in given_up]
        jobs = [j for j in jobs if j not in given_up]
        if not jobs:
            return out
        try:
            loaded = [self._load(job) for job in jobs]
            if len({id(m) for m, _, _ in loaded}) != 1:
                raise ModelError("streaming jobs of more than one model in one pass")
            model = loaded[0][0]
            t0 = time.perf_counter()
            findings = model.predict(model.prepare([ds for _, _, dss in loaded for ds in dss]))
            self._observe("inferred", jobs[0].model_id, time.perf_counter() - t0)
        except Exception as exc:  # boundary: run each job alone, which records its own failure
            if len(jobs) > 1:
                log.warning("batch_failed_running_singly", n_jobs=len(jobs), error_type=type(exc).__name__)
            return out + [self.run_job(job) for job in jobs]
        for job, (model, rule, dss) in zip(jobs, loaded, strict=True):
            mine = _domain_policy(rule, findings.for_instance(job.instance_uid))
            if "alert" in rule.outputs:
                try:
                    self._publish_alerts(job, mine, dss[0], live=rule.live)
                except Exception as exc:  # boundary: the job's results still get built
                    log.error("alert_publish_failed", job_id=job.id, error_type=type(exc).__name__)
            pending.append(_Inferred(job, model, rule, dss, mine))
        return out

    def _failed(self, job: Job, exc: Exception, stage: str = "") -> JobOutcome:
        """Record a failed run: back to the queue with backoff when transient, failed when not."""
        reason = describe(exc, stage)
        transient = is_transient(exc)
        outcome = "retry" if transient and job.attempts < self.retry.max_attempts else "failed"
        if transient and outcome == "failed":
            outcome, reason = "quarantined", f"quarantined after {job.attempts} attempts; last: {reason}"[:500]
        log.error("job_failed", job_id=job.id, model=job.model_id, reason=reason[:300], outcome=outcome,
                  attempt=job.attempts)
        try:
            if outcome == "retry":
                self.journal.retry_job(job.id, reason, self._clock() + self.retry.backoff_s(job.attempts))
            elif outcome == "quarantined":
                self.journal.quarantine_job(job.id, reason)
            else:
                self.journal.fail_job(job.id, reason)
        except JournalError as err:  # the job's lease lapses (no lane holds it) and it is run again
            log.error("job_failure_not_recorded", job_id=job.id, error=describe(err)[:300])
        why = f"{type(exc).__name__}: {exc}" if isinstance(exc, BackendError) else reason
        self._tell_unavailable(job, why)
        return JobOutcome(job.id, False, 0, reason, outcome)

    def _tell_unavailable(self, job: Job, why: str) -> None:
        rule = self.routes.get(job.route)
        if rule is not None and "alert" in rule.outputs:
            try:
                self._publish_unavailable(job, why)
            except Exception as err:  # boundary: the failure is already recorded and logged
                log.error("ai_unavailable_publish_failed", job_id=job.id, error_type=type(err).__name__)

    def _publish_unavailable(self, job: Job, why: str) -> None:
        """Tell the alert channels that an alert route's image got no AI answer, and why.

        `why` is a reason from `failures.describe` (or a backend's own message): it names error
        types and the sidecar's own messages, never tag values. Once per job key and revision.
        """
        input_uid = job.instance_uid or job.series_uid
        lines = (
            "AI QA UNAVAILABLE - THIS IMAGE WAS NOT ASSESSED",
            f"Model: {job.model_id} {job.model_version}",
            f"Reason: {why[:160]}",
            "No alert does not mean no finding: review the image yourself.",
        )
        log.error("alert_route_ai_unavailable", job_id=job.id, model=job.model_id, route=job.route,
                  reason=why[:300], streaming=bool(job.instance_uid))
        key = f"{job.model_id}:{input_uid}:ai_unavailable:r{job.revision}"
        if self.journal.add_alert(job.series_uid, key, " | ".join(lines), job.id):
            self.fanout.publish(Alert(job.series_uid, key, job.model_id, "ai_unavailable", 0.0, lines,
                                      instance_uid=job.instance_uid, raised_at=time.time()))

    def _load(self, job: Job) -> tuple[ClinicalModel, Route, list[Dataset]]:
        model = self.models.get(job.model_id)
        if model is None:
            raise ModelError(f"model {job.model_id!r} is not loaded")
        if model.card.version != job.model_version:
            raise ModelError(
                f"job wants {job.model_id} {job.model_version}, loaded version is {model.card.version}"
            )
        rule = self.routes.get(job.route)
        if rule is None:
            raise ModelError(f"route {job.route!r} no longer exists")
        if job.instance_uid:
            inst = self.journal.instance(job.instance_uid)
            stored = [inst] if inst is not None else []
        else:
            stored = self.journal.instances(job.series_uid)
        if not stored:
            raise ModelError("no stored instances for this job")
        # Pixel data stays on disk (deferred) until the model asks for it, after the budget check.
        datasets: list[Dataset] = [pydicom.dcmread(s.path, defer_size=_DEFER_BYTES) for s in stored]
        check_budget(datasets, self.budget)
        return model, rule, datasets

    def _finish(
        self, job: Job, model: ClinicalModel, rule: Route, findings: Findings, datasets: list[Dataset]
    ) -> int:
        """Build, write and queue the results of one job, and mark it done (one transaction)."""
        input_uid = job.instance_uid or job.series_uid
        kind = "instance" if job.instance_uid else "series"
        objects = build_results(findings, datasets, model.card, [o for o in rule.outputs if o != "alert"],
                                input_uid=input_uid, kind=kind, revision=job.revision)
        queued: list[tuple[str, str, str]] = []
        for ds in objects:
            path = self._write(job, ds)
            for dest in rule.destinations if rule.live else ():  # a silent trial keeps results here
                queued.append((dest, str(ds.SOPInstanceUID), str(path)))
        if "alert" in rule.outputs and rule.live and job.id not in self._images_queued:
            queued.extend(self._alert_images(job, findings, datasets[0], input_uid))
        self.journal.complete_job(job.id, queued, detail=f"{len(objects)} objects; {_trial_facts(job, rule, findings)}")
        self._images_queued.discard(job.id)
        numbers = {str(ds.SOPInstanceUID): _int_or_none(ds.get("InstanceNumber")) for ds in datasets}
        self._observe("finished", job, findings, numbers)
        return len(objects)

    def _observe(self, what: str, *args: object) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, what)(*args)
        except Exception as exc:  # boundary: metrics and the dashboard never fail a job
            log.error("job_observer_failed", hook=what, error_type=type(exc).__name__, error=str(exc)[:200])

    def _write(self, job: Job, ds: Dataset) -> Path:
        return self.store.save(job.series_uid, ds)

    def _alert_lines(
        self, job: Job, findings: Findings, source: Dataset
    ) -> list[tuple[int, str, float, int | None, tuple[str, ...]]]:
        """(index, label, probability, instance number, text lines) for each alert; the wording is
        the model card's (models/base.py), and carries no patient data."""
        out = []
        inst_no = _int_or_none(source.get("InstanceNumber"))
        card = self.models[job.model_id].card
        for index, c in enumerate(findings.alerts):
            p = float(c.probabilities[c.label])
            lines = card.alert_lines(c.label, p, series_number=source.get("SeriesNumber"), instance_number=inst_no,
                                     not_for_clinical_use=findings.not_for_clinical_use)
            out.append((index, c.label, p, inst_no, lines))
        return out

    def _publish_alerts(self, job: Job, findings: Findings, source: Dataset, *, live: bool = True) -> None:
        """Log/webhook/dashboard once per alert key (recorded in the journal, so a rerun is silent).

        A silent-trial route (`live: false`) records the would-be alert in the journal only (key and
        text marked "trial"), for the dashboard's timeline and `sidecar trial report`."""
        input_uid = job.instance_uid or job.series_uid
        for index, label, p, inst_no, lines in self._alert_lines(job, findings, source):
            key = f"{job.model_id}:{input_uid}:{index}:{label}:r{job.revision}"
            if not live:
                self.journal.add_alert(job.series_uid, f"trial:{key}", " | ".join(("TRIAL, NOT SENT", *lines)), job.id)
                continue
            if self.journal.add_alert(job.series_uid, key, " | ".join(lines), job.id):
                self.fanout.publish(Alert(job.series_uid, key, job.model_id, label, p, lines, inst_no,
                                          instance_uid=job.instance_uid, received_at=self._received_at(job),
                                          raised_at=time.time()))
        if live:  # the console's alert images go out now, ahead of the SR the job still builds
            images = self._alert_images(job, findings, source, input_uid)
            if images:
                self.journal.queue_results(job.id, images)
                self._on_results_queued()
            self._images_queued.add(job.id)

    def _alert_images(
        self, job: Job, findings: Findings, source: Dataset, input_uid: str
    ) -> list[tuple[str, str, str]]:
        """The rendered alert images, queued like any result: the outbox's unique (destination,
        SOP Instance UID) keeps a rerun from sending one twice."""
        queued: list[tuple[str, str, str]] = []
        if not self.alert_destinations:
            return queued
        for index, _, _, _, lines in self._alert_lines(job, findings, source):
            image = build_alert_image(list(lines), source, input_uid=f"{input_uid}#{index}", model_id=job.model_id,
                                      model_version=job.model_version, revision=job.revision,
                                      not_for_clinical_use=findings.not_for_clinical_use)
            path = self._write(job, image)
            queued.extend((d, str(image.SOPInstanceUID), str(path)) for d in self.alert_destinations)
        return queued

    def _received_at(self, job: Job) -> float | None:
        """When the job's instance (or its series' last instance) was received, for time-to-alert."""
        if job.instance_uid:
            inst = self.journal.instance(job.instance_uid)
            return inst.received_at if inst is not None else None
        row = self.journal.series(job.series_uid)
        return row.last_received if row is not None else None


def _domain_policy(rule: Route, findings: Findings) -> Findings:
    """The route's `out_of_domain` policy: "suppress" drops results about inputs the guard refused."""
    return findings.assessed_only() if rule.out_of_domain == "suppress" else findings


def _trial_facts(job: Job, rule: Route, findings: Findings) -> str:
    """Key=value facts of a finished job in its journal event, read back by `sidecar trial report`."""
    n_inputs = len(findings.domain) or len(findings.classifications) or 1
    return (f"job={job.id} model={job.model_id} live={int(rule.live)} alerts={len(findings.alerts)} "
            f"ood={len(findings.out_of_domain)}/{n_inputs}")


def _int_or_none(v: object) -> int | None:
    if not isinstance(v, (int, float, str, bytes)):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
