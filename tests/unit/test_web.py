"""The HTTP side port: health, readiness, metrics, timeline API, retry auth, live stream, no PHI.

The app runs under the real uvicorn server on a free loopback port (sidecar/web/server.py) and is
called with urllib: Starlette's TestClient needs httpx, which is not a dependency.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from sidecar.errors import ConfigError
from sidecar.journal import InstanceRecord, Journal
from sidecar.web.app import WebContext, create_app
from sidecar.web.events import EventHub
from sidecar.web.health import CachedCheck, Check, Readiness
from sidecar.web.metrics import Metrics
from sidecar.web.server import WebServer
from tests.helpers.dicom_factory import FAKE_BIRTH_DATE, FAKE_PATIENT_ID, FAKE_PATIENT_NAME, make_mr_series
from tests.helpers.ports import free_port
from tests.helpers.sidecar import running_sidecar, write_config

SERIES = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
TOKEN = "correct-horse-battery-staple"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Flags:
    """A readiness seam the test flips."""

    def __init__(self) -> None:
        self.listener = False

    def readiness(self) -> Readiness:
        return Readiness({"listener": lambda: Check(self.listener, "bound" if self.listener else "not bound"),
                          "journal": lambda: Check(True, "writable")})


def _journal_with_dead_letter(tmp: Path) -> tuple[Journal, int]:
    """A journal holding one series with one job whose result is a dead letter."""
    j = Journal(f"sqlite:///{tmp / 'journal.sqlite'}")
    j.record_instance(InstanceRecord("1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.4", SERIES, STUDY, "MR",
                                     str(tmp / "x.dcm"), 10, calling_ae="SCANNER1"))
    j.set_route(SERIES, "lge", "brightness", "instance")
    job_id = j.enqueue_job(series_uid=SERIES, instance_uid="1.2.3.4.1", model_id="brightness",
                           model_version="1.0.0", revision=0, route="lge", priority=0)
    assert job_id is not None and j.claim_job() is not None
    j.complete_job(job_id, [("pacs", "1.2.3.9.1", str(tmp / "sr.dcm"))])
    [item] = j.outbox(SERIES)
    j.mark_dead(item.id, "gave up after 1 attempts: refused")
    return j, item.id


class Served:
    def __init__(self, tmp: Path, token: str | None = TOKEN) -> None:
        self.flags = Flags()
        self.journal, self.dead_id = _journal_with_dead_letter(tmp)
        self.hub = EventHub()
        self.metrics = Metrics(self.journal, ["pacs"])
        self.journal.observe(self.metrics.journal_event)
        self.requeued: list[str] = []
        ctx = WebContext(self.journal, self.hub, self.metrics, self.flags.readiness(),
                         admin_token=SecretStr(token) if token else None, on_requeue=self.requeued.append)
        self.server = WebServer(create_app(ctx), "127.0.0.1", 0, self.hub)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    s.server.start()
    try:
        yield s
    finally:
        s.server.stop()
        s.journal.close()


class TestHealth:
    def test_healthz_answers_while_the_process_lives(self, served: Served) -> None:
        """/healthz is 200 whatever the readiness."""
        status, body = _get(served.url + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "alive"

    def test_readyz_is_503_until_every_check_passes_then_200(self, served: Served) -> None:
        """/readyz names the failing check with 503, and turns 200 once it passes."""
        status, body = _get(served.url + "/readyz")
        data = json.loads(body)
        assert status == 503 and data["ready"] is False
        assert data["checks"]["listener"] == {"ok": False, "detail": "not bound"}
        served.flags.listener = True
        status, body = _get(served.url + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True

    def test_a_check_that_raises_counts_as_not_ready(self) -> None:
        """A check that raises is a failed check with its reason, not an error."""

        def broken() -> Check:
            raise OSError("disk gone")

        result = Readiness({"journal": broken}).run()
        assert result["journal"].ok is False and "disk gone" in result["journal"].detail

    def test_cached_check_reuses_its_answer_until_it_expires(self) -> None:
        """A cached check (the destination echo) runs once per TTL, failures more often."""
        now = [0.0]
        calls: list[int] = []

        def echo() -> Check:
            calls.append(1)
            return Check(len(calls) > 1)

        check = CachedCheck(echo, ttl_s=30, ttl_failed_s=5, clock=lambda: now[0])
        assert check().ok is False and check().ok is False and len(calls) == 1
        now[0] = 6.0
        assert check().ok is True and len(calls) == 2
        now[0] = 20.0
        assert check().ok is True and len(calls) == 2


class TestTimelineAndOutbox:
    def test_timeline_lists_events_jobs_outbox_and_alerts_of_a_series(self, served: Served) -> None:
        """The timeline API returns the series row, its events in order, its jobs and outbox entries."""
        served.journal.add_alert(SERIES, "k1", "AI QA ALERT | image 1")
        status, body = _get(f"{served.url}/api/series/{SERIES}/timeline")
        data = json.loads(body)
        assert status == 200
        assert data["series"]["calling_ae"] == "SCANNER1"
        kinds = [e["kind"] for e in data["events"]]
        assert kinds[:2] == ["received_first", "routed"] and kinds[-1] == "dead"
        assert [j["state"] for j in data["jobs"]] == ["done"]
        assert data["outbox"][0]["state"] == "dead" and "path" not in data["outbox"][0]
        assert data["alerts"][0]["key"] == "k1"

    def test_timeline_serves_no_patient_data_from_a_failed_job(self, served: Served) -> None:
        """A job failed with pydicom's message quoting PatientBirthDate 1901-12-31: not in the response."""
        j = served.journal
        job_id = j.enqueue_job(series_uid=SERIES, instance_uid="", model_id="brightness", model_version="1.0.0",
                               revision=0, route="lge", priority=10)
        assert job_id is not None and j.claim_job() is not None
        j.fail_job(job_id, "ResultError: SR build failed: Unable to convert '1901-12-31' to 'DA' object")
        status, body = _get(f"{served.url}/api/series/{SERIES}/timeline")
        assert status == 200 and b"Unable to convert" in body
        assert b"1901-12-31" not in body and b"19011231" not in body

    def test_timeline_of_unknown_or_malformed_series_is_404_or_400(self, served: Served) -> None:
        """An unknown series is 404; something that is not a UID is 400."""
        assert _get(f"{served.url}/api/series/1.2.3.999/timeline")[0] == 404
        assert _get(f"{served.url}/api/series/not-a-uid/timeline")[0] == 400

    def test_series_list_is_newest_first_with_calling_ae(self, served: Served) -> None:
        """/api/series lists series with their calling AE and alert count."""
        status, body = _get(served.url + "/api/series")
        [row] = json.loads(body)["series"]
        assert status == 200 and row["series_uid"] == SERIES and row["calling_ae"] == "SCANNER1"
        assert row["n_alerts"] == 0 and "patient_name" not in row

    def test_outbox_lists_dead_letters(self, served: Served) -> None:
        """/api/outbox splits pending entries from dead letters and says whether retry is on."""
        data = json.loads(_get(served.url + "/api/outbox")[1])
        assert [d["id"] for d in data["dead"]] == [served.dead_id] and data["pending"] == []
        assert data["retry_enabled"] is True


class TestRetry:
    def test_retry_without_or_with_a_wrong_token_is_401_and_changes_nothing(self, served: Served) -> None:
        """No token, or a wrong one, is refused and the dead letter stays dead."""
        url = f"{served.url}/api/dead-letters/{served.dead_id}/retry"
        assert _post(url)[0] == 401
        assert _post(url, {"Authorization": "Bearer wrong"})[0] == 401
        assert _post(url, {"Authorization": TOKEN})[0] == 401  # the scheme is part of it
        assert [d.id for d in served.journal.dead_letters()] == [served.dead_id]
        assert served.requeued == []

    def test_retry_with_the_token_requeues_the_dead_letter(self, served: Served) -> None:
        """The right token puts the item back to pending with attempts reset and wakes its sender."""
        url = f"{served.url}/api/dead-letters/{served.dead_id}/retry"
        status, body = _post(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["requeued"]["state"] == "pending" and body["requeued"]["attempts"] == 0
        assert served.journal.dead_letters() == [] and served.requeued == ["pacs"]
        assert [e.kind for e in served.journal.events(SERIES)][-1] == "requeued"
        assert _post(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 404  # no longer dead

    def test_retry_is_off_without_a_configured_token(self, tmp_path: Path) -> None:
        """With no admin_token configured, retry answers 403 whatever is sent."""
        s = Served(tmp_path, token=None)
        s.server.start()
        try:
            status, body = _post(f"{s.url}/api/dead-letters/{s.dead_id}/retry", {"Authorization": "Bearer x"})
            assert status == 403 and "admin_token" in body["error"]
            assert json.loads(_get(s.url + "/api/outbox")[1])["retry_enabled"] is False
        finally:
            s.server.stop()
            s.journal.close()


class TestEventStream:
    def test_stream_replays_history_then_delivers_a_message_published_from_another_thread(
        self, served: Served
    ) -> None:
        """A client gets the backlog first, then a live message published on a pipeline thread."""
        served.hub.publish("slice", {"series_uid": SERIES, "n": 1})
        seen: list[dict[str, Any]] = []
        got_live = threading.Event()

        def read() -> None:
            with urllib.request.urlopen(served.url + "/api/events", timeout=10) as rsp:
                assert rsp.headers["Content-Type"].startswith("text/event-stream")
                for raw in rsp:
                    line = raw.decode().strip()
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if len(seen) == 2:
                            got_live.set()
                            return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 5
        while served.hub.n_subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Thread(target=served.hub.publish, args=("alert", {"series_uid": SERIES, "n": 2})).start()
        assert got_live.wait(5), seen
        assert [m["n"] for m in seen] == [1, 2]

    def test_subscriber_that_falls_behind_is_cut_off_not_buffered_forever(self) -> None:
        """A subscriber more than queue_size messages behind gets an end-of-stream marker."""

        async def scenario() -> list[object]:
            hub = EventHub(history=10, queue_size=3)
            _, sub = hub.subscribe()
            for i in range(6):
                hub.publish("slice", {"i": i})
            await asyncio.sleep(0.05)
            out: list[object] = []
            while not sub.queue.empty():
                m = sub.queue.get_nowait()
                out.append(None if m is None else m.data["i"])
            return out

        assert asyncio.run(scenario()) == [0, 1, 2, None]

    def test_journal_observers_hear_events_only_after_commit(self, tmp_path: Path) -> None:
        """A rolled-back transaction announces nothing; a committed one announces its events in order."""
        j = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
        heard: list[str] = []
        j.observe(lambda ev: heard.append(ev.kind))
        with pytest.raises(RuntimeError), j._tx() as db:
            j._event(db, SERIES, "routed")
            raise RuntimeError("roll back")
        assert heard == []
        j.record_instance(InstanceRecord("1.2.3.4.1", "1.2.3", SERIES, STUDY, "MR", "x", 1))
        assert heard == ["received_first"]
        j.close()


class TestServer:
    def test_a_port_in_use_stops_the_start_with_a_config_error(self, tmp_path: Path) -> None:
        """Binding a busy port names web.port instead of failing later."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            hub = EventHub()
            j = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
            ctx = WebContext(j, hub, Metrics(j), Flags().readiness())
            with pytest.raises(ConfigError, match=r"web\.port"):
                WebServer(create_app(ctx), "127.0.0.1", port, hub).start()
            j.close()


def _streaming_config(tmp: Path, **web: Any) -> Path:
    routes = [{"name": "lge-like", "model": "brightness", "mode": "instance", "match": {"modality": ["MR"]},
               "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 5}]
    return write_config(
        tmp / "conf", routes=routes,
        destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": free_port(),
                       "ae_title": "PACS", "timeout_s": 2}],
        sender={"max_attempts": 1, "poll_s": 0.05, "echo_on_start": False},
        web={"enabled": True, "port": 0, "admin_token": TOKEN, **web},
    )


def _send(port: int, n: int, seed: int) -> None:
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
    assert assoc.is_established
    for ds in make_mr_series(n, seed=seed):
        assert assoc.send_c_store(ds).Status == 0
    bad = make_mr_series(1, seed=seed + 1)[0]
    del bad.Modality  # refused: "cannot understand"
    assert assoc.send_c_store(bad).Status != 0
    assoc.release()


def _wait(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


class TestWithASidecar:
    def test_metrics_expose_every_named_series_after_traffic(self, tmp_path: Path) -> None:
        """After instances, a refusal, inference, alerts and dead letters, /metrics has every named series."""
        with running_sidecar(_streaming_config(tmp_path)) as app:
            assert app.web is not None
            _send(app.port, 3, seed=21)
            _wait(lambda: len(app.journal.dead_letters()) >= 3)
            status, body = _get(app.web.url + "/metrics")
            text = body.decode()
        assert status == 200
        assert "sidecar_instances_received_total 3.0" in text
        assert 'sidecar_instances_refused_total{reason="cannot_understand"} 1.0' in text
        assert 'sidecar_series{state="receiving"} 1.0' in text
        assert 'sidecar_jobs_queued{priority="0"} 0.0' in text
        assert 'sidecar_inference_seconds_count{model="brightness"}' in text
        assert "sidecar_time_to_alert_seconds_count 3.0" in text
        assert 'sidecar_outbox_pending{destination="pacs"} 0.0' in text
        assert 'sidecar_outbox_failures_total{destination="pacs"} 3.0' in text
        assert 'sidecar_dead_letters{destination="pacs"} 3.0' in text
        assert "sidecar_process_resident_memory_bytes" in text

    def test_no_patient_name_id_or_birth_date_in_any_json_or_stream(self, tmp_path: Path) -> None:
        """Every JSON endpoint and the live stream's backlog are free of the test patient's data."""
        with running_sidecar(_streaming_config(tmp_path)) as app:
            assert app.web is not None
            _send(app.port, 2, seed=22)
            _wait(lambda: len(app.journal.dead_letters()) >= 2)
            uid = app.journal.recent_series()[0].series_uid
            bodies = [_get(app.web.url + p)[1].decode() for p in (
                "/readyz", "/api/series", f"/api/series/{uid}/timeline", "/api/outbox", "/api/models")]
            bodies += [m.sse().decode() for m in app.hub.history()]
        assert any("alert" in b for b in bodies[-10:])
        for text in bodies:
            for phi in (FAKE_PATIENT_NAME, *FAKE_PATIENT_NAME.split("^"), FAKE_PATIENT_ID, FAKE_BIRTH_DATE):
                assert phi not in text

    def test_a_site_may_turn_patient_names_on(self, tmp_path: Path) -> None:
        """With show_patient_names, the series list carries the name read from the spool."""
        with running_sidecar(_streaming_config(tmp_path, show_patient_names=True)) as app:
            assert app.web is not None
            _send(app.port, 1, seed=23)
            data = json.loads(_get(app.web.url + "/api/series")[1])
        assert data["show_patient_names"] is True
        assert data["series"][0]["patient_name"] == FAKE_PATIENT_NAME
