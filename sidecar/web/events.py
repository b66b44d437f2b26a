"""The dashboard's live stream: a thread-safe hub from the pipeline threads to asyncio SSE clients.

Pipeline threads (listener, assembler, worker, sender, alert fan-out) call `EventHub.publish`;
it numbers the message, keeps it in a short history and hands it to each subscriber's event
loop with `call_soon_threadsafe`, so publishing never blocks and never touches asyncio from a
foreign thread. A new subscriber first gets the history after its `Last-Event-ID` (all of it on
a first connect), so a page opened mid-series shows the slices so far, and a reconnect misses
nothing the history still holds. A subscriber that falls `queue_size` messages behind is cut
off; its browser reconnects with its last id.

`LiveFeed` turns what the pipeline did into messages (and feeds the metrics that need the same
hooks). Messages carry UIDs, model labels and probabilities, never patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from models.findings import Findings
from sidecar.alerts.fanout import Alert
from sidecar.handoff import InstanceReceived
from sidecar.journal import Event, Job
from sidecar.web.metrics import Metrics


@dataclass(frozen=True)
class Message:
    id: int
    kind: str  # instance | slice | alert | timeline
    data: Mapping[str, Any]

    def sse(self) -> bytes:
        """One server-sent event (HTML Living Standard, "Server-sent events")."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data)}\n\n".encode()


_CLOSED = None  # queued to a subscriber when the hub closes or the subscriber overflows


class Subscription:
    """One SSE client's queue on its own event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.queue_size = queue_size
        self.overflowed = False

    def offer(self, msg: Message | None) -> None:
        """From any thread."""
        with contextlib.suppress(RuntimeError):  # the client's loop is gone (server stopping)
            self.loop.call_soon_threadsafe(self._put, msg)

    def _put(self, msg: Message | None) -> None:
        if self.overflowed:
            return
        if msg is not None and self.queue.qsize() >= self.queue_size:
            self.overflowed = True
            msg = _CLOSED
        self.queue.put_nowait(msg)

    async def get(self, timeout_s: float) -> Message | None:
        """The next message; raises TimeoutError after `timeout_s`; None when the stream ends."""
        return await asyncio.wait_for(self.queue.get(), timeout_s)


class EventHub:
    """Publish from any thread; subscribe from an event loop."""

    def __init__(self, history: int = 1000, queue_size: int = 2000) -> None:
        self._lock = threading.Lock()
        self._next_id = 1
        self._history: deque[Message] = deque(maxlen=history)
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        self._closed = False

    def publish(self, kind: str, data: Mapping[str, Any]) -> Message:
        with self._lock:
            msg = Message(self._next_id, kind, dict(data))
            self._next_id += 1
            self._history.append(msg)
            subs = list(self._subs)
        for sub in subs:
            sub.offer(msg)
        return msg

    def subscribe(self, last_id: int | None = None) -> tuple[list[Message], Subscription]:
        """Register a subscriber on the running loop; returns the backlog after `last_id` and it."""
        sub = Subscription(asyncio.get_running_loop(), self._queue_size)
        with self._lock:
            backlog = [m for m in self._history if last_id is None or m.id > last_id]
            if self._closed:
                sub.queue.put_nowait(_CLOSED)
            else:
                self._subs.add(sub)
        return backlog, sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def history(self) -> list[Message]:
        with self._lock:
            return list(self._history)

    @property
    def n_subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        with self._lock:
            self._closed = True
            subs, self._subs = list(self._subs), set()
        for sub in subs:
            sub.offer(_CLOSED)


class LiveFeed:
    """What the pipeline did, as hub messages and metrics.

    Implements the worker's `JobObserver` (`inferred`, `finished`), the journal's event observer
    (`journal_event`) and an alert sink (`alert`); `instance` is called for each new instance.
    """

    def __init__(self, hub: EventHub, metrics: Metrics) -> None:
        self.hub = hub
        self.metrics = metrics

    def instance(self, item: InstanceReceived) -> None:
        self.hub.publish("instance", {
            "series_uid": item.header.series_uid, "calling_ae": item.calling_ae,
            "modality": item.header.modality, "n_instances": item.recorded.n_instances, "at": time.time(),
        })

    def inferred(self, model_id: str, seconds: float) -> None:
        self.metrics.inferred(model_id, seconds)

    def finished(self, job: Job, findings: Findings, instance_numbers: Mapping[str, int | None]) -> None:
        now = time.time()
        n_out = len(findings.out_of_domain)
        self.metrics.domain_checked(job.model_id, len(findings.domain) - n_out, n_out)
        for c in findings.classifications:
            if c.source is None:
                continue
            self.hub.publish("slice", {
                "series_uid": job.series_uid, "instance_uid": c.source.sop_instance_uid,
                "frame": c.source.frame, "instance_number": instance_numbers.get(c.source.sop_instance_uid),
                "model": job.model_id, "label": c.label,
                "probabilities": {k: round(float(v), 4) for k, v in c.probabilities.items()},
                "uncertain": c.uncertain, "revision": job.revision, "at": now,
                "out_of_domain": findings.is_out_of_domain(c.source),
            })

    def alert(self, alert: Alert) -> None:
        self.metrics.alert_raised(alert)
        data = asdict(alert)
        data["lines"] = list(alert.lines)
        self.hub.publish("alert", data)

    def journal_event(self, event: Event) -> None:
        self.metrics.journal_event(event)
        self.hub.publish("timeline", asdict(event))


__all__ = ["EventHub", "LiveFeed", "Message", "Subscription"]
