"""Alert fan-out: the technologist hears about an uncertain result at once.

An alert is raised by a streaming route's findings (`Findings.alerts`). It is recorded once per
(series, key) in the journal, so a rerun after a crash never repeats it. Channels: `log` (a
structured event), `webhook` (a JSON POST with httpx on a background thread), `dicom` (a rendered alert
image that the worker queues in the outbox like any result, so it is delivered reliably), and the
dashboard (`DashboardChannel`, always on: the live stream and the time-to-alert metric).
Alerts carry no patient names or IDs. A failing channel is logged and never blocks the pipeline.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import httpx
import structlog

from sidecar.dicom.uids import short_uid
from sidecar.errors import AlertError

log = structlog.get_logger("sidecar.alerts")


@dataclass(frozen=True)
class Alert:
    """What the technologist is told. `lines` are rendered on the console image."""

    series_uid: str
    key: str
    model_id: str
    label: str
    probability: float
    lines: tuple[str, ...]
    instance_number: int | None = None
    instance_uid: str = ""  # the source instance of a streaming alert ('' for a series)
    received_at: float | None = None  # when that instance (or the series' last) was received
    raised_at: float = 0.0  # when the sidecar published the alert (time.time())


class AlertChannel(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogChannel:
    def send(self, alert: Alert) -> None:
        log.warning("qa_alert", series_uid=alert.series_uid, model=alert.model_id, label=alert.label,
                    probability=round(alert.probability, 3), instance_number=alert.instance_number)


class WebhookChannel:
    """POSTs the alert as JSON; the series UID is shortened, nothing about the patient is sent.

    `transport` is httpx's seam: tests pass an `httpx.MockTransport`. A refusal or an unreachable
    receiver raises `AlertError`, whose message names neither the URL nor the token.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url, self._token, self.timeout_s = url, token, timeout_s
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def body(self, alert: Alert) -> bytes:
        payload = asdict(alert)
        payload["series_uid"] = short_uid(alert.series_uid)
        payload["instance_uid"] = short_uid(alert.instance_uid) if alert.instance_uid else ""
        payload["key"] = short_uid(alert.key)  # the key embeds UIDs; receivers only need it stable
        payload["lines"] = list(alert.lines)
        return json.dumps(payload).encode("utf-8")

    def send(self, alert: Alert) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            rsp = self._client.post(self.url, content=self.body(alert), headers=headers)
        except httpx.HTTPError as exc:  # connect/read/timeout: the receiver is unreachable
            raise AlertError(f"webhook unreachable ({type(exc).__name__})") from exc
        if rsp.is_error:
            raise AlertError(f"webhook answered HTTP {rsp.status_code}")

    def close(self) -> None:
        self._client.close()


class DashboardChannel:
    """Hands each alert to in-process sinks: the dashboard's live stream and the time-to-alert metric."""

    def __init__(self, *sinks: Callable[[Alert], None]) -> None:
        self.sinks = sinks

    def send(self, alert: Alert) -> None:
        for sink in self.sinks:
            sink(alert)


class AlertFanout:
    """Sends each alert to every non-DICOM channel from that channel's own thread; never raises.

    Each channel has a priority queue: a streaming slice's alert (`instance_uid` set) goes
    before any series alert still waiting, so a slow webhook busy with series results never
    delays the technologist. A channel's thread that died is started again on the next publish
    (counted in `restarts`); `flush()` waits, without polling, until every queued alert is sent.
    """

    def __init__(self, channels: Sequence[AlertChannel]) -> None:
        self.channels = list(channels)
        self._queues: list[queue.PriorityQueue[tuple[int, int, Alert]]] = [queue.PriorityQueue() for _ in self.channels]
        self._threads: list[threading.Thread | None] = [None] * len(self.channels)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self.restarts = 0

    def add_channel(self, channel: AlertChannel) -> None:
        """Another channel (a test's watcher, a channel configured later); alerts from now on reach it."""
        with self._lock:
            self.channels.append(channel)
            self._queues.append(queue.PriorityQueue())
            self._threads.append(None)

    def publish(self, alert: Alert) -> None:
        priority = 0 if alert.instance_uid else 1
        with self._lock:
            seq = next(self._seq)
            self._pending += len(self.channels)
            for index, q in enumerate(self._queues):
                q.put((priority, seq, alert))
                thread = self._threads[index]
                if thread is None or not thread.is_alive():
                    if thread is not None:
                        self.restarts += 1
                        log.error("alert_channel_thread_restarted", channel=type(self.channels[index]).__name__)
                    thread = threading.Thread(target=self._run, args=(index,), daemon=True,
                                              name=f"alert-{type(self.channels[index]).__name__}")
                    self._threads[index] = thread
                    thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published alert went to every channel; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def alive(self) -> bool:
        """True while no channel thread that was started has died."""
        return all(t is None or t.is_alive() for t in self._threads)

    def _run(self, index: int) -> None:
        channel, q = self.channels[index], self._queues[index]
        while True:
            _, _, alert = q.get()
            try:
                self._send(channel, alert)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    @staticmethod
    def _send(channel: AlertChannel, alert: Alert) -> None:
        try:
            channel.send(alert)
        except Exception as exc:  # boundary: an alert channel never blocks the pipeline
            log.error("alert_channel_failed", channel=type(channel).__name__, error=str(exc)[:200])
