"""The HTTP side port (Starlette): health, readiness, metrics, the timeline API and the dashboard.

Routes:

- `GET /healthz`: the process answers (liveness).
- `GET /readyz`: 200 when every readiness check passes, else 503; the body names each check.
- `GET /metrics`: Prometheus text format (sidecar/web/metrics.py).
- `GET /api/series?limit=N`: recent series, newest first (calling AE, state, route, counts).
- `GET /api/series/{series_uid}/timeline`: one series' events, jobs, outbox entries and alerts.
- `GET /api/outbox`: results not yet delivered (pending) and dead letters.
- `POST /api/dead-letters/{id}/retry`: requeue a dead letter; needs `Authorization: Bearer <web.admin_token>`.
- `GET /api/models`: the loaded models' cards, and the ones that could not be loaded and why.
- `GET /api/events`: the live stream (server-sent events; sidecar/web/events.py).
- `GET /`: the dashboard page (static/).

No response carries a patient name, ID or birth date, unless `web.show_patient_names` is on, and
then only the series list's `patient_name`, read from the spooled first instance.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from pydicom.errors import InvalidDicomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from models.base import ModelCard
from sidecar.dicom.uids import is_valid_uid
from sidecar.journal import Journal, OutboxItem, SeriesRow
from sidecar.web.events import EventHub
from sidecar.web.health import Readiness
from sidecar.web.metrics import Metrics

STATIC = Path(__file__).with_name("static")
KEEPALIVE_S = 15.0
MAX_LIMIT = 1000


@dataclass
class WebContext:
    """What the web app reads and may do; built by the composition root, or by a test."""

    journal: Journal
    hub: EventHub
    metrics: Metrics
    readiness: Readiness
    models: Mapping[str, ModelCard] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    admin_token: SecretStr | None = None
    show_patient_names: bool = False
    on_requeue: Callable[[str], None] = lambda destination: None  # wake the sender for it


class PatientNames:
    """PatientName of a series' first spooled instance, read only when a site turned names on."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._cache: dict[str, str] = {}

    def __call__(self, series_uid: str) -> str:
        if series_uid not in self._cache:
            name = ""
            for inst in self.journal.instances(series_uid)[:1]:
                try:
                    ds = pydicom.dcmread(inst.path, stop_before_pixels=True, specific_tags=["PatientName"])
                    name = str(ds.get("PatientName", "") or "")
                except (OSError, ValueError, InvalidDicomError):
                    name = ""
            self._cache[series_uid] = name
        return self._cache[series_uid]


def _series(row: SeriesRow) -> dict[str, Any]:
    return asdict(row)


def _outbox(item: OutboxItem) -> dict[str, Any]:
    d = asdict(item)
    d.pop("path")  # a server path is of no use to the browser
    return d


def _card(card: ModelCard) -> dict[str, Any]:
    d = asdict(card)
    d["labels"] = list(card.labels)
    return d


def create_app(ctx: WebContext) -> Starlette:
    names = PatientNames(ctx.journal)

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    def readyz(request: Request) -> Response:
        checks = ctx.readiness.run()
        ready = all(c.ok for c in checks.values())
        body = {"ready": ready, "checks": {k: {"ok": c.ok, "detail": c.detail} for k, c in checks.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    def metrics(request: Request) -> Response:
        return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def series_list(request: Request) -> Response:
        try:
            limit = max(1, min(MAX_LIMIT, int(request.query_params.get("limit", "200"))))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        rows = []
        for row in ctx.journal.recent_series(limit):
            d = _series(row)
            d["n_alerts"] = len(ctx.journal.alerts(row.series_uid))
            if ctx.show_patient_names:
                d["patient_name"] = names(row.series_uid)
            rows.append(d)
        return JSONResponse({"series": rows, "show_patient_names": ctx.show_patient_names})

    def timeline(request: Request) -> Response:
        uid = request.path_params["series_uid"]
        if not is_valid_uid(uid):
            return JSONResponse({"error": "not a valid UID"}, status_code=400)
        row = ctx.journal.series(uid)
        if row is None:
            return JSONResponse({"error": "no such series"}, status_code=404)
        return JSONResponse({
            "series": _series(row),
            "events": [asdict(e) for e in ctx.journal.events(uid)],
            "jobs": [asdict(j) for j in ctx.journal.jobs(uid)],
            "outbox": [_outbox(o) for o in ctx.journal.outbox(uid)],
            "alerts": [{"key": k, "text": t, "at": at} for k, t, at in ctx.journal.alerts(uid)],
        })

    def outbox(request: Request) -> Response:
        items = ctx.journal.undelivered()
        return JSONResponse({
            "pending": [_outbox(o) for o in items if o.state == "pending"],
            "dead": [_outbox(o) for o in items if o.state == "dead"],
            "retry_enabled": ctx.admin_token is not None,
        })

    def retry(request: Request) -> Response:
        if ctx.admin_token is None:
            return JSONResponse({"error": "retry is disabled: no web.admin_token is configured"}, status_code=403)
        given = request.headers.get("authorization", "")
        expected = f"Bearer {ctx.admin_token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"error": "a valid admin token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        item = ctx.journal.requeue_dead_letter(int(request.path_params["item_id"]))
        if item is None:
            return JSONResponse({"error": "no such dead letter"}, status_code=404)
        ctx.on_requeue(item.destination)
        return JSONResponse({"requeued": _outbox(item)})

    def quarantined(request: Request) -> Response:
        """Jobs given up on (failed for good, or quarantined after repeated failures), with reasons."""
        jobs = [*ctx.journal.quarantined_jobs(), *ctx.journal.failed_jobs()][-MAX_LIMIT:]
        return JSONResponse({"jobs": [
            {"id": j.id, "model_id": j.model_id, "state": j.state, "attempts": j.attempts, "reason": j.reason or "",
             "kind": "instance" if j.instance_uid else "series"} for j in jobs]})

    def models(request: Request) -> Response:
        return JSONResponse({
            "models": [_card(c) for _, c in sorted(ctx.models.items())],
            "unavailable": dict(ctx.unavailable),
        })

    async def events(request: Request) -> Response:
        last = request.headers.get("last-event-id") or request.query_params.get("last_id")
        try:
            last_id = int(last) if last else None
        except ValueError:
            last_id = None

        async def stream() -> AsyncIterator[bytes]:
            backlog, sub = ctx.hub.subscribe(last_id)
            try:
                yield b"retry: 1000\n\n"
                for earlier in backlog:
                    yield earlier.sse()
                while True:
                    try:
                        msg = await sub.get(KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if msg is None:
                        return
                    yield msg.sse()
            finally:
                ctx.hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/series", series_list),
        Route("/api/series/{series_uid}/timeline", timeline),
        Route("/api/outbox", outbox),
        Route("/api/dead-letters/{item_id:int}/retry", retry, methods=["POST"]),
        Route("/api/jobs/given-up", quarantined),
        Route("/api/models", models),
        Route("/api/events", events),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


__all__ = ["WebContext", "create_app"]
