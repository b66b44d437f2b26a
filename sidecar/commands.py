"""What each CLI command does (the parser in __main__ only dispatches here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.errors import InvalidDicomError

from models.registry import load_predicate_explainers, load_predicates
from sidecar.app import Sidecar, serve_until_signalled
from sidecar.assembly.assembler import SeriesAssembler
from sidecar.assembly.timers import FakeTimers
from sidecar.journal import Journal
from sidecar.logging import configure_logging
from sidecar.pipeline.model_set import load_models
from sidecar.pipeline.worker import Worker
from sidecar.routing import explain, route
from sidecar.settings import load_settings


def serve(config_dir: Path) -> int:
    settings = load_settings(config_dir)
    configure_logging(settings.service.log_level, settings.service.log_format)
    serve_until_signalled(Sidecar(settings))
    return 0


def _dicom_files(paths: Sequence[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        else:
            yield p


def route_explain(config_dir: Path, paths: Sequence[Path], out: TextIO | None = None) -> int:
    """Print, for each file, which rule matched and why; exit 0 when every file was readable."""
    settings = load_settings(config_dir)
    predicates = load_predicates()
    explainers = load_predicate_explainers()
    stream = out or sys.stdout
    bad = 0
    for path in _dicom_files(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            print(f"{path}: not a readable DICOM file ({type(exc).__name__})", file=stream)
            bad += 1
            continue
        decision = route(settings.routes, ds, calling_ae=None, predicates=predicates, available_models=None)
        print(explain(decision, str(path)), file=stream)
        wanted = {p for r in settings.routes for p in (r.match.predicates or [])}
        for name in sorted(wanted & explainers.keys()):
            print(f"  cues of predicate {name}:", file=stream)
            for cue, ok, detail in explainers[name](ds):
                print(f"    {'✓' if ok else '✗'} {cue}: {detail}", file=stream)
        if decision.route is not None and decision.route.model not in settings.models:
            print(f"  note: model {decision.route.model!r} is not in models.yaml; the route is disabled",
                  file=stream)
    return 1 if bad else 0


def status(config_dir: Path) -> int:
    settings = load_settings(config_dir)
    journal = Journal(settings.service.journal)
    summary = journal.summary()
    print(f"journal: {settings.service.journal}")
    for section in ("series", "jobs", "outbox"):
        counts = summary[section]
        body = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "(none)"
        print(f"{section}: {body}")
    dead = journal.dead_letters()
    print(f"dead letters: {len(dead)}")
    for item in dead[:20]:
        print(f"  {item.destination} {item.sop_instance_uid}: {item.last_error}")
    failed = journal.failed_jobs()
    print(f"failed jobs: {len(failed)}")
    for job in failed[:20]:
        print(f"  job {job.id} {job.model_id}: {job.reason}")
    quarantined = journal.quarantined_jobs()
    print(f"quarantined jobs: {len(quarantined)} (sidecar quarantine release JOB_ID runs one again)")
    for job in quarantined[:20]:
        print(f"  job {job.id} {job.model_id} ({job.attempts} attempts): {job.reason}")
    journal.close()
    return 0


def trial_report(config_dir: Path, *, all_routes: bool = False, since_s: float | None = None) -> int:
    """Print the silent-trial report (sidecar/trial.py) of the routes with `live: false`."""
    import time

    from sidecar.trial import render, summarise, trial_route_names

    settings = load_settings(config_dir)
    journal = Journal(settings.service.journal)
    try:
        since = time.time() - since_s if since_s else 0.0
        routes = None if all_routes else trial_route_names(settings.routes)
        if routes is not None and not routes:
            print("no route is in silent trial (live: false); --all reports every route")
            return 0
        print(render(summarise(journal.trial_rows(since), routes)))
    finally:
        journal.close()
    return 0


def quarantine(config_dir: Path, release: Sequence[int] = ()) -> int:
    """List quarantined jobs, or release the given ones (queued again, attempts from zero)."""
    settings = load_settings(config_dir)
    journal = Journal(settings.service.journal)
    try:
        if not release:
            jobs = journal.quarantined_jobs()
            print(f"quarantined jobs: {len(jobs)}")
            for job in jobs:
                kind = "instance" if job.instance_uid else "series"
                print(f"  job {job.id} {job.model_id} {job.model_version} {kind} route={job.route}"
                      f" attempts={job.attempts}: {job.reason}")
            return 0
        bad = 0
        for job_id in release:
            if journal.release_quarantined(job_id):
                print(f"job {job_id} queued again; a running sidecar picks it up")
            else:
                print(f"job {job_id} is not quarantined or failed", file=sys.stderr)
                bad += 1
        return 1 if bad else 0
    finally:
        journal.close()


def replay(config_dir: Path, series_uid: str, *, run: bool = False) -> int:
    settings = load_settings(config_dir)
    configure_logging(settings.service.log_level, settings.service.log_format)
    models, _unavailable = load_models(settings, settings.routes, {})
    journal = Journal(settings.service.journal)
    assembler = SeriesAssembler(journal, settings.routes, load_predicates(),
                                {m: model.card.version for m, model in models.items()}, FakeTimers())
    try:
        revision = assembler.replay(series_uid)
    except KeyError:
        print(f"no series {series_uid} in the journal", file=sys.stderr)
        return 1
    print(f"series queued again as revision {revision}")
    if run:
        worker = Worker(journal, models, settings.routes, settings.service.results_dir)
        outcomes = worker.drain()
        print(f"ran {len(outcomes)} jobs: {sum(o.ok for o in outcomes)} ok; a running sidecar sends the results")
    else:
        print("a running sidecar picks the jobs up")
    journal.close()
    return 0


def demo(keep: Path | None, *, verbose: bool = False) -> int:
    from sidecar.demo import run_demo  # the demo alone may make phantom data

    return run_demo(keep, verbose=verbose)

