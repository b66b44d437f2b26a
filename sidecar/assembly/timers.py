"""Timers for series quiet times: a Protocol, APScheduler behind it, and a fake clock for tests."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler


class Timers(Protocol):
    """Run `fn` once after `delay_s`, keyed so that re-arming a key replaces its timer."""

    def arm(self, key: str, delay_s: float, fn: Callable[[], None]) -> None: ...

    def cancel(self, key: str) -> None: ...

    def now(self) -> float: ...


class SchedulerTimers:
    """APScheduler's BackgroundScheduler: one date job per key."""

    def __init__(self, scheduler: BackgroundScheduler, clock: Callable[[], float]) -> None:
        self._scheduler = scheduler
        self._clock = clock

    def arm(self, key: str, delay_s: float, fn: Callable[[], None]) -> None:
        run_at = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
        self._scheduler.add_job(
            fn, "date", run_date=run_at, id=f"quiet:{key}", replace_existing=True,
            misfire_grace_time=None, coalesce=True,
        )

    def cancel(self, key: str) -> None:
        try:
            self._scheduler.remove_job(f"quiet:{key}")
        except Exception:  # JobLookupError: already fired or never armed
            return

    def now(self) -> float:
        return self._clock()


class FakeTimers:
    """A manual clock: `advance(s)` fires the timers that fall due, in order."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, str]] = []
        self._fns: dict[str, tuple[int, Callable[[], None]]] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def arm(self, key: str, delay_s: float, fn: Callable[[], None]) -> None:
        with self._lock:
            self._seq += 1
            self._fns[key] = (self._seq, fn)
            heapq.heappush(self._heap, (self._now + delay_s, self._seq, key))

    def cancel(self, key: str) -> None:
        with self._lock:
            self._fns.pop(key, None)

    def pending(self) -> list[str]:
        return sorted(self._fns)

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    break
                at, seq, key = heapq.heappop(self._heap)
                current = self._fns.get(key)
                if current is None or current[0] != seq:
                    continue  # cancelled or re-armed
                del self._fns[key]
                self._now = max(self._now, at)
            current[1]()
        self._now = target
