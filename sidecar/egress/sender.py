"""The sender: the only code that opens outbound associations.

It drains the journal's outbox, one worker thread per destination so that one dead PACS never
delays another. Each pass takes the due items of a destination (a batch), sends them through
the destination's `StoreTransport` (one association for DICOM), and records each outcome:

- delivered: `mark_sent`;
- retryable: `mark_retry` with exponential backoff, `backoff_initial_s * 2**attempts` capped
  at `backoff_max_s`, less up to 10 % seeded jitter (one draw per pass, so a batch that
  failed together is retried together) so that destinations do not retry in step;
- not retryable, or the `max_attempts`-th failure: `mark_dead` with the reason.

A worker sleeps until the destination's next due item or `poll_s`, whichever comes first, and
wakes at once on `notify()` (called after results are queued). Logs carry destination names,
counts and statuses, never patient data.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from sidecar.egress.transport import SendOutcome, StoreTransport, make_transport
from sidecar.errors import DeliveryError, JournalError
from sidecar.journal import Journal, OutboxItem
from sidecar.settings import DicomDestination, DicomwebDestination, FolderDestination, Sender as SenderSettings

log = structlog.get_logger("sidecar.sender")

Clock = Callable[[], float]
DEFAULT_BATCH = 64
JITTER = 0.1
STOP_TIMEOUT_S = 10.0


class Sender:
    """Delivers outbox items to their destinations with retry, backoff and dead letters."""

    def __init__(
        self,
        journal: Journal,
        destinations: Sequence[DicomDestination | FolderDestination | DicomwebDestination],
        settings: SenderSettings,
        calling_ae: str,
        transports: Mapping[str, StoreTransport] | None = None,
        clock: Clock = time.time,
        *,
        batch_size: int = DEFAULT_BATCH,
        seed: int = 0,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.calling_ae = calling_ae
        self._clock = clock
        self._batch = batch_size
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        given = dict(transports or {})
        self.transports: dict[str, StoreTransport] = {
            d.name: given.get(d.name) or make_transport(d, calling_ae) for d in destinations
        }
        self._wake = {name: threading.Event() for name in self.transports}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def destinations(self) -> list[str]:
        return list(self.transports)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per destination; each echoes its destination first if configured."""
        if self._threads:
            return
        self._stop.clear()
        for name in self.transports:
            t = threading.Thread(target=self._run, args=(name,), name=f"sender-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("sender_started", destinations=len(self._threads))

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the workers; waits at most `timeout_s` in all (a send in flight may outlive it)."""
        self._stop.set()
        for ev in self._wake.values():
            ev.set()
        deadline = time.monotonic() + timeout_s
        alive = []
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                alive.append(t.name)
        self._threads = []
        if alive:
            log.warning("sender_stop_timeout", still_running=alive)
        else:
            log.info("sender_stopped")

    def notify(self, destination: str | None = None) -> None:
        """New work is queued (for `destination`, or for all): wake the worker(s) now."""
        if destination is None:
            for ev in self._wake.values():
                ev.set()
        elif destination in self._wake:
            self._wake[destination].set()

    # -- echo ------------------------------------------------------------------------------

    def echo(self, destination: str) -> str | None:
        """C-ECHO (or the folder check) one destination; the reason it failed, or None. Never raises."""
        try:
            self.transports[destination].echo()
        except DeliveryError as exc:
            log.warning("destination_echo_failed", destination=destination, error=str(exc))
            return str(exc)
        except Exception as exc:  # boundary: an echo is advisory and must never be fatal
            log.exception("destination_echo_error", destination=destination, error_type=type(exc).__name__)
            return f"{type(exc).__name__}: {exc}"
        log.info("destination_echo_ok", destination=destination)
        return None

    def echo_all(self) -> dict[str, str | None]:
        """Echo every destination in turn; name -> failure reason (None when it answered)."""
        return {name: self.echo(name) for name in self.transports}

    # -- delivery --------------------------------------------------------------------------

    def _jitter(self) -> float:
        with self._rng_lock:
            return 1.0 - JITTER * self._rng.random()

    def backoff_s(self, attempts: int, jitter: float | None = None) -> float:
        """Delay before the next try of an item that has failed `attempts` + 1 times.

        `jitter` (a factor in (0.9, 1]) is drawn per pass, so items that failed together stay
        together and go out again over one association.
        """
        s = self.settings
        base = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** min(attempts, 60))
        return base * (self._jitter() if jitter is None else jitter)

    def deliver_due(self, destination: str) -> int:
        """One pass for one destination: send the due batch and record outcomes. Returns its size.

        The worker threads call this; tests may call it directly with a fake clock.
        """
        items = self.journal.due_outbox(destination, now=self._clock(), limit=self._batch)
        if not items:
            return 0
        transport = self.transports[destination]
        paths = [it.path for it in items]
        try:
            outcomes = transport.send(paths)
            if len(outcomes) != len(items):
                raise DeliveryError(f"transport gave {len(outcomes)} outcomes for {len(items)} files")
        except Exception as exc:  # boundary: a broken transport becomes a retry, never a dead worker
            log.exception("transport_error", destination=destination, error_type=type(exc).__name__)
            outcomes = [SendOutcome.retry(f"transport error: {type(exc).__name__}: {exc}")] * len(items)
        self._record(destination, items, outcomes)
        return len(items)

    def _record(self, destination: str, items: list[OutboxItem], outcomes: list[SendOutcome]) -> None:
        now = self._clock()
        jitter = self._jitter()
        sent = retried = 0
        dead: list[str] = []
        next_in: list[float] = []
        errors: set[str] = set()
        statuses: set[str] = set()
        for item, out in zip(items, outcomes, strict=True):
            if out.status is not None:
                statuses.add(f"0x{out.status:04X}")
            if out.ok:
                self.journal.mark_sent(item.id)
                sent += 1
                continue
            errors.add(out.error)
            attempt = item.attempts + 1
            if not out.retryable:
                self.journal.mark_dead(item.id, f"not retryable: {out.error}")
                dead.append("not retryable")
            elif attempt >= self.settings.max_attempts:
                self.journal.mark_dead(item.id, f"gave up after {attempt} attempts: {out.error}")
                dead.append("max attempts")
            else:
                delay = self.backoff_s(item.attempts, jitter)
                self.journal.mark_retry(item.id, out.error, now + delay)
                next_in.append(delay)
                retried += 1
        if sent:
            log.info("result_sent", destination=destination, n=sent, statuses=sorted(statuses))
        if retried:
            log.warning(
                "result_retry", destination=destination, n=retried, next_in_s=round(min(next_in), 3),
                errors=sorted(errors)[:3],
            )
        if dead:
            log.error(
                "result_dead", destination=destination, n=len(dead),
                reasons=sorted(set(dead)), errors=sorted(errors)[:3],
            )

    def _wait_s(self, destination: str) -> float:
        poll = self.settings.poll_s
        next_due = self.journal.next_due_at(destination)
        if next_due is None:
            return poll
        return min(poll, max(0.005, next_due - self._clock()))

    def _run(self, destination: str) -> None:
        if self.settings.echo_on_start:
            self.echo(destination)
        wake = self._wake[destination]
        while not self._stop.is_set():
            wake.clear()
            try:
                if self.deliver_due(destination):
                    continue  # more may be due: go again without sleeping
                wait = self._wait_s(destination)
            except JournalError as exc:  # boundary: the journal may come back; keep the worker
                log.error("sender_journal_error", destination=destination, error=str(exc))
                wait = self.settings.poll_s
            except Exception as exc:  # boundary: a worker thread must not die silently
                log.exception("sender_worker_error", destination=destination, error_type=type(exc).__name__)
                wait = self.settings.poll_s
            wake.wait(wait)

    # -- tests and status ------------------------------------------------------------------

    def pending_due(self) -> int:
        """How many outbox items are pending and due now, over all destinations."""
        now = self._clock()
        return sum(len(self.journal.due_outbox(d, now=now, limit=1_000_000)) for d in self.transports)

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending and due (workers must be running); False on timeout."""
        deadline = time.monotonic() + timeout_s
        self.notify()
        while time.monotonic() < deadline:
            if not self.pending_due():
                return True
            time.sleep(0.01)
        return not self.pending_due()


__all__ = ["Sender"]
