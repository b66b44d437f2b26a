"""Alert fan-out: the technologist hears about an uncertain result at once.

An alert is raised by a streaming route's findings (`Findings.alerts`). It is recorded once per
(series, key) in the journal, so a rerun after a crash never repeats it. Channels: `log` (a
structured event), `webhook` (a JSON POST on a background thread), `dicom` (a rendered alert
image that the worker queues in the outbox like any result, so it is delivered reliably), and the
dashboard (`DashboardChannel`, always on: the live stream and the time-to-alert metric).
Alerts carry no patient names or IDs. A failing channel is logged and never blocks the pipeline.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import structlog

from sidecar.dicom.uids import short_uid

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
    """POSTs the alert as JSON; the series UID is shortened, nothing about the patient is sent."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 5.0) -> None:
        self.url, self._token, self.timeout_s = url, token, timeout_s

    def body(self, alert: Alert) -> bytes:
        payload = asdict(alert)
        payload["series_uid"] = short_uid(alert.series_uid)
        payload["instance_uid"] = short_uid(alert.instance_uid) if alert.instance_uid else ""
        payload["key"] = short_uid(alert.key)  # the key embeds UIDs; receivers only need it stable
        payload["lines"] = list(alert.lines)
        return json.dumps(payload).encode("utf-8")

    def send(self, alert: Alert) -> None:
        req = urllib.request.Request(self.url, data=self.body(alert), method="POST",
                                     headers={"Content-Type": "application/json"})
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as rsp:  # noqa: S310 (configured URL)
            rsp.read()


class DashboardChannel:
    """Hands each alert to in-process sinks: the dashboard's live stream and the time-to-alert metric."""

    def __init__(self, *sinks: Callable[[Alert], None]) -> None:
        self.sinks = sinks

    def send(self, alert: Alert) -> None:
        for sink in self.sinks:
            sink(alert)


class AlertFanout:
    """Sends an alert to every non-DICOM channel on a background thread; never raises."""

    def __init__(self, channels: Sequence[AlertChannel]) -> None:
        self.channels = list(channels)

    def publish(self, alert: Alert) -> None:
        for channel in self.channels:
            threading.Thread(target=self._send, args=(channel, alert), daemon=True,
                             name="alert-send").start()

    @staticmethod
    def _send(channel: AlertChannel, alert: Alert) -> None:
        try:
            channel.send(alert)
        except Exception as exc:  # boundary: an alert channel never blocks the pipeline
            log.error("alert_channel_failed", channel=type(channel).__name__, error=str(exc)[:200])
