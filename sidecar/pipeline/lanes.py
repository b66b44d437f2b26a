"""Supervised lanes: every long-lived loop of the service runs inside an error boundary.

A `Lane` is a named loop body (`body(stop)` returns only when `stop` is set). The boundary
catches what the body raises, logs it with its type, counts it and backs off (doubling from
`backoff_initial_s` to `backoff_max_s`, reset once the body has run `healthy_s` without error)
before running the body again: a journal that cannot write or a disk that is full delays work,
it never ends it. A lane's thread that dies anyway (a `BaseException` such as `SystemExit`, or
a bug in the boundary) is noticed by `Supervisor.check()` (its own thread calls it every
`check_s`) and started again; both kinds of restart are counted. `status()` says, per lane,
whether it is up, how often it restarted and why last; readiness and /metrics show it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from sidecar.pipeline.failures import describe

log = structlog.get_logger("sidecar.lanes")

Body = Callable[[threading.Event], None]


@dataclass(frozen=True)
class LaneStatus:
    name: str
    up: bool  # thread alive and not backing off after an error
    restarts: int
    last_error: str = ""


class Lane:
    """One supervised loop; `body(stop)` must return when `stop` is set."""

    def __init__(self, name: str, body: Body, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 healthy_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.body = name, body
        self.backoff_initial_s, self.backoff_max_s, self.healthy_s = backoff_initial_s, backoff_max_s, healthy_s
        self._clock = clock
        self.restarts = 0
        self.last_error = ""
        self.failing = False
        self._failures = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def status(self) -> LaneStatus:
        return LaneStatus(self.name, self.alive and not self.failing, self.restarts, self.last_error)

    def run_boundary_once(self) -> bool:
        """Run the body once inside the boundary; True when it returned normally (tests call this)."""
        started = self._clock()
        try:
            self.body(self._stop)
        except Exception as exc:  # boundary: a lane never dies of an error in its body
            if self._clock() - started >= self.healthy_s:
                self._failures = 0
            self._failures += 1
            self.restarts += 1
            self.failing = True
            self.last_error = describe(exc)
            log.error("lane_failed", lane=self.name, error=self.last_error[:300], restarts=self.restarts)
            return False
        self.failing = False
        return True

    def backoff_s(self) -> float:
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, self._failures - 1)))

    def _main(self) -> None:
        while not self._stop.is_set():
            if self.run_boundary_once():
                return
            self._stop.wait(self.backoff_s())
            self.failing = False  # running again; a new error sets it back


class Supervisor:
    """Starts lanes, restarts any whose thread died, stops them all."""

    def __init__(self, lanes: Sequence[Lane] = (), check_s: float = 1.0) -> None:
        self.lanes: list[Lane] = list(lanes)
        self.check_s = check_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.extra: list[Callable[[], Sequence[LaneStatus]]] = []

    def add(self, lane: Lane) -> None:
        self.lanes.append(lane)
        if self._thread is not None:
            lane.start(self._stop)

    def watch(self, fn: Callable[[], Sequence[LaneStatus]]) -> None:
        """Also report the parts `fn` describes (threads and processes supervised elsewhere)."""
        self.extra.append(fn)

    def start(self) -> None:
        self._stop.clear()
        for lane in self.lanes:
            lane.start(self._stop)
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def check(self) -> int:
        """Restart every lane whose thread is gone; returns how many were restarted."""
        n = 0
        for lane in self.lanes:
            if not self._stop.is_set() and not lane.alive:
                lane.restarts += 1
                lane.last_error = lane.last_error or "thread exited"
                log.error("lane_restarted", lane=lane.name, restarts=lane.restarts)
                lane.start(self._stop)
                n += 1
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except Exception as exc:  # boundary: the supervisor itself keeps watching
                log.error("supervisor_check_failed", error=describe(exc))

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for lane in self.lanes:
            lane.join(max(0.0, deadline - time.monotonic()))

    def status(self) -> list[LaneStatus]:
        out = [lane.status() for lane in self.lanes]
        for fn in self.extra:
            try:
                out.extend(fn())
            except Exception as exc:  # boundary: a broken report reads as a down part
                out.append(LaneStatus(getattr(fn, "__name__", "part"), False, 0, describe(exc)))
        return out
